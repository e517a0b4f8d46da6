"""Benchmark the model runtime (issues 2, 7 and 21) side by side: mindscope with float32 weights,
mindscope with quantized weights (GGUF blocks as stored), Hugging Face transformers + torch
(float32, loaded from the same GGUF) and llama.cpp (llama-cpp-python, generation only, the same
GGUF), on SmolLM2-135M, Gemma-3-270M and all-MiniLM-L6-v2 (float32 only: it is a HF folder).

Jobs (each in a fresh subprocess, so that peak RSS = VmHWM belongs to that job alone; each
process loads the model, warms up once (the batched jobs on 2 prompts) and times --reps calls;
the table shows the median over --rounds interleaved rounds of those in-process medians: every
round runs every job once, so a slow spell of the shared machine hits all rows alike; Ctrl-C
or SIGTERM stops and prints the jobs that finished):

- load: the model load alone (imports excluded), seconds;
- generate: batch 1, greedy, --new-tokens new tokens (EOS does not stop it), --threads threads,
  from a short prompt (prefill included), tokens/s. "hooks": mindscope captures every
  blocks.*.hook_resid_post at every step in the core (``generate(..., names=RESID_POST)``;
  checked: n_layers arrays of ``[1, prompt + new - 1, d_model]``); transformers returns
  ``output_hidden_states`` and the last position of each layer is copied to numpy. "hooks
  (callback)" (mindscope only): the same sites through a Python function, a ``(glob, fn)``
  intervention whose fn copies the last position and returns None (checked: new x n_layers
  calls). "plain": no capture. llama.cpp has no hooks (plain only);
- forward: --batch x --seq random token ids, logits at every position (the sentence embedding
  for minilm-l6), tokens/s;
- capture: the same tokens, every layer's resid_post at the last position, no logits, tokens/s;
- memory: weights in memory (``model.weight_bytes()``; transformers: its parameters), the RSS the
  load added (VmRSS after load - before), peak RSS (VmHWM) of each job, against the GGUF file;
- numerics (mindscope only, once): quantized vs float32 on a few real prompts: max |d log p|
  over the vocabulary at every position, the same for the float32 top-1 token's log p, top-1
  agreement, and per layer ||d resid_post|| / ||resid_post|| per position (median and max).

Three Pythons can take part: the mindscope jobs run with this interpreter (the one that has
the mindscope build to measure, e.g. ``/work/venv-qbench/bin/python``); the transformers and
llama.cpp jobs run with ``--reference-python`` (default: this interpreter; e.g.
``/work/venv-bench/bin/python``, a virtualenv with torch, transformers, gguf and
llama-cpp-python, which need not have mindscope); ``--baseline-python`` adds rows for another
mindscope build (e.g. the previous commit's, in its own virtualenv) for a before/after. Rows
whose packages are missing are left out and named. Threads: RAYON_NUM_THREADS,
OMP/OPENBLAS/MKL_NUM_THREADS = --threads, ``torch.set_num_threads``, llama.cpp ``n_threads``.
mindscope picks its BLAS as ``load_model`` does (MINDSCOPE_BLAS is passed through).

Gemma 3's GGUF ships as 4 part files (mindscope reads their concatenation); for llama.cpp and
transformers they are concatenated once into a temporary file, deleted at exit. Usage:

    /work/venv-qbench/bin/python bench/bench_model.py --reference-python /work/venv-bench/bin/python
        [--models smollm2-135m,gemma3-270m,minilm-l6] [--rounds 3] [--reps 3] [--threads 2]
        [--batch 64] [--seq 32] [--new-tokens 64] [--jobs generate,forward,capture,numerics]
        [--baseline-python PY] [--baseline-name NAME] [--baseline-env KEY=VALUE] [--quick]

``--quick``: a smoke run (1 round, 1 rep, 16 new tokens, 16 x 32 tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

RESID_POST = "blocks.*.hook_resid_post"
GEN_PROMPT = "The history of the Roman Empire begins with"
# Real text for the numerics block (short and long, prose, code, a list).
NUMERICS_PROMPTS = [
    "The capital of France is Paris, and the capital of Germany is",
    "In 1969, Neil Armstrong and Buzz Aldrin became the first people to walk on the Moon. "
    "Michael Collins stayed in orbit aboard the command module Columbia while they explored "
    "the Sea of Tranquility for about two and a half hours.",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "Ingredients: two cups of flour, one teaspoon of salt, three eggs, and a glass of milk.",
]
ENCODERS = {"minilm-l6"}
MIB = 1 << 20


# --- the job, run in a fresh process (by this file with --job) -----------------------------
def vm(key: str) -> int:
    """VmRSS / VmHWM of this process in bytes (not ru_maxrss: Linux carries that over from the parent)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))


