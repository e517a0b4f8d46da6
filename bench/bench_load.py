"""Benchmark model loading (issue 17): load time and peak resident memory against the size of
the weights in memory, for the packaged GGUF files and for Hugging Face folders of safetensors,
sharded and not, in bf16 (converted to float32 on load).

Each load runs in a fresh process. The extra memory of a load is its peak RSS minus the RSS
before it (Python, numpy and mindscope imported); the target is at most 1.2x the weights' final
in-memory size: no second full copy of the weights (the file is mapped, and each tensor's
pages are released once converted). Besides the tiny sharded folder of ../shared, SmolLM2's
GGUF weights are written out here as a bf16 Hugging Face folder in 4 shards (270 MB), so that
the safetensors path is measured at a size where the ratio means something. Usage:

    python bench/bench_load.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

JOB = textwrap.dedent(
    r"""
    import json, sys, time
    import numpy as np
    import mindscope as ms
    def status_mib(key):
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec.
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    before = status_mib("VmRSS")
    t0 = time.perf_counter()
    model = ms.load_model(sys.argv[1])
    load_s = time.perf_counter() - t0
    print(json.dumps({"load_s": load_s, "before_mib": before, "peak_mib": status_mib("VmHWM"),
                      "after_mib": status_mib("VmRSS"), "weights_mib": model.weight_bytes() / 2**20}))
    """
)


def llama_folder(out: Path, shards: int, shared: Path) -> Path:
    """A Hugging Face folder of a SmolLM2-sized Llama (135M parameters) with random bf16
    weights in `shards` shards plus an index: loading cost does not depend on the values."""
    import numpy as np

    d, f, layers, v, kv = 576, 1536, 30, 49152, 192
    rng = np.random.default_rng(0)
    tensors: dict[str, np.ndarray] = {"model.embed_tokens.weight": rng.standard_normal((v, d), np.float32) * 0.02}
    for i in range(layers):
        p = f"model.layers.{i}."
        for name, shape in [("self_attn.q_proj", (d, d)), ("self_attn.k_proj", (kv, d)), ("self_attn.v_proj", (kv, d)),
                            ("self_attn.o_proj", (d, d)), ("mlp.gate_proj", (f, d)), ("mlp.up_proj", (f, d)),
                            ("mlp.down_proj", (d, f))]:
            tensors[p + name + ".weight"] = rng.standard_normal(shape, np.float32) * 0.02
        tensors[p + "input_layernorm.weight"] = np.ones(d, np.float32)
        tensors[p + "post_attention_layernorm.weight"] = np.ones(d, np.float32)
    tensors["model.norm.weight"] = np.ones(d, np.float32)
    out.mkdir(parents=True, exist_ok=True)
    names = list(tensors)
    per = -(-len(names) // shards)
    weight_map = {}
    for k in range(shards):
        file = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[k * per:(k + 1) * per]}
        write_safetensors(out / file, part, "BF16")
        weight_map.update({n: file for n in part})
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = {"model_type": "llama", "hidden_size": d, "intermediate_size": f, "num_hidden_layers": layers,
              "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": v, "max_position_embeddings": 8192,
              "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16"}
    (out / "config.json").write_text(json.dumps(config))
    # Any tokenizer with no more tokens than the model's vocabulary will do.
    (out / "tokenizer.json").write_bytes((shared / "models" / "tiny" / "llama3" / "tokenizer.json").read_bytes())
    return out


def write_safetensors(path: Path, tensors: dict[str, "np.ndarray"], dtype: str) -> None:
    import numpy as np

    header, chunks, offset = {}, [], 0
    for name, arr in tensors.items():
        if dtype == "BF16":
            bits = np.ascontiguousarray(arr, dtype=np.float32).view(np.uint32)
            data = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16).tobytes()
        else:
            data = np.ascontiguousarray(arr, dtype=np.float32).tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for c in chunks:
            f.write(c)


def run(path: str) -> dict:
    res = subprocess.run([sys.executable, "-c", JOB, path], capture_output=True, text=True, check=False,
                         env=dict(os.environ, RAYON_NUM_THREADS=os.environ.get("RAYON_NUM_THREADS", "2")))
    if res.returncode != 0:
        raise RuntimeError(f"loading {path} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[1].parent / "shared"))
    args = ap.parse_args()
    import mindscope as ms

    shared = Path(args.shared)
    with tempfile.TemporaryDirectory() as tmp:
        bf16 = llama_folder(Path(tmp) / "llama-135m-bf16-sharded", 4, shared)
        cases = [("smollm2-135m (GGUF Q4_1)", "smollm2-135m"), ("gemma3-270m (GGUF Q4_K_M, 4 parts)", "gemma3-270m"),
                 ("135M Llama, bf16, 4 shards", str(bf16)),
                 ("tiny mistral, bf16, 8 shards", str(shared / "models" / "tiny" / "mistral"))]
        cases = [(label, p) for label, p in cases if p not in ms.list_models() or ms.list_models()[p]]
        print(f"{'model':36s} {'load s':>7s} {'weights MiB':>12s} {'load MiB':>9s} {'ratio':>6s} "
              f"{'kept MiB':>9s} {'peak MiB':>9s}   (median of {args.repeats})")
        runs: dict[str, list[dict]] = {label: [] for label, _ in cases}
        for _ in range(args.repeats):  # interleaved rounds
            for label, path in cases:
                runs[label].append(run(path))
        for label, _ in cases:
            med = {k: statistics.median(r[k] for r in runs[label]) for k in runs[label][0]}
            extra = med["peak_mib"] - med["before_mib"]
            kept = med["after_mib"] - med["before_mib"]
            print(f"{label:36s} {med['load_s']:7.2f} {med['weights_mib']:12.1f} {extra:9.1f} "
                  f"{extra / med['weights_mib']:6.2f} {kept:9.1f} {med['peak_mib']:9.0f}")
    print("load MiB = peak RSS during the load - RSS before it; ratio = load MiB / the weights' float32 size "
          "(target <= 1.2); kept MiB = RSS after the load - before it (weights, tokenizer, hook tables)")


if __name__ == "__main__":
    main()
