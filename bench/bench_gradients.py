"""Benchmark gradients (issue 20): time and peak resident memory of ``model.gradients`` on one
long prompt (every layer's resid_pre, attn_out and mlp_out), of a forward of the same prompt
for scale, and of integrated gradients with 32 steps on a short prompt. Each job runs in a
fresh process (peak = VmHWM, which includes the loaded weights). Usage:

    python bench/bench_gradients.py [--tokens 2048] [--model smollm2-135m]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap

JOB = textwrap.dedent(
    r"""
    import sys, time
    import mindscope as ms
    def status(key):  # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key + ":"))
    model = ms.load_model(sys.argv[1])
    job, n = sys.argv[2], int(sys.argv[3])
    text = " ".join(["The quick brown fox jumps over the lazy dog near the river bank."] * 400)
    ids = model.to_tokens(text)[:n]
    base = status("VmRSS")
    t = time.perf_counter()
    if job == "forward":
        model.run([ids], return_logits="last")
    elif job == "gradients":
        names = [f"blocks.{l}.hook_{k}" for k in ("resid_pre", "attn_out", "mlp_out") for l in range(model.n_layers)]
        model.gradients([ids], ("logprob", " the"), names=names)
    else:
        ids = model.to_tokens("The capital of France is")  # the prompt's tokens, n is the step count
        ms.integrated_gradients(model, ids, " Paris", n_steps=n)
    dt = time.perf_counter() - t
    print(len(ids), base, status("VmHWM"), dt)
    """
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=32)
    args = ap.parse_args()
    mib = 1 << 20
    print(f"{args.model}: one process per job; peak RSS = VmHWM (weights included)")
    print("| job | tokens | RSS before MiB | peak RSS MiB | s |")
    print("|---|---|---|---|---|")
    for job, n in [("forward", args.tokens), ("gradients", args.tokens), ("ig", args.steps)]:
        res = subprocess.run([sys.executable, "-c", JOB, args.model, job, str(n)], capture_output=True, text=True)
        label = {"forward": "forward (last logits)", "gradients": "gradients (90 sites)",
                 "ig": f"integrated_gradients, {n} steps"}[job]
        if res.returncode != 0:
            print(f"| {label} | {n} | failed: {res.stderr.strip().splitlines()[-1]} |")
            continue
        tokens, base, peak, dt = res.stdout.split()
        print(f"| {label} | {tokens} | {int(base) / mib:,.0f} | {int(peak) / mib:,.0f} | {float(dt):.1f} |")


if __name__ == "__main__":
    main()
