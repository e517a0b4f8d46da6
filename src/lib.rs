//! mindscope: run transformer language models on the CPU, capture every layer, and analyse
//! what the activations encode.
//!
//! - [`model`]: loading (GGUF, Hugging Face folders), tokenizers, the forward passes, generation.
//! - [`hooks`]: hook-point names, capture specs, the activation cache and interventions.
//! - [`analysis`]: probes, control tasks, projections, truth directions and metrics.
//! - [`plot`]: figures drawn with plotters (maps, heatmaps, per-layer curves).
//! - [`storage`]: activation dumps as Arrow IPC files, memory-mapped for reading.
//! - [`bindings`]: the Python module `mindscope._native`.

pub mod analysis;
pub mod bindings;
pub mod error;
pub mod hooks;
pub mod model;
pub mod plot;
pub mod storage;

pub use error::{MsError, Result};
