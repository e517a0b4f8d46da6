//! Activation patching: the corrupt prompt's metric with one activation of the clean prompt
//! patched in, for every (layer, position) of the residual stream, attention and MLP outputs,
//! and for every attention head (`hook_z` of one head at all positions).
//!
//! A patch at (layer l, position t) changes nothing before position t (attention is causal)
//! and nothing before block l, so a patched run continues the corrupt run: blocks l.. on
//! positions t.. with the corrupt run's keys and values for earlier positions (its KV cache).
//! Positions before the first token where the prompts differ hold the same activations in
//! both runs, so patching them changes nothing; positions after the metric's are not read.
//! Every patch reduces to "from block l on, positions t..=p start from these residual rows";
//! all patches of a site run packed as one matrix of rows that grows as later-starting
//! patches join at their first block (`Keys::Packed` attention over the shared cache).

use candle_core::{Device, Tensor};

use super::config::Residual;
use super::metric::Metric;
use super::parts::attention::AttendWith;
use super::parts::block::residual_add;
use super::parts::packed::{greedy_packs, row_positions};
use super::parts::{Block, Keys, Segment};
use super::{KvCache, LanguageModel, RunPlan, Transformer};
use crate::error::{MsError, Result};
use crate::hooks::{
    Action, CaptureSpec, CapturedArray, HookContext, HookKind, HookPoint, Intervention, LogitsMode,
    Positions,
};
use crate::interrupt::Cancel;
use crate::kernels::per_core;

/// What is patched from the clean run into the corrupt run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PatchSite {
    /// `blocks.l.hook_resid_pre` at one position: scores `[layer, position]`.
    ResidPre,
    /// `blocks.l.hook_attn_out` at one position: `[layer, position]`.
    AttnOut,
    /// `blocks.l.hook_mlp_out` at one position: `[layer, position]`.
    MlpOut,
    /// `blocks.l.attn.hook_z` of one head at every position: `[layer, head]`.
    Head,
}

impl PatchSite {
    pub const ALL: [PatchSite; 4] = [
        PatchSite::ResidPre,
        PatchSite::AttnOut,
        PatchSite::MlpOut,
        PatchSite::Head,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PatchSite::ResidPre => "resid_pre",
            PatchSite::AttnOut => "attn_out",
            PatchSite::MlpOut => "mlp_out",
            PatchSite::Head => "head",
        }
    }

    pub fn parse(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| {
                MsError::invalid(format!(
                    "patching site '{name}' is not known; allowed: 'resid_pre', 'attn_out', \
                     'mlp_out', 'head'"
                ))
            })
    }

    fn hook(self, layer: usize) -> HookPoint {
        let kind = match self {
            PatchSite::ResidPre => HookKind::ResidPre,
            PatchSite::AttnOut => HookKind::AttnOut,
            PatchSite::MlpOut => HookKind::MlpOut,
            PatchSite::Head => HookKind::AttnZ,
        };
        HookPoint::block(layer, kind)
    }
}

/// Which patches to measure: `clean` and `corrupt` token ids (same length), the metric read
/// from the corrupt run's final logits, and the sites. `pack_rows`: about how many patched
/// positions one packed run holds (bounds its memory; packs beyond one run one per core).
#[derive(Debug, Clone, Copy)]
pub struct PatchJob<'a> {
    pub clean: &'a [u32],
    pub corrupt: &'a [u32],
    pub metric: &'a Metric,
    pub sites: &'a [PatchSite],
    pub pack_rows: usize,
}

/// The patched run's metric at every cell of one site: row-major `[layer, position]` or
/// `[layer, head]`.
#[derive(Debug, Clone)]
pub struct SiteGrid {
    pub site: PatchSite,
    pub shape: [usize; 2],
    pub values: Vec<f32>,
}

/// The metric of the clean and the corrupt run, and of every patched run.
#[derive(Debug, Clone)]
pub struct PatchScores {
    pub clean: f32,
    pub corrupt: f32,
    pub grids: Vec<SiteGrid>,
}

/// The activations of one run at the positions `0..n` it was run on, per layer.
struct Acts {
    /// `[n, d_model]` per layer: `hook_resid_pre`, and, last, the final residual stream
    /// (`hook_resid_post` of the last block), so `stream[l]` is what block `l` reads.
    stream: Vec<Tensor>,
    attn_out: Vec<Tensor>,
    mlp_out: Vec<Tensor>,
    /// `hook_resid_mid` (sequential blocks only; empty otherwise).
    resid_mid: Vec<Tensor>,
    /// `[n, head, d_head]` per layer.
    z: Vec<Tensor>,
    metric: f32,
}

