"""Benchmark the memory of a large capture (issue 18): peak resident memory against the bytes
``run_with_cache`` returns, for every hook at every position of many short prompts.

A run writes each chunk's rows straight into the arrays it returns, so the process should grow
by the returned bytes plus one batch's working set; ``batch_size`` bounds the latter. Each
configuration runs in a fresh process (peak = VmHWM). Usage:

    python bench/bench_memory.py [--prompts 1000] [--batch-sizes 8,32] [--model smollm2-135m]

The default of 1,000 prompts of 13 tokens returns about 11 GiB: run it on a machine with
24 GiB free, or lower --prompts.
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
    model.run_with_cache("warm up", names="blocks.0.hook_resid_post")
    base = status("VmRSS")
    prompts = [f"The city number {i} is located in the country of France" for i in range(int(sys.argv[2]))]
    t = time.perf_counter()
    logits, cache = model.run_with_cache(prompts, batch_size=int(sys.argv[3]))
    dt = time.perf_counter() - t
    returned = sum(a.nbytes for a in cache.values()) + (0 if logits is None else logits.nbytes)
    print(len(cache.tokens[0]), returned, base, status("VmHWM"), dt)
    """
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", type=int, default=1000)
    ap.add_argument("--batch-sizes", default="8,32")
    args = ap.parse_args()
    mib = 1 << 20
    print(f"{args.model}: run_with_cache(prompts) with every hook at every position, logits at every position")
    print(f"| prompts x tokens | batch_size | returned MiB | RSS before MiB | peak RSS MiB | growth / returned | s |")
    print("|---|---|---|---|---|---|---|")
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        res = subprocess.run([sys.executable, "-c", JOB, args.model, str(args.prompts), str(bs)],
                             capture_output=True, text=True)
        if res.returncode != 0:
            print(f"| {args.prompts} | {bs} | failed: {res.stderr.strip().splitlines()[-1]} |")
            continue
        tokens, returned, base, peak, dt = res.stdout.split()
        returned, base, peak = int(returned), int(base), int(peak)
        print(f"| {args.prompts} x {tokens} | {bs} | {returned / mib:,.0f} | {base / mib:,.0f} | {peak / mib:,.0f} "
              f"| {(peak - base) / returned:.2f} | {float(dt):.1f} |")


if __name__ == "__main__":
    main()
