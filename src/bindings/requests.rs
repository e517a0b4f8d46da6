//! The Python -> Rust boundary of the model calls: each call takes one request dict, read and
//! validated here, once, with typed errors that name the argument and what is allowed. The
//! Python layer passes what the user wrote (only a predicate for `names` is resolved there,
//! being Python code); every rule about what a value may be lives in this file.

use std::sync::Arc;

use numpy::{PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyList, PyString, PyTuple};

use super::convert::{array_from_py, array_to_py};
use crate::error::{CallbackPayload, MsError, Result};
use crate::hooks::{
    Action, CaptureSpec, CapturedArray, HookFn, HookPoint, HookRegistry, Intervention, LogitsMode,
    Positions,
};
use crate::model::metric::Metric;
use crate::model::{Ablation, LanguageModel, SamplingParams};

/// A request dict, read key by key. Keys it does not know are refused (a misspelt option
/// would otherwise be ignored).
pub struct Request<'py> {
    dict: Bound<'py, PyDict>,
    call: &'static str,
}

fn type_name(v: &Bound<'_, PyAny>) -> String {
    v.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

impl<'py> Request<'py> {
    pub fn new(obj: &Bound<'py, PyAny>, call: &'static str, keys: &[&str]) -> Result<Self> {
        let dict = obj.cast::<PyDict>().map_err(|_| {
            MsError::invalid(format!(
                "{call}: the request must be a dict, got {}",
                type_name(obj)
            ))
        })?;
        for k in dict.keys() {
            let k: String = k.extract().unwrap_or_default();
            if !keys.contains(&k.as_str()) {
                return Err(MsError::invalid(format!(
                    "{call}: unknown argument '{k}'; allowed: {}",
                    keys.join(", ")
                )));
            }
        }
        Ok(Request {
            dict: dict.clone(),
            call,
        })
    }

    /// The value of `key`, `None` when absent or Python `None`.
    pub fn get(&self, key: &str) -> Option<Bound<'py, PyAny>> {
        self.dict
            .get_item(key)
            .ok()
            .flatten()
            .filter(|v| !v.is_none())
    }

    fn wrong(&self, key: &str, want: &str, v: &Bound<'_, PyAny>) -> MsError {
        let shown = v
            .repr()
            .map(|r| r.to_string())
            .unwrap_or_else(|_| type_name(v));
        let shown: String = shown.chars().take(80).collect();
        MsError::invalid(format!("{}: {key} must be {want}, got {shown}", self.call))
    }

    pub fn bool(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .cast::<PyBool>()
                .map(|b| b.is_true())
                .map_err(|_| self.wrong(key, "True or False", &v)),
        }
    }

    /// A Python int (not a bool) within `lo..=hi`.
    pub fn int(&self, key: &str, lo: i128, hi: i128) -> Result<Option<i128>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let want = if hi == i128::MAX {
            format!("an integer >= {lo}")
        } else {
            format!("an integer from {lo} to {hi}")
        };
        if v.is_instance_of::<PyBool>() {
            return Err(self.wrong(key, &want, &v));
        }
        match v.extract::<i128>() {
            Ok(n) if (lo..=hi).contains(&n) => Ok(Some(n)),
            _ => Err(self.wrong(key, &want, &v)),
        }
    }

    pub fn count(&self, key: &str, min: usize, default: usize) -> Result<usize> {
        Ok(self
            .int(key, min as i128, i128::MAX)?
            .map_or(default, |n| usize::try_from(n).unwrap_or(usize::MAX)))
    }

    /// A finite float (ints accepted).
    pub fn float(&self, key: &str) -> Result<Option<f64>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        match v.extract::<f64>() {
            Ok(x) if x.is_finite() && !v.is_instance_of::<PyBool>() => Ok(Some(x)),
            _ => Err(self.wrong(key, "a finite number", &v)),
        }
    }

    pub fn string(&self, key: &str) -> Result<Option<String>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        v.extract::<String>()
            .map(Some)
            .map_err(|_| self.wrong(key, "a string", &v))
    }

    /// A list of non-negative integers below 2^32 (token ids, indices).
    pub fn ids(&self, key: &str) -> Result<Vec<u32>> {
        match self.get(key) {
            None => Err(MsError::invalid(format!(
                "{}: {key} is required",
                self.call
            ))),
            Some(v) => id_list(&v).map_err(|why| self.wrong(key, &why, &v)),
        }
    }
}