/// One patched run continuing the corrupt run: from block `layer` on (`n_layers`: after the
/// last block), positions `from..n` start from `rows [n - from, d_model]`.
struct Patch {
    layer: usize,
    from: usize,
    rows: Tensor,
    /// Where its metric goes: (grid index, cell index).
    cell: (usize, usize),
}

fn point_name(layer: usize, kind: HookKind) -> String {
    HookPoint::block(layer, kind).name()
}

impl LanguageModel {
    /// Checks a job and returns the decoder and the metric position.
    fn check_patching(&self, job: &PatchJob) -> Result<(&Transformer, usize)> {
        let net = self.decoder("run activation patching (it reads a metric of the logits)")?;
        if !net.cfg.causal {
            return Err(MsError::invalid(
                "activation patching needs a causal decoder: its fast path reuses the unchanged \
                 earlier positions",
            ));
        }
        if net.cfg.residual == Residual::PostNorm {
            return Err(post_norm_refused());
        }
        if job.sites.is_empty() {
            return Err(MsError::invalid(
                "no patching sites given; allowed: 'resid_pre', 'attn_out', 'mlp_out', 'head'",
            ));
        }
        self.check_prompt_ids(0, job.clean)?;
        self.check_prompt_ids(1, job.corrupt)?;
        if job.clean.len() != job.corrupt.len() {
            return Err(MsError::invalid(format!(
                "the clean and corrupt prompts must have the same number of tokens to patch \
                 position by position: clean has {}, corrupt has {}",
                job.clean.len(),
                job.corrupt.len()
            )));
        }
        job.metric.check(net.cfg.vocab_size)?;
        let p = job.metric.position(job.corrupt.len())?;
        Ok((net, p))
    }

    /// Run `ids` once, capturing what patching reads; with `kv`, keep its keys and values.
    fn patching_acts(
        &self,
        net: &Transformer,
        ids: &[u32],
        metric: &Metric,
        kv: Option<&mut KvCache>,
        cancel: &Cancel,
    ) -> Result<Acts> {
        let (n, big_l) = (ids.len(), net.cfg.n_layers);
        let sequential = net.cfg.residual == Residual::Sequential;
        let mut names = Vec::new();
        for l in 0..big_l {
            for kind in [
                HookKind::ResidPre,
                HookKind::AttnOut,
                HookKind::MlpOut,
                HookKind::AttnZ,
            ] {
                names.push(point_name(l, kind));
            }
            if sequential {
                names.push(point_name(l, HookKind::ResidMid));
            }
        }
        names.push(point_name(big_l - 1, HookKind::ResidPost));
        let spec = CaptureSpec::new(self.hooks(), &names, Positions::All, None, LogitsMode::None)?;
        let mut ctx = HookContext::new(self.hooks(), Some(&spec), &[], &[n])?.with_cancel(cancel);
        let x = net
            .embed
            .tokens(&Tensor::from_vec(ids.to_vec(), (1, n), &Device::Cpu)?)?;
        let plan = RunPlan::full(net, LogitsMode::None);
        net.run_blocks(x, &[n], &mut ctx, &plan, kv)?;
        let d = net.cfg.d_model;
        let (h, dh) = (net.cfg.n_heads, net.cfg.d_head);
        let take = |name: String, shape: &[usize]| -> Result<Tensor> {
            let a = ctx
                .cache
                .get(&name)
                .ok_or_else(|| MsError::Compute(format!("patching: '{name}' was not captured")))?;
            Ok(Tensor::from_slice(&a.data, shape, &Device::Cpu)?)
        };
        let per_layer = |kind: HookKind, shape: &[usize]| -> Result<Vec<Tensor>> {
            (0..big_l)
                .map(|l| take(point_name(l, kind), shape))
                .collect()
        };
        let mut stream = per_layer(HookKind::ResidPre, &[n, d])?;
        stream.push(take(point_name(big_l - 1, HookKind::ResidPost), &[n, d])?);
        let last = stream[big_l].narrow(0, n - 1, 1)?;
        let metric = metric.value(&net.unembed(&last)?.flatten_all()?.to_vec1::<f32>()?);
        Ok(Acts {
            attn_out: per_layer(HookKind::AttnOut, &[n, d])?,
            mlp_out: per_layer(HookKind::MlpOut, &[n, d])?,
            resid_mid: if sequential {
                per_layer(HookKind::ResidMid, &[n, d])?
            } else {
                Vec::new()
            },
            z: per_layer(HookKind::AttnZ, &[n, h, dh])?,
            stream,
            metric,
        })
    }

