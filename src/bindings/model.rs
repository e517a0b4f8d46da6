//! Python bindings of the model runtime: `mindscope._native.Model`.

use std::path::PathBuf;
use std::sync::Arc;

use numpy::{
    PyArrayDyn, PyArrayMethods, PyReadonlyArray2, PyReadonlyArrayDyn, PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::convert::{array_from_py, array_to_py, opt_array};
use super::{to_py_err, IntoPyResult};
use crate::error::{MsError, Result};
use crate::hooks::{
    Action, CaptureSpec, CapturedArray, HookFn, Intervention, LogitsMode, Positions,
};
use crate::model::{
    Ablation, LanguageModel, SamplingParams, SUPPORTED_ARCHITECTURES, SUPPORTED_MODEL_TYPES,
};

/// One intervention as the Python layer passes it:
/// `(hook name, action, array, scale, positions kind, positions values, callable)`.
type PyIntervention<'py> = (
    String,
    String,
    Option<PyReadonlyArrayDyn<'py, f32>>,
    f32,
    Option<String>,
    Vec<i64>,
    Option<Py<PyAny>>,
);

/// Token ids and character spans of one text.
type TokensWithOffsets = (Vec<u32>, Vec<(usize, usize)>);

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

fn parse_positions(kind: &str, values: Vec<i64>) -> Result<Positions> {
    match kind {
        "all" => Ok(Positions::All),
        "last" => Ok(Positions::Last),
        "indices" => Ok(Positions::Indices(values)),
        "per_prompt" => Ok(Positions::PerPrompt(values)),
        other => Err(MsError::invalid(format!(
            "positions kind '{other}' is not known; allowed: 'all', 'last', 'indices', 'per_prompt'"
        ))),
    }
}

fn parse_logits(mode: &str) -> Result<LogitsMode> {
    match mode {
        "none" => Ok(LogitsMode::None),
        "last" => Ok(LogitsMode::Last),
        "all" => Ok(LogitsMode::All),
        other => Err(MsError::invalid(format!(
            "logits='{other}' is not allowed; use 'none', 'last' or 'all'"
        ))),
    }
}

/// Wrap a Python callable `f(activation, hook_name) -> array | None` as a core hook function.
fn python_hook(callable: Py<PyAny>) -> HookFn {
    Arc::new(move |name: &str, act: &mut CapturedArray| {
        Python::attach(|py| -> PyResult<()> {
            let arr = array_to_py(py, act.clone())?;
            let out = callable.call1(py, (arr.clone(), name))?;
            let result: Bound<'_, PyArrayDyn<f32>> = if out.is_none(py) {
                arr
            } else {
                out.into_bound(py)
                    .extract::<Bound<'_, PyArrayDyn<f32>>>()
                    .map_err(|_| {
                        pyo3::exceptions::PyTypeError::new_err(
                            "a hook function must return None or a float32 numpy array",
                        )
                    })?
            };
            *act = array_from_py(&result.readonly());
            Ok(())
        })
        .map_err(|e| MsError::invalid(format!("hook function at '{name}' raised: {e}")))
    })
}

fn parse_interventions(
    model: &LanguageModel,
    raw: Vec<PyIntervention<'_>>,
) -> Result<Vec<Intervention>> {
    raw.into_iter()
        .map(
            |(name, action, array, scale, pos_kind, pos_values, callable)| {
                let point = model.hooks().resolve(&name)?;
                let array = opt_array(array);
                let need_array = |what: &str| {
                    MsError::invalid(format!("intervention '{action}' at '{name}' needs {what}"))
                };
                let action = match action.as_str() {
                    "zero" => Action::Zero,
                    "replace" | "patch" => {
                        Action::Replace(array.ok_or_else(|| need_array("an array"))?)
                    }
                    "add" => Action::Add {
                        vector: array.ok_or_else(|| need_array("a vector"))?.data,
                        scale,
                    },
                    "mean" => Action::Mean(array.map(|a| a.data)),
                    "call" => Action::Custom(python_hook(
                        callable.ok_or_else(|| need_array("a callable"))?,
                    )),
                    other => {
                        return Err(MsError::invalid(format!(
                        "intervention action '{other}' is not known; allowed: 'zero', 'replace', \
                         'patch', 'add', 'mean', or a callable"
                    )))
                    }
                };
                let positions = pos_kind
                    .map(|k| parse_positions(&k, pos_values))
                    .transpose()?;
                Ok(Intervention {
                    point,
                    action,
                    positions,
                })
            },
        )
        .collect()
}

