//! Hugging Face folders (config.json + safetensors + tokenizer.json) load with the same
//! forward as GGUF files: SmolLM2's and Gemma 3's GGUF weights are written out as an HF folder
//! (HF tensor names, Q/K rows un-permuted for Llama, Gemma norms without their `1 +`), and
//! the folder must give the same logits as the GGUF file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use mindscope::formats::gguf::GgufFile;
use mindscope::hooks::{CaptureSpec, LogitsMode, Positions};
use mindscope::model::LanguageModel;

mod common;

fn python_path(expr: &str) -> Vec<PathBuf> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            &format!("import mindscope.registry as r; print('\\n'.join(map(str, {expr})))"),
        ])
        .output()
        .expect("python3 runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let paths: Vec<PathBuf> = text.lines().map(PathBuf::from).collect();
    assert!(
        !paths.is_empty() && paths.iter().all(|p| p.exists()),
        "model files not found ({expr}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    paths
}

fn permute_rows(w: &Tensor, n_heads: usize) -> Tensor {
    // llama.cpp's permutation, inverted by the loader: HF -> GGUF is (heads, 2, half) ->
    // (heads, half, 2); GGUF -> HF (what we write here) is the reverse.
    let (out, inp) = w.dims2().unwrap();
    let half = out / n_heads / 2;
    w.reshape((n_heads, half, 2, inp))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((out, inp))
        .unwrap()
}

/// Write `gguf` as an HF folder with the given HF `config.json`.
fn write_hf_folder(gguf: &GgufFile, model: &LanguageModel, config: serde_json::Value, dir: &Path) {
    let gemma = model.config().architecture == "gemma3";
    let cfg = model.config();
    let mut out: HashMap<String, Tensor> = HashMap::new();
    let block_names = [
        ("attn_norm", "input_layernorm"),
        ("attn_q", "self_attn.q_proj"),
        ("attn_k", "self_attn.k_proj"),
        ("attn_v", "self_attn.v_proj"),
        ("attn_output", "self_attn.o_proj"),
        ("ffn_gate", "mlp.gate_proj"),
        ("ffn_up", "mlp.up_proj"),
        ("ffn_down", "mlp.down_proj"),
    ];
    let gemma_names = [
        ("ffn_norm", "pre_feedforward_layernorm"),
        ("post_attention_norm", "post_attention_layernorm"),
        ("post_ffw_norm", "post_feedforward_layernorm"),
        ("attn_q_norm", "self_attn.q_norm"),
        ("attn_k_norm", "self_attn.k_norm"),
    ];
    let llama_names = [("ffn_norm", "post_attention_layernorm")];
    let mut pairs: Vec<(String, String)> = vec![
        (
            "token_embd.weight".into(),
            "model.embed_tokens.weight".into(),
        ),
        ("output_norm.weight".into(), "model.norm.weight".into()),
    ];
    for i in 0..cfg.n_layers {
        let extra: &[(&str, &str)] = if gemma { &gemma_names } else { &llama_names };
        for (g, h) in block_names.iter().chain(extra) {
            pairs.push((
                format!("blk.{i}.{g}.weight"),
                format!("model.layers.{i}.{h}.weight"),
            ));
        }
    }
    for (g, h) in pairs {
        let mut t = gguf.tensor_f32(&g).unwrap();
        if !gemma && g.ends_with("attn_q.weight") {
            t = permute_rows(&t, cfg.n_heads);
        }
        if !gemma && g.ends_with("attn_k.weight") {
            t = permute_rows(&t, cfg.n_kv_heads);
        }
        if gemma && g.contains("norm") {
            t = (t - 1.0).unwrap();
        }
        out.insert(h, t);
    }
    std::fs::create_dir_all(dir).unwrap();
    candle_core::safetensors::save(&out, dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::write(
        dir.join("tokenizer.json"),
        model.tokenizer.to_json().unwrap(),
    )
    .unwrap();
}

fn last_logits(model: &LanguageModel, ids: Vec<u32>) -> Vec<f32> {
    let spec =
        CaptureSpec::new(model.hooks(), &[], Positions::Last, None, LogitsMode::Last).unwrap();
    let out = model
        .run_ids(vec![ids], &spec, &[], 1, &Default::default())
        .unwrap();
    out.logits.unwrap().data
}

fn check_same_logits(gguf_parts: Vec<PathBuf>, config: serde_json::Value, dir: &Path) {
    let from_gguf = LanguageModel::load_gguf(&gguf_parts).unwrap();
    let gguf = GgufFile::open_parts(&gguf_parts).unwrap();
    write_hf_folder(&gguf, &from_gguf, config, dir);
    let from_folder = LanguageModel::load(dir).unwrap();
    assert_eq!(from_folder.config().n_layers, from_gguf.config().n_layers);
    let ids = from_gguf
        .tokenizer
        .encode("The capital of France is")
        .unwrap()
        .ids;
    let a = last_logits(&from_gguf, ids.clone());
    let b = last_logits(&from_folder, ids);
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(diff < 1e-3, "max |logit difference| {diff}");
    let _ = std::fs::remove_dir_all(dir);
}

fn temp_dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("mindscope-hf-{name}-{}", std::process::id()))
}

#[test]
fn llama_hf_folder_matches_the_gguf() {
    let config = serde_json::json!({
        "model_type": "llama", "hidden_size": 576, "num_attention_heads": 9,
        "num_key_value_heads": 3, "num_hidden_layers": 30, "intermediate_size": 1536,
        "vocab_size": 49152, "max_position_embeddings": 8192, "rope_theta": 100000.0,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": true
    });
    let gguf = python_path("[r.REGISTRY['smollm2-135m'].locate()[0]]");
    check_same_logits(gguf, config, &temp_dir("llama"));
}

#[test]
fn gemma3_hf_folder_matches_the_gguf() {
    let meta_path = common::shared_dir().join("reference/gemma3/meta.json");
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&meta_path)
            .unwrap_or_else(|e| panic!("{}: {e}", meta_path.display())),
    )
    .unwrap();
    // transformers' own config of this model (layer types, RoPE bases, query scale), less
    // the note that transformers read it from a GGUF (the folder written here is float32).
    let mut config = meta["config"].clone();
    config
        .as_object_mut()
        .expect("a config object")
        .remove("quantization_config");
    let gguf = python_path("r.REGISTRY['gemma3-270m'].locate()");
    check_same_logits(gguf, config, &temp_dir("gemma3"));
}