    /// The metric of the corrupt prompt with each site's activations patched in from the
    /// clean prompt, one patch at a time (see the module docs for what is shared).
    pub fn activation_patching(&self, job: &PatchJob, cancel: &Cancel) -> Result<PatchScores> {
        let (net, p) = self.check_patching(job)?;
        // Positions after the metric's cannot change it: run the prompts up to it.
        let n = p + 1;
        let mut kv = KvCache::default();
        let clean = self.patching_acts(net, &job.clean[..n], job.metric, None, cancel)?;
        let corrupt =
            self.patching_acts(net, &job.corrupt[..n], job.metric, Some(&mut kv), cancel)?;
        // Before the first differing token both runs are the same.
        let first_diff = (0..n)
            .find(|&i| job.clean[i] != job.corrupt[i])
            .unwrap_or(n);
        let (big_l, heads, len) = (net.cfg.n_layers, net.cfg.n_heads, job.corrupt.len());
        let mut grids = Vec::new();
        let mut patches = Vec::new();
        for (g, &site) in job.sites.iter().enumerate() {
            let shape = match site {
                PatchSite::Head => [big_l, heads],
                _ => [big_l, len],
            };
            grids.push(SiteGrid {
                site,
                shape,
                values: vec![corrupt.metric; shape[0] * shape[1]],
            });
            if first_diff < n {
                patches.extend(site_patches(
                    net, site, g, &clean, &corrupt, first_diff, n, len,
                )?);
            }
        }
        let metrics = self.run_patches(net, patches.iter().collect(), &kv, n, job, cancel)?;
        for (patch, m) in patches.iter().zip(metrics) {
            grids[patch.cell.0].values[patch.cell.1] = m;
        }
        Ok(PatchScores {
            clean: clean.metric,
            corrupt: corrupt.metric,
            grids,
        })
    }

    /// Metrics of `patches` (continuing the corrupt run cached in `kv`, `n` positions), in
    /// order. Patches run in packs of about `job.pack_rows` rows, one pack per core.
    fn run_patches(
        &self,
        net: &Transformer,
        patches: Vec<&Patch>,
        kv: &KvCache,
        n: usize,
        job: &PatchJob,
        cancel: &Cancel,
    ) -> Result<Vec<f32>> {
        let big_l = net.cfg.n_layers;
        // Final rows of patches that start after the last block are their rows themselves.
        let mut order: Vec<usize> = (0..patches.len()).collect();
        order.sort_by_key(|&i| patches[i].layer);
        let packs = greedy_packs(
            order.into_iter().filter(|&i| patches[i].layer < big_l),
            |i| n - patches[i].from,
            usize::MAX,
            job.pack_rows,
        );
        let progress = cancel.progress();
        progress.start(patches.len() as u64);
        let mut finals: Vec<Option<Tensor>> = vec![None; patches.len()];
        for (i, patch) in patches.iter().enumerate() {
            if patch.layer == big_l {
                finals[i] = Some(patch.rows.narrow(0, n - 1 - patch.from, 1)?);
                progress.advance(1);
            }
        }
        let ran = per_core::map(packs, per_core::workers(), |pack| {
            let members: Vec<&Patch> = pack.iter().map(|&i| patches[i]).collect();
            let out = run_pack(net, &members, kv, n, cancel)?;
            progress.advance(members.len() as u64);
            Ok((pack, out))
        })?;
        for (pack, out) in ran {
            for (k, &i) in pack.iter().enumerate() {
                finals[i] = Some(out.narrow(0, k, 1)?);
            }
        }
        if finals.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<Tensor> = finals
            .into_iter()
            .map(|r| r.ok_or_else(|| MsError::Compute("patching: a patch was not run".into())))
            .collect::<Result<_>>()?;
        let logits = net.unembed(&Tensor::cat(&rows, 0)?)?.to_vec2::<f32>()?;
        Ok(logits.iter().map(|row| job.metric.value(row)).collect())
    }

