"""Benchmark activation dumps (issue 6): every layer's resid_post at the last token for N prompts
(default 10,000): dump throughput relative to the forward pass alone (same capture, no disk),
peak RSS of the dump process, bytes written, and read-back speed of one layer via the dump's
memory map vs ``np.load`` of an ``.npy`` with the same data. Usage:

    python bench/bench_dump.py [--prompts 10000] [--dtype float16] [--out /tmp/ms-bench-dump]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np

JOB = textwrap.dedent(
    r"""
    import json, resource, sys, time
    import mindscope as ms
    job, n, out, dtype = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    model = ms.load_model()
    texts = [f"Record {i}: the city of {['Paris', 'Lima', 'Oslo', 'Cairo'][i % 4]} is in" for i in range(n)]
    t = time.perf_counter()
    if job == "forward":
        for s in range(0, n, 256):
            model.run_with_cache(texts[s:s + 256], names="blocks.*.hook_resid_post", positions="last",
                                 return_logits=False, batch_size=32)
    else:
        model.dump(texts, out, names="blocks.*.hook_resid_post", dtype=dtype, quiet=True, overwrite=True)
    print(json.dumps({"seconds": time.perf_counter() - t,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
    """
)


def run(job: str, n: int, out: str, dtype: str) -> dict:
    res = subprocess.run([sys.executable, "-c", JOB, job, str(n), out, dtype], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-2000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=10000)
    ap.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    ap.add_argument("--out", default="/tmp/ms-bench-dump")
    args = ap.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    fwd = run("forward", args.prompts, args.out, args.dtype)
    dmp = run("dump", args.prompts, args.out, args.dtype)
    import mindscope as ms

    d = ms.load_dump(args.out)
    size = sum(os.path.getsize(p) for p in d.part_files())
    layer = "blocks.12.hook_resid_post"
    npy = os.path.join(args.out, "layer12.npy")
    np.save(npy, np.asarray(d[layer]))
    t = time.perf_counter()
    a = ms.load_dump(args.out)[layer]
    s_mmap = float(np.asarray(a, dtype=np.float32).sum())
    t_mmap = time.perf_counter() - t
    t = time.perf_counter()
    s_npy = float(np.load(npy).astype(np.float32).sum())
    t_npy = time.perf_counter() - t
    os.unlink(npy)
    print(f"{args.prompts} prompts, every layer's resid_post at the last token, {args.dtype} "
          f"(load average {os.getloadavg()[0]:.2f})")
    print(f"forward + capture only      {fwd['seconds']:8.1f} s   peak {fwd['peak_rss_mib']:7.0f} MiB")
    print(f"dump to Arrow IPC           {dmp['seconds']:8.1f} s   peak {dmp['peak_rss_mib']:7.0f} MiB"
          f"   throughput {100 * fwd['seconds'] / dmp['seconds']:.0f}% of forward-only")
    print(f"bytes written               {size / 2**20:8.1f} MiB in {len(d.part_files())} parts")
    print(f"read one layer (mmap+sum)   {t_mmap * 1000:8.1f} ms   np.load(.npy)+sum {t_npy * 1000:.1f} ms"
          f"   same sum: {abs(s_mmap - s_npy) < 1e-3 * max(1.0, abs(s_npy))}")


if __name__ == "__main__":
    main()
