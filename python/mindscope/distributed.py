"""Run a model over blocks of a corpus, in-process or on a Ray cluster, and extract dumps.

Two entry points:

- :func:`map_blocks` runs ``fn(model, block_texts, first_prompt_id)`` once per block of prompts
  ``[lo, hi)`` on a model loaded once per worker, and yields ``(block_index, result)`` as blocks
  finish (any order). :func:`extract` and ``corpus_stats`` are built on it.
- :func:`extract` writes the dump format of :func:`mindscope.storage.dump` (same files, same
  rows) with ``engine="local"`` or ``engine="ray"``; ``mindscope extract --engine ray``.

Why Ray Data (``map_batches`` over an actor pool) and not hand-made actors
---------------------------------------------------------------------------
A Ray Data actor pool (``concurrency=workers`` instances of :class:`_BlockWorker`, each with
``num_cpus=threads``) gives what this needs without code of ours: each actor loads the model
once in its constructor and keeps it; blocks stream to whichever actor is free, with
back-pressure; an actor that dies (``ray.kill``, a crashed process, a lost node) is restarted and
its in-flight blocks retried (Ray Data's defaults ``max_restarts=-1``, ``max_task_retries=-1``);
and the whole pipeline is torn down when the driver stops iterating (Ctrl-C, an error, or the
caller breaking out of the loop). One input row is one block (``from_items`` with one Ray block
per row, ``batch_size=1``) and the block index travels with it, so the order Ray finishes them
in does not matter. Ray Data's readers are not used for the corpus: prompt ids must be
global row numbers, identical to a local run, and the mindscope readers
(:func:`mindscope.storage.read_texts`) define what a prompt is (malformed lines, CRLF, CSV
quoting); the driver reads the corpus once and ships each block's texts with it.

Limits of shipping texts from the driver: the driver holds the whole corpus in memory (about
the corpus's size in UTF-8 plus ~50 bytes of Python object per prompt: 10 million prompts of
200 characters are ~2.5 GB), and the texts pass once through Ray's object store (spilled to disk
when they exceed it). Beyond that, pass ``texts=None`` and ``corpus=<path on a shared
filesystem>``: each worker then reads the corpus itself (once, cached) and only block bounds
are shipped.

Exactly once, for dumps
-----------------------
A retried block recomputes the same rows and writes them to a private temporary file renamed
onto ``part-<block>.arrow`` (so two attempts never mix bytes and the last rename wins whole);
only the driver writes the manifest, atomically, after each part it receives, replacing any
entry of the same index. A part is committed when it is listed in the manifest; a killed
driver leaves at most parts written but not listed, which ``resume=True`` recomputes (it keeps
listed parts whose CRC-32 and row count check out). Workers write the part files themselves:
on a multi-machine cluster ``out`` must be on a filesystem every node sees (NFS, a shared
volume); the driver checks each part's row count and checksum against what the worker reports.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .errors import DataError, InvalidArgumentError, StorageError, WorkerError
from .model_spec import ModelSpec, loaded, model_spec as _model_spec
from .progress import ProgressBar, check_progress

T = TypeVar("T")

ENGINES = ("local", "ray")
INSTALL_RAY = 'engine="ray" needs Ray Data: pip install "mindscope[ray]" (or pip install "ray[data]>=2.9")'


def import_ray() -> Any:
    """The ``ray`` module with Ray Data, or an :class:`InvalidArgumentError` saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (the engine needs Ray Data, not only Ray core)
    except ImportError as e:
        raise InvalidArgumentError(f"{INSTALL_RAY} ({e})") from None
    return ray


# --- the block runner ----------------------------------------------------------------------

def _check_blocks(blocks: Sequence[tuple[int, int]], n_texts: int | None) -> list[tuple[int, int]]:
    out = []
    for i, b in enumerate(blocks):
        try:
            lo, hi = (int(b[0]), int(b[1]))
        except (TypeError, ValueError, IndexError):
            raise InvalidArgumentError(f"blocks[{i}] must be a pair (lo, hi) of prompt ids, got {b!r:.80}") from None
        if not 0 <= lo <= hi or (n_texts is not None and hi > n_texts):
            raise InvalidArgumentError(f"blocks[{i}] = [{lo}, {hi}) is not a range of prompt ids within "
                                       f"[0, {n_texts if n_texts is not None else 'n'})")
        out.append((lo, hi))
    return out