    /// The same scores by brute force: one full forward of the corrupt prompt per patch with
    /// an `Action::Replace` intervention, nothing shared or skipped. The reference for tests
    /// and the baseline in the benchmark.
    pub fn activation_patching_naive(
        &self,
        job: &PatchJob,
        cancel: &Cancel,
    ) -> Result<PatchScores> {
        let (net, p) = self.check_patching(job)?;
        let t = job.corrupt.len();
        let (big_l, heads, dh) = (net.cfg.n_layers, net.cfg.n_heads, net.cfg.d_head);
        let clean = self.patching_acts(net, job.clean, job.metric, None, cancel)?;
        let corrupt = self.patching_acts(net, job.corrupt, job.metric, None, cancel)?;
        let ids = Tensor::from_vec(job.corrupt.to_vec(), (1, t), &Device::Cpu)?;
        let cells: usize = job
            .sites
            .iter()
            .map(|&s| big_l * if s == PatchSite::Head { heads } else { t })
            .sum();
        cancel.progress().start(cells as u64);
        let patched = |iv: Intervention| -> Result<f32> {
            cancel.progress().advance(1);
            let ivs = [iv];
            let mut ctx = HookContext::new(self.hooks(), None, &ivs, &[t])?.with_cancel(cancel);
            let plan = RunPlan::full(net, LogitsMode::None);
            let x = net.run_blocks(net.embed.tokens(&ids)?, &[t], &mut ctx, &plan, None)?;
            let row = x.squeeze(0)?.narrow(0, p, 1)?;
            Ok(job
                .metric
                .value(&net.unembed(&row)?.flatten_all()?.to_vec1::<f32>()?))
        };
        let to_array = |x: &Tensor| -> Result<CapturedArray> {
            let mut shape = vec![1];
            shape.extend(x.dims());
            Ok(CapturedArray::new(shape, x.flatten_all()?.to_vec1()?))
        };
        let mut grids = Vec::new();
        for &site in job.sites {
            let mut values = Vec::new();
            for l in 0..big_l {
                if site == PatchSite::Head {
                    for h in 0..heads {
                        // Head h's z from the clean run, the other heads' from the corrupt.
                        let mut z = corrupt.z[l].flatten_all()?.to_vec1::<f32>()?;
                        let zc = clean.z[l].flatten_all()?.to_vec1::<f32>()?;
                        for pos in 0..t {
                            let at = (pos * heads + h) * dh;
                            z[at..at + dh].copy_from_slice(&zc[at..at + dh]);
                        }
                        values.push(patched(Intervention {
                            point: site.hook(l),
                            action: Action::Replace(CapturedArray::new(vec![1, t, heads, dh], z)),
                            positions: None,
                        })?);
                    }
                    continue;
                }
                let source = match site {
                    PatchSite::ResidPre => &clean.stream[l],
                    PatchSite::AttnOut => &clean.attn_out[l],
                    _ => &clean.mlp_out[l],
                };
                for pos in 0..t {
                    values.push(patched(Intervention {
                        point: site.hook(l),
                        action: Action::Replace(to_array(&source.narrow(0, pos, 1)?)?),
                        positions: Some(Positions::Indices(vec![pos as i64])),
                    })?);
                }
            }
            let shape = match site {
                PatchSite::Head => [big_l, heads],
                _ => [big_l, t],
            };
            grids.push(SiteGrid {
                site,
                shape,
                values,
            });
        }
        // The unpatched metrics at the metric position (not necessarily the last token).
        let at = |a: &Acts| -> Result<f32> {
            let row = a.stream[big_l].narrow(0, p, 1)?;
            Ok(job
                .metric
                .value(&net.unembed(&row)?.flatten_all()?.to_vec1::<f32>()?))
        };
        Ok(PatchScores {
            clean: at(&clean)?,
            corrupt: at(&corrupt)?,
            grids,
        })
    }
}

/// Rows `[r, d]` as the `[1, r, d]` a block part takes.
fn batch1(x: &Tensor) -> Result<Tensor> {
    Ok(x.unsqueeze(0)?)
}