/// A sequence of ints in `0..2^32`, or what it should have been.
fn id_list(v: &Bound<'_, PyAny>) -> std::result::Result<Vec<u32>, String> {
    let want = "a list of token ids (integers from 0 to 4294967295)".to_string();
    if v.is_instance_of::<PyString>() {
        return Err(want);
    }
    let items = v.try_iter().map_err(|_| want.clone())?;
    let mut out = Vec::new();
    for item in items {
        let item = item.map_err(|_| want.clone())?;
        if item.is_instance_of::<PyBool>() {
            return Err(want);
        }
        let n: i128 = item.extract().map_err(|_| want.clone())?;
        out.push(u32::try_from(n).map_err(|_| format!("{want}; {n} is not one"))?);
    }
    Ok(out)
}

/// Prompts as the user gave them: texts to tokenize, or token ids.
pub enum Prompts {
    Texts(Vec<String>),
    Ids(Vec<Vec<u32>>),
}

impl Prompts {
    /// A string, a list of strings, or a list of token-id lists.
    pub fn parse(req: &Request, key: &str) -> Result<Self> {
        let want = "a string, a list of strings, or a list of token-id lists";
        let Some(v) = req.get(key) else {
            return Err(MsError::invalid(format!(
                "{}: {key} is required ({want})",
                req.call
            )));
        };
        if let Ok(s) = v.extract::<String>() {
            return Ok(Prompts::Texts(vec![s]));
        }
        if v.is_instance_of::<PyString>() {
            // A str that cannot be read as UTF-8 text (e.g. a lone surrogate).
            return Err(MsError::invalid(format!(
                "{}: {key} contains text that is not valid Unicode (a lone surrogate?)",
                req.call
            )));
        }
        let items: Vec<Bound<'_, PyAny>> = match v.try_iter() {
            Ok(it) => it
                .collect::<PyResult<_>>()
                .map_err(|_| req.wrong(key, want, &v))?,
            Err(_) => return Err(req.wrong(key, want, &v)),
        };
        if items.is_empty() {
            return Err(MsError::invalid(format!(
                "{}: the list of prompts is empty",
                req.call
            )));
        }
        if items.iter().all(|i| i.is_instance_of::<PyString>()) {
            let texts = items
                .iter()
                .enumerate()
                .map(|(n, i)| {
                    i.extract::<String>().map_err(|_| {
                        MsError::invalid(format!(
                            "{}: prompt {n} is not valid Unicode text (a lone surrogate?)",
                            req.call
                        ))
                    })
                })
                .collect::<Result<_>>()?;
            return Ok(Prompts::Texts(texts));
        }
        if let Some(n) = items.iter().position(|i| !i.is_instance_of::<PyString>()) {
            if items.iter().any(|i| i.is_instance_of::<PyString>()) {
                return Err(MsError::invalid(format!(
                    "{}: prompt {n} is {}, not a string; a list of prompts holds strings only,                      or token-id lists only",
                    req.call,
                    type_name(&items[n])
                )));
            }
        }
        let ids = items
            .iter()
            .enumerate()
            .map(|(n, i)| {
                id_list(i).map_err(|why| {
                    MsError::invalid(format!(
                        "{}: prompt {n} is neither a string nor {why} ({want})",
                        req.call
                    ))
                })
            })
            .collect::<Result<_>>()?;
        Ok(Prompts::Ids(ids))
    }

    /// Token ids of every prompt (tokenizing texts), each checked against the model.
    pub fn tokens(self, model: &LanguageModel) -> Result<Vec<Vec<u32>>> {
        match self {
            Prompts::Texts(t) => model.encode_prompts(&t),
            Prompts::Ids(ids) => {
                for (i, p) in ids.iter().enumerate() {
                    model.check_prompt_ids(i, p)?;
                }
                Ok(ids)
            }
        }
    }
}

