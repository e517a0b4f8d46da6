//! CPU kernels under the model code: matrix products (a BLAS loaded at run time, or candle's
//! `gemm`), single-pass element-wise kernels, and running independent work one piece per core.
//! Nothing here knows about architectures or hooks.

pub mod activation;
pub mod blas;
pub mod composed;
pub mod decode_attention;
pub mod dense_attention;
pub mod fused;
pub mod matmul;
pub mod per_core;
pub mod qdot;
pub mod quantized;
#[cfg(test)]
mod test_support;
