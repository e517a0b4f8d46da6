//! What a transformer is, as data: sizes, which norm, how a block combines attention and MLP,
//! positional encodings, per-layer attention windows. A family's file (`families/`) reads it
//! from a file's metadata; the shared parts (`parts/`) compute whatever it says. Nothing in here
//! is guessed: a value the file does not give is either a documented default of its family or
//! an error.

use super::families::Family;

/// Which normalization the blocks and the final norm use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormKind {
    /// `x / sqrt(mean(x²) + eps) * w`
    Rms,
    /// `(x - mean) / sqrt(var + eps) * w + b`
    Layer,
}

/// How a block combines its attention and its MLP with the residual stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Residual {
    /// `mid = x + attn(norm(x)); out = mid + mlp(norm(mid))` (Llama, GPT-2, ...).
    Sequential,
    /// `out = x + attn(norm1(x)) + mlp(norm2(x))` (GPT-NeoX / Pythia): there is no residual
    /// stream between the two, so no `hook_resid_mid`.
    Parallel,
    /// `mid = norm1(x + attn(x)); out = norm2(mid + mlp(mid))` (BERT).
    PostNorm,
}

/// The MLP's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MlpKind {
    /// `down(act(gate(x)) * up(x))`
    Gated,
    /// `proj(act(fc(x)))`
    Plain,
}

/// The MLP non-linearities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x * sigmoid(x)` (SwiGLU).
    Silu,
    /// GELU with the tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    /// GELU with the exact error function (`gelu`).
    GeluErf,
    /// `max(x, 0)`
    Relu,
}

impl Activation {
    /// The name Hugging Face configs use for it.
    pub fn from_hf(name: &str) -> Option<Self> {
        Some(match name {
            "silu" | "swish" => Activation::Silu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" | "gelu_tanh" => Activation::GeluTanh,
            "gelu" => Activation::GeluErf,
            "relu" => Activation::Relu,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Activation::Silu => "silu",
            Activation::GeluTanh => "gelu_tanh",
            Activation::GeluErf => "gelu",
            Activation::Relu => "relu",
        }
    }
}

/// How RoPE frequencies are rescaled for longer contexts.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// All frequencies divided by `factor` (position interpolation).
    Linear {
        factor: f64,
    },
    /// Llama 3.x: low frequencies divided by `factor`, high ones kept, a smooth blend between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_context: f64,
    },
    /// Each frequency divided by its own factor (llama.cpp's `rope_freqs` tensor).
    Factors(Vec<f32>),
}

impl RopeScaling {
    /// Whether every factor is finite and positive (a zero or NaN factor divides frequencies
    /// into infinities or NaN).
    fn factors_are_positive(&self) -> bool {
        let ok = |x: f64| x.is_finite() && x > 0.0;
        match self {
            RopeScaling::None => true,
            RopeScaling::Linear { factor } => ok(*factor),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_context,
            } => [
                *factor,
                *low_freq_factor,
                *high_freq_factor,
                *original_context,
            ]
            .into_iter()
            .all(ok),
            RopeScaling::Factors(f) => f.iter().all(|&x| ok(f64::from(x))),
        }
    }
}

/// One kind of rotary position embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeSpec {
    pub theta: f64,
    /// Dimensions of each head that rotate (the first ones); the rest pass through.
    pub rotary_dim: usize,
    pub scaling: RopeScaling,
}

/// How a layer attends.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerAttention {
    /// Index into [`ModelConfig::ropes`] (`None`: no RoPE, e.g. learned positions).
    pub rope: Option<usize>,
    /// Keys this many positions or more behind a query are hidden (sliding window).
    pub window: Option<usize>,
    /// Multiplier of the query-key dot products.
    pub scale: f64,
}

/// Hyper-parameters and structure of a transformer.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// The file's own name for the architecture (`llama`, `gpt_neox`, `gemma3`, ...).
    pub architecture: String,
    pub family: Family,
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub d_head: usize,
    pub d_mlp: usize,
    pub vocab_size: usize,
    pub context_length: usize,
    /// Decoders attend causally and have an LM head; encoders attend both ways.
    pub causal: bool,
    pub norm: NormKind,
    pub norm_eps: f64,
    pub residual: Residual,
    pub mlp: MlpKind,
    pub activation: Activation,
    /// Learned absolute position embeddings (GPT-2, BERT) instead of RoPE.
    pub learned_positions: bool,
    /// The RoPE kinds the layers use (Gemma 3: one for global layers, one for sliding ones).
    pub ropes: Vec<RopeSpec>,
    pub layers: Vec<LayerAttention>,
    /// Token embeddings are multiplied by this (Gemma: sqrt(d_model)).
    pub embed_scale: Option<f64>,
    pub tie_embeddings: bool,
}