/// `"all"`, `"last"`, an index, a list of indices, or `PerPrompt([...])` (any object with an
/// `indices` attribute).
pub fn positions(v: &Bound<'_, PyAny>, what: &str) -> Result<Positions> {
    let bad = || {
        MsError::invalid(format!(
            "{what} must be 'all', 'last', an index, a list of indices, or PerPrompt([...]), \
             got {}",
            v.repr().map(|r| r.to_string()).unwrap_or_default()
        ))
    };
    if let Ok(s) = v.extract::<String>() {
        return match s.as_str() {
            "all" => Ok(Positions::All),
            "last" => Ok(Positions::Last),
            _ => Err(bad()),
        };
    }
    let index = |x: &Bound<'_, PyAny>| -> Result<i64> {
        if x.is_instance_of::<PyBool>() {
            return Err(bad());
        }
        x.extract::<i64>().map_err(|_| bad())
    };
    if let Ok(indices) = v.getattr("indices") {
        if !v.is_instance_of::<PyList>() && !v.is_instance_of::<PyTuple>() {
            let list = indices
                .try_iter()
                .map_err(|_| bad())?
                .map(|x| index(&x.map_err(|_| bad())?))
                .collect::<Result<_>>()?;
            return Ok(Positions::PerPrompt(list));
        }
    }
    if let Ok(i) = index(v) {
        return Ok(Positions::Indices(vec![i]));
    }
    let list = v
        .try_iter()
        .map_err(|_| bad())?
        .map(|x| index(&x.map_err(|_| bad())?))
        .collect::<Result<Vec<_>>>()?;
    Ok(Positions::Indices(list))
}

/// Hook names or globs: `None` (every hook), a string, or a list of strings.
fn names(req: &Request, registry: &HookRegistry) -> Result<Vec<String>> {
    let Some(v) = req.get("names") else {
        return Ok(registry.names().to_vec());
    };
    if let Ok(s) = v.extract::<String>() {
        return Ok(vec![s]);
    }
    let want = "a hook name, a glob, a list of them, a predicate, or None";
    v.try_iter()
        .map_err(|_| req.wrong("names", want, &v))?
        .map(|x| {
            x.ok()
                .and_then(|x| x.extract::<String>().ok())
                .ok_or_else(|| req.wrong("names", want, &v))
        })
        .collect()
}

/// `return_logits`: True (the default for the positions), False/None, or a mode name.
fn logits_mode(
    req: &Request,
    positions: &Positions,
    stop_at_layer: Option<usize>,
    encoder: bool,
) -> Result<LogitsMode> {
    let Some(v) = req.get("logits") else {
        return Ok(LogitsMode::None);
    };
    if let Ok(b) = v.cast::<PyBool>() {
        if !b.is_true() || encoder || stop_at_layer.is_some() {
            return Ok(LogitsMode::None);
        }
        return Ok(match positions {
            Positions::Last | Positions::PerPrompt(_) => LogitsMode::Last,
            _ => LogitsMode::All,
        });
    }
    match v.extract::<String>().as_deref() {
        Ok("none") => Ok(LogitsMode::None),
        Ok("last") => Ok(LogitsMode::Last),
        Ok("all") => Ok(LogitsMode::All),
        _ => Err(req.wrong("return_logits", "True, False, 'none', 'last' or 'all'", &v)),
    }
}

/// A float32 array from any numeric array-like, with finite values only.
fn float_array(v: &Bound<'_, PyAny>, what: &str) -> Result<CapturedArray> {
    let arr = match v.extract::<PyReadonlyArrayDyn<'_, f32>>() {
        Ok(a) => array_from_py(&a),
        Err(_) => {
            let np = v
                .py()
                .import("numpy")
                .map_err(|e| MsError::invalid(format!("{what}: cannot import numpy: {e}")))?;
            let converted = np
                .call_method1("ascontiguousarray", (v, "float32"))
                .map_err(|e| MsError::invalid(format!("{what} must be a numeric array: {e}")))?;
            let a = converted
                .extract::<PyReadonlyArrayDyn<'_, f32>>()
                .map_err(|e| MsError::invalid(format!("{what} must be a numeric array: {e}")))?;
            array_from_py(&a)
        }
    };
    if let Some(bad) = arr.data.iter().find(|x| !x.is_finite()) {
        return Err(MsError::invalid(format!(
            "{what} contains {bad}; values must be finite"
        )));
    }
    Ok(arr)
}

