//! Gradients through every tiny decoder family, checked against central finite differences
//! of the metric computed by the fast forward (fused kernels, BLAS), an independent code path:
//! the directional derivative along a site's gradient, and along a random direction, at one
//! position, through an `Add` intervention there. Also: interventions compose (a steered and
//! a patched run), and the gradient pass's metric equals the fast forward's.

use std::path::PathBuf;

use mindscope::hooks::{
    Action, CaptureSpec, CapturedArray, HookPoint, Intervention, LogitsMode, Positions,
};
use mindscope::interrupt::Cancel;
use mindscope::model::grad::{GradInput, GradOutput, GradRequest};
use mindscope::model::metric::Metric;
use mindscope::model::LanguageModel;

mod common;

const FAMILIES: [&str; 6] = ["gpt2", "pythia", "qwen3", "mistral", "phi3", "llama3"];

fn tiny(name: &str) -> LanguageModel {
    let path: PathBuf = common::shared_dir().join("models/tiny").join(name);
    LanguageModel::load(&path).expect("tiny model loads")
}

fn prompt(model: &LanguageModel) -> Vec<u32> {
    let v = model.config().vocab_size as u32;
    [11, 250, 37, 401, 5, 77, 123]
        .iter()
        .map(|x| x % v)
        .collect()
}

/// The fast forward's metric with `ivs` applied.
fn metric_of(model: &LanguageModel, ids: &[u32], metric: &Metric, ivs: &[Intervention]) -> f64 {
    let spec = CaptureSpec::new(model.hooks(), &[], Positions::All, None, LogitsMode::All).unwrap();
    let out = model
        .run_ids(vec![ids.to_vec()], &spec, ivs, 1, &Cancel::default())
        .unwrap();
    let logits = out.logits.unwrap();
    let vocab = logits.shape[2];
    let p = metric.position(ids.len()).unwrap();
    f64::from(metric.value(&logits.data[p * vocab..(p + 1) * vocab]))
}

fn grads(
    model: &LanguageModel,
    ids: &[u32],
    metric: &Metric,
    names: &[&str],
    ivs: &[Intervention],
) -> GradOutput {
    let points = names
        .iter()
        .map(|n| model.hooks().resolve(n).unwrap())
        .collect();
    model
        .gradients(
            GradRequest {
                input: GradInput::Ids(vec![ids.to_vec()]),
                metric,
                points,
                interventions: ivs,
                batch_size: 4,
                with_values: true,
            },
            &Cancel::default(),
        )
        .unwrap()
}

fn add_at(point: HookPoint, pos: usize, vector: Vec<f32>, scale: f32) -> Intervention {
    Intervention {
        point,
        action: Action::Add { vector, scale },
        positions: Some(Positions::Indices(vec![pos as i64])),
    }
}

/// The gradient at `name`, position `pos` (batch row 0), flattened over the trailing axes.
fn row(g: &CapturedArray, pos: usize) -> Vec<f32> {
    let per: usize = g.shape[2..].iter().product();
    g.data[pos * per..(pos + 1) * per].to_vec()
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum()
}

/// Where and along what a finite difference probes: a site, a position, a unit direction.
struct Probe<'a> {
    point: HookPoint,
    pos: usize,
    dir: &'a [f32],
}

/// Central difference of the metric along the probe, with `base` interventions.
fn finite_difference(
    model: &LanguageModel,
    ids: &[u32],
    metric: &Metric,
    probe: Probe,
    step: f32,
    base: &[Intervention],
) -> f64 {
    let Probe { point, pos, dir } = probe;
    let at = |s: f32| {
        let mut ivs = base.to_vec();
        ivs.push(add_at(point, pos, dir.to_vec(), s));
        metric_of(model, ids, metric, &ivs)
    };
    (at(step) - at(-step)) / (2.0 * f64::from(step))
}

fn unit(v: &[f32]) -> Vec<f32> {
    let n = dot(v, v).sqrt().max(1e-30) as f32;
    v.iter().map(|x| x / n).collect()
}

/// A fixed pseudo-random unit vector.
fn random_unit(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        })
        .collect();
    unit(&v)
}

/// Checks d metric / d site at `pos` against finite differences along the gradient and along
/// a random direction; returns the gradient's norm.
fn check_site(
    model: &LanguageModel,
    ids: &[u32],
    metric: &Metric,
    out: &GradOutput,
    name: &str,
    pos: usize,
    base: &[Intervention],
) -> f64 {
    let point = model.hooks().resolve(name).unwrap();
    let (_, g) = out.grads.iter().find(|(n, _)| n == name).unwrap();
    let (_, v) = out.values.iter().find(|(n, _)| n == name).unwrap();
    let g = row(g, pos);
    let scale = dot(&row(v, pos), &row(v, pos)).sqrt() / (row(v, pos).len() as f64).sqrt();
    let step = (1e-2 * scale.max(1e-2)) as f32;
    let norm = dot(&g, &g).sqrt();
    assert!(norm.is_finite(), "{name}: gradient not finite");
    for (k, dir) in [unit(&g), random_unit(g.len(), pos as u64 + 7)]
        .iter()
        .enumerate()
    {
        let probe = Probe { point, pos, dir };
        let fd = finite_difference(model, ids, metric, probe, step, base);
        let analytic = dot(&g, dir);
        let err = (fd - analytic).abs();
        assert!(
            err <= 2e-2 * norm + 1e-4,
            "{} {name}[{pos}] direction {k}: autograd {analytic}, finite difference {fd} (|g| = {norm})",
            model.config().architecture
        );
    }
    norm
}

