"""Benchmark the cost of progress reporting (issue 19): the same calls with no progress, with a
Python callable receiving the core's (done, total) reports, and with a forced text bar (drawn
to a discarded stderr).

Calls: a capture run over many prompts in small batches (the most reports per second of
work), and an attribution with many packs. Rounds are interleaved (none / callable / bar, then
again) so that the load of the shared machine affects all alike. Prints medians over
--repeats rounds and the ratios to "none". Usage:

    python bench/bench_progress.py [--repeats 7] [--prompts 256] [--batch-size 4]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections.abc import Callable

import mindscope as ms


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--model", default="smollm2-135m")
    args = ap.parse_args()

    model = ms.load_model(args.model)
    prompts = [f"City number {i} lies in the country of" for i in range(args.prompts)]
    request = {"prompts": prompts, "names": ["blocks.*.hook_resid_post"], "positions": "last",
               "stop_at_layer": None, "logits": False, "interventions": None, "batch_size": args.batch_size}
    ids = model.to_tokens(" ".join(["word"] * 40) + " The capital of France is")
    ablation = {"prompt_ids": ids, "target_ids": model.to_tokens(" Paris"),
                "spans": [(i, i + 1) for i in range(len(ids))], "ablation": "delete", "replace_id": None,
                "batch_size": 8, "rows_per_batch": 2048, "naive": False}
    reports = [0]

    def count(done: int, total: int) -> None:
        reports[0] += 1

    def with_bar(call: Callable[[Callable[[int, int], None] | None], object]) -> Callable[[], object]:
        def run() -> object:
            saved, sys.stderr = sys.stderr, io.StringIO()
            try:
                with ms.progress.native_progress(True, "items", "bench") as report:
                    return call(report)
            finally:
                sys.stderr = saved
        return run

    calls = {
        f"run_with_cache {args.prompts} prompts, batch {args.batch_size}": lambda cb: model._native.run(request, cb),
        f"attribution {len(ids)} variants, packs of 8": lambda cb: model._native.ablation_scores(ablation, cb),
    }
    print(f"{'call':44s} {'none s':>8s} {'callable s':>11s} {'bar s':>8s} {'callable/none':>14s} "
          f"{'bar/none':>9s} {'reports/call':>13s}")
    for name, call in calls.items():
        variants = {"none": lambda c=call: c(None), "callable": lambda c=call: c(count), "bar": with_bar(call)}
        for fn in variants.values():
            fn()  # warm-up
        times: dict[str, list[float]] = {k: [] for k in variants}
        reports[0] = 0
        for _ in range(args.repeats):
            for key, fn in variants.items():
                times[key].append(timed(fn))
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"{name:44s} {med['none']:8.3f} {med['callable']:11.3f} {med['bar']:8.3f} "
              f"{med['callable'] / med['none']:14.3f} {med['bar'] / med['none']:9.3f} "
              f"{reports[0] / args.repeats:13.1f}")


if __name__ == "__main__":
    main()