/// Wrap a Python callable `f(activation, hook_name) -> array | None` as a core hook function.
/// What the callable raises goes back to the caller as itself.
fn python_hook(callable: Py<PyAny>) -> HookFn {
    Arc::new(move |name: &str, act: &mut CapturedArray| {
        Python::attach(|py| -> PyResult<()> {
            // numpy takes the buffer (no copy); what the function leaves in it is read back.
            let data = std::mem::take(&mut act.data);
            let arr = array_to_py(py, CapturedArray::new(act.shape.clone(), data))?;
            let out = callable.call1(py, (arr.clone(), name))?;
            let result: Bound<'_, PyArrayDyn<f32>> = if out.is_none(py) {
                arr
            } else {
                out.into_bound(py)
                    .extract::<Bound<'_, PyArrayDyn<f32>>>()
                    .map_err(|_| {
                        super::to_py_err(MsError::invalid(format!(
                            "the hook function at '{name}' must return None or a float32 numpy \
                             array"
                        )))
                    })?
            };
            *act = array_from_py(&result.readonly());
            Ok(())
        })
        .map_err(|e| MsError::Callback {
            message: format!("hook function at '{name}' raised: {e}"),
            payload: CallbackPayload(Arc::new(e)),
        })
    })
}

const ACTIONS: &str = "'zero', ('replace', array), ('patch', array), ('add', vector[, scale]), \
                       ('mean', vector or None), or a callable";

/// An intervention's fields as the user gave them, before they are checked.
struct RawIntervention<'py> {
    hook: String,
    action: String,
    value: Option<Bound<'py, PyAny>>,
    scale: f64,
    positions: Option<Bound<'py, PyAny>>,
    func: Option<Bound<'py, PyAny>>,
}

impl<'py> RawIntervention<'py> {
    fn of(hook: String, action: &str) -> Self {
        RawIntervention {
            hook,
            action: action.to_string(),
            value: None,
            scale: 1.0,
            positions: None,
            func: None,
        }
    }

    /// `(hook, "zero" | "mean" | callable | (kind, value[, scale]))`.
    fn from_tuple(t: &Bound<'py, PyTuple>) -> Result<Self> {
        let bad = || {
            MsError::invalid(format!(
                "an intervention is (hook_name, action) with action {ACTIONS}; got {}",
                t.repr().map(|r| r.to_string()).unwrap_or_default()
            ))
        };
        if t.len() != 2 {
            return Err(bad());
        }
        let hook: String = t
            .get_item(0)
            .ok()
            .and_then(|h| h.extract().ok())
            .ok_or_else(bad)?;
        let act = t.get_item(1).map_err(|_| bad())?;
        if let Ok(name) = act.extract::<String>() {
            return match name.as_str() {
                "zero" | "mean" => Ok(Self::of(hook, &name)),
                other => Err(MsError::invalid(format!(
                    "intervention at '{hook}': action '{other}' needs a value: ('{hook}', \
                     ('{other}', value)); allowed: {ACTIONS}"
                ))),
            };
        }
        if act.is_callable() {
            return Ok(RawIntervention {
                func: Some(act),
                ..Self::of(hook, "call")
            });
        }
        let inner = act.cast::<PyTuple>().map_err(|_| bad())?;
        let kind: String = inner
            .get_item(0)
            .ok()
            .and_then(|k| k.extract().ok())
            .ok_or_else(bad)?;
        let scale = match inner.get_item(2) {
            Ok(s) => s.extract::<f64>().map_err(|_| bad())?,
            Err(_) => 1.0,
        };
        Ok(RawIntervention {
            value: inner.get_item(1).ok().filter(|x| !x.is_none()),
            scale,
            ..Self::of(hook, &kind)
        })
    }