/// The rest of block `layer` after its attention: the residual stream after the block at
/// rows whose input was `x` and whose attention output is `attn` (both `[r, d_model]`).
fn after_attention(net: &Transformer, layer: usize, x: &Tensor, attn: &Tensor) -> Result<Tensor> {
    let block = &net.blocks[layer];
    // Block parts take a hook context; nothing is hooked in a patched run.
    let mut ctx = HookContext::inactive(&net.hooks, &[x.dim(0)?]);
    let (x, attn) = (batch1(x)?, batch1(attn)?);
    let out = match block.residual {
        Residual::Sequential => {
            let mid = residual_add(&x, &attn)?;
            let mlp = block
                .mlp
                .forward(layer, &block.mlp_norm.forward(&mid)?, &mut ctx)?;
            let mlp = match &block.post_mlp_norm {
                Some(n) => n.forward(&mlp)?,
                None => mlp,
            };
            residual_add(&mid, &mlp)?
        }
        Residual::Parallel => {
            let mlp = block
                .mlp
                .forward(layer, &block.mlp_norm.forward(&x)?, &mut ctx)?;
            residual_add(&residual_add(&mlp, &attn)?, &x)?
        }
        Residual::PostNorm => return Err(post_norm_refused()),
    };
    Ok(out.squeeze(0)?)
}

fn post_norm_refused() -> MsError {
    MsError::invalid(
        "activation patching supports pre-norm blocks (sequential or parallel residual); this \
         model's blocks are post-norm",
    )
}

/// The residual stream after block `l` at rows whose MLP output is replaced by `mlp`, from the
/// corrupt run's other activations at those rows (`rows` of positions).
fn after_mlp(
    block: &Block,
    corrupt: &Acts,
    l: usize,
    rows: std::ops::Range<usize>,
    mlp: &Tensor,
) -> Result<Tensor> {
    let pick = |t: &Tensor| t.narrow(0, rows.start, rows.len());
    Ok(match block.residual {
        Residual::Sequential => residual_add(&pick(&corrupt.resid_mid[l])?, mlp)?,
        Residual::Parallel => residual_add(
            &residual_add(mlp, &pick(&corrupt.attn_out[l])?)?,
            &pick(&corrupt.stream[l])?,
        )?,
        Residual::PostNorm => return Err(post_norm_refused()),
    })
}

/// The patches of one site (grid `g`) that can change the metric: at positions `from..n`
/// (`from`: the first token where the prompts differ; `n`: the metric position + 1). `len`
/// is the prompt length (the grid's width).
#[allow(clippy::too_many_arguments)]
fn site_patches(
    net: &Transformer,
    site: PatchSite,
    g: usize,
    clean: &Acts,
    corrupt: &Acts,
    from: usize,
    n: usize,
    len: usize,
) -> Result<Vec<Patch>> {
    let big_l = net.cfg.n_layers;
    let mut out = Vec::new();
    // The corrupt stream at block `layer`'s input with the rows of positions `t..` replaced
    // by `new` (its first rows).
    let splice = |layer: usize, t: usize, new: &Tensor| -> Result<Tensor> {
        let k = new.dim(0)?;
        if t + k == n {
            return Ok(new.clone());
        }
        Ok(Tensor::cat(
            &[new, &corrupt.stream[layer].narrow(0, t + k, n - t - k)?],
            0,
        )?)
    };
    for l in 0..big_l {
        let block = &net.blocks[l];
        let r = from..n;
        match site {
            PatchSite::ResidPre => {
                for t in r {
                    out.push(Patch {
                        layer: l,
                        from: t,
                        rows: splice(l, t, &clean.stream[l].narrow(0, t, 1)?)?,
                        cell: (g, l * len + t),
                    });
                }
            }
            PatchSite::AttnOut | PatchSite::MlpOut => {
                // Each row's block output depends on that row alone once attention is done.
                let post = if site == PatchSite::AttnOut {
                    let x = corrupt.stream[l].narrow(0, from, n - from)?;
                    let attn = clean.attn_out[l].narrow(0, from, n - from)?;
                    after_attention(net, l, &x, &attn)?
                } else {
                    let mlp = clean.mlp_out[l].narrow(0, from, n - from)?;
                    after_mlp(block, corrupt, l, r.clone(), &mlp)?
                };
                for t in r {
                    out.push(Patch {
                        layer: l + 1,
                        from: t,
                        rows: splice(l + 1, t, &post.narrow(0, t - from, 1)?)?,
                        cell: (g, l * len + t),
                    });
                }
            }
            PatchSite::Head => {
                let (heads, dh) = (net.cfg.n_heads, net.cfg.d_head);
                let rn = n - from;
                let zc = corrupt.z[l].narrow(0, from, rn)?;
                let zk = clean.z[l].narrow(0, from, rn)?;
                // Every head's variant of z at once: [head, rows, heads, d_head].
                let mut variants = Vec::with_capacity(heads);
                for h in 0..heads {
                    let mut parts = Vec::with_capacity(3);
                    if h > 0 {
                        parts.push(zc.narrow(1, 0, h)?);
                    }
                    parts.push(zk.narrow(1, h, 1)?);
                    if h + 1 < heads {
                        parts.push(zc.narrow(1, h + 1, heads - h - 1)?);
                    }
                    variants.push(Tensor::cat(&parts, 1)?);
                }
                let z = Tensor::stack(&variants, 0)?.reshape((1, heads * rn, heads * dh))?;
                let attn = block.attn.o.forward(&z)?;
                let attn = match &block.post_attn_norm {
                    Some(nrm) => nrm.forward(&attn)?,
                    None => attn,
                }
                .squeeze(0)?;
                let x = corrupt.stream[l].narrow(0, from, rn)?.repeat((heads, 1))?;
                let post = after_attention(net, l, &x, &attn)?;
                for h in 0..heads {
                    out.push(Patch {
                        layer: l + 1,
                        from,
                        rows: post.narrow(0, h * rn, rn)?,
                        cell: (g, l * heads + h),
                    });
                }
            }
        }
    }
    Ok(out)
}

