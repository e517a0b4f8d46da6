"""Benchmark the model runtime (issue 2): load time, forward throughput, capture throughput,
peak memory, achieved GFLOP/s; and the same work with Hugging Face transformers + torch when
they are installed (run this script from a separate virtualenv that has them; never in CI).

Each measurement runs in a fresh subprocess so that peak RSS belongs to that job alone.
Prints a table with medians over --repeats runs. Usage:

    python bench/bench_model.py [--repeats 3] [--threads 2] [--batch 32] [--seq 64]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap

# SmolLM2-135M forward cost per token (2 x parameters touched per token).
FLOP_PER_TOKEN_WITH_HEAD = 273e6
FLOP_PER_TOKEN_NO_HEAD = 217e6

JOB = textwrap.dedent(
    r"""
    import json, os, resource, sys, time
    import numpy as np
    job, impl, batch, seq = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    rng = np.random.default_rng(0)
    ids = rng.integers(100, 40000, size=(batch, seq)).tolist()
    out = {}
    t0 = time.perf_counter()
    if impl == "mindscope":
        import mindscope as ms
        model = ms.load_model("smollm2-135m")
        out["load_s"] = time.perf_counter() - t0
        def forward():
            model.run(ids, return_logits="all", batch_size=batch)
        def capture():
            model.run_with_cache(ids, names="blocks.*.hook_resid_post", positions="last",
                                 return_logits=False, batch_size=batch)
    else:
        import torch
        from transformers import AutoModelForCausalLM
        import mindscope as ms
        path = ms.list_models()["smollm2-135m"]
        torch.set_num_threads(int(os.environ.get("RAYON_NUM_THREADS", "2")))
        model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                     torch_dtype=torch.float32, attn_implementation="eager")
        model.eval()
        out["load_s"] = time.perf_counter() - t0
        x = torch.tensor(ids)
        def forward():
            with torch.no_grad():
                model(x)
        def capture():
            with torch.no_grad():
                hs = model(x, output_hidden_states=True).hidden_states
                [h[:, -1].numpy().copy() for h in hs[1:]]
    fn = forward if job == "forward" else capture
    fn()  # warm-up
    t = time.perf_counter(); fn(); out["run_s"] = time.perf_counter() - t
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))
    """
)


def run_job(job: str, impl: str, batch: int, seq: int, threads: int) -> dict:
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    res = subprocess.run([sys.executable, "-c", JOB, job, impl, str(batch), str(seq)],
                         capture_output=True, text=True, env=env, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{impl} {job} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def have_transformers() -> bool:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=64)
    args = ap.parse_args()
    impls = ["mindscope"] + (["transformers"] if have_transformers() else [])
    tokens = args.batch * args.seq
    rows = []
    results: dict[tuple[str, str], dict[str, float]] = {}
    for job in ("forward", "capture"):
        for impl in impls:
            runs = [run_job(job, impl, args.batch, args.seq, args.threads) for _ in range(args.repeats)]
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            results[(job, impl)] = med
            flop = FLOP_PER_TOKEN_WITH_HEAD if job == "forward" else FLOP_PER_TOKEN_NO_HEAD
            rows.append((job, impl, med["load_s"], tokens / med["run_s"], flop * tokens / med["run_s"] / 1e9, med["peak_rss_mib"]))
    print(f"SmolLM2-135M, batch {args.batch} x {args.seq} tokens, {args.threads} threads, median of {args.repeats} "
          f"(load average {os.getloadavg()[0]:.2f})")
    print(f"{'job':8s} {'impl':13s} {'load s':>7s} {'tok/s':>8s} {'GFLOP/s':>8s} {'peak MiB':>9s}")
    for job, impl, load, tps, gflops, rss in rows:
        print(f"{job:8s} {impl:13s} {load:7.2f} {tps:8.0f} {gflops:8.1f} {rss:9.0f}")
    if "transformers" in impls:
        for job in ("forward", "capture"):
            a, b = results[(job, "mindscope")], results[(job, "transformers")]
            print(f"{job}: mindscope/transformers throughput ratio {b['run_s'] / a['run_s']:.2f}x, "
                  f"load {b['load_s'] / a['load_s']:.1f}x faster")
    print("(forward = logits at every position; capture = every layer's resid_post at the last position, no logits;"
          " capture with transformers copies all hidden states to numpy)")


if __name__ == "__main__":
    main()
