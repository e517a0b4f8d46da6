"""Benchmark input-ablation attribution (issue 5): a 32-token prompt, every token deleted, the
log-probability of one target token.

mindscope: (1) the batched engine that shares the clean prefix's keys/values and computes only
the target rows' logits, (2) its naive mode, one full forward per variant. With transformers +
torch installed (a separate virtualenv; never in CI): (a) 32 sequential forward passes and
(b) one batched forward of the 33 sequences (clean + 32 ablated, right-padded). Everything runs
in one run, side by side (transformers in a subprocess of --hf-python), so that the load of the
shared machine affects all alike.
Prints medians over --repeats runs and the ratios. Usage:

    python bench/bench_attribution.py [--repeats 5] [--threads 2] [--hf-python /path/to/venv/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
from _timing import have_transformers, median_time

PROMPT = ("The old lighthouse keeper climbed the spiral stairs every evening to light the great lamp, because the "
          "fishing boats passing the rocky northern coast at night depended on its beam to find the harbour")


# The transformers side, run by --hf-python (torch lives in a separate virtualenv, never in CI).
HF_JOB = textwrap.dedent(
    r"""
    import json, os, sys, time, statistics
    import numpy as np, torch
    from transformers import AutoModelForCausalLM
    job = json.loads(sys.argv[1])
    torch.set_num_threads(job["threads"])
    path, ids, target = job["path"], job["ids"], job["target"]
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                 dtype=torch.float32).eval()
    variants = [ids] + [ids[:i] + ids[i + 1:] for i in range(len(ids))]

    def sequential():
        out = []
        with torch.no_grad():
            for v in variants:
                logits = model(torch.tensor([v])).logits[0, -1]
                out.append(torch.log_softmax(logits, -1)[target].item())
        return out

    def batched():
        width = max(len(v) for v in variants)
        x = torch.tensor([v + [0] * (width - len(v)) for v in variants])
        mask = torch.tensor([[1] * len(v) + [0] * (width - len(v)) for v in variants])
        with torch.no_grad():
            logits = model(x, attention_mask=mask).logits
        last = torch.tensor([len(v) - 1 for v in variants])
        return torch.log_softmax(logits[torch.arange(len(variants)), last], -1)[:, target].tolist()

    def median_time(fn):
        fn()
        times = []
        for _ in range(job["repeats"]):
            t = time.perf_counter(); out = fn(); times.append(time.perf_counter() - t)
        return statistics.median(times), out

    t_seq, seq = median_time(sequential)
    t_bat, _ = median_time(batched)
    print(json.dumps({"t_seq": t_seq, "t_bat": t_bat, "seq": seq}))
    """
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64, help="most variants per packed run in the shared-prefix engine")
    ap.add_argument("--hf-python", default=sys.executable,
                    help="a Python with torch + transformers (e.g. a separate virtualenv's), for the comparison")
    args = ap.parse_args()
    os.environ.setdefault("RAYON_NUM_THREADS", str(args.threads))
    import mindscope as ms

    model = ms.load_model("smollm2-135m")
    ids = model.to_tokens(PROMPT)[:32]
    assert len(ids) == 32, len(ids)
    target = [int(np.argmax(model.run([ids], return_logits="last")[0]))]
    spans = [(i, i + 1) for i in range(32)]
    rows = []
    t_fast, fast = median_time(lambda: model.ablation_scores(ids, target, spans, "delete", batch_size=args.batch),
                         args.repeats)
    rows.append(("mindscope, shared prefix + target rows only", t_fast))
    t_naive, naive = median_time(lambda: model.ablation_scores(ids, target, spans, "delete", batch_size=1, naive=True),
                           args.repeats)
    rows.append(("mindscope, naive: 32 + 1 full forwards", t_naive))
    diff = max(abs(fast[0] - naive[0]), float(np.max(np.abs(np.array(fast[1]) - naive[1]))))

    hf = None
    if have_transformers(args.hf_python):
        path = ms.list_models()["smollm2-135m"]
        payload = json.dumps({"path": path, "ids": ids, "target": target[0], "threads": args.threads,
                              "repeats": args.repeats})
        res = subprocess.run([args.hf_python, "-c", HF_JOB, payload], capture_output=True, text=True, check=False,
                             env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
        if res.returncode != 0:
            raise RuntimeError(f"transformers job failed:\n{res.stderr[-2000:]}")
        out = json.loads(res.stdout.strip().splitlines()[-1])
        t_seq, t_bat, seq = out["t_seq"], out["t_bat"], np.array(out["seq"])
        rows += [("transformers (a): 32 + 1 sequential forwards", t_seq),
                 ("transformers (b): one batch of 33 sequences", t_bat)]
        hf = (t_seq, t_bat, float(np.max(np.abs(seq - np.array([fast[0], *fast[1]])))))

    print(f"Ablation attribution, SmolLM2-135M, 32-token prompt, every token deleted, {args.threads} threads, "
          f"median of {args.repeats} (load average {os.getloadavg()[0]:.2f})")
    print(f"{'implementation':48s} {'seconds':>8s}")
    for name, t in rows:
        print(f"{name:48s} {t:8.3f}")
    print(f"shared-prefix engine is {t_naive / t_fast:.2f}x faster than mindscope's naive loop; "
          f"max |Δ log p| between them {diff:.1e}")
    if hf:
        print(f"vs transformers: {hf[0] / t_fast:.2f}x faster than (a), {hf[1] / t_fast:.2f}x faster than (b); "
              f"max |Δ log p| vs transformers {hf[2]:.1e}")
    else:
        print("transformers + torch not installed: reference timings not run (issue 5 quotes (a) 4.75 s, (b) 2.59 s "
              "measured on this kind of machine)")


if __name__ == "__main__":
    main()
