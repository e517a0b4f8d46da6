//! Memory a run will need, estimated before it starts, so that a capture that cannot fit fails
//! at once with advice instead of growing until the operating system kills the process.
//!
//! A run holds its returned arrays (filled in place as chunks finish, see `run.rs`) plus the
//! working set of the chunks being computed; both are estimated here from the model's sizes.

use super::ModelConfig;
use crate::error::{MsError, Result};
use crate::hooks::{CaptureSpec, HookKind, LogitsMode, Positions};

const F32: usize = std::mem::size_of::<f32>();

/// What a run will hold at its peak, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunFootprint {
    /// The captured arrays and logits handed back to the caller.
    pub returned: usize,
    /// The activations of the chunks computed at the same time.
    pub working_set: usize,
}

impl RunFootprint {
    /// `n` prompts padded to `t_max` tokens, `workers` chunks of `chunk` prompts at a time
    /// (each `width` tokens wide at most).
    pub fn estimate(
        cfg: &ModelConfig,
        spec: &CaptureSpec,
        n: usize,
        t_max: usize,
        chunk: usize,
        workers: usize,
    ) -> Self {
        let kept_positions = match &spec.positions {
            Positions::All => t_max,
            Positions::Indices(ix) => ix.len(),
            Positions::Last | Positions::PerPrompt(_) => 1,
        };
        let per_prompt: usize = spec
            .points
            .iter()
            .map(|p| kept_positions * features(cfg, p.kind, t_max))
            .sum::<usize>()
            + match spec.logits {
                LogitsMode::None => 0,
                LogitsMode::Last => cfg.vocab_size,
                LogitsMode::All => t_max * cfg.vocab_size,
            };
        // One chunk in flight: the residual stream and a block's intermediates (q/k/v, the
        // MLP's hidden layer, one layer's attention scores), and its own copy of what it
        // captures before that is moved into the returned arrays.
        let rows = chunk.min(n) * t_max;
        let block = rows
            * (6 * cfg.d_model
                + 3 * cfg.d_mlp
                + (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.d_head
                + 2 * cfg.n_heads * t_max);
        let chunk_bytes = (block + chunk.min(n) * per_prompt) * F32;
        RunFootprint {
            returned: n.saturating_mul(per_prompt).saturating_mul(F32),
            working_set: workers.max(1).saturating_mul(chunk_bytes),
        }
    }

    pub fn total(&self) -> usize {
        self.returned.saturating_add(self.working_set)
    }

    /// `Err(ResourceError)` when the run would not fit in the memory available now.
    pub fn check_fits(&self) -> Result<()> {
        let Some(available) = available_memory() else {
            return Ok(()); // not measurable here: run and let the allocator decide
        };
        if self.total() <= available {
            return Ok(());
        }
        Err(MsError::Resource(format!(
            "this capture needs about {} (returned arrays {} + working set {}), but only {} of \
             memory is available. Ask for less: positions=\"last\" (or a few indices) instead \
             of every position, fewer hooks (names=\"blocks.*.hook_resid_post\"), fewer prompts \
             per call or a smaller batch_size, or stream to disk with model.dump(...)",
            gib(self.total()),
            gib(self.returned),
            gib(self.working_set),
            gib(available)
        )))
    }
}

/// Values per position that a hook of `kind` holds (attention patterns: one row of keys per
/// head, `t_max` wide).
fn features(cfg: &ModelConfig, kind: HookKind, t_max: usize) -> usize {
    match kind {
        HookKind::AttnQ | HookKind::AttnZ => cfg.n_heads * cfg.d_head,
        HookKind::AttnK | HookKind::AttnV => cfg.n_kv_heads * cfg.d_head,
        HookKind::AttnPattern => cfg.n_heads * t_max,
        HookKind::MlpPost => cfg.d_mlp,
        HookKind::Embed
        | HookKind::PosEmbed
        | HookKind::ResidPre
        | HookKind::AttnOut
        | HookKind::ResidMid
        | HookKind::MlpOut
        | HookKind::ResidPost
        | HookKind::LnFinal => cfg.d_model,
    }
}

fn gib(bytes: usize) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Bytes this process can still allocate: the kernel's `MemAvailable`, lowered by a cgroup
/// (container) limit when one is set. `None` where neither can be read.
pub fn available_memory() -> Option<usize> {
    if let Ok(v) = std::env::var("MINDSCOPE_MEMORY_LIMIT") {
        // A test hook and a way for users to keep a run inside a budget of their own.
        return v.trim().parse().ok();
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let available = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<usize>()
                .ok()
        })
        .map(|kb| kb * 1024)?;
    Some(cgroup_headroom().map_or(available, |h| h.min(available)))
}

/// `memory.max - memory.current` of this process's cgroup (v2), when it has a limit.
fn cgroup_headroom() -> Option<usize> {
    let read = |f: &str| std::fs::read_to_string(format!("/sys/fs/cgroup/{f}")).ok();
    let max = read("memory.max")?.trim().parse::<usize>().ok()?; // "max" = no limit
    let current = read("memory.current")?.trim().parse::<usize>().ok()?;
    Some(max.saturating_sub(current))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_is_read_on_linux() {
        if cfg!(target_os = "linux") && std::env::var("MINDSCOPE_MEMORY_LIMIT").is_err() {
            assert!(available_memory().is_some_and(|b| b > 0));
        }
    }
}
