//! Python bindings of the model runtime: `mindscope._native.Model`.

use std::path::PathBuf;
use std::sync::Arc;

use numpy::{PyArrayDyn, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::convert::array_to_py;
use super::patching::patching_args;
use super::requests::{
    ablation_args, embed_args, generate_args, gradient_args, run_args, token_ids,
};
use super::{
    calls_python, guarded, interruptible, interruptible_reporting, keeping_python_thread,
    to_py_err, IntoPyResult,
};
use crate::error::{MsError, Result};
use crate::hooks::CapturedArray;
use crate::interrupt::Cancel;
use crate::model::config::Residual;
use crate::model::grad::{GradInput, GradRequest};
use crate::model::{
    AblationJob, LanguageModel, PackLimits, PatchJob, WeightsMode, SUPPORTED_ARCHITECTURES,
    SUPPORTED_MODEL_TYPES,
};

/// Token ids and character spans of one text.
type TokensWithOffsets = (Vec<u32>, Vec<(usize, usize)>);

/// Named arrays handed to Python.
type NamedArrays<'py> = Vec<(String, Bound<'py, PyArrayDyn<f32>>)>;

/// What `Model.gradients` returns: metric per prompt, gradients and activations by name,
/// token ids.
type GradientResult<'py> = (Vec<f32>, NamedArrays<'py>, NamedArrays<'py>, Vec<Vec<u32>>);

/// What `Model.run` returns: logits, captured arrays by name, token ids.
type RunResult<'py> = (
    Option<Bound<'py, PyArrayDyn<f32>>>,
    Vec<(String, Bound<'py, PyArrayDyn<f32>>)>,
    Vec<Vec<u32>>,
);

/// A model loaded in the Rust core. Use `mindscope.load_model`, which wraps this.
#[pyclass(frozen, module = "mindscope._native")]
pub struct Model {
    inner: Arc<LanguageModel>,
}

#[pymethods]
impl Model {
    /// Load a GGUF model file or a Hugging Face model folder; `weights` is "quantized",
    /// "float32" or None (quantized when the file has quantized matrices); `progress(done,
    /// total)` counts the tensors read.
    #[staticmethod]
    #[pyo3(signature = (path, weights=None, progress=None))]
    fn load(
        py: Python<'_>,
        path: PathBuf,
        weights: Option<&str>,
        progress: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let mode = weights_mode(weights).py_err()?;
        let model = interruptible_reporting(py, &Cancel::new(), progress, |cancel| {
            LanguageModel::load_with(&path, mode, cancel)
        })?;
        Ok(Model {
            inner: Arc::new(model),
        })
    }

    /// Load a GGUF file stored as consecutive parts (read as their concatenation).
    #[staticmethod]
    #[pyo3(signature = (parts, weights=None, progress=None))]
    fn load_gguf_parts(
        py: Python<'_>,
        parts: Vec<PathBuf>,
        weights: Option<&str>,
        progress: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let mode = weights_mode(weights).py_err()?;
        let model = interruptible_reporting(py, &Cancel::new(), progress, |cancel| {
            LanguageModel::load_gguf_with(&parts, mode, cancel)
        })?;
        Ok(Model {
            inner: Arc::new(model),
        })
    }

    /// Whether the model is an encoder (no next-token head: no logits, no generation).
    #[getter]
    fn is_encoder(&self) -> bool {
        self.inner.is_encoder()
    }