/// Token ids of the prompts, given as texts or as ids (exactly one of the two).
fn prompt_tokens(
    model: &LanguageModel,
    texts: Option<Vec<String>>,
    token_ids: Option<Vec<Vec<u32>>>,
) -> Result<Vec<Vec<u32>>> {
    match (texts, token_ids) {
        (Some(t), None) => model.encode_prompts(&t),
        (None, Some(ids)) => Ok(ids),
        _ => Err(MsError::invalid("give either texts or token_ids, not both")),
    }
}

#[pymethods]
impl Model {
    /// Load a GGUF model file or a Hugging Face model folder.
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let model = py.detach(|| LanguageModel::load(&path)).py_err()?;
        Ok(Model {
            inner: Arc::new(model),
        })
    }

    /// Load a GGUF file stored as consecutive parts (read as their concatenation).
    #[staticmethod]
    fn load_gguf_parts(py: Python<'_>, parts: Vec<PathBuf>) -> PyResult<Self> {
        let model = py.detach(|| LanguageModel::load_gguf(&parts)).py_err()?;
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
    #[pyo3(signature = (texts, token_ids, batch_size))]
    fn embed<'py>(
        &self,
        py: Python<'py>,
        texts: Option<Vec<String>>,
        token_ids: Option<Vec<Vec<u32>>>,
        batch_size: usize,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let model = &self.inner;
        let tokens = prompt_tokens(model, texts, token_ids).py_err()?;
        let out = py.detach(|| model.embed(&tokens, batch_size)).py_err()?;
        array_to_py(py, out)
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
                crate::model::config::Residual::Sequential => "sequential",
                crate::model::config::Residual::Parallel => "parallel",
                crate::model::config::Residual::PostNorm => "post_norm",
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

    fn hook_names(&self) -> Vec<String> {
        self.inner.hooks().names().to_vec()
    }

    /// Token ids and character spans `(start, end)` of one text.
    fn tokenize(&self, text: &str) -> PyResult<TokensWithOffsets> {
        let enc = self.inner.tokenizer.encode(text).py_err()?;
        Ok((enc.ids, enc.offsets))
    }

    fn decode(&self, ids: Vec<u32>) -> PyResult<String> {
        self.inner.tokenizer.decode(&ids).py_err()
    }

    /// The text of each token on its own (`" capital"`).
    fn token_texts(&self, ids: Vec<u32>) -> PyResult<Vec<String>> {
        ids.iter()
            .map(|&i| self.inner.tokenizer.token_text(i))
            .collect::<Result<_>>()
            .py_err()
    }

    /// The id of a vocabulary entry (`"Ġcapital"`), if it exists.
    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.tokenizer.token_to_id(token)
    }

    /// Run prompts (texts or token-id lists); returns `(logits, [(name, array)], token ids)`.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (texts, token_ids, names, positions_kind, positions_values, stop_at_layer, logits, interventions, batch_size))]
    fn run<'py>(
        &self,
        py: Python<'py>,
        texts: Option<Vec<String>>,
        token_ids: Option<Vec<Vec<u32>>>,
        names: Vec<String>,
        positions_kind: &str,
        positions_values: Vec<i64>,
        stop_at_layer: Option<usize>,
        logits: &str,
        interventions: Vec<PyIntervention<'py>>,
        batch_size: usize,
    ) -> PyResult<RunResult<'py>> {
        let model = &self.inner;
        let positions = parse_positions(positions_kind, positions_values).py_err()?;
        let spec = CaptureSpec::new(
            model.hooks(),
            &names,
            positions,
            stop_at_layer,
            parse_logits(logits).py_err()?,
        )
        .py_err()?;
        let ivs = parse_interventions(model, interventions).py_err()?;
        let tokens = prompt_tokens(model, texts, token_ids).py_err()?;
        let out = py
            .detach(|| model.run_ids(tokens, &spec, &ivs, batch_size))
            .py_err()?;
        let logits = out.logits.map(|l| array_to_py(py, l)).transpose()?;
        let cache = out
            .cache
            .into_entries()
            .into_iter()
            .map(|(n, a)| Ok((n, array_to_py(py, a)?)))
            .collect::<PyResult<Vec<_>>>()?;
        Ok((logits, cache, out.tokens))
    }

    /// Continue a prompt; returns a dict with text, token_ids, logprobs and prompt_ids.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (prompt, max_new_tokens, temperature, top_k, top_p, seed, stop_at_eos, interventions))]
    fn generate<'py>(
        &self,
        py: Python<'py>,
        prompt: String,
        max_new_tokens: usize,
        temperature: f64,
        top_k: Option<usize>,
        top_p: Option<f64>,
        seed: u64,
        stop_at_eos: bool,
        interventions: Vec<PyIntervention<'py>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let model = &self.inner;
        let ivs = parse_interventions(model, interventions).py_err()?;
        let params = SamplingParams {
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            seed,
            stop_at_eos,
        };
        let g = py
            .detach(|| model.generate(&prompt, &params, &ivs))
            .py_err()?;
        let d = PyDict::new(py);
        d.set_item("text", g.text)?;
        d.set_item("token_ids", g.token_ids)?;
        d.set_item("logprobs", g.logprobs)?;
        d.set_item("prompt_ids", g.prompt_ids)?;
        Ok(d)
    }

    /// Log-probability of `target_ids` after `prompt_ids`, clean and with each token span
    /// ablated (`kind`: "delete", "replace" (with `replace_id`), "zero", "mean"). `naive` runs
    /// one full forward per variant instead of sharing the clean prefix (for checking).
    #[pyo3(signature = (prompt_ids, target_ids, spans, kind, replace_id=None, batch_size=64, naive=false, rows_per_batch=2048))]
    #[allow(clippy::too_many_arguments)]
    fn ablation_scores(
        &self,
        py: Python<'_>,
        prompt_ids: Vec<u32>,
        target_ids: Vec<u32>,
        spans: Vec<(usize, usize)>,
        kind: &str,
        replace_id: Option<u32>,
        batch_size: usize,
        naive: bool,
        rows_per_batch: usize,
    ) -> PyResult<(f64, Vec<f64>)> {
        let ablation = match (kind, replace_id) {
            ("delete", _) => Ablation::Delete,
            ("replace", Some(id)) => Ablation::Replace(id),
            ("replace", None) => {
                return Err(to_py_err(MsError::invalid(
                    "ablation 'replace' needs the replacement token id",
                )))
            }
            ("zero", _) => Ablation::ZeroEmbedding,
            ("mean", _) => Ablation::MeanEmbedding,
            (other, _) => {
                return Err(to_py_err(MsError::invalid(format!(
                    "ablation '{other}' is not known; allowed: 'delete', 'replace', 'zero', 'mean'"
                ))))
            }
        };
        if batch_size == 0 {
            return Err(to_py_err(MsError::invalid("batch_size must be at least 1")));
        }
        let model = &self.inner;
        let scores = py
            .detach(|| {
                if naive {
                    model.ablation_scores_naive(&prompt_ids, &target_ids, &spans, ablation)
                } else {
                    model.ablation_scores(
                        &prompt_ids,
                        &target_ids,
                        &spans,
                        ablation,
                        batch_size,
                        rows_per_batch,
                    )
                }
            })
            .py_err()?;
        Ok((scores.clean, scores.ablated))
    }

    /// Final norm + unembedding of residual vectors `[n, d_model]` -> logits `[n, vocab]`.
    fn unembed<'py>(
        &self,
        py: Python<'py>,
        resid: PyReadonlyArray2<'py, f32>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
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
                let t =
                    candle_core::Tensor::from_vec(data, (shape[0], d), &candle_core::Device::Cpu)?;
                let l = model.decoder("unembed")?.unembed(&t)?;
                Ok(CapturedArray::new(
                    l.dims().to_vec(),
                    l.flatten_all()?.to_vec1()?,
                ))
            })
            .py_err()?;
        array_to_py(py, out)
    }

    /// The token embedding matrix `[vocab, d_model]` (a copy).
    fn embedding_matrix<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let e = self.inner.embedding();
        let a = (|| -> Result<CapturedArray> {
            Ok(CapturedArray::new(
                e.dims().to_vec(),
                e.flatten_all()?.to_vec1()?,
            ))
        })()
        .py_err()?;
        array_to_py(py, a)
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
    crate::kernels::blas::load(path).py_err()
}

/// The BLAS library the matrix products use, or None for the built-in `gemm` kernels.
#[pyfunction]
fn blas_library() -> Option<String> {
    crate::kernels::blas::active()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Model>()?;
    m.add_function(wrap_pyfunction!(use_blas, m)?)?;
    m.add_function(wrap_pyfunction!(blas_library, m)?)?;
    m.add_function(wrap_pyfunction!(supported_architectures, m)?)?;
    Ok(())
}
