//! The rotary embedding a Hugging Face config describes, in every spelling the Hub carries:
//! `rope_parameters` (transformers 5), the older `rope_theta` + `rope_scaling` (+
//! `partial_rotary_factor`), and GPT-NeoX's `rotary_emb_base` + `rotary_pct`. A `rope_type`
//! mindscope does not implement is refused, naming the key.

use serde_json::{Map, Value};

use crate::error::Result;
use crate::formats::hf_config::HfConfig;
use crate::model::config::{RopeScaling, RopeSpec};

/// A number in a RoPE dict (`what` names it in errors).
fn number(c: &HfConfig, map: &Map<String, Value>, key: &str, what: &str) -> Result<Option<f64>> {
    match map.get(key).filter(|v| !v.is_null()) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|x| x.is_finite())
            .map(Some)
            .ok_or_else(|| {
                c.unsupported(&format!("{what}.{key}"), format!("= {v} is not a number"))
            }),
    }
}

/// The RoPE for heads of `d_head`. `params` is the dict to read and its key name (a layer
/// type's entry of a nested `rope_parameters`), else the config's own; `default_theta` is the
/// family's base when the config gives none.
pub fn hf_rope(
    c: &HfConfig,
    d_head: usize,
    params: Option<(&str, &Map<String, Value>)>,
    default_theta: f64,
) -> Result<RopeSpec> {
    let empty = Map::new();
    let (key, map) = match params {
        Some(p) => p,
        None => match (
            c.opt_object("rope_parameters")?,
            c.opt_object("rope_scaling")?,
        ) {
            (Some(m), _) => ("rope_parameters", m),
            (None, Some(m)) => ("rope_scaling", m),
            (None, None) => ("rope_parameters", &empty),
        },
    };
    let theta = match number(c, map, "rope_theta", key)? {
        Some(t) => t,
        None => c
            .opt_f64("rope_theta")?
            .or(c.opt_f64("rotary_emb_base")?)
            .unwrap_or(default_theta),
    };
    let partial = match number(c, map, "partial_rotary_factor", key)? {
        Some(p) => p,
        None => c
            .opt_f64("partial_rotary_factor")?
            .or(c.opt_f64("rotary_pct")?)
            .unwrap_or(1.0),
    };
    if !(partial > 0.0 && partial <= 1.0) {
        return Err(c.unsupported(
            "partial_rotary_factor",
            format!("= {partial} is outside (0, 1]"),
        ));
    }
    for multimodal in ["mrope_section", "mrope_interleaved"] {
        if map.contains_key(multimodal) {
            return Err(c.unsupported(
                &format!("{key}.{multimodal}"),
                "(multimodal RoPE) is not implemented",
            ));
        }
    }
    let rope_type = map
        .get("rope_type")
        .or_else(|| map.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let need = |k: &str| -> Result<f64> {
        number(c, map, k, key)?.ok_or_else(|| {
            c.unsupported(
                &format!("{key}.{k}"),
                format!("is missing (rope_type '{rope_type}' needs it)"),
            )
        })
    };
    let scaling = match rope_type {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: need("factor")?,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: need("factor")?,
            low_freq_factor: need("low_freq_factor")?,
            high_freq_factor: need("high_freq_factor")?,
            original_context: need("original_max_position_embeddings")?,
        },
        other => {
            return Err(c.unsupported(
                &format!("{key}.rope_type"),
                format!("= '{other}' is not implemented (supported: default, linear, llama3)"),
            ))
        }
    };
    Ok(RopeSpec {
        theta,
        // transformers: int(head_dim * partial_rotary_factor).
        rotary_dim: (d_head as f64 * partial) as usize,
        scaling,
    })
}
