"""Benchmark activation patching (issue 20): the indirect-object pair of the gradients reference,
the logit difference " Mary" - " John" at the last token, the clean resid_pre patched into the
corrupt run at every (layer, position) of SmolLM2-135M.

mindscope: (1) `ms.activation_patching`, packed patches continuing the corrupt run's cache
(blocks l.. on positions t.. only, nothing run before the first token where the prompts
differ), (2) its naive mode, one full forward per patch with an Action::Replace intervention.
With transformers + torch (a separate virtualenv, never in CI): a plain loop, one forward per
patch with a forward pre-hook replacing the layer's input at that position. Every such forward
costs the same, so each round times --hf-sample patches spread over the grid (their values are
checked against the reference too) and scales the time per patch to (a) all 420 patches and
(b) the patches from the first differing token on (a patch before it is a no-op), so the ratio
to (b) is what packing and the shared cache give on their own.
Rounds interleave the implementations (transformers in a subprocess of --hf-python, its model
load not timed), so the load of the shared machine affects all alike. Prints medians over
--rounds and the ratios. Usage:

    python bench/bench_patching.py [--rounds 3] [--threads 2] [--hf-threads 1] [--hf-sample 30]
                                   [--hf-python /work/venv-bench/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time

import numpy as np
from _timing import have_transformers

REFERENCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "reference", "gradients")

# The transformers side, run by --hf-python: one timed loop per call (the model load is not timed).
HF_JOB = textwrap.dedent(
    r"""
    import json, os, sys, time
    import numpy as np, torch
    from transformers import AutoModelForCausalLM
    job = json.loads(sys.argv[1])
    torch.set_num_threads(job["threads"])
    path, clean, corrupt, a, b = job["path"], job["clean"], job["corrupt"], job["a"], job["b"]
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                 dtype=torch.float32, attn_implementation="eager").eval()
    layers = model.model.layers
    with torch.no_grad():
        hs = model(torch.tensor([clean]), output_hidden_states=True).hidden_states  # [l]: input of layer l

    def patched_ld(layer, pos):
        def pre_hook(module, args, kwargs):
            h = (args[0] if args else kwargs["hidden_states"]).clone()
            h[:, pos] = hs[layer][:, pos]
            if args:
                return (h, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": h}
        handle = layers[layer].register_forward_pre_hook(pre_hook, with_kwargs=True)
        try:
            logits = model(torch.tensor([corrupt])).logits[0, -1]
        finally:
            handle.remove()
        return (logits[a] - logits[b]).item()

    cells = [tuple(c) for c in job["cells"]]
    with torch.no_grad():
        t = time.perf_counter()
        out = [patched_ld(l, p) for l, p in cells]
        elapsed = time.perf_counter() - t
    print(json.dumps({"seconds": elapsed, "scores": out}))
    """
)


def run_hf(python: str, payload: dict) -> tuple[float, list[float]]:
    res = subprocess.run([python, "-c", HF_JOB, json.dumps(payload)], capture_output=True, text=True, check=False,
                         env=dict(os.environ, OMP_NUM_THREADS=str(payload["threads"])))
    if res.returncode != 0:
        raise RuntimeError(f"transformers job failed:\n{res.stderr[-2000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    return out["seconds"], out["scores"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--hf-threads", type=int, default=None,
                    help="torch threads (default: --threads; on a loaded machine 2 OpenMP threads can be far slower than 1)")
    ap.add_argument("--hf-sample", type=int, default=30, help="patches timed per round in the transformers loop")
    ap.add_argument("--hf-python", default="/work/venv-bench/bin/python",
                    help="a Python with torch + transformers (e.g. a separate virtualenv's), for the comparison")
    args = ap.parse_args()
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    import mindscope as ms

    meta = json.load(open(os.path.join(REFERENCE, "smollm2.json")))
    pair = meta["pairs"][0]
    ref = np.load(os.path.join(REFERENCE, "smollm2.npz"))["p0_patch_resid_pre"]
    model = ms.load_model("smollm2-135m")
    metric = ("logit_diff", pair["a"], pair["b"])
    clean, corrupt = model.to_tokens(pair["clean"]), model.to_tokens(pair["corrupt"])

    def mindscope(naive: bool):
        def go():
            s = ms.activation_patching(model, clean, corrupt, metric, sites="resid_pre", naive=naive)
            return s.scores["resid_pre"]
        return go

    impls = {"mindscope": mindscope(False), "mindscope naive": mindscope(True)}
    hf = have_transformers(args.hf_python)
    payload = {"path": ms.list_models()["smollm2-135m"], "clean": clean, "corrupt": corrupt,
               "a": model.token_id(pair["a"]), "b": model.token_id(pair["b"]), "threads": args.hf_threads or args.threads}
    times: dict[str, list[float]] = {}
    results: dict[str, np.ndarray] = {}
    n_layers, n_pos = ref.shape
    first = next(i for i, (x, y) in enumerate(zip(clean, corrupt)) if x != y)
    grid = [(l, t) for l in range(n_layers) for t in range(n_pos)]
    impls["mindscope"]()  # warm-up
    for r in range(args.rounds):
        for name, fn in impls.items():
            t = time.perf_counter()
            results[name] = fn()
            times.setdefault(name, []).append(time.perf_counter() - t)
            print(f"round {r}: {name} {times[name][-1]:.2f} s", file=sys.stderr, flush=True)
        if hf:
            # A different spread of cells each round; the time per patch does not depend on the cell.
            cells = [grid[(r + k * len(grid) // args.hf_sample) % len(grid)] for k in range(args.hf_sample)]
            seconds, scores = run_hf(args.hf_python, {**payload, "cells": cells})
            per_patch = seconds / len(cells)
            times.setdefault("transformers loop, all patches", []).append(per_patch * len(grid))
            times.setdefault("transformers loop, no-op patches skipped", []).append(
                per_patch * n_layers * (n_pos - first))
            got = results.setdefault("transformers loop, all patches", np.full(ref.shape, np.nan))
            for (l, p), v in zip(cells, scores):
                got[l, p] = v
            results["transformers loop, no-op patches skipped"] = got
            print(f"round {r}: transformers {per_patch:.3f} s per patch", file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"Activation patching, SmolLM2-135M, resid_pre at every (layer, position): {n_layers} x {n_pos} = "
          f"{n_layers * n_pos} patches ({n_layers * (n_pos - first)} from the first differing token, {first}), "
          f"{args.threads} threads (torch: {payload['threads']}), median of {args.rounds} interleaved rounds "
          f"(load average {os.getloadavg()[0]:.2f})")
    print(f"{'implementation':44s} {'seconds':>8s} {'max |Δ| vs reference':>22s}")
    for name, t in med.items():
        got = results[name]
        ok = np.isfinite(got)
        print(f"{name:44s} {t:8.3f} {np.abs(got[ok] - ref[ok]).max():22.1e}")
    fast = med["mindscope"]
    print(f"mindscope is {med['mindscope naive'] / fast:.1f}x faster than its naive loop (one full forward per patch)")
    if hf:
        print(f"transformers: {args.hf_sample} patches timed per round, scaled to the loop's patch count")
        print(f"mindscope is {med['transformers loop, all patches'] / fast:.1f}x faster than the plain transformers loop, "
              f"{med['transformers loop, no-op patches skipped'] / fast:.1f}x faster than that loop skipping the "
              "no-op patches")
    else:
        print(f"{args.hf_python} has no torch + transformers: the transformers loop was not run")


if __name__ == "__main__":
    main()
