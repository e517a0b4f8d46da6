//! mindscope: run transformer language models on the CPU, capture every layer, and analyse
//! what the activations encode.
//!
//! - [`formats`]: the files models come in (GGUF, safetensors, config.json, tokenizers).
//! - [`kernels`]: CPU kernels (matrix products, fused element-wise passes, per-core work).
//! - [`model`]: architecture families, their shared parts, the forward pass, generation.
//! - [`hooks`]: hook-point names, capture specs, the activation cache and interventions.
//! - [`analysis`]: probes, control tasks, projections, truth directions and metrics.
//! - [`plot`]: figures drawn with plotters (maps, heatmaps, per-layer curves).
//! - [`storage`]: activation dumps as Arrow IPC files, memory-mapped for reading.
//! - [`bindings`]: the Python module `mindscope._native`.

pub mod analysis;
pub mod bindings;
pub mod error;
pub mod formats;
pub mod hooks;
pub mod interrupt;
pub mod kernels;
pub mod model;
pub mod plot;
pub mod progress;
pub mod storage;

pub use error::{MsError, Result};