    /// Sentence embeddings `[n, d_model]` of an encoder (mean pooling, L2-normalised).
    /// `request`: `{"prompts", "batch_size"}`; `progress(done, total)` counts prompts.
    #[pyo3(signature = (request, progress=None))]
    fn embed<'py>(
        &self,
        py: Python<'py>,
        request: &Bound<'py, PyAny>,
        progress: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        guarded(|| {
            let model = &self.inner;
            let (prompts, batch_size) = embed_args(request).py_err()?;
            let out = interruptible_reporting(py, &Cancel::new(), progress, |cancel| {
                model.embed(&prompts.tokens(model)?, batch_size, cancel)
            })?;
            array_to_py(py, out)
        })
    }

    #[getter]
    fn name(&self) -> String {
        self.inner.name.clone()
    }

    #[getter]
    fn source(&self) -> String {
        self.inner.source.clone()
    }

    /// Architecture hyper-parameters as a dict.
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.inner.config();
        let d = PyDict::new(py);
        d.set_item("architecture", &c.architecture)?;
        d.set_item("family", c.family.name())?;
        d.set_item("is_encoder", self.inner.is_encoder())?;
        d.set_item("activation", c.activation.name())?;
        d.set_item("norm", format!("{:?}", c.norm).to_lowercase())?;
        d.set_item(
            "residual",
            match c.residual {
                Residual::Sequential => "sequential",
                Residual::Parallel => "parallel",
                Residual::PostNorm => "post_norm",
            },
        )?;
        d.set_item("mlp", format!("{:?}", c.mlp).to_lowercase())?;
        d.set_item(
            "positions",
            if c.learned_positions {
                "learned"
            } else {
                "rope"
            },
        )?;
        let rope = |k: usize| c.ropes.get(k);
        d.set_item("rope_theta", rope(0).map(|r| r.theta))?;
        d.set_item("rope_local_theta", rope(1).or(rope(0)).map(|r| r.theta))?;
        d.set_item("rotary_dim", rope(0).map(|r| r.rotary_dim))?;
        d.set_item("rope_scaling", rope(0).map(|r| format!("{:?}", r.scaling)))?;
        d.set_item("sliding_window", c.sliding_window())?;
        d.set_item(
            "sliding_layers",
            c.layers
                .iter()
                .map(|l| l.window.is_some())
                .collect::<Vec<_>>(),
        )?;
        d.set_item("attn_scale", c.layers[0].scale)?;
        d.set_item("n_layers", c.n_layers)?;
        d.set_item("d_model", c.d_model)?;
        d.set_item("n_heads", c.n_heads)?;
        d.set_item("n_kv_heads", c.n_kv_heads)?;
        d.set_item("d_head", c.d_head)?;
        d.set_item("d_mlp", c.d_mlp)?;
        d.set_item("vocab_size", c.vocab_size)?;
        d.set_item("context_length", c.context_length)?;
        d.set_item("norm_eps", c.norm_eps)?;
        d.set_item("tie_embeddings", c.tie_embeddings)?;
        d.set_item("bos_token_id", self.inner.tokenizer.bos_id)?;
        d.set_item("eos_token_id", self.inner.tokenizer.eos_id)?;
        d.set_item("pad_token_id", self.inner.tokenizer.pad_id)?;
        d.set_item("add_bos", self.inner.tokenizer.add_bos)?;
        Ok(d)
    }

    /// Bytes of the weights held in memory (a tied head counted once).
    fn weight_bytes(&self) -> usize {
        self.inner.net.weight_bytes()
    }

    /// How the weights are held: "quantized" when any matrix is kept in a quantized block
    /// type, else "float32".
    #[getter]
    fn weights(&self) -> &'static str {
        match self.inner.net.matrices().iter().any(|w| w.is_quantized()) {
            true => "quantized",
            false => "float32",
        }
    }

    /// Weight matrices per type held ("f32", "q4_k", ...): `[(type, count)]`.
    fn matrix_types(&self) -> Vec<(&'static str, usize)> {
        self.inner.net.matrix_types()
    }

    fn hook_names(&self) -> Vec<String> {
        self.inner.hooks().names().to_vec()
    }

    /// Token ids and character spans `(start, end)` of one text.
    fn tokenize(&self, text: &Bound<'_, PyAny>) -> PyResult<TokensWithOffsets> {
        guarded(|| {
            let text = super::requests::text(text, "text").py_err()?;
            let enc = self.inner.tokenizer.encode(&text).py_err()?;
            Ok((enc.ids, enc.offsets))
        })
    }

    fn decode(&self, ids: &Bound<'_, PyAny>) -> PyResult<String> {
        guarded(|| {
            let ids = token_ids(ids, "ids").py_err()?;
            self.inner.tokenizer.decode(&ids).py_err()
        })
    }

    /// The text of each token on its own (`" capital"`).
    fn token_texts(&self, ids: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
        guarded(|| {
            let ids = token_ids(ids, "ids").py_err()?;
            ids.iter()
                .map(|&i| self.inner.tokenizer.token_text(i))
                .collect::<Result<_>>()
                .py_err()
        })
    }

    /// The id of a vocabulary entry (`"Ġcapital"`), if it exists.
    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.tokenizer.token_to_id(token)
    }

    /// Hook names matching patterns (names or globs, one matcher for every call), in forward
    /// order; an unknown name or a pattern that matches nothing is an `UnknownHookError`.
    fn resolve_hooks(&self, patterns: Vec<String>) -> PyResult<Vec<String>> {
        guarded(|| {
            let registry = self.inner.hooks();
            let mut points = Vec::new();
            for p in &patterns {
                points.extend(registry.resolve_pattern(p).py_err()?);
            }
            points.sort_by_key(|p| registry.index(*p));
            points.dedup();
            Ok(points.iter().map(|p| p.name()).collect())
        })
    }

    /// Run prompts; returns `(logits, [(name, array)], token ids)`. `request`: `{"prompts",
    /// "names", "positions", "stop_at_layer", "logits", "interventions", "batch_size"}`, read
    /// and validated in `bindings/requests.rs`. `progress(done, total)` counts prompts.
    #[pyo3(signature = (request, progress=None))]
    fn run<'py>(
        &self,
        py: Python<'py>,
        request: &Bound<'py, PyAny>,
        progress: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<RunResult<'py>> {
        guarded(|| {
            let model = &self.inner;
            let args = run_args(request, model).py_err()?;
            let python_hooks = calls_python(&args.interventions);
            let out = interruptible_reporting(py, &Cancel::new(), progress, |cancel| {
                let tokens = args.prompts.tokens(model)?;
                keeping_python_thread(python_hooks, || {
                    model.run_ids(
                        tokens,
                        &args.spec,
                        &args.interventions,
                        args.batch_size,
                        cancel,
                    )
                })
            })?;
            let logits = out.logits.map(|l| array_to_py(py, l)).transpose()?;
            let cache = out
                .cache
                .into_entries()
                .into_iter()
                .map(|(n, a)| Ok((n, array_to_py(py, a)?)))
                .collect::<PyResult<Vec<_>>>()?;
            Ok((logits, cache, out.tokens))
        })
    }

    /// d metric / d activation at hook sites; returns `(metric per prompt, [(name, grad)],
    /// [(name, activation)] (when `return_activations`), token ids)`. `request`: `{"prompts"
    /// | "embeddings", "metric" (JSON), "names", "interventions", "batch_size",
    /// "return_activations"}`, read in `bindings/requests.rs`.
    #[pyo3(signature = (request, progress=None))]
    fn gradients<'py>(
        &self,
        py: Python<'py>,
        request: &Bound<'py, PyAny>,
        progress: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<GradientResult<'py>> {
        guarded(|| {
            let model = &self.inner;
            let args = gradient_args(request, model).py_err()?;
            let out = interruptible_reporting(py, &Cancel::new(), progress, |cancel| {
                let input = match (args.prompts, args.embeddings) {
                    (Some(p), _) => GradInput::Ids(p.tokens(model)?),
                    (None, Some(e)) => GradInput::Embeddings(e),
                    (None, None) => return Err(MsError::invalid("gradients: no input")),
                };
                model.gradients(
                    GradRequest {
                        input,
                        metric: &args.metric,
                        points: args.points,
                        interventions: &args.interventions,
                        batch_size: args.batch_size,
                        with_values: args.return_activations,
                    },
                    cancel,
                )
            })?;
            let named = |v: Vec<(String, CapturedArray)>| {
                v.into_iter()
                    .map(|(n, a)| Ok((n, array_to_py(py, a)?)))
                    .collect::<PyResult<Vec<_>>>()
            };
            Ok((
                out.metric,
                named(out.grads)?,
                named(out.values)?,
                out.tokens,
            ))
        })
    }

    /// Continue a prompt; returns a dict with text, token_ids, logprobs and prompt_ids.
    /// `request`: `{"prompt", "max_new_tokens", "temperature", "top_k", "top_p", "seed",
    /// "stop_at_eos", "interventions"}`.
    fn generate<'py>(
        &self,
        py: Python<'py>,
        request: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        guarded(|| {
            let model = &self.inner;
            let args = generate_args(request, model).py_err()?;
            let python_hooks = calls_python(&args.interventions);
            let g = interruptible(py, |cancel| {
                keeping_python_thread(python_hooks, || {
                    model.generate(
                        &args.prompt,
                        &args.params,
                        &args.interventions,
                        args.capture.as_ref(),
                        cancel,
                    )
                })
            })?;
            let d = PyDict::new(py);
            d.set_item("text", g.text)?;
            d.set_item("token_ids", g.token_ids)?;
            d.set_item("logprobs", g.logprobs)?;
            d.set_item("prompt_ids", g.prompt_ids)?;
            let cache = PyDict::new(py);
            for (name, array) in g.cache {
                cache.set_item(name, array_to_py(py, array)?)?;
            }
            d.set_item("cache", cache)?;
            Ok(d)
        })
    }

    /// Log-probability of `target_ids` after `prompt_ids`, clean and with each token span
    /// ablated. `request`: `{"prompt_ids", "target_ids", "spans", "ablation"` ("delete",
    /// "replace" (with `"replace_id"`), "zero", "mean"), `"batch_size", "rows_per_batch",
    /// "naive"}`; `naive` runs one full forward per variant instead of sharing the clean prefix.
    /// `progress(done, total)` counts scored sequences (the clean one and each variant).
    #[pyo3(signature = (request, progress=None))]
    fn ablation_scores(
        &self,
        py: Python<'_>,
        request: &Bound<'_, PyAny>,
        progress: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<(f64, Vec<f64>)> {
        guarded(|| {
            let a = ablation_args(request).py_err()?;
            let model = &self.inner;
            let job = AblationJob {
                prompt: &a.prompt,
                target: &a.target,
                spans: &a.spans,
                ablation: a.ablation,
            };
            let limits = PackLimits {
                variants: a.batch_size,
                rows: a.rows_per_batch,
            };
            let scores = interruptible_reporting(py, &Cancel::new(), progress, |cancel| {
                if a.naive {
                    model.ablation_scores_naive(&job, cancel)
                } else {
                    model.ablation_scores(&job, limits, cancel)
                }
            })?;
            Ok((scores.clean, scores.ablated))
        })
    }

    /// The corrupt prompt's metric with activations patched in from the clean prompt, one
    /// patch at a time. `request_json`: see `bindings::patching::PatchingRequest`. Returns
    /// `{"clean": float, "corrupt": float, "scores": {site: [layer, position | head]}}`.
    #[pyo3(signature = (request_json, progress=None))]
    fn activation_patching<'py>(
        &self,
        py: Python<'py>,
        request_json: &str,
        progress: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        guarded(|| {
            let args = patching_args(request_json).py_err()?;
            let r = &args.request;
            let job = PatchJob {
                clean: &r.clean_ids,
                corrupt: &r.corrupt_ids,
                metric: &r.metric,
                sites: &args.sites,
                pack_rows: r.rows_per_batch,
            };
            let model = &self.inner;
            let out = interruptible_reporting(py, &Cancel::new(), progress, |cancel| {
                if r.naive {
                    model.activation_patching_naive(&job, cancel)
                } else {
                    model.activation_patching(&job, cancel)
                }
            })?;
            let d = PyDict::new(py);
            d.set_item("clean", out.clean)?;
            d.set_item("corrupt", out.corrupt)?;
            let scores = PyDict::new(py);
            for g in out.grids {
                let a = CapturedArray::new(g.shape.to_vec(), g.values);
                scores.set_item(g.site.name(), array_to_py(py, a)?)?;
            }
            d.set_item("scores", scores)?;
            Ok(d)
        })
    }

    /// Final norm + unembedding of residual vectors `[n, d_model]` -> logits `[n, vocab]`.
    fn unembed<'py>(
        &self,
        py: Python<'py>,
        resid: PyReadonlyArray2<'py, f32>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        guarded(|| {
            let d = self.inner.config().d_model;
            let shape = resid.shape().to_vec();
            if shape[1] != d {
                return Err(to_py_err(MsError::shape(format!(
                    "unembed: residual vectors have {} features, the model's d_model is {d}",
                    shape[1]
                ))));
            }
            let data: Vec<f32> = resid.as_array().iter().copied().collect();
            let model = &self.inner;
            let out = py
                .detach(|| -> Result<CapturedArray> {
                    let t = candle_core::Tensor::from_vec(
                        data,
                        (shape[0], d),
                        &candle_core::Device::Cpu,
                    )?;
                    let l = model.decoder("unembed")?.unembed(&t)?;
                    Ok(CapturedArray::new(
                        l.dims().to_vec(),
                        l.flatten_all()?.to_vec1()?,
                    ))
                })
                .py_err()?;
            array_to_py(py, out)
        })
    }

    /// The token embedding matrix `[vocab, d_model]` (a copy).
    fn embedding_matrix<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        guarded(|| {
            let a = (|| -> Result<CapturedArray> {
                let e = self.inner.embedding().dense()?;
                Ok(CapturedArray::new(
                    e.dims().to_vec(),
                    e.flatten_all()?.to_vec1()?,
                ))
            })()
            .py_err()?;
            array_to_py(py, a)
        })
    }
}