def _check_engine(engine: str, workers: int, threads: int | None) -> None:
    """Raise :class:`InvalidArgumentError` for an engine setting that cannot be honoured."""
    if engine not in ENGINES:
        raise InvalidArgumentError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    for key, value in (("workers", workers), ("threads", 1 if threads is None else threads)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidArgumentError(f"{key} must be an integer of at least 1, got {value!r}")
    if engine == "local" and threads is not None:
        # The core's thread pool is sized once per process, when it first runs.
        raise InvalidArgumentError("threads is for engine='ray'; in-process, set RAYON_NUM_THREADS before "
                                   "importing mindscope")


def _failure(block: int, lo: int, hi: int, what: str, tb: str, cause: BaseException | None) -> WorkerError:
    err = WorkerError(f"block {block} (prompts [{lo}, {hi})) failed on a worker: {what}"
                      + (f"\n--- worker traceback ---\n{tb}" if tb else ""), block, (lo, hi), tb)
    err.__cause__ = cause
    return err


def map_blocks(model_spec: Any, blocks: Sequence[tuple[int, int]], texts: Sequence[str] | None,
               fn: Callable[[Any, list[str], int], T], *, corpus: str | os.PathLike[str] | None = None,
               engine: str = "local", ray_address: str | None = None, workers: int = 1,
               threads: int | None = None, progress: bool | None = None,
               weights: str | None = None) -> Iterator[tuple[int, T]]:
    """Run ``fn(model, block_texts, first_prompt_id)`` once per block and yield
    ``(block_index, result)`` as blocks finish (in completion order with ``engine="ray"``, in
    block order in-process).

    Args:
        model_spec: what :func:`mindscope.load_model` takes (packaged name, GGUF path, HF
            folder), a loaded :class:`HookedModel` (reloaded from its name or file in the
            weights mode it runs in; in-process it is used as is) or a
            :class:`~mindscope.model_spec.ModelSpec`; each worker loads it once and keeps it
            for all its blocks.
        blocks: ``[(lo, hi), ...]``, prompt ids ``[lo, hi)`` per block; block ``i`` is
            ``blocks[i]``. ``fn`` gets ``texts[lo:hi]`` and ``lo``.
        texts: the prompts (list of ``n`` strings), or None to have each worker read ``corpus``.
        fn: picklable with cloudpickle (a top-level function, a lambda, a callable object);
            its result must be picklable. It may run more than once for a block (a retried
            task), so it must be idempotent; only the driver sees the results, once per block.
        corpus: with ``texts=None``, a corpus path (file or folder, :func:`read_texts` with
            column ``"text"``) that every worker can read.
        engine: ``"local"`` (in this process, model loaded once) or ``"ray"`` (Ray Data actor pool).
        ray_address: a running cluster (``"auto"``, ``"ray://host:10001"``, ``"127.0.0.1:6379"``);
            None starts a private local instance for the call (and stops it after) unless Ray
            is already initialized in this process, which is then used as is.
        workers: actors (Ray); each loads a copy of the model.
        threads: cores per actor (``num_cpus`` in Ray, and the core's ``RAYON_NUM_THREADS``);
            None: 1 with Ray. In-process the thread pool is fixed at import (set
            ``RAYON_NUM_THREADS``), so ``threads`` must be None with ``engine="local"``.
        progress: a bar with prompts/s and ETA (terminal or Jupyter; None: when interactive).
        weights: the weights mode workers load a name or path in (``"quantized"``,
            ``"float32"``; None: the file's default); a loaded model's own mode is kept, and
            another one asked for is an error.

    Raises:
        WorkerError: ``fn`` or the model load failed; names the block and its prompt range.
        InvalidArgumentError: bad arguments, or Ray Data not installed (says how to install it).
    KeyboardInterrupt stops the workers (Ray: the pipeline and its actors are torn down).
    """
    _check_engine(engine, workers, threads)
    if texts is None and corpus is None:
        raise InvalidArgumentError("give the prompts (texts) or a corpus path every worker can read (corpus)")
    if texts is not None and not isinstance(texts, list):
        texts = list(texts)
    checked = _check_blocks(blocks, None if texts is None else len(texts))
    corpus_path = None if corpus is None else os.path.abspath(os.fspath(corpus))
    if engine == "local":
        model = loaded(model_spec, weights)
        spec = None if model is not None else _model_spec(model_spec, weights)
        return _run_local(spec, checked, texts, fn, corpus_path, progress, model)
    spec = _model_spec(model_spec, weights)
    ray = import_ray()
    return _run_ray(ray, spec, checked, texts, fn, corpus_path, ray_address, workers, threads or 1, progress)


def _run_local(spec: ModelSpec | None, blocks: list[tuple[int, int]], texts: list[str] | None,
               fn: Callable[..., T], corpus: str | None, progress: bool | None,
               model: Any = None) -> Iterator[tuple[int, T]]:
    """The blocks in this process, on ``model`` when given loaded, else on ``spec`` loaded."""
    from .storage import read_texts

    if model is None:
        assert spec is not None
        model = spec.load()
    prompts = texts if texts is not None else read_texts(corpus)  # type: ignore[arg-type]
    bar = ProgressBar(sum(hi - lo for lo, hi in blocks), check_progress(progress))
    try:
        for i, (lo, hi) in enumerate(blocks):
            try:
                result = fn(model, prompts[lo:hi], lo)
            except Exception as e:
                raise _failure(i, lo, hi, f"{type(e).__name__}: {e}", "", e) from e
            bar.update(hi - lo)
            yield i, result
    finally:
        bar.close()


class _BlockWorker:
    """One Ray Data actor: loads the model once, then runs ``fn`` on each block it is sent.
    A failure is returned (not raised) with the block's range, so the driver can name it;
    raising would make Ray Data fail the whole dataset with a less useful message."""

    def __init__(self, model_spec: ModelSpec, fn: Callable[..., Any], corpus: str | None):
        self.fn, self.corpus, self.texts = fn, corpus, None
        self.model, self.load_error = None, None
        try:
            # The spec carries the weights mode: every worker runs what the driver asked for.
            self.model = model_spec.load()
        except Exception as e:  # reported with the first block's range
            self.load_error = (f"loading model {model_spec}: {type(e).__name__}: {e}", traceback.format_exc(), e)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import pickle

        import cloudpickle
        import numpy as np

        out = []
        for payload in batch["payload"]:
            block, lo, hi, block_texts = pickle.loads(payload)
            try:
                if self.load_error is not None:
                    raise RuntimeError(self.load_error[0])
                if block_texts is None:
                    block_texts = self._corpus()[lo:hi]
                out.append(pickle.dumps(("ok", block, self.fn(self.model, block_texts, lo))))
            except Exception as e:
                what, tb, cause = self.load_error or (f"{type(e).__name__}: {e}", traceback.format_exc(), e)
                try:
                    cause_bytes = cloudpickle.dumps(cause)
                except Exception:  # an exception that cannot travel: the message and traceback still do
                    cause_bytes = None
                out.append(pickle.dumps(("error", block, (lo, hi, what, tb, cause_bytes))))
        return {"result": np.array(out, dtype=object)}

    def _corpus(self) -> list[str]:
        if self.texts is None:
            from .storage import read_texts

            self.texts = read_texts(self.corpus)  # type: ignore[arg-type]
        return self.texts


def _thread_env(threads: int) -> dict[str, str]:
    """Environment of an actor's process: its thread pools sized to the cores Ray gave it
    (read once when the pools start, hence set before the process starts)."""
    k = str(threads)
    return {"RAYON_NUM_THREADS": k, "OMP_NUM_THREADS": k, "OPENBLAS_NUM_THREADS": k, "MKL_NUM_THREADS": k}


def _connect(ray: Any, address: str | None) -> bool:
    """Initialize Ray unless it already is; returns whether this call did (and must shut it down)."""
    if ray.is_initialized():
        return False
    if address is None:
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
                 _node_ip_address="127.0.0.1", log_to_driver=False)
    else:
        ray.init(address=address, log_to_driver=False)
    return True