def _median_calls(fns: dict[str, Callable[[], Any]], reps: int,
                  warmups: dict[str, Callable[[], Any]]) -> tuple[dict[str, float], dict[str, Any]]:
    """An untimed warm-up call of each fn (or of its lighter stand-in in ``warmups``), then
    ``reps`` rounds calling each once (interleaved); median seconds per fn and its last result."""
    last = {key: warmups.get(key, fn)() for key, fn in fns.items()}
    times: dict[str, list[float]] = {key: [] for key in fns}
    for _ in range(max(reps, 1)):
        for key, fn in fns.items():
            t = time.perf_counter()
            last[key] = fn()
            times[key].append(time.perf_counter() - t)
    return {key: statistics.median(ts) for key, ts in times.items()}, last


def _mindscope_setup(spec: dict) -> tuple[dict, tuple[dict, dict]]:
    import numpy as np

    import mindscope as ms

    before = vm("VmRSS")
    t = time.perf_counter()
    model = ms.load_model(spec["model"], weights=spec["weights"])
    out: dict[str, Any] = {"load_s": time.perf_counter() - t, "rss_before": before, "rss_loaded": vm("VmRSS"),
                           "weight_bytes": model.weight_bytes(), "weights": model.weights,
                           "matrix_types": model.matrix_types(),
                           "blas": ms.backend.blas_library() or "candle gemm"}
    batch, seq, n = spec["batch"], spec["seq"], spec["new_tokens"]
    ids = np.random.default_rng(0).integers(1000, 20000, size=(batch, seq)).tolist()
    grabbed: list[np.ndarray] = []
    hooks = [(RESID_POST, lambda act, name: grabbed.append(act[:, -1].copy()))]  # None: unchanged

    def generate(mode: str) -> list[int]:
        grabbed.clear()
        g = model.generate(GEN_PROMPT, max_new_tokens=n, temperature=0.0, stop_at_eos=False,
                           interventions=hooks if mode == "callback" else None,
                           names=RESID_POST if mode == "hooks" else None, return_details=True)
        if len(g.token_ids) != n or (mode == "callback" and len(grabbed) != n * model.n_layers):
            raise RuntimeError(f"generate gave {len(g.token_ids)} tokens, {len(grabbed)} captures")
        if mode == "hooks":  # every position that was run: the prompt and each new token but the last
            want = (1, len(g.prompt_ids) + n - 1, model.d_model)
            shapes = {name: g.cache[name].shape for name in g.cache}
            if len(shapes) != model.n_layers or any(s != want for s in shapes.values()):
                raise RuntimeError(f"generate captured {shapes}, not {model.n_layers} x {want}")
        if g.prompt_ids != spec["prompt_ids"]:
            raise RuntimeError(f"generate tokenized the prompt as {g.prompt_ids}, not {spec['prompt_ids']}")
        return g.token_ids

    def forward(rows: int = batch) -> None:
        if spec["model"] in ENCODERS:
            model.embed(ids[:rows], batch_size=batch)
        else:
            model.run(ids[:rows], return_logits="all", batch_size=batch)

    def capture(rows: int = batch) -> None:
        model.run_with_cache(ids[:rows], names=RESID_POST, positions="last", return_logits=False, batch_size=batch)

    return out, _job_fns(spec["job"], generate, forward, capture, ("hooks", "callback", "plain"))