/// The `weights=` argument of a load.
fn weights_mode(weights: Option<&str>) -> Result<Option<WeightsMode>> {
    match weights {
        None => Ok(None),
        Some("quantized") => Ok(Some(WeightsMode::Quantized)),
        Some("float32") => Ok(Some(WeightsMode::Float32)),
        Some(other) => Err(MsError::invalid(format!(
            "weights={other:?} is not a weights mode; use \"quantized\" (GGUF blocks as \
             stored), \"float32\" (every weight converted to float32) or None (quantized when \
             the file has quantized matrices)"
        ))),
    }
}

/// GGUF architectures and Hugging Face `model_type`s mindscope can run.
#[pyfunction]
fn supported_architectures() -> Vec<&'static str> {
    let mut all = SUPPORTED_ARCHITECTURES.to_vec();
    for t in SUPPORTED_MODEL_TYPES {
        if !all.contains(t) {
            all.push(t);
        }
    }
    all
}

/// Use the `cblas_sgemm` of the shared library at `path` for the models' matrix products
/// (once per process). Returns the library in use.
#[pyfunction]
fn use_blas(path: &str) -> PyResult<String> {
    guarded(|| crate::kernels::blas::load(path).py_err())
}

/// The BLAS library the matrix products use, or None for the built-in `gemm` kernels.
#[pyfunction]
fn blas_library() -> Option<String> {
    crate::kernels::blas::active()
}

/// The number of threads rayon's pool takes when `RAYON_NUM_THREADS` is not set: the CPUs this
/// process may use (affinity and cgroup quota included).
#[pyfunction]
fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Model>()?;
    m.add_function(wrap_pyfunction!(default_threads, m)?)?;
    m.add_function(wrap_pyfunction!(use_blas, m)?)?;
    m.add_function(wrap_pyfunction!(blas_library, m)?)?;
    m.add_function(wrap_pyfunction!(supported_architectures, m)?)?;
    Ok(())
}