def _quiet_ray_data(ray: Any) -> None:
    """Our bar replaces Ray Data's (one per operator, and noisy in notebooks); its INFO lines
    (execution plan, "execution finished") would interleave with it."""
    import logging

    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ctx = ray.data.DataContext.get_current()
    for key, value in (("enable_progress_bars", False), ("print_on_execution_start", False),
                       ("enable_auto_log_stats", False), ("verbose_stats_logs", False)):
        if hasattr(ctx, key):
            setattr(ctx, key, value)


def _run_ray(ray: Any, spec: ModelSpec, blocks: list[tuple[int, int]], texts: list[str] | None, fn: Callable[..., T],
             corpus: str | None, address: str | None, workers: int, threads: int,
             progress: bool | None) -> Iterator[tuple[int, T]]:
    import pickle

    import cloudpickle

    started = _connect(ray, address)
    rows = None
    bar = ProgressBar(sum(hi - lo for lo, hi in blocks), check_progress(progress))
    try:
        _quiet_ray_data(ray)
        if not blocks:
            return
        workers = min(workers, len(blocks))  # an actor without a block would only load a model
        items = [{"payload": pickle.dumps((i, lo, hi, None if texts is None else texts[lo:hi]))}
                 for i, (lo, hi) in enumerate(blocks)]
        ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            _BlockWorker, batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=threads,
            fn_constructor_kwargs={"model_spec": spec, "fn": fn, "corpus": corpus},
            runtime_env={"env_vars": _thread_env(threads)})
        rows = iter(ds.iter_rows())
        seen: set[int] = set()
        for row in rows:
            status, i, value = pickle.loads(row["result"])
            if status == "error":
                lo, hi, what, tb, cause_bytes = value
                raise _failure(i, lo, hi, what, tb, cloudpickle.loads(cause_bytes) if cause_bytes else None)
            if i in seen:  # a block's output recomputed by Ray (lineage reconstruction): once only
                continue
            seen.add(i)
            bar.update(blocks[i][1] - blocks[i][0])
            yield i, value
    finally:
        bar.close()
        close = getattr(rows, "close", None)
        if close is not None:
            close()  # stops the streaming executor and releases the actors
        if started:
            ray.shutdown()