def _job_fns(job: str, generate: Callable[[str], Any], forward: Callable[..., None],
             capture: Callable[..., None], modes: tuple[str, ...] = ("hooks", "plain"),
             ) -> tuple[dict[str, Callable[[], Any]], dict[str, Callable[[], Any]]]:
    """The timed calls of ``job`` and their warm-ups: the batched jobs warm up on 2 prompts (a
    full-batch warm-up cost minutes with slow kernels under load and measured nothing);
    generate runs each of ``modes``."""
    if job == "generate":
        return {mode: (lambda m=mode: generate(m)) for mode in modes}, {}
    fn = forward if job == "forward" else capture
    return {"run": fn}, {"run": lambda: fn(2)}


def _transformers_setup(spec: dict) -> tuple[dict, tuple[dict, dict]]:
    import numpy as np
    import torch
    import transformers

    torch.set_num_threads(spec["threads"])
    before = vm("VmRSS")
    t = time.perf_counter()
    path = spec["path"]
    if spec["model"] in ENCODERS:
        model = transformers.AutoModel.from_pretrained(path, attn_implementation="eager")
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32,
            attn_implementation="eager")
    model.eval()
    out: dict[str, Any] = {"load_s": time.perf_counter() - t, "rss_before": before, "rss_loaded": vm("VmRSS"),
                           "weight_bytes": sum(p.numel() * p.element_size() for p in model.parameters())}
    batch, seq, n = spec["batch"], spec["seq"], spec["new_tokens"]
    x = torch.tensor(np.random.default_rng(0).integers(1000, 20000, size=(batch, seq)).tolist())
    mask = torch.ones_like(x)
    prompt = torch.tensor([spec["prompt_ids"]])

    def generate(mode: str) -> list[int]:
        hooked = mode == "hooks"
        with torch.no_grad():
            res = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n,
                                 min_new_tokens=n, do_sample=False, output_hidden_states=hooked,
                                 return_dict_in_generate=True, pad_token_id=0)
        if hooked:  # per step, per layer (after the embeddings): the last position
            [[h[:, -1].numpy().copy() for h in step[1:]] for step in res.hidden_states]
        return res.sequences[0, prompt.shape[1]:].tolist()

    def forward(rows: int = batch) -> None:
        with torch.no_grad():
            if spec["model"] in ENCODERS:
                h = model(x[:rows], attention_mask=mask[:rows]).last_hidden_state.mean(1)
                torch.nn.functional.normalize(h, dim=-1).numpy().copy()
            else:
                model(x[:rows]).logits.numpy()  # zero-copy, as numpy: mindscope returns its logits once too

    def capture(rows: int = batch) -> None:
        with torch.no_grad():
            hs = model(x[:rows], attention_mask=mask[:rows], output_hidden_states=True).hidden_states
            [h[:, -1].numpy().copy() for h in hs[1:]]

    return out, _job_fns(spec["job"], generate, forward, capture)


def _llama_cpp_setup(spec: dict) -> tuple[dict, tuple[dict, dict]]:
    from llama_cpp import Llama

    if spec["job"] != "generate":
        raise ValueError("llama.cpp runs the generate job only")
    before = vm("VmRSS")
    t = time.perf_counter()
    n = spec["new_tokens"]
    llm = Llama(model_path=spec["path"], n_threads=spec["threads"], n_threads_batch=spec["threads"],
                n_ctx=max(256, len(spec["prompt_ids"]) + n + 16), verbose=False)
    out: dict[str, Any] = {"load_s": time.perf_counter() - t, "rss_before": before, "rss_loaded": vm("VmRSS")}

    def generate() -> list[int]:
        llm.reset()  # no KV-cache reuse of the previous call's prompt: prefill every time, as the others
        tokens: list[int] = []
        for tok in llm.generate(spec["prompt_ids"], top_k=1, temp=0.0, repeat_penalty=1.0):
            tokens.append(int(tok))
            if len(tokens) == n:
                break
        return tokens

    return out, ({"plain": generate}, {})


