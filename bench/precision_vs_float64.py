"""How far is float32 from exact? mindscope and transformers (float32) against transformers run
in float64 on the same SmolLM2 weights, per layer of the residual stream (issue 2's reference
check; never in CI: it needs torch + transformers from a separate virtualenv).

The reference test (tests/python/test_model_reference.py) compares mindscope with one float32
run of transformers. Both carry float32 rounding, which the last layers amplify on some prompts;
this script measures how much, so that the test's tolerance rests on a measurement:
for each reference prompt it prints the worst element-wise error (relative to max(1, |x|)) of
  - mindscope, alone and in one padded batch,
  - the stored reference (``../shared/reference/smollm2``, transformers float32),
  - transformers float32 on this machine (eager and sdpa attention, 1 and 2 threads, alone
    and in one padded batch),
each against transformers float64. Usage:

    python bench/precision_vs_float64.py --hf-python /path/to/venv/bin/python [--shared ../shared]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

HF_JOB = textwrap.dedent(
    r"""
    import json, sys, numpy as np, torch, os
    from transformers import AutoModelForCausalLM
    gguf, ids_json, out = sys.argv[1:4]
    ids = json.loads(ids_json)

    def load(dtype, attn):
        return AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf),
                                                    dtype=dtype, attn_implementation=attn).eval()

    def resid_post(model, batch):
        # Raw block outputs [layers, batch, pos, d_model] of a right-padded batch.
        seen = []
        hooks = [layer.register_forward_hook(
            lambda mod, inp, o: seen.append((o[0] if isinstance(o, tuple) else o).detach().double().numpy()))
            for layer in model.model.layers]
        width = max(len(x) for x in batch)
        x = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros_like(x)
        for j, row in enumerate(batch):
            x[j, :len(row)] = torch.tensor(row)
            mask[j, :len(row)] = 1
        with torch.no_grad():
            model(x, attention_mask=mask)
        for h in hooks:
            h.remove()
        return np.stack(seen)

    results = {}
    torch.set_num_threads(2)
    exact = load(torch.float64, "eager")
    for i, row in enumerate(ids):
        results[f"float64/{i}"] = resid_post(exact, [row])[:, 0]
    del exact
    for attn in ("eager", "sdpa"):
        model = load(torch.float32, attn)
        for threads in (1, 2):
            torch.set_num_threads(threads)
            batched = resid_post(model, ids)
            for i, row in enumerate(ids):
                results[f"hf {attn} {threads}t alone/{i}"] = resid_post(model, [row])[:, 0]
                results[f"hf {attn} {threads}t batched/{i}"] = batched[:, i, :len(row)]
    np.savez(out, **results)
    """
)


def worst(ours: np.ndarray, exact: np.ndarray) -> tuple[float, float]:
    """Worst element-wise error relative to max(1, |exact|): all layers, and layers 0-17."""
    err = np.abs(ours - exact) / np.maximum(1.0, np.abs(exact))
    return float(err.max()), float(err[:18].max())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hf-python", required=True, help="a Python with torch + transformers")
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[1].parent / "shared"))
    args = ap.parse_args()

    import mindscope as ms

    folder = Path(args.shared) / "reference" / "smollm2"
    meta = json.loads((folder / "meta.json").read_text())
    refs = [dict(np.load(folder / f"prompt{i}.npz")) for i in range(len(meta["prompts"]))]
    ids = [[int(t) for t in r["input_ids"]] for r in refs]
    gguf = ms.list_models()["smollm2-135m"]

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "hf.npz")
        subprocess.run([args.hf_python, "-c", HF_JOB, gguf, json.dumps(ids), out], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        hf = dict(np.load(out))

    model = ms.load_model("smollm2-135m")
    rows: dict[str, list[tuple[float, float]]] = {}
    _, batched = model.run_with_cache(ids, names="blocks.*.hook_resid_post", positions="all")
    for i, row in enumerate(ids):
        exact = hf[f"float64/{i}"]
        _, alone = model.run_with_cache([row], names="blocks.*.hook_resid_post", positions="all")
        rows.setdefault("mindscope alone", []).append(worst(alone.stack("hook_resid_post")[:, 0], exact))
        rows.setdefault("mindscope batched", []).append(
            worst(batched.stack("hook_resid_post")[:, i, :len(row)], exact))
        rows.setdefault("reference (stored, transformers f32)", []).append(worst(refs[i]["resid_post"], exact))
        for key in sorted(k for k in hf if k.startswith("hf ") and k.endswith(f"/{i}")):
            rows.setdefault(key.rsplit("/", 1)[0], []).append(worst(hf[key], exact))

    print(f"worst |x - x_float64| / max(1, |x_float64|) over every layer's resid_post (layers 0-17 in brackets)")
    print(f"{'run':40s} " + " ".join(f"{'prompt ' + str(i):>20s}" for i in range(len(ids))))
    for name, vals in rows.items():
        print(f"{name:40s} " + " ".join(f"{a:10.2e} [{b:7.1e}]" for a, b in vals))


if __name__ == "__main__":
    sys.exit(main())