    /// An `Intervention`-like object: attributes `hook`, `action`, `value`, `scale`,
    /// `positions`, `fn`.
    fn from_object(v: &Bound<'py, PyAny>) -> Result<Self> {
        let attr = |name: &str| v.getattr(name).ok().filter(|x| !x.is_none());
        let hook = attr("hook")
            .and_then(|h| h.extract::<String>().ok())
            .ok_or_else(|| {
                MsError::invalid(format!(
                    "an intervention is an Intervention(hook, action, ...) or a tuple \
                     (hook_name, action); got {}",
                    v.repr().map(|r| r.to_string()).unwrap_or_default()
                ))
            })?;
        let action = attr("action")
            .and_then(|a| a.extract::<String>().ok())
            .ok_or_else(|| MsError::invalid(format!("intervention at '{hook}': no action")))?;
        let scale = match attr("scale") {
            Some(s) => s.extract::<f64>().map_err(|_| {
                MsError::invalid(format!("intervention at '{hook}': scale must be a number"))
            })?,
            None => 1.0,
        };
        Ok(RawIntervention {
            value: attr("value"),
            scale,
            positions: attr("positions"),
            func: attr("fn"),
            ..Self::of(hook, &action)
        })
    }

    /// The checked intervention at every hook the (possibly glob) name matches.
    fn resolve(self, registry: &HookRegistry) -> Result<Vec<Intervention>> {
        let what = format!("intervention at '{}'", self.hook);
        if !self.scale.is_finite() {
            return Err(MsError::invalid(format!(
                "{what}: scale is {}; it must be a finite number",
                self.scale
            )));
        }
        let value = self
            .value
            .map(|x| float_array(&x, &format!("{what}: the value")))
            .transpose()?;
        let action = &self.action;
        let need =
            |thing: &str| MsError::invalid(format!("{what}: action '{action}' needs {thing}"));
        let act = match action.as_str() {
            "zero" => Action::Zero,
            "replace" | "patch" => Action::Replace(value.ok_or_else(|| need("an array"))?),
            "add" => Action::Add {
                vector: value.ok_or_else(|| need("a vector"))?.data,
                scale: self.scale as f32,
            },
            "mean" => Action::Mean(value.map(|a| a.data)),
            "call" => {
                let f = self
                    .func
                    .filter(|f| f.is_callable())
                    .ok_or_else(|| need("a callable (fn)"))?;
                Action::Custom(python_hook(f.unbind()))
            }
            other => {
                return Err(MsError::invalid(format!(
                    "{what}: action '{other}' is not known; allowed: {ACTIONS}"
                )))
            }
        };
        let positions = self
            .positions
            .map(|p| positions(&p, &format!("{what}: positions")))
            .transpose()?;
        Ok(registry
            .resolve_pattern(&self.hook)?
            .into_iter()
            .map(|point| Intervention {
                point,
                action: act.clone(),
                positions: positions.clone(),
            })
            .collect())
    }
}

/// One intervention, an `Intervention`-like object or a tuple; a glob hook expands to every
/// match.
fn interventions_of(v: &Bound<'_, PyAny>, registry: &HookRegistry) -> Result<Vec<Intervention>> {
    let raw = match v.cast::<PyTuple>() {
        Ok(t) => RawIntervention::from_tuple(t)?,
        Err(_) => RawIntervention::from_object(v)?,
    };
    raw.resolve(registry)
}

/// The `interventions` list of a request.
fn interventions(req: &Request, registry: &HookRegistry) -> Result<Vec<Intervention>> {
    let Some(v) = req.get("interventions") else {
        return Ok(Vec::new());
    };
    let items = v
        .try_iter()
        .map_err(|_| req.wrong("interventions", "a list of interventions", &v))?;
    let mut out = Vec::new();
    for item in items {
        let item = item.map_err(|e| MsError::invalid(format!("interventions: {e}")))?;
        out.extend(interventions_of(&item, registry)?);
    }
    Ok(out)
}

/// A parsed `Model.run` request.
pub struct RunArgs {
    pub prompts: Prompts,
    pub spec: CaptureSpec,
    pub interventions: Vec<Intervention>,
    pub batch_size: usize,
}