impl ModelConfig {
    /// The RoPE of a layer, if it has one.
    pub fn layer_rope(&self, layer: usize) -> Option<&RopeSpec> {
        self.layers[layer].rope.map(|k| &self.ropes[k])
    }

    /// Whether any layer uses a sliding window.
    pub fn sliding_window(&self) -> Option<usize> {
        self.layers.iter().find_map(|l| l.window)
    }

    /// Sanity checks every family's mapping must pass.
    pub fn validate(&self, origin: &str) -> crate::Result<()> {
        let bad = |why: String| {
            Err(crate::MsError::ModelFormat(format!(
                "{origin}: invalid model config: {why}"
            )))
        };
        if self.n_layers == 0
            || self.d_model == 0
            || self.n_heads == 0
            || self.d_head == 0
            || self.vocab_size == 0
            || self.d_mlp == 0
            || self.context_length == 0
        {
            return bad(format!(
                "a size is zero (layers {}, d_model {}, heads {}, d_head {}, vocab {}, d_mlp {}, \
                 context {})",
                self.n_layers,
                self.d_model,
                self.n_heads,
                self.d_head,
                self.vocab_size,
                self.d_mlp,
                self.context_length
            ));
        }
        // The weight shapes the loaders check are products of these sizes: a product that
        // overflows would wrap around (release builds) and could match a tensor by accident.
        let products = [
            ("heads x d_head", self.n_heads.checked_mul(self.d_head)),
            (
                "KV heads x d_head",
                self.n_kv_heads.checked_mul(self.d_head),
            ),
            ("vocab x d_model", self.vocab_size.checked_mul(self.d_model)),
            ("d_mlp x d_model", self.d_mlp.checked_mul(self.d_model)),
            ("2 x d_mlp", self.d_mlp.checked_mul(2)),
            (
                "(heads + 2 KV heads) x d_head",
                self.n_kv_heads
                    .checked_mul(2)
                    .and_then(|k| k.checked_add(self.n_heads))
                    .and_then(|h| h.checked_mul(self.d_head)),
            ),
        ];
        if let Some((what, _)) = products.iter().find(|(_, p)| p.is_none()) {
            return bad(format!(
                "{what} overflows (d_model {}, heads {}, KV heads {}, d_head {}, vocab {}, \
                 d_mlp {}); no file can hold tensors that large",
                self.d_model,
                self.n_heads,
                self.n_kv_heads,
                self.d_head,
                self.vocab_size,
                self.d_mlp
            ));
        }
        if !(self.norm_eps.is_finite() && self.norm_eps >= 0.0) {
            return bad(format!(
                "norm epsilon {} (must be a finite number >= 0)",
                self.norm_eps
            ));
        }
        if let Some(s) = self.embed_scale.filter(|s| !s.is_finite()) {
            return bad(format!("embedding scale {s} (must be finite)"));
        }
        if self.n_kv_heads == 0 || !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!(
                "{} heads is not a multiple of {} KV heads",
                self.n_heads, self.n_kv_heads
            ));
        }
        if self.layers.len() != self.n_layers {
            return bad(format!(
                "{} layer descriptions for {} layers",
                self.layers.len(),
                self.n_layers
            ));
        }
        for rope in &self.ropes {
            if rope.rotary_dim == 0
                || !rope.rotary_dim.is_multiple_of(2)
                || rope.rotary_dim > self.d_head
            {
                return bad(format!(
                    "{} rotary dimensions for heads of {} (must be even, 2 to d_head)",
                    rope.rotary_dim, self.d_head
                ));
            }
            if !(rope.theta.is_finite() && rope.theta > 1.0) {
                return bad(format!("RoPE base {}", rope.theta));
            }
            if !rope.scaling.factors_are_positive() {
                return bad(format!(
                    "RoPE scaling {:?} (every factor must be a finite number > 0)",
                    rope.scaling
                ));
            }
        }
        if let Some(l) = self
            .layers
            .iter()
            .find(|l| l.rope.is_some_and(|k| k >= self.ropes.len()) || l.window == Some(0))
        {
            return bad(format!("layer attention {l:?}"));
        }
        // 1 / sqrt(query_pre_attn_scalar) and the like: a zero, negative or NaN scalar gives
        // infinite or NaN attention scores.
        if let Some(l) = self
            .layers
            .iter()
            .find(|l| !(l.scale.is_finite() && l.scale > 0.0))
        {
            return bad(format!(
                "attention scale {} (from the config's head size or query_pre_attn_scalar); \
                 it must be a finite number > 0",
                l.scale
            ));
        }
        Ok(())
    }
}
