//! Hook points: the named places in a forward pass where activations can be read or changed.
//!
//! Names follow TransformerLens (`blocks.{i}.hook_resid_post`, `blocks.{i}.attn.hook_pattern`, ...)
//! so researchers recognise them. Internally a hook point is a small `(layer, kind)` pair and
//! the forward pass asks a [`HookSet`] bitset whether anything is registered there, so a capture
//! of nothing costs one branch per site.

mod cache;
mod context;
mod intervention;
mod names;
mod spec;

pub use cache::{ActivationCache, CapturedArray};
pub use context::HookContext;
pub use intervention::{Action, HookFn, Intervention};
pub use names::{glob_match, is_glob, suggest_names};
pub use spec::{CaptureSpec, LogitsMode, Positions};

use crate::error::{MsError, Result};

/// What a hook point reads. The layout of each kind is documented on its `shape_doc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HookKind {
    Embed,
    PosEmbed,
    ResidPre,
    AttnQ,
    AttnK,
    AttnV,
    AttnPattern,
    AttnZ,
    AttnOut,
    ResidMid,
    MlpPost,
    MlpOut,
    ResidPost,
    LnFinal,
}

impl HookKind {
    /// Kinds that exist once per block, in forward order.
    pub const PER_BLOCK: [HookKind; 11] = [
        HookKind::ResidPre,
        HookKind::AttnQ,
        HookKind::AttnK,
        HookKind::AttnV,
        HookKind::AttnPattern,
        HookKind::AttnZ,
        HookKind::AttnOut,
        HookKind::ResidMid,
        HookKind::MlpPost,
        HookKind::MlpOut,
        HookKind::ResidPost,
    ];

    fn suffix(self) -> &'static str {
        match self {
            HookKind::Embed => "hook_embed",
            HookKind::PosEmbed => "hook_pos_embed",
            HookKind::ResidPre => "hook_resid_pre",
            HookKind::AttnQ => "attn.hook_q",
            HookKind::AttnK => "attn.hook_k",
            HookKind::AttnV => "attn.hook_v",
            HookKind::AttnPattern => "attn.hook_pattern",
            HookKind::AttnZ => "attn.hook_z",
            HookKind::AttnOut => "hook_attn_out",
            HookKind::ResidMid => "hook_resid_mid",
            HookKind::MlpPost => "mlp.hook_post",
            HookKind::MlpOut => "hook_mlp_out",
            HookKind::ResidPost => "hook_resid_post",
            HookKind::LnFinal => "ln_final.hook_normalized",
        }
    }

    /// The axes of the activation at this kind of hook (for all positions).
    pub fn shape_doc(self) -> &'static str {
        match self {
            HookKind::AttnQ | HookKind::AttnK | HookKind::AttnV | HookKind::AttnZ => {
                "[batch, pos, head, d_head]"
            }
            HookKind::AttnPattern => "[batch, head, q_pos, k_pos]",
            HookKind::MlpPost => "[batch, pos, d_mlp]",
            _ => "[batch, pos, d_model]",
        }
    }

    /// Which axis holds the position for this kind (the query position for patterns).
    pub fn pos_axis(self) -> usize {
        match self {
            HookKind::AttnPattern => 2,
            _ => 1,
        }
    }
}

/// One hook site of a model: a kind, and the block it belongs to (none for embed / ln_final).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HookPoint {
    pub layer: Option<usize>,
    pub kind: HookKind,
}

impl HookPoint {
    pub fn block(layer: usize, kind: HookKind) -> Self {
        HookPoint {
            layer: Some(layer),
            kind,
        }
    }
    pub fn global(kind: HookKind) -> Self {
        HookPoint { layer: None, kind }
    }

    pub fn name(&self) -> String {
        match self.layer {
            Some(i) => format!("blocks.{i}.{}", self.kind.suffix()),
            None => self.kind.suffix().to_string(),
        }
    }
}

/// The hook points of one model, in forward order, with a dense index for fast lookups.
#[derive(Debug, Clone)]
pub struct HookRegistry {
    points: Vec<HookPoint>,
    names: Vec<String>,
    n_layers: usize,
    /// The model-wide points before the blocks (`hook_embed`, `hook_pos_embed`).
    n_before: usize,
    block_kinds: Vec<HookKind>,
}