# --- extraction -------------------------------------------------------------------------------

class _ExtractBlock:
    """``fn`` for :func:`map_blocks`: write one block's part with :class:`storage.PartWriter`."""

    def __init__(self, writer: Any, batch_size: int):
        self.writer, self.batch_size = writer, batch_size

    def __call__(self, model: Any, texts: list[str], first: int) -> dict[str, Any]:
        return self.writer.write(model, texts, first, self.batch_size)


def extract(model_spec: Any, corpus: str | os.PathLike[str] | Sequence[str],
            out: str | os.PathLike[str], names: str | Sequence[str] = "blocks.*.hook_resid_post",
            positions: str = "last", dtype: str = "float16", batch_size: int = 32, part_size: int = 1024,
            resume: bool = False, overwrite: bool = False, quiet: bool = False, column: str = "text",
            skip_bad_lines: bool = False, format: str = "arrow", engine: str = "local",
            ray_address: str | None = None, workers: int = 1, threads: int | None = None,
            weights: str | None = None) -> Any:
    """Stream the ``names`` hooks of ``model_spec`` over ``corpus`` to a dump at ``out``, as
    :func:`mindscope.storage.dump` does (same files, same rows), in-process or on Ray.

    ``corpus``: a list of prompts, a ``.txt`` / ``.jsonl`` / ``.csv`` / ``.parquet`` file, or a
    folder of them (sorted by name, concatenated). Part ``k`` (``part-0000k.arrow``) holds prompts
    ``[k * part_size, (k + 1) * part_size)``; rows: ``prompt_id, position, token_id,
    token_text`` and one ``[rows, d]`` column per hook (``positions="last"``: one row per prompt;
    ``"all"``: one per token). ``resume=True`` keeps the verified parts of an interrupted run
    and computes only the missing ones. ``engine``, ``ray_address``, ``workers``, ``threads``: see
    :func:`map_blocks`. The driver loads the model too (for the manifest: weights' SHA-256, hook
    names, weights mode), unless it is given loaded. ``weights``: the mode to load a name or path
    in (see :func:`mindscope.load_model`); the manifest records the mode the rows were computed
    in, every worker loads that mode, and ``resume`` refuses a dump made in another one.
    Returns the dump, opened for reading.
    """
    from . import storage

    storage.check_dump_args(positions, dtype, format, part_size, batch_size)
    _check_engine(engine, workers, threads)
    if engine == "ray":
        import_ray()  # before reading a large corpus: fail in a second if Ray is missing
    prompts = storage.read_texts(corpus, column, skip_bad_lines)
    if not prompts:
        raise DataError("the corpus is empty: no prompts to dump")
    model = loaded(model_spec, weights)
    if model is None:
        model = _model_spec(model_spec, weights).load()
    # In-process the driver's model computes the parts. Ray workers load their own copies, in
    # the mode the driver's model runs in (weights=None resolved to the file's default).
    runner = model if engine == "local" else _model_spec(model)
    hooks = model.resolve_hooks(names)
    folder = Path(out).absolute()
    spec = storage._spec(model, hooks, positions, dtype, len(prompts), part_size, format)
    del model
    manifest = storage.open_dump(folder, spec, resume, overwrite)
    done = {p["index"] for p in manifest["parts"]}
    n_parts = -(-len(prompts) // part_size)
    todo = [k for k in range(n_parts) if k not in done]
    blocks = [(k * part_size, min((k + 1) * part_size, len(prompts))) for k in todo]
    fn = _ExtractBlock(storage.PartWriter(folder, spec), batch_size)
    for j, entry in map_blocks(runner, blocks, prompts, fn, engine=engine, ray_address=ray_address,
                               workers=workers, threads=threads, progress=False if quiet else None):
        if entry["index"] != todo[j]:
            raise StorageError(f"block {j} came back as part {entry['index']}, expected {todo[j]}")
        # The worker wrote the file; check it before listing it (a shared filesystem that lies,
        # or a second attempt renamed over it with different bytes, would show here).
        storage._verify_part(folder, entry)
        storage.commit_part(folder, manifest, entry)
    return storage.load_dump(folder)