def _numerics(spec: dict) -> dict:
    """Quantized vs float32 mindscope on NUMERICS_PROMPTS, one prompt at a time (no padding)."""
    import numpy as np

    import mindscope as ms

    f32 = ms.load_model(spec["model"], weights="float32")
    q = ms.load_model(spec["model"], weights="quantized")

    def log_softmax(logits: np.ndarray) -> np.ndarray:  # [pos, vocab] in float64
        z = logits.astype(np.float64)
        z -= z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    max_dlogp, max_dtop, agree, positions = 0.0, 0.0, 0, 0
    rel: dict[str, list[float]] = {}
    for prompt in NUMERICS_PROMPTS:
        lf, cf = f32.run_with_cache(prompt, names=RESID_POST, positions="all", return_logits="all")
        lq, cq = q.run_with_cache(prompt, names=RESID_POST, positions="all", return_logits="all")
        pf, pq = log_softmax(lf[0]), log_softmax(lq[0])
        top = pf.argmax(-1)
        rows = np.arange(len(top))
        max_dlogp = max(max_dlogp, float(np.abs(pq - pf).max()))
        max_dtop = max(max_dtop, float(np.abs(pq[rows, top] - pf[rows, top]).max()))
        agree += int((pq.argmax(-1) == top).sum())
        positions += len(top)
        for name in cf:
            a, b = cf[name][0].astype(np.float64), cq[name][0].astype(np.float64)
            rel.setdefault(name, []).extend(np.linalg.norm(b - a, axis=-1) / np.linalg.norm(a, axis=-1))
    return {"matrix_types": q.matrix_types(), "max_dlogp": max_dlogp, "max_dlogp_top1": max_dtop,
            "top1_agree": agree / positions, "positions": positions,
            "rel_median": [float(np.median(v)) for v in rel.values()],
            "rel_max": [float(np.max(v)) for v in rel.values()]}


def run_job_here(spec: dict) -> dict:
    """The body of one job process: returns what the parent prints."""
    if spec["job"] == "numerics":
        return _numerics(spec)
    setup = {"mindscope": _mindscope_setup, "transformers": _transformers_setup,
             "llama.cpp": _llama_cpp_setup}[spec["kind"]]
    out, (fns, warmups) = setup(spec)
    secs, last = _median_calls(fns, spec["reps"], warmups)
    out["secs"] = secs
    if spec["job"] == "generate":
        out["tokens"] = last[next(iter(last))]
    out["peak"] = vm("VmHWM")
    return out


# --- the parent: rows, rounds, the table -----------------------------------------------------
@dataclass(frozen=True)
class Row:
    label: str
    kind: str  # "mindscope", "transformers" or "llama.cpp"
    python: str
    weights: str | None = None  # mindscope's weights mode
    threads: int | None = None  # instead of --threads
    env: tuple[tuple[str, str], ...] = ()  # extra environment of its jobs

    def runs(self, model: str, job: str) -> bool:
        if model in ENCODERS:
            return job in ("forward", "capture") and self.weights != "quantized" and self.kind != "llama.cpp"
        return self.kind != "llama.cpp" or job == "generate"