impl HookRegistry {
    /// A registry for a model with `n_layers` blocks having the given per-block kinds, learned
    /// position embeddings (`hook_pos_embed`) if `pos_embed`, and a final norm
    /// (`ln_final.hook_normalized`) if `final_norm`.
    pub fn new(
        n_layers: usize,
        block_kinds: &[HookKind],
        pos_embed: bool,
        final_norm: bool,
    ) -> Self {
        let mut points = vec![HookPoint::global(HookKind::Embed)];
        if pos_embed {
            points.push(HookPoint::global(HookKind::PosEmbed));
        }
        let n_before = points.len();
        for layer in 0..n_layers {
            for &kind in block_kinds {
                points.push(HookPoint::block(layer, kind));
            }
        }
        if final_norm {
            points.push(HookPoint::global(HookKind::LnFinal));
        }
        let names = points.iter().map(HookPoint::name).collect();
        HookRegistry {
            points,
            names,
            n_layers,
            n_before,
            block_kinds: block_kinds.to_vec(),
        }
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn points(&self) -> &[HookPoint] {
        &self.points
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Dense index of a point, used by [`HookSet`].
    pub fn index(&self, point: HookPoint) -> Option<usize> {
        match point.layer {
            None => match point.kind {
                HookKind::LnFinal if self.points.last()?.kind == HookKind::LnFinal => {
                    Some(self.points.len() - 1)
                }
                kind => self.points[..self.n_before]
                    .iter()
                    .position(|p| p.kind == kind),
            },
            Some(layer) if layer < self.n_layers => {
                let k = self.block_kinds.iter().position(|&k| k == point.kind)?;
                Some(self.n_before + layer * self.block_kinds.len() + k)
            }
            Some(_) => None,
        }
    }

    /// Look a name up; an unknown name is an error listing the closest valid names.
    pub fn resolve(&self, name: &str) -> Result<HookPoint> {
        match self.names.iter().position(|n| n == name) {
            Some(i) => Ok(self.points[i]),
            None => Err(MsError::UnknownHook(format!(
                "unknown hook name '{name}'; closest valid names: {}. \
                 `model.hook_names()` lists all {} of them",
                suggest_names(name, &self.names, 5).join(", "),
                self.names.len()
            ))),
        }
    }

    /// Every point whose name matches a glob ([`glob_match`]'s syntax). A pattern without
    /// wildcards must name an existing hook.
    pub fn resolve_pattern(&self, pattern: &str) -> Result<Vec<HookPoint>> {
        if !is_glob(pattern) {
            return Ok(vec![self.resolve(pattern)?]);
        }
        let found: Vec<HookPoint> = self
            .names
            .iter()
            .zip(&self.points)
            .filter(|(n, _)| glob_match(pattern, n))
            .map(|(_, p)| *p)
            .collect();
        if found.is_empty() {
            return Err(MsError::UnknownHook(format!(
                "the pattern '{pattern}' matches no hook name; closest valid names: {}",
                suggest_names(pattern, &self.names, 5).join(", ")
            )));
        }
        Ok(found)
    }

    /// An empty set sized for this registry.
    pub fn empty_set(&self) -> HookSet {
        HookSet {
            bits: vec![false; self.points.len()],
        }
    }

    pub fn n_layers(&self) -> usize {
        self.n_layers
    }
}

/// Membership of hook points, as a dense bitset over a registry's indices.
#[derive(Debug, Clone)]
pub struct HookSet {
    bits: Vec<bool>,
}

impl HookSet {
    pub fn insert(&mut self, index: usize) {
        self.bits[index] = true;
    }
    pub fn contains(&self, index: usize) -> bool {
        self.bits.get(index).copied().unwrap_or(false)
    }
    pub fn is_empty(&self) -> bool {
        !self.bits.iter().any(|&b| b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> HookRegistry {
        HookRegistry::new(3, &HookKind::PER_BLOCK, false, true)
    }

    #[test]
    fn names_follow_transformer_lens() {
        let r = registry();
        assert_eq!(r.names()[0], "hook_embed");
        assert!(r.names().contains(&"blocks.2.hook_resid_post".to_string()));
        assert!(r
            .names()
            .contains(&"blocks.0.attn.hook_pattern".to_string()));
        assert_eq!(r.names().last().unwrap(), "ln_final.hook_normalized");
        assert_eq!(r.len(), 2 + 3 * HookKind::PER_BLOCK.len());
    }

    #[test]
    fn index_is_consistent_with_order() {
        let r = registry();
        for (i, p) in r.points().iter().enumerate() {
            assert_eq!(r.index(*p), Some(i));
        }
        assert_eq!(r.index(HookPoint::block(3, HookKind::ResidPost)), None);
    }

    #[test]
    fn unknown_name_suggests_close_ones() {
        let err = registry().resolve("blocks.1.hook_resid_pots").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("blocks.1.hook_resid_post"), "{msg}");
    }

    #[test]
    fn glob_selects_every_layer() {
        let pts = registry()
            .resolve_pattern("blocks.*.hook_resid_post")
            .unwrap();
        assert_eq!(pts.len(), 3);
        assert!(registry().resolve_pattern("blocks.*.nothing").is_err());
    }
}