pub fn run_args(obj: &Bound<'_, PyAny>, model: &LanguageModel) -> Result<RunArgs> {
    let req = Request::new(
        obj,
        "run_with_cache",
        &[
            "prompts",
            "names",
            "positions",
            "stop_at_layer",
            "logits",
            "interventions",
            "batch_size",
        ],
    )?;
    let registry = model.hooks();
    let n_layers = registry.n_layers();
    let positions = match req.get("positions") {
        Some(p) => positions(&p, "positions")?,
        None => Positions::All,
    };
    let stop_at_layer = req
        .int("stop_at_layer", 0, n_layers as i128)?
        .map(|n| n as usize);
    let logits = logits_mode(&req, &positions, stop_at_layer, model.is_encoder())?;
    if model.is_encoder() && logits != LogitsMode::None {
        return Err(MsError::invalid(format!(
            "{} is an encoder: it has no logits; pass return_logits=False",
            model.name
        )));
    }
    let names = names(&req, registry)?;
    let spec = CaptureSpec::new(registry, &names, positions, stop_at_layer, logits)?;
    Ok(RunArgs {
        prompts: Prompts::parse(&req, "prompts")?,
        spec,
        interventions: interventions(&req, registry)?,
        batch_size: req.count("batch_size", 1, 32)?,
    })
}

/// A parsed `Model.generate` request.
pub struct GenerateArgs {
    pub prompt: String,
    pub params: SamplingParams,
    pub interventions: Vec<Intervention>,
    /// Hooks to keep at every step (`names`; none when absent).
    pub capture: Option<CaptureSpec>,
}

pub fn generate_args(obj: &Bound<'_, PyAny>, model: &LanguageModel) -> Result<GenerateArgs> {
    let req = Request::new(
        obj,
        "generate",
        &[
            "prompt",
            "max_new_tokens",
            "temperature",
            "top_k",
            "top_p",
            "seed",
            "stop_at_eos",
            "interventions",
            "names",
        ],
    )?;
    let prompt = match Prompts::parse(&req, "prompt")? {
        Prompts::Texts(mut t) if t.len() == 1 => t.remove(0),
        _ => return Err(MsError::invalid("generate takes one prompt string")),
    };
    let context = model.config().context_length;
    let params = SamplingParams {
        max_new_tokens: req
            .int("max_new_tokens", 0, context as i128)?
            .map_or(20, |n| n as usize),
        temperature: req.float("temperature")?.unwrap_or(0.0),
        top_k: req.int("top_k", 1, u32::MAX as i128)?.map(|n| n as usize),
        top_p: req.float("top_p")?,
        seed: req
            .int("seed", 0, u64::MAX as i128)?
            .map_or(0, |n| n as u64),
        stop_at_eos: req.bool("stop_at_eos", true)?,
    };
    let capture = match req.get("names") {
        None => None,
        Some(_) => Some(crate::model::generation_capture(
            model.hooks(),
            &names(&req, model.hooks())?,
        )?),
    };
    Ok(GenerateArgs {
        prompt,
        params,
        interventions: interventions(&req, model.hooks())?,
        capture,
    })
}

/// A parsed `Model.embed` request.
pub fn embed_args(obj: &Bound<'_, PyAny>) -> Result<(Prompts, usize)> {
    let req = Request::new(obj, "embed", &["prompts", "batch_size"])?;
    Ok((
        Prompts::parse(&req, "prompts")?,
        req.count("batch_size", 1, 32)?,
    ))
}

/// A parsed `Model.ablation_scores` request.
pub struct AblationArgs {
    pub prompt: Vec<u32>,
    pub target: Vec<u32>,
    pub spans: Vec<(usize, usize)>,
    pub ablation: Ablation,
    pub batch_size: usize,
    pub rows_per_batch: usize,
    pub naive: bool,
}

