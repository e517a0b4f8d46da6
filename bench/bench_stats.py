"""Benchmark streaming corpus statistics (issue 22): rows/s of ``corpus_stats`` (mean + cov +
top-k of one hook at every real token) against the forward pass alone (``run_with_cache`` of
the same hook in the same batches), and the statistics' own cost from captured batches.
Runs alternate (forward, stats, forward, ...) so that load from other processes hits both.
Usage:

    python bench/bench_stats.py [--prompts 512] [--hook blocks.15.hook_resid_post] [--stats mean,cov,topk]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import mindscope as ms
from mindscope.stats import CorpusStats

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "ud_ewt_pos.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=512)
    ap.add_argument("--hook", default="blocks.15.hook_resid_post")
    ap.add_argument("--stats", default="mean,cov,topk")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    model = ms.load_model()
    texts = ms.storage.read_texts(CORPUS)[: args.prompts]
    stats = args.stats.split(",")
    bs = args.batch_size
    rows = sum(len(model.to_tokens(t)) for t in texts)

    def forward() -> list:
        out = []
        for s in range(0, len(texts), bs):
            _, cache = model.run_with_cache(texts[s:s + bs], names=args.hook, positions="all", return_logits=False,
                                            batch_size=bs)
            out.append((s, cache))
        return out

    def corpus() -> CorpusStats:
        return ms.corpus_stats(model, texts, names=args.hook, stats=stats, k=args.k, batch_size=bs, progress=False)

    caches = forward()  # warm-up, and the captures for the update-only timing

    def updates_only() -> CorpusStats:
        state = CorpusStats(stats, k=args.k)
        for s, cache in caches:
            state.update(cache, cache.tokens, s)
        return state

    times: dict[str, list[float]] = {"forward": [], "corpus_stats": [], "update_only": []}
    for _ in range(args.repeats):
        for name, fn in (("forward", forward), ("corpus_stats", corpus), ("update_only", updates_only)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({"prompts": len(texts), "rows": rows, "hook": args.hook, "stats": stats, "k": args.k,
                      "seconds": med, "rows_per_s": {k: rows / v for k, v in med.items()},
                      "stats_overhead": med["corpus_stats"] / med["forward"] - 1}, indent=1))


if __name__ == "__main__":
    main()