#[test]
fn every_family_matches_finite_differences() {
    for family in FAMILIES {
        let model = tiny(family);
        let ids = prompt(&model);
        let last = model.config().n_layers - 1;
        let metric = Metric::Logprob {
            target: 42,
            position: None,
        };
        let names = [
            "hook_embed".to_string(),
            "blocks.0.hook_resid_pre".to_string(),
            "blocks.0.attn.hook_z".to_string(),
            "blocks.0.attn.hook_q".to_string(),
            "blocks.0.attn.hook_v".to_string(),
            "blocks.0.mlp.hook_post".to_string(),
            format!("blocks.{last}.hook_attn_out"),
            format!("blocks.{last}.hook_mlp_out"),
            format!("blocks.{last}.hook_resid_post"),
            "ln_final.hook_normalized".to_string(),
        ];
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let out = grads(&model, &ids, &metric, &refs, &[]);
        let fast = metric_of(&model, &ids, &metric, &[]);
        assert!(
            (f64::from(out.metric[0]) - fast).abs() <= 1e-4 * fast.abs().max(1.0),
            "{family}: gradient pass metric {} vs forward {fast}",
            out.metric[0]
        );
        for name in &refs {
            for pos in [0, 3, ids.len() - 1] {
                check_site(&model, &ids, &metric, &out, name, pos, &[]);
            }
        }
    }
}

#[test]
fn logit_diff_and_logits_dot_at_a_given_position() {
    let model = tiny("llama3");
    let ids = prompt(&model);
    let vocab = model.config().vocab_size;
    let weights: Vec<f32> = (0..vocab)
        .map(|i| ((i * 37) % 11) as f32 / 11.0 - 0.5)
        .collect();
    for metric in [
        Metric::LogitDiff {
            a: 5,
            b: 9,
            position: Some(4),
        },
        Metric::LogitsDot {
            weights,
            position: Some(2),
        },
    ] {
        let out = grads(&model, &ids, &metric, &["blocks.1.hook_resid_pre"], &[]);
        let norm = check_site(
            &model,
            &ids,
            &metric,
            &out,
            "blocks.1.hook_resid_pre",
            1,
            &[],
        );
        assert!(norm > 0.0);
        // Nothing after the metric's position can change it.
        let (_, g) = &out.grads[0];
        assert!(row(g, 5).iter().all(|&x| x == 0.0));
    }
}

#[test]
fn gradients_go_through_a_steered_and_a_patched_run() {
    let model = tiny("qwen3");
    let ids = prompt(&model);
    let d = model.config().d_model;
    let metric = Metric::Logprob {
        target: 42,
        position: None,
    };
    let steer = Intervention {
        point: model.hooks().resolve("blocks.1.hook_resid_pre").unwrap(),
        action: Action::Add {
            vector: random_unit(d, 3),
            scale: 4.0,
        },
        positions: None,
    };
    let zero = Intervention {
        point: model.hooks().resolve("blocks.1.hook_resid_pre").unwrap(),
        action: Action::Zero,
        positions: Some(Positions::Indices(vec![2])),
    };
    let ivs = vec![steer, zero];
    let names = ["blocks.0.hook_resid_post", "blocks.0.hook_resid_pre"];
    let out = grads(&model, &ids, &metric, &names, &ivs);
    let plain = grads(&model, &ids, &metric, &names, &[]);
    assert!(
        (out.metric[0] - plain.metric[0]).abs() > 1e-4,
        "the steering changes the metric"
    );
    for pos in [0, 4, ids.len() - 1] {
        check_site(
            &model,
            &ids,
            &metric,
            &out,
            "blocks.0.hook_resid_post",
            pos,
            &ivs,
        );
        check_site(
            &model,
            &ids,
            &metric,
            &out,
            "blocks.0.hook_resid_pre",
            pos,
            &ivs,
        );
    }
    // Position 2 is replaced downstream of blocks.0.hook_resid_post: no gradient reaches it.
    let (_, g) = &out.grads[0];
    assert!(row(g, 2).iter().all(|&x| x == 0.0));
    let (_, g) = &plain.grads[0];
    assert!(row(g, 2).iter().any(|&x| x != 0.0));
}

#[test]
fn bad_metric_positions_and_hook_functions_are_refused() {
    let model = tiny("llama3");
    let ids = prompt(&model);
    let beyond = Metric::Logprob {
        target: 1,
        position: Some(ids.len()),
    };
    let req = |metric: &Metric, ivs: &[Intervention]| {
        let metric = metric.clone();
        let ivs = ivs.to_vec();
        let points = vec![model.hooks().resolve("blocks.0.hook_resid_pre").unwrap()];
        model
            .gradients(
                GradRequest {
                    input: GradInput::Ids(vec![ids.clone()]),
                    metric: &metric,
                    points,
                    interventions: &ivs,
                    batch_size: 1,
                    with_values: false,
                },
                &Cancel::default(),
            )
            .err()
            .map(|e| e.to_string())
    };
    let msg = req(&beyond, &[]).expect("refused");
    assert!(msg.contains("beyond the prompt"), "{msg}");
    let ok = Metric::Logprob {
        target: 1,
        position: None,
    };
    let hook = Intervention {
        point: model.hooks().resolve("blocks.1.hook_resid_pre").unwrap(),
        action: Action::Custom(std::sync::Arc::new(|_, _| Ok(()))),
        positions: None,
    };
    let msg = req(&ok, &[hook]).expect("refused");
    assert!(msg.contains("no gradient"), "{msg}");
    let big = Metric::Logprob {
        target: 1 << 30,
        position: None,
    };
    assert!(req(&big, &[]).expect("refused").contains("out of range"));
}