pub fn ablation_args(obj: &Bound<'_, PyAny>) -> Result<AblationArgs> {
    let req = Request::new(
        obj,
        "ablation_scores",
        &[
            "prompt_ids",
            "target_ids",
            "spans",
            "ablation",
            "replace_id",
            "batch_size",
            "rows_per_batch",
            "naive",
        ],
    )?;
    let kind = req.string("ablation")?.unwrap_or_else(|| "delete".into());
    let ablation = match kind.as_str() {
        "delete" => Ablation::Delete,
        "replace" => {
            let id = req.int("replace_id", 0, u32::MAX as i128)?.ok_or_else(|| {
                MsError::invalid("ablation 'replace' needs the replacement token id")
            })?;
            Ablation::Replace(id as u32)
        }
        "zero" => Ablation::ZeroEmbedding,
        "mean" => Ablation::MeanEmbedding,
        other => {
            return Err(MsError::invalid(format!(
                "ablation '{other}' is not known; allowed: 'delete', 'replace', 'zero', 'mean'"
            )))
        }
    };
    let spans_value = req
        .get("spans")
        .ok_or_else(|| MsError::invalid("ablation_scores: spans is required"))?;
    let bad_spans = || {
        MsError::invalid("ablation_scores: spans must be a list of (start, end) token index pairs")
    };
    let spans = spans_value
        .try_iter()
        .map_err(|_| bad_spans())?
        .map(|s| {
            s.ok()
                .and_then(|s| s.extract::<(u32, u32)>().ok())
                .map(|(a, b)| (a as usize, b as usize))
                .ok_or_else(bad_spans)
        })
        .collect::<Result<_>>()?;
    Ok(AblationArgs {
        prompt: req.ids("prompt_ids")?,
        target: req.ids("target_ids")?,
        spans,
        ablation,
        batch_size: req.count("batch_size", 1, 64)?,
        rows_per_batch: req.count("rows_per_batch", 1, 2048)?,
        naive: req.bool("naive", false)?,
    })
}

/// A Python `str` as Rust text: a lone surrogate or a non-string is an `InvalidArgumentError`.
pub fn text(v: &Bound<'_, PyAny>, what: &str) -> Result<String> {
    if !v.is_instance_of::<PyString>() {
        return Err(MsError::invalid(format!(
            "{what} must be a string, got {}",
            type_name(v)
        )));
    }
    v.extract::<String>().map_err(|_| {
        MsError::invalid(format!(
            "{what} is not valid Unicode text (a lone surrogate?)"
        ))
    })
}

/// Token ids from any Python sequence of ints (for `decode`, `token_texts`).
pub fn token_ids(v: &Bound<'_, PyAny>, what: &str) -> Result<Vec<u32>> {
    id_list(v).map_err(|why| MsError::invalid(format!("{what} must be {why}")))
}

/// A parsed `Model.gradients` request.
pub struct GradientArgs {
    /// Prompts, or `None` when the request gives embeddings.
    pub prompts: Option<Prompts>,
    pub embeddings: Option<CapturedArray>,
    pub metric: Metric,
    pub points: Vec<HookPoint>,
    pub interventions: Vec<Intervention>,
    pub batch_size: usize,
    pub return_activations: bool,
}

/// `{"prompts" | "embeddings", "metric", "names", "interventions", "batch_size",
/// "return_activations"}`. `metric` is the JSON of a [`Metric`] (what
/// `mindscope.metrics.resolve_metric` builds), read by serde.
pub fn gradient_args(obj: &Bound<'_, PyAny>, model: &LanguageModel) -> Result<GradientArgs> {
    let req = Request::new(
        obj,
        "gradients",
        &[
            "prompts",
            "embeddings",
            "metric",
            "names",
            "interventions",
            "batch_size",
            "return_activations",
        ],
    )?;
    let registry = model.hooks();
    let (prompts, embeddings) = match (req.get("prompts"), req.get("embeddings")) {
        (Some(_), Some(_)) => {
            return Err(MsError::invalid(
                "gradients: give prompts or embeddings, not both",
            ))
        }
        (None, Some(e)) => (None, Some(float_array(&e, "embeddings")?)),
        _ => (Some(Prompts::parse(&req, "prompts")?), None),
    };
    let spec = req.string("metric")?.ok_or_else(|| {
        MsError::invalid("gradients: metric is required (the JSON of a metric spec)")
    })?;
    let metric = Metric::from_json(&spec)?;
    let mut points = Vec::new();
    for p in names(&req, registry)? {
        points.extend(registry.resolve_pattern(&p)?);
    }
    points.sort_by_key(|p| registry.index(*p));
    points.dedup();
    Ok(GradientArgs {
        prompts,
        embeddings,
        metric,
        points,
        interventions: interventions(&req, registry)?,
        batch_size: req.count("batch_size", 1, 8)?,
        return_activations: req.bool("return_activations", false)?,
    })
}