/// Final residual rows `[patches, d_model]` at the metric position of patches run as one
/// pack: block by block from the first patch's, each patch joining the packed rows at its
/// first block and attending to the corrupt run's cached keys before its first position.
fn run_pack(
    net: &Transformer,
    patches: &[&Patch],
    kv: &KvCache,
    n: usize,
    cancel: &Cancel,
) -> Result<Tensor> {
    let big_l = net.cfg.n_layers;
    let start = patches.iter().map(|p| p.layer).min().unwrap_or(big_l);
    let mut segments: Vec<Segment> = Vec::with_capacity(patches.len());
    let mut x: Option<Tensor> = None;
    // RoPE tables of the packed rows and the last row of each segment (its metric row).
    let mut ropes: Vec<(Tensor, Tensor)> = Vec::new();
    let mut keep: [Vec<usize>; 1] = [Vec::new()];
    let mut joined = 0;
    for layer in start..big_l {
        cancel.check()?;
        // Patches are sorted by first block: the next ones join here.
        let mut rows: Vec<Tensor> = x
            .take()
            .map(|t| t.squeeze(0))
            .transpose()?
            .into_iter()
            .collect();
        let before = segments.len();
        while joined < patches.len() && patches[joined].layer == layer {
            let p = patches[joined];
            segments.push(Segment {
                prefix: p.from,
                rows: n - p.from,
            });
            rows.push(p.rows.clone());
            joined += 1;
        }
        if rows.is_empty() {
            continue;
        }
        if segments.len() > before {
            let positions = row_positions(&segments);
            ropes = net
                .ropes
                .iter()
                .map(|r| r.tables(positions.iter().copied()))
                .collect::<Result<_>>()?;
            keep[0] = segments
                .iter()
                .scan(0, |end, s| {
                    *end += s.rows;
                    Some(*end - 1)
                })
                .collect();
        }
        let input = Tensor::cat(&rows, 0)?.unsqueeze(0)?;
        let spec = &net.cfg.layers[layer];
        let total = input.dim(1)?;
        let mut ctx = HookContext::inactive(&net.hooks, &[total]).with_cancel(cancel);
        let prefix = kv
            .layer(layer)?
            .ok_or_else(|| MsError::Compute("patching: the corrupt run's cache is empty".into()))?;
        let attend = AttendWith {
            layer,
            rope: spec.rope.map(|k| &ropes[k]),
            scale: spec.scale,
            keys: Keys::Packed {
                segments: &segments,
                prefix: Some(&prefix),
                window: spec.window,
            },
            // The last block computes its tail at each patch's metric row only.
            queries: (layer + 1 == big_l).then_some(&keep[..]),
        };
        x = Some(net.blocks[layer].forward(input, &mut ctx, attend)?);
    }
    let x = x.ok_or_else(|| MsError::Compute("patching: an empty pack".into()))?;
    Ok(x.squeeze(0)?)
}