def run_job(row: Row, spec: dict, threads: int) -> dict:
    threads = row.threads or threads
    spec = dict(spec, kind=row.kind, weights=row.weights, threads=threads)
    env = dict(os.environ, **{k: str(threads) for k in ("RAYON_NUM_THREADS", "OMP_NUM_THREADS",
                                                         "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
    env.update(row.env)
    res = subprocess.run([row.python, os.path.abspath(__file__), "--job", json.dumps(spec)],
                         capture_output=True, text=True, env=env, check=False)
    if res.returncode != 0:
        lines = res.stderr.strip().splitlines() or ["(no output)"]
        how = (f"killed by {signal.Signals(-res.returncode).name}" if res.returncode < 0
               else f"exit {res.returncode}")
        return {"error": f"{how}; last stderr line: {lines[-1][:200]}"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def has_modules(python: str, modules: str) -> bool:
    try:
        return subprocess.run([python, "-c", f"import {modules}"], capture_output=True, check=False).returncode == 0
    except OSError:  # no such interpreter
        return False


def reference_info(python: str) -> str:
    """torch / transformers / llama-cpp-python versions and torch's BLAS, from ``python``."""
    code = (
        "import importlib.metadata as md\n"
        "out = []\n"
        "try:\n"
        "    import torch\n"
        "    cfg = torch.__config__.show()\n"
        "    blas = 'MKL' if 'BLAS_INFO=mkl' in cfg else 'OpenBLAS' if 'openblas' in cfg.lower() else 'unknown'\n"
        "    out.append(f\"torch {torch.__version__} (BLAS {blas}), transformers {md.version('transformers')}\")\n"
        "except Exception as e:\n"
        "    out.append(f'no torch/transformers ({type(e).__name__})')\n"
        "try:\n"
        "    import llama_cpp\n"
        "    feats = llama_cpp.llama_print_system_info().decode().replace(' = 1', '').split('|')\n"
        "    out.append(f\"llama-cpp-python {llama_cpp.__version__} ({' '.join(f.strip() for f in feats if f.strip())})\")\n"
        "except Exception as e:\n"
        "    out.append(f'no llama-cpp-python ({type(e).__name__})')\n"
        "print('; '.join(out))\n"
    )
    res = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False)
    return res.stdout.strip() or res.stderr.strip()[-200:]


def mindscope_info() -> str:
    import mindscope as ms

    src = os.path.dirname(os.path.abspath(ms.__file__))
    git = subprocess.run(["git", "-C", src, "log", "-1", "--format=%h %cd", "--date=short"],
                         capture_output=True, text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", src, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, check=False).stdout.strip()
    return f"mindscope {ms.__version__} from {src} ({git or 'no git'}{', modified' if dirty else ''})"


def gguf_files(model: str) -> list[str]:
    from mindscope.registry import resolve_model_paths

    return [str(p) for p in resolve_model_paths(model)]


def joined_gguf(parts: list[str]) -> str:
    """One file for llama.cpp and transformers: the path itself, or the parts concatenated into
    a temporary file (the caller deletes it)."""
    if len(parts) == 1:
        return parts[0]
    fd, path = tempfile.mkstemp(suffix=".gguf", prefix="bench_model_")
    with os.fdopen(fd, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                while chunk := f.read(1 << 22):
                    out.write(chunk)
    return path


def loadavg() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def fmt(x: float | None, spec: str = ".0f") -> str:
    return "-" if x is None else format(x, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--job", help=argparse.SUPPRESS)  # internal: run one job (JSON spec) and print JSON
    ap.add_argument("--models", default="smollm2-135m,gemma3-270m,minilm-l6")
    ap.add_argument("--jobs", default="generate,forward,capture,numerics")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (fresh processes); median over them")
    ap.add_argument("--reps", type=int, default=3, help="timed calls per process after one warm-up; median")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--reference-python", "--hf-python", default=sys.executable,
                    help="a Python with torch + transformers + gguf and llama-cpp-python (rows left out if missing)")
    ap.add_argument("--baseline-python", default=None,
                    help="a Python with another mindscope build: adds 'baseline' rows for a before/after")
    ap.add_argument("--baseline-name", default="baseline",
                    help="the baseline rows' name, e.g. 'mindscope MKL' for a Python with the PyPI package mkl")
    ap.add_argument("--baseline-env", action="append", default=[], metavar="KEY=VALUE",
                    help="environment of the baseline rows only, e.g. MINDSCOPE_BLAS=mkl (repeatable)")
    ap.add_argument("--llama-threads", default="1",
                    help="extra llama.cpp rows with these thread counts (its spinning thread barriers lose most "
                         "when another process holds a core; '' for none)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 round, 1 rep, 16 new tokens, 16 x 32 tokens")
    args = ap.parse_args()
    if args.job:
        print(json.dumps(run_job_here(json.loads(args.job))))
        return
    if args.quick:
        args.rounds, args.reps, args.new_tokens, args.batch, args.seq = 1, 1, 16, 16, 32

    import mindscope as ms

    # SIGTERM as Ctrl-C: stop, delete the temporary file, print the jobs that finished.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    load_before = loadavg()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    jobs = [j for j in ("generate", "forward", "capture") if j in args.jobs.split(",")]
    models = args.models.split(",")
    rows = [Row("mindscope float32", "mindscope", sys.executable, "float32"),
            Row("mindscope quantized", "mindscope", sys.executable, "quantized")]
    if args.baseline_python:
        bad = [e for e in args.baseline_env if "=" not in e]
        if bad:
            ap.error(f"--baseline-env takes KEY=VALUE, not {bad[0]!r}")
        env = tuple(tuple(e.split("=", 1)) for e in args.baseline_env)
        rows += [Row(f"{args.baseline_name} float32", "mindscope", args.baseline_python, "float32", env=env),
                 Row(f"{args.baseline_name} quantized", "mindscope", args.baseline_python, "quantized", env=env)]
    notes = []
    if has_modules(args.reference_python, "torch, transformers, gguf"):
        rows.append(Row("transformers", "transformers", args.reference_python))
    else:
        notes.append(f"transformers rows missing: {args.reference_python} lacks torch/transformers/gguf")
    if has_modules(args.reference_python, "llama_cpp"):
        rows.append(Row("llama.cpp", "llama.cpp", args.reference_python))
        for n in sorted({int(t) for t in args.llama_threads.split(",") if t} - {args.threads}):
            rows.append(Row(f"llama.cpp {n} thread{'s' if n > 1 else ''}", "llama.cpp", args.reference_python, None, n))
    else:
        notes.append(f"llama.cpp rows missing: {args.reference_python} lacks llama_cpp")

    files: dict[str, list[str]] = {m: gguf_files(m) for m in models}
    temp_files: list[str] = []
    paths: dict[str, str] = {}
    for m in models:
        if len(files[m]) > 1:
            paths[m] = joined_gguf(files[m])
            temp_files.append(paths[m])
            notes.append(f"{m}: its {len(files[m])} GGUF parts concatenated into {paths[m]} for llama.cpp and "
                         "transformers (deleted at exit); mindscope reads the parts")
        else:
            paths[m] = files[m][0]
    prompt_ids: dict[str, list[int]] = {}
    for m in models:
        if m not in ENCODERS:
            prompt_ids[m] = ms.load_model(m).to_tokens(GEN_PROMPT)

    results: dict[tuple[str, str, str], list[dict]] = {}
    numerics: dict[str, dict] = {}
    try:
        if "numerics" in args.jobs.split(","):  # deterministic and short: once, first
            for m in models:
                if m not in ENCODERS:
                    print(f"[numerics] {m}", file=sys.stderr, flush=True)
                    numerics[m] = run_job(rows[0], {"model": m, "job": "numerics"}, args.threads)
        for r in range(args.rounds):
            for m in models:
                for job in jobs:
                    for row in rows:
                        if not row.runs(m, job):
                            continue
                        spec = {"model": m, "job": job, "path": paths[m], "batch": args.batch, "seq": args.seq,
                                "new_tokens": args.new_tokens, "prompt_ids": prompt_ids.get(m, []),
                                "reps": args.reps}
                        print(f"[round {r + 1}/{args.rounds}] {m} {job} {row.label} (load {loadavg()})",
                              file=sys.stderr, flush=True)
                        results.setdefault((m, job, row.label), []).append(run_job(row, spec, args.threads))
    except KeyboardInterrupt:
        notes.append(f"INTERRUPTED: {sum(map(len, results.values()))} jobs finished; rows show what ran")
    finally:
        for path in temp_files:
            os.unlink(path)
    load_after = loadavg()

    # --- the table ---
    blas = next((r["blas"] for runs in results.values() for r in runs if "blas" in r), "?")
    print(f"bench_model.py, {started}, {args.threads} threads, {os.cpu_count()} CPUs "
          f"({_cpu_model()}); SHARED machine: load average (1/5/15 min) before {load_before}, after {load_after}")
    print(f"{mindscope_info()}; BLAS {os.path.basename(blas)}")
    print(f"reference ({args.reference_python}): {reference_info(args.reference_python)}")
    print(f"medians of {args.rounds} interleaved rounds (fresh process each) x {args.reps} timed calls; generate: "
          f"batch 1, greedy, {args.new_tokens} new tokens; forward / capture: {args.batch} x {args.seq} tokens")
    head = (f"{'model':13s} {'row':20s} {'load s':>6s} {'gen hooks':>9s} {'gen cb':>7s} "
            f"{'gen plain':>9s} {'fwd tok/s':>9s} {'cap tok/s':>9s} {'weights':>8s} {'loaded':>7s} "
            f"{'peak gen/fwd/cap MiB':>21s} {'same':>5s}")
    print(head)
    errors = []
    summary: dict[tuple[str, str], dict[str, float | None]] = {}
    for m in models:
        reference_tokens = None
        for row in rows:
            cell: dict[str, float | None] = {}
            loads, peaks, same = [], {}, "-"
            weight_bytes = loaded = None
            for job in jobs:
                runs = [x for x in results.get((m, job, row.label), []) if "error" not in x]
                errors += [f"{m} {job} {row.label}: {x['error']}" for x in results.get((m, job, row.label), [])
                           if "error" in x]
                if not runs:
                    continue
                loads += [x["load_s"] for x in runs]
                peaks[job] = statistics.median(x["peak"] for x in runs) / MIB
                loaded = statistics.median(x["rss_loaded"] - x["rss_before"] for x in runs)
                weight_bytes = runs[0].get("weight_bytes")
                if job == "generate":
                    for key in runs[0]["secs"]:
                        cell[f"gen_{key}"] = args.new_tokens / statistics.median(x["secs"][key] for x in runs)
                    tokens = runs[0]["tokens"]
                    if row.label == "mindscope float32":
                        reference_tokens = tokens
                    if reference_tokens is not None:
                        same = str(next((i for i, (a, b) in enumerate(zip(tokens, reference_tokens)) if a != b),
                                        len(tokens)))
                else:
                    cell[job] = args.batch * args.seq / statistics.median(x["secs"]["run"] for x in runs)
            if not loads:
                continue
            cell["load"] = statistics.median(loads)
            cell["loaded"] = loaded
            cell["capture_peak"] = peaks.get("capture")
            summary[(m, row.label)] = cell
            peak_text = "/".join(fmt(peaks.get(j)) for j in ("generate", "forward", "capture"))
            print(f"{m:13s} {row.label:20s} {cell['load']:6.2f} {fmt(cell.get('gen_hooks')):>9s} "
                  f"{fmt(cell.get('gen_callback')):>7s} {fmt(cell.get('gen_plain')):>9s} "
                  f"{fmt(cell.get('forward')):>9s} {fmt(cell.get('capture')):>9s} "
                  f"{fmt(None if weight_bytes is None else weight_bytes / MIB):>8s} {fmt(loaded / MIB):>7s} "
                  f"{peak_text:>21s} {same:>5s}")
        _print_ratios(m, summary, sum(os.path.getsize(p) for p in files[m]))
        if m in numerics:
            _print_numerics(m, numerics[m])
    print("(gen tok/s: new tokens / wall time incl. the prompt's prefill; hooks = every resid_post captured at "
          "every step (mindscope: in the core, generate(names=)); cb = the same through a Python function; "
          "fwd = logits at every position (minilm-l6: the sentence embedding); cap = every layer's "
          "resid_post at the last position, no logits; weights = MiB of weights in memory; loaded = RSS the load "
          "added; same = leading greedy tokens equal to mindscope float32's)")
    for line in notes + errors:
        print("note: " + line)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


def _print_ratios(model: str, summary: dict, file_bytes: int) -> None:
    """Speed ratios against the issue 21 targets, and memory against the GGUF file."""
    def get(label: str, key: str) -> float | None:
        return summary.get((model, label), {}).get(key)

    def ratio(a: float | None, b: float | None) -> str:
        return "-" if a is None or b is None else f"{a / b:.2f}x"

    q, f32, hf, ll = "mindscope quantized", "mindscope float32", "transformers", "llama.cpp"
    if model in ENCODERS:
        print(f"  {model}: float32 vs transformers: fwd {ratio(get(f32, 'forward'), get(hf, 'forward'))} "
              f"(target >= 1.0x), cap {ratio(get(f32, 'capture'), get(hf, 'capture'))}, "
              f"load {ratio(get(hf, 'load'), get(f32, 'load'))} faster")
        return
    fwd_target = "1.0x" if model == "gemma3-270m" else "1.5x"
    llama_rows = [(label, c["gen_plain"]) for (m, label), c in summary.items()
                  if m == model and label.startswith("llama.cpp") and c.get("gen_plain")]
    best = max(llama_rows, key=lambda lc: lc[1], default=(ll, None))
    vs_best = f", vs the fastest, {best[0]}: {ratio(get(q, 'gen_hooks'), best[1])}" if best[0] != ll else ""
    print(f"  {model} ratios: gen hooks quantized / llama.cpp {ratio(get(q, 'gen_hooks'), get(ll, 'gen_plain'))} "
          f"(target >= 1.0x; plain {ratio(get(q, 'gen_plain'), get(ll, 'gen_plain'))}{vs_best}), / transformers "
          f"{ratio(get(q, 'gen_hooks'), get(hf, 'gen_hooks'))} (target >= 5x), quantized / float32 "
          f"{ratio(get(q, 'gen_hooks'), get(f32, 'gen_hooks'))}")
    print(f"  {model} ratios: quantized gen hooks / plain {ratio(get(q, 'gen_hooks'), get(q, 'gen_plain'))}, "
          f"callback / plain {ratio(get(q, 'gen_callback'), get(q, 'gen_plain'))}")
    print(f"  {model} ratios: vs transformers fwd quantized {ratio(get(q, 'forward'), get(hf, 'forward'))} / "
          f"float32 {ratio(get(f32, 'forward'), get(hf, 'forward'))} (target >= {fwd_target}), cap quantized "
          f"{ratio(get(q, 'capture'), get(hf, 'capture'))} / float32 {ratio(get(f32, 'capture'), get(hf, 'capture'))}"
          f" (target >= 1.5x), load transformers / quantized {ratio(get(hf, 'load'), get(q, 'load'))}")
    mem = [f"GGUF {file_bytes / MIB:.0f} MiB"]
    for label in (q, f32, hf, ll):
        loaded, peak = get(label, "loaded"), get(label, "capture_peak")
        if loaded is not None:
            text = f"{label}: loaded {loaded / file_bytes:.2f}x"
            if peak is not None:
                text += f", capture peak {peak * MIB / file_bytes:.2f}x"
            mem.append(text)
    print(f"  {model} memory / file: " + "; ".join(mem) + " (target: quantized loaded <= 1.5x, plus a batch's "
          "working set = capture peak - loaded)")


def _print_numerics(model: str, n: dict) -> None:
    if "error" in n:
        print(f"  {model} numerics failed: {n['error']}")
        return
    med, mx = n["rel_median"], n["rel_max"]
    print(f"  {model} numerics, quantized {n['matrix_types']} vs float32, {n['positions']} positions of "
          f"{len(NUMERICS_PROMPTS)} prompts: max |d log p| over vocab {n['max_dlogp']:.3f}, of the top-1 token "
          f"{n['max_dlogp_top1']:.3f}, top-1 agreement {100 * n['top1_agree']:.1f}%")
    print(f"  {model} ||d resid_post|| / ||resid_post|| per position, median over positions: min "
          f"{min(med):.4f} / median {statistics.median(med):.4f} / max {max(med):.4f} over layers; "
          f"worst position {max(mx):.4f}")
    print(f"  {model} per layer (median): " + " ".join(f"{x:.3f}" for x in med))


if __name__ == "__main__":
    main()
