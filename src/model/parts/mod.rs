//! The pieces every family is built from, each a small struct with a `forward`: linear
//! layers, norms, rotary embeddings, attention (with its dense and packed kernels), MLPs,
//! blocks and embeddings. A family's file only decides which of them to load, from which
//! tensor names; the optional parts (biases, q/k norms, post-norms, learned positions) are
//! `Option`s here, not code paths.

pub mod attention;
pub mod block;
pub mod embedding;
pub mod linear;
pub mod mlp;
pub mod norm;
pub mod packed;
pub mod rope;
pub mod weight;

pub use attention::{causal_mask, padding_mask, Attention, Keys};
pub use block::Block;
pub use embedding::Embedding;
pub use linear::Linear;
pub use mlp::Mlp;
pub use norm::Norm;
pub use packed::{Prefix, Segment};
pub use rope::Rope;
pub use weight::Weight;
