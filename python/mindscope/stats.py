"""Streaming statistics over a corpus that need no activation storage.

:func:`corpus_stats` runs a corpus through the model block by block and keeps, per hook, only
a small mergeable state (:class:`CorpusStats`): the count, mean and covariance (float64,
Chan et al.'s pairwise update), histograms with fixed bin edges (partial histograms add) and
the top-k activating rows of every neuron or given direction, each with a window of token ids
around the hit. A state is exact under :meth:`CorpusStats.merge` in any order (up to float64
rounding for mean/covariance; top-k and histograms are identical), which is what lets workers
each return the state of their blocks and the driver add them up.

    stats = ms.corpus_stats(model, "corpus.txt", names="blocks.12.hook_resid_post",
                            stats=["mean", "cov", "topk"], k=20)
    stats["blocks.12.hook_resid_post"]["cov"]          # [d_model, d_model] float64
    stats.pca("blocks.12.hook_resid_post", 10)         # a fitted ms.analysis.PCA
    stats.topk_table("blocks.12.hook_resid_post", 42)  # renders as a table in Jupyter
"""

from __future__ import annotations

import html
import io
import json
import os
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from .errors import DataError, InvalidArgumentError, MindscopeError, ShapeError, StorageError
from .progress import ProgressBar, check_progress

STATS = ("mean", "cov", "hist", "topk")
#: Widest hook whose covariance is kept: the state holds a [d, d] float64 matrix (8192 -> 512 MiB).
MAX_COV_WIDTH = 8192
FORMAT = "mindscope.corpus_stats/1"
_POSITIONS = ("all", "last")
_ENGINES = ("local", "ray")


# --- options --------------------------------------------------------------------------------

def _positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise InvalidArgumentError(f"{name} must be an integer of at least {minimum}, got {value!r}")
    return int(value)


def _value_range(value: Any, name: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{name} must be a pair (low, high) of numbers, got {value!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise InvalidArgumentError(f"{name} must be finite with low < high, got ({lo}, {hi})")
    return lo, hi


@dataclass
class _Options:
    """What a state collects. Two states merge only if their options are equal."""

    stats: tuple[str, ...]
    positions: str
    k: int
    bins: int
    range: tuple[float, float] | None
    direction_range: tuple[float, float] | None
    direction_names: tuple[str, ...]
    directions: np.ndarray | None  # [d, n_directions] float64, one column per direction
    neurons: bool
    window: tuple[int, int]  # tokens kept before and after each top-k hit

    @classmethod
    def make(cls, stats: Any, positions: str, k: int, bins: int, range: Any, direction_range: Any,
             directions: Mapping[str, Any] | None, neurons: bool, window: Any) -> _Options:
        if isinstance(stats, str):
            stats = [stats]
        try:
            chosen = list(dict.fromkeys(stats))
        except TypeError:
            raise InvalidArgumentError(f"stats must be a list of names among {', '.join(STATS)}, got {stats!r}") from None
        unknown = [s for s in chosen if s not in STATS]
        if unknown or not chosen:
            raise InvalidArgumentError(f"stats must be a non-empty list of names among {', '.join(STATS)}; "
                                       f"got {stats!r}")
        if positions not in _POSITIONS:
            raise InvalidArgumentError(f"positions must be one of {', '.join(_POSITIONS)}, got {positions!r}")
        k = _positive_int(k, "k")
        bins = _positive_int(bins, "bins")
        names, matrix = _directions(directions)
        wants_units = "hist" in chosen or "topk" in chosen
        if names and not wants_units:
            raise InvalidArgumentError("directions are used by the 'hist' and 'topk' statistics; add one of them "
                                       "to stats")
        if not isinstance(neurons, bool):
            raise InvalidArgumentError(f"neurons must be True or False, got {neurons!r}")
        if wants_units and not neurons and not names:
            raise InvalidArgumentError("'hist' and 'topk' with neurons=False need directions={name: vector}")
        rng = drng = None
        if "hist" in chosen:
            if range is None:
                raise InvalidArgumentError("'hist' needs range=(low, high): the bin edges are fixed up front so "
                                           "that partial histograms add")
            rng = _value_range(range, "range")
            drng = _value_range(direction_range, "direction_range") if direction_range is not None else rng
        try:
            before, after = (int(w) for w in window)
        except (TypeError, ValueError):
            raise InvalidArgumentError(f"window must be a pair (tokens before, tokens after), got {window!r}") from None
        if before < 0 or after < 0:
            raise InvalidArgumentError(f"window sizes must be at least 0, got {window!r}")
        return cls(tuple(s for s in STATS if s in chosen), positions, k, bins, rng, drng, names, matrix, neurons,
                   (before, after))

    def to_json(self) -> dict[str, Any]:
        return {"stats": list(self.stats), "positions": self.positions, "k": self.k, "bins": self.bins,
                "range": list(self.range) if self.range else None,
                "direction_range": list(self.direction_range) if self.direction_range else None,
                "direction_names": list(self.direction_names), "neurons": self.neurons, "window": list(self.window)}

    @classmethod
    def from_json(cls, meta: dict[str, Any], directions: np.ndarray | None) -> _Options:
        names = meta["direction_names"]
        if directions is None and names or directions is not None and directions.shape[1:] != (len(names),):
            raise DataError("the direction names do not match the stored directions")
        vectors = None if directions is None else dict(zip(names, directions.T))
        return cls.make(meta["stats"], meta["positions"], meta["k"], meta["bins"], meta["range"],
                        meta["direction_range"], vectors, meta["neurons"], meta["window"])

    def same_as(self, other: _Options) -> bool:
        if self.to_json() != other.to_json():
            return False
        if self.directions is None or other.directions is None:
            return self.directions is other.directions
        return self.directions.shape == other.directions.shape and bool(np.all(self.directions == other.directions))

    @property
    def edges(self) -> np.ndarray:
        """Neuron histogram bin edges ``[bins + 1]``."""
        assert self.range is not None
        return np.linspace(self.range[0], self.range[1], self.bins + 1)

    @property
    def direction_edges(self) -> np.ndarray:
        assert self.direction_range is not None
        return np.linspace(self.direction_range[0], self.direction_range[1], self.bins + 1)


def _directions(directions: Mapping[str, Any] | None) -> tuple[tuple[str, ...], np.ndarray | None]:
    """``{name: [d] vector}`` -> (names, ``[d, n_directions]`` float64)."""
    if directions is None:
        return (), None
    if not isinstance(directions, Mapping) or not directions:
        raise InvalidArgumentError("directions must be a non-empty dict {name: vector of the hook's width}")
    columns = []
    for name, vec in directions.items():
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError(f"direction names must be non-empty strings, got {name!r}")
        try:
            v = np.asarray(vec, dtype=np.float64)
        except (TypeError, ValueError):
            raise InvalidArgumentError(f"direction {name!r} is not a numeric vector") from None
        if v.ndim == 2 and 1 in v.shape:  # a probe's coef_ is [1, d]
            v = v.ravel()
        if v.ndim != 1 or v.size == 0:
            raise ShapeError(f"direction {name!r} must be a vector [d], got shape {v.shape}")
        if not np.all(np.isfinite(v)):
            raise DataError(f"direction {name!r} contains NaN or inf")
        columns.append(v)
    if len({c.size for c in columns}) != 1:
        raise ShapeError(f"directions have different lengths: {', '.join(f'{n}: {c.size}' for n, c in zip(directions, columns))}")
    return tuple(directions), np.ascontiguousarray(np.stack(columns, axis=1))


# --- per-hook state ---------------------------------------------------------------------

@dataclass
class _TopK:
    """The k largest (value, prompt, position) of each unit, sorted by value descending, then
    prompt id and position ascending (a total order, so merging in any order gives the same).
    Shapes ``[units, kk]`` with ``kk = min(k, rows seen)``; ``window`` ``[units, kk, W]``."""

    value: np.ndarray
    prompt: np.ndarray
    position: np.ndarray
    window: np.ndarray

    @classmethod
    def empty(cls, units: int, width: int) -> _TopK:
        return cls(np.zeros((units, 0)), np.zeros((units, 0), np.int64), np.zeros((units, 0), np.int64),
                   np.zeros((units, 0, width), np.int64))

    def merge(self, other: _TopK, k: int) -> _TopK:
        value = np.concatenate([self.value, other.value], axis=1)
        prompt = np.concatenate([self.prompt, other.prompt], axis=1)
        position = np.concatenate([self.position, other.position], axis=1)
        order = np.lexsort((position, prompt, -value), axis=1)[:, :k]
        window = np.concatenate([self.window, other.window], axis=1)
        return _TopK(np.take_along_axis(value, order, 1), np.take_along_axis(prompt, order, 1),
                     np.take_along_axis(position, order, 1), np.take_along_axis(window, order[:, :, None], 1))


def _batch_topk(vals: np.ndarray, k: int) -> np.ndarray:
    """Row indices ``[min(k, rows), units]`` of each column's k largest values of ``vals``
    ``[rows, units]``, ties going to the earlier row (rows are in (prompt, position) order)."""
    rows = vals.shape[0]
    if rows <= k:
        return np.argsort(-vals, axis=0, kind="stable")
    part = np.argpartition(-vals, k - 1, axis=0)[:k]
    # argpartition picks arbitrarily among values equal to the k-th largest; where such ties
    # straddle the cut, a stable sort of that column picks the earliest rows instead.
    kth = np.take_along_axis(vals, part, axis=0).min(axis=0)
    tied = np.flatnonzero((vals >= kth).sum(axis=0) > k)
    if tied.size:
        part[:, tied] = np.argsort(-vals[:, tied], axis=0, kind="stable")[:k]
    return part


def _hist_counts(vals: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts ``[units, bins + 2]`` of ``vals`` ``[rows, units]``: underflow, the bins
    (``[e_i, e_i+1)``, the last one closed, as ``np.histogram``), overflow."""
    nb = edges.size - 1
    idx = np.searchsorted(edges, vals, side="right")  # 0: below, 1..nb: bins, nb+1: >= last edge
    idx[vals == edges[-1]] = nb
    flat = idx + (nb + 2) * np.arange(vals.shape[1])
    return np.bincount(flat.ravel(), minlength=vals.shape[1] * (nb + 2)).reshape(vals.shape[1], nb + 2)


def _chan(n_a: int, mean_a: np.ndarray, m2_a: np.ndarray | None, n_b: int, mean_b: np.ndarray,
          m2_b: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Pairwise mean / co-moment update (Chan, Golub & LeVeque): exact in exact arithmetic,
    and stable in float64 because only the difference of the two means is squared."""
    n = n_a + n_b
    delta = mean_b - mean_a
    mean = mean_a + delta * (n_b / n)
    m2 = None if m2_a is None or m2_b is None else m2_a + m2_b + np.outer(delta, delta) * (n_a * n_b / n)
    return mean, m2


@dataclass
class _HookState:
    width: int
    count: int = 0
    mean: np.ndarray | None = None  # [d] float64
    m2: np.ndarray | None = None  # [d, d] float64: sum of outer products of centred rows
    hist: np.ndarray | None = None  # [d, bins + 2] int64 (underflow, bins, overflow)
    direction_hist: np.ndarray | None = None  # [n_directions, bins + 2]
    top: _TopK | None = None
    direction_top: _TopK | None = None

    def merge(self, other: _HookState, k: int) -> _HookState:
        """A new state for the union of both row sets (neither input is modified)."""
        if self.count == 0:
            return _copy_state(other)
        if other.count == 0:
            return _copy_state(self)
        out = _HookState(self.width, self.count + other.count)
        if self.mean is not None and other.mean is not None:
            out.mean, out.m2 = _chan(self.count, self.mean, self.m2, other.count, other.mean, other.m2)
        if self.hist is not None and other.hist is not None:
            out.hist = self.hist + other.hist
        if self.direction_hist is not None and other.direction_hist is not None:
            out.direction_hist = self.direction_hist + other.direction_hist
        if self.top is not None and other.top is not None:
            out.top = self.top.merge(other.top, k)
        if self.direction_top is not None and other.direction_top is not None:
            out.direction_top = self.direction_top.merge(other.direction_top, k)
        return out


def _copy_state(s: _HookState) -> _HookState:
    def cp(t: _TopK | None) -> _TopK | None:
        return None if t is None else _TopK(t.value.copy(), t.prompt.copy(), t.position.copy(), t.window.copy())

    def arr(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a.copy()

    return _HookState(s.width, s.count, arr(s.mean), arr(s.m2), arr(s.hist), arr(s.direction_hist), cp(s.top),
                      cp(s.direction_top))


# --- batch -> rows ----------------------------------------------------------------------

def _rows(arr: np.ndarray, lengths: np.ndarray, positions: str, hook: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One hook's batch as rows: ``X`` ``[rows, width]`` (real tokens only, in prompt then
    position order), each row's prompt index in the batch and position."""
    batch = lengths.size
    if arr.shape[0] != batch:
        raise ShapeError(f"{hook}: the array has {arr.shape[0]} prompts but tokens has {batch}")
    if positions == "last":
        return arr.reshape(batch, -1), np.arange(batch), lengths - 1
    if arr.ndim < 3 or arr.shape[1] < lengths.max():
        raise ShapeError(f"{hook}: positions='all' needs arrays [batch, pos, ...], got shape {arr.shape}")
    real = np.arange(arr.shape[1])[None, :] < lengths[:, None]  # padding is never counted
    prompt_in_batch, position = np.nonzero(real)
    return arr.reshape(batch, arr.shape[1], -1)[real], prompt_in_batch, position


def _token_matrix(tokens: Sequence[Sequence[int]], lengths: np.ndarray) -> np.ndarray:
    """The batch's token ids ``[batch, max_len]``, -1 after each prompt's end."""
    out = np.full((lengths.size, max(int(lengths.max()), 1)), -1, dtype=np.int64)
    out[np.arange(out.shape[1])[None, :] < lengths[:, None]] = np.concatenate(
        [np.asarray(t, dtype=np.int64) for t in tokens])
    return out


def _windows(tok: np.ndarray, lengths: np.ndarray, j: np.ndarray, pos: np.ndarray, window: tuple[int, int]) -> np.ndarray:
    """Token ids around each hit: ``[..., before + 1 + after]`` for hits of shape ``j.shape``,
    -1 where the window runs past the prompt."""
    before, after = window
    cols = pos[..., None] + np.arange(-before, after + 1)
    valid = (cols >= 0) & (cols < lengths[j][..., None])
    ids = tok[j[..., None], np.clip(cols, 0, tok.shape[1] - 1)]
    return np.where(valid, ids, -1)


def _union_ranges(a: Sequence[tuple[int, int]], b: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The union of two sets of prompt-id intervals ``[lo, hi)``, sorted and coalesced; an
    overlap (a prompt counted twice) is an error."""
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted([*a, *b]):
        if merged and lo < merged[-1][1]:
            raise InvalidArgumentError(f"prompts {lo}..{min(hi, merged[-1][1]) - 1} are already in this state: "
                                       "merging or updating twice would count them twice")
        if merged and lo == merged[-1][1]:
            merged[-1] = (merged[-1][0], hi)
        else:
            merged.append((lo, hi))
    return merged


# --- the state ----------------------------------------------------------------------------

class CorpusStats(Mapping[str, dict[str, np.ndarray]]):
    """Mergeable streaming statistics of some hooks over a corpus.

    ``stats[hook]`` is ``result()[hook]``: a dict of numpy arrays (see :meth:`result`).
    Build one with :func:`corpus_stats`, or by hand::

        s = CorpusStats(["mean", "cov", "topk"], k=10)
        _, cache = model.run_with_cache(texts, names=hooks, positions="all", return_logits=False)
        s.update(cache, cache.tokens, first_prompt_id=0)
        s.merge(other_state)   # states of disjoint prompt ranges

    Args:
        stats: names among ``"mean"``, ``"cov"``, ``"hist"``, ``"topk"``.
        positions: ``"all"`` (every real token is a row) or ``"last"`` (each prompt's last token).
        k: top-k entries kept per neuron / direction.
        bins, range: ``bins`` equal bins over ``range=(low, high)`` for ``"hist"`` (required then);
            values outside go to the underflow / overflow counts.
        direction_range: the histogram range of the direction projections (default ``range``).
        directions: ``{name: [d] vector}``; rows of the hooks of width ``d`` are projected
            (``rows @ vector``) and each direction gets a histogram and top-k like a neuron (hooks
            of another width get none; no hook of width ``d`` is a :class:`ShapeError`).
        neurons: collect per-neuron histograms / top-k (``False``: directions only).
        window: tokens kept ``(before, after)`` each top-k hit, for :meth:`topk_table`.
        model_name: recorded so that states of different models refuse to merge.
        weights: the model's weights mode (``model.weights``: ``"quantized"`` or ``"float32"``),
            recorded so that states computed in different modes refuse to merge (their
            activations differ by the 8-bit rounding of quantized mode, a few percent).
    """

    def __init__(self, stats: Sequence[str] | str = ("mean", "cov", "topk"), *, positions: str = "all", k: int = 10,
                 bins: int = 100, range: tuple[float, float] | None = None,
                 direction_range: tuple[float, float] | None = None, directions: Mapping[str, Any] | None = None,
                 neurons: bool = True, window: tuple[int, int] = (8, 4), model_name: str | None = None,
                 weights: str | None = None):
        self._init(_Options.make(stats, positions, k, bins, range, direction_range, directions, neurons, window),
                   model_name, weights)

    def _init(self, options: _Options, model_name: str | None, weights: str | None = None) -> None:
        if weights not in (None, "quantized", "float32"):
            raise InvalidArgumentError(f"weights must be 'quantized', 'float32' or None, got {weights!r}")
        self.options = options
        self.model_name = model_name
        self.weights = weights
        self._hooks: dict[str, _HookState] = {}
        #: Prompt-id intervals [lo, hi) seen so far, sorted and coalesced: merging states that
        #: share a prompt would count it twice, so it is refused.
        self.prompt_ranges: list[tuple[int, int]] = []
        #: Text of the token ids that appear in top-k windows (filled from the model).
        self.token_texts: dict[int, str] = {}

    @classmethod
    def _from_options(cls, options: _Options, model_name: str | None, weights: str | None = None) -> CorpusStats:
        self = cls.__new__(cls)
        self._init(options, model_name, weights)
        return self

    # --- mapping -------------------------------------------------------------------------
    def __getitem__(self, hook: str) -> dict[str, np.ndarray]:
        return self._result_of(hook)

    def __iter__(self) -> Iterator[str]:
        return iter(self._hooks)

    def __len__(self) -> int:
        return len(self._hooks)

    def __contains__(self, hook: object) -> bool:
        return hook in self._hooks

    # Mapping would compare results (numpy arrays, which have no truth value): states compare
    # by identity; compare ``result()`` arrays to compare contents.
    def __eq__(self, other: object) -> bool:
        return self is other

    __hash__ = object.__hash__

    @property
    def hooks(self) -> list[str]:
        return list(self._hooks)

    @property
    def n_prompts(self) -> int:
        return sum(hi - lo for lo, hi in self.prompt_ranges)

    # --- updating ------------------------------------------------------------------------
    def update(self, arrays: Mapping[str, np.ndarray], tokens: Sequence[Sequence[int]], first_prompt_id: int) -> CorpusStats:
        """Add one batch: ``arrays`` as ``run_with_cache`` returns them for this state's
        ``positions`` (``[batch, pos, ...]`` for ``"all"``, ``[batch, ...]`` for ``"last"``), the
        batch's ``tokens`` (``cache.tokens``) and the corpus index of its first prompt (prompt
        ids are ``first_prompt_id + i``). Returns ``self``."""
        first = _positive_int(first_prompt_id, "first_prompt_id", 0)
        lengths = np.array([len(t) for t in tokens], dtype=np.int64)
        if lengths.size == 0:
            return self
        if lengths.min() < 1:
            raise DataError(f"prompt {first + int(np.argmin(lengths))} has no tokens")
        self._add_range(first, first + lengths.size)
        tok = _token_matrix(tokens, lengths) if "topk" in self.options.stats else None
        for hook, arr in arrays.items():
            if hook.endswith("hook_pattern"):
                raise InvalidArgumentError(f"{hook}: attention patterns have no row per token; choose hooks "
                                           "with a [batch, pos, ...] layout")
            X, j, pos = _rows(np.asarray(arr), lengths, self.options.positions, hook)
            self._update_hook(hook, X, first + j, pos, tok, lengths, j)
        dirs = self.options.directions
        if dirs is not None and self._hooks and not any(s.width == dirs.shape[0] for s in self._hooks.values()):
            raise ShapeError(f"the directions have {dirs.shape[0]} entries but no hook has that width "
                             f"({', '.join(f'{h}: {s.width}' for h, s in self._hooks.items())})")
        return self

    def _add_range(self, lo: int, hi: int) -> None:
        self.prompt_ranges = _union_ranges(self.prompt_ranges, [(lo, hi)])

    def _update_hook(self, hook: str, X32: np.ndarray, prompt: np.ndarray, pos: np.ndarray, tok: np.ndarray | None,
                     lengths: np.ndarray, j: np.ndarray) -> None:
        opts = self.options
        width = X32.shape[1]
        state = self._hooks.get(hook)
        if state is None:
            self._check_width(hook, width)
            state = self._hooks[hook] = self._empty_hook(width)
        elif state.width != width:
            raise ShapeError(f"{hook}: rows have width {width}, earlier batches had {state.width}")
        X = X32.astype(np.float64)
        total = X.sum(axis=0)
        if not np.all(np.isfinite(total)):  # one pass that catches any NaN/inf (inf - inf = NaN)
            bad = int(np.flatnonzero(~np.all(np.isfinite(X), axis=1))[0])
            raise DataError(f"{hook}: non-finite activation at prompt {int(prompt[bad])}, position {int(pos[bad])}")
        n = X.shape[0]
        batch = _HookState(width, n)
        if "mean" in opts.stats or "cov" in opts.stats:
            batch.mean = total / n
            if "cov" in opts.stats:
                centred = X - batch.mean
                batch.m2 = centred.T @ centred
        proj = X @ opts.directions if self._projects(width) else None
        if "hist" in opts.stats:
            batch.hist = _hist_counts(X, opts.edges) if opts.neurons else None
            batch.direction_hist = _hist_counts(proj, opts.direction_edges) if proj is not None else None
        if "topk" in opts.stats:
            assert tok is not None
            batch.top = self._batch_top(X, prompt, pos, tok, lengths, j) if opts.neurons else None
            batch.direction_top = self._batch_top(proj, prompt, pos, tok, lengths, j) if proj is not None else None
        self._hooks[hook] = state.merge(batch, opts.k)

    def _check_width(self, hook: str, width: int) -> None:
        opts = self.options
        if "cov" in opts.stats and width > MAX_COV_WIDTH:
            raise InvalidArgumentError(
                f"{hook} has width {width}: its covariance would need {width * width * 8 / 2**30:.1f} GiB per state; "
                f"'cov' is refused above width {MAX_COV_WIDTH}. Use 'mean', 'hist' or 'topk', or directions")

    def _projects(self, width: int) -> bool:
        """Directions apply to the hooks of their width (e.g. a d_model probe direction to the
        residual stream, not to mlp.hook_post); the others get no direction_* statistics."""
        return self.options.directions is not None and self.options.directions.shape[0] == width

    def _empty_hook(self, width: int) -> _HookState:
        opts = self.options
        n_dirs = len(opts.direction_names) if self._projects(width) else 0
        w = sum(opts.window) + 1
        s = _HookState(width)
        if "hist" in opts.stats:
            s.hist = np.zeros((width, opts.bins + 2), np.int64) if opts.neurons else None
            s.direction_hist = np.zeros((n_dirs, opts.bins + 2), np.int64) if n_dirs else None
        if "topk" in opts.stats:
            s.top = _TopK.empty(width, w) if opts.neurons else None
            s.direction_top = _TopK.empty(n_dirs, w) if n_dirs else None
        return s

    def _batch_top(self, vals: np.ndarray, prompt: np.ndarray, pos: np.ndarray, tok: np.ndarray,
                   lengths: np.ndarray, j: np.ndarray) -> _TopK:
        rows = _batch_topk(vals, self.options.k).T  # [units, kk]
        value = np.take_along_axis(vals.T, rows, axis=1)
        window = _windows(tok, lengths, j[rows], pos[rows], self.options.window)
        return _TopK(value, prompt[rows].astype(np.int64), pos[rows].astype(np.int64), window)

    # --- merging -------------------------------------------------------------------------
    def merge(self, other: CorpusStats) -> CorpusStats:
        """Add the statistics of ``other`` (disjoint prompts, same options and model) to this
        state in place and return it. Exact and associative: any split of a corpus merged in
        any order gives the same top-k and histograms, and mean / covariance equal to float64
        rounding."""
        if not isinstance(other, CorpusStats):
            raise InvalidArgumentError(f"can only merge another CorpusStats, got {type(other).__name__}")
        if not self.options.same_as(other.options):
            raise InvalidArgumentError(f"cannot merge states with different options: {self.options.to_json()} vs "
                                       f"{other.options.to_json()}")
        if self.model_name and other.model_name and self.model_name != other.model_name:
            raise InvalidArgumentError(f"cannot merge states of different models ({self.model_name!r} and "
                                       f"{other.model_name!r})")
        if self.weights and other.weights and self.weights != other.weights:
            raise InvalidArgumentError(f"cannot merge states computed with {self.weights} and {other.weights} "
                                       "weights (their activations differ); recompute one in the other's mode")
        if self._hooks and other._hooks and list(self._hooks) != list(other._hooks):
            raise InvalidArgumentError(f"cannot merge states of different hooks ({', '.join(self._hooks)} vs "
                                       f"{', '.join(other._hooks)})")
        for h in set(self._hooks) & set(other._hooks):
            if self._hooks[h].width != other._hooks[h].width:
                raise ShapeError(f"{h}: widths {self._hooks[h].width} and {other._hooks[h].width} differ")
        ranges = _union_ranges(self.prompt_ranges, other.prompt_ranges)  # raises on overlap, before any change
        if not self._hooks:
            self._hooks = {h: _copy_state(s) for h, s in other._hooks.items()}
        else:
            self._hooks = {h: s.merge(other._hooks[h], self.options.k) for h, s in self._hooks.items()}
        self.prompt_ranges = ranges
        self.token_texts.update(other.token_texts)
        self.model_name = self.model_name or other.model_name
        self.weights = self.weights or other.weights
        return self

    @classmethod
    def merged(cls, states: Sequence[CorpusStats]) -> CorpusStats:
        """A new state holding the union of ``states`` (none is modified)."""
        if not states:
            raise InvalidArgumentError("merged() needs at least one state")
        out = cls._from_options(states[0].options, states[0].model_name, states[0].weights)
        for s in states:
            out.merge(s)
        return out

    # --- results -------------------------------------------------------------------------
    def result(self) -> dict[str, dict[str, np.ndarray]]:
        """``{hook: {name: array}}``. Per hook, depending on ``stats``:

        - ``count``: rows seen (0-d int64);
        - ``mean`` ``[d]``, ``cov`` ``[d, d]`` (float64; ``cov`` divides by ``count - 1`` like
          ``np.cov``, NaN with fewer than 2 rows);
        - ``hist`` ``[d, bins]`` int64, ``hist_underflow`` / ``hist_overflow`` ``[d]``,
          ``bin_edges`` ``[bins + 1]``;
        - ``topk_value`` ``[d, kk]`` float64 (``kk = min(k, count)``, largest first; ties by prompt
          id, then position), ``topk_prompt`` / ``topk_position`` ``[d, kk]`` int64,
          ``topk_tokens`` ``[d, kk, before + 1 + after]`` int64 token ids around each hit (the hit
          at index ``before``; -1 outside the prompt);
        - with directions, the same per direction under ``direction_hist``, ...,
          ``direction_topk_value`` ..., plus ``direction_names`` ``[n_directions]`` and
          ``direction_bin_edges``.
        """
        return {h: self._result_of(h) for h in self._hooks}

    def _result_of(self, hook: str) -> dict[str, np.ndarray]:
        s = self._state(hook)
        opts = self.options
        out: dict[str, np.ndarray] = {"count": np.asarray(s.count, dtype=np.int64)}
        if s.mean is not None:
            out["mean"] = s.mean.copy()
        if s.m2 is not None:
            out["cov"] = s.m2 / (s.count - 1) if s.count > 1 else np.full_like(s.m2, np.nan)
        for prefix, hist, edges in (("", s.hist, "edges"), ("direction_", s.direction_hist, "direction_edges")):
            if hist is not None:
                out[prefix + "hist"] = hist[:, 1:-1].copy()
                out[prefix + "hist_underflow"] = hist[:, 0].copy()
                out[prefix + "hist_overflow"] = hist[:, -1].copy()
                out[prefix + "bin_edges"] = getattr(opts, edges)
        for prefix, top in (("", s.top), ("direction_", s.direction_top)):
            if top is not None:
                out[prefix + "topk_value"] = top.value.copy()
                out[prefix + "topk_prompt"] = top.prompt.copy()
                out[prefix + "topk_position"] = top.position.copy()
                out[prefix + "topk_tokens"] = top.window.copy()
        if self._projects(s.width):
            out["direction_names"] = np.array(opts.direction_names)
        return out

    def _state(self, hook: str) -> _HookState:
        if hook not in self._hooks:
            raise KeyError(f"no statistics for {hook!r}; this state has {', '.join(self._hooks) or 'no hooks yet'}")
        s = self._hooks[hook]
        if s.count == 0:
            raise DataError(f"{hook}: no rows were seen")
        return s

    def pca(self, hook: str, n_components: int = 2) -> Any:
        """Principal components of ``hook`` over the corpus, from the covariance (no rows are
        needed): a fitted :class:`mindscope.analysis.PCA` (``components_``
        ``[n_components, d]`` with the largest entry of each positive, ``explained_variance_``
        with ``count - 1`` in the denominator, ``explained_variance_ratio_``, ``mean_``) whose
        ``transform`` projects new rows."""
        from .analysis import PCA

        if "cov" not in self.options.stats:
            raise InvalidArgumentError("pca() needs the 'cov' statistic; run corpus_stats with stats=[..., 'cov']")
        s = self._state(hook)
        k = _positive_int(n_components, "n_components")
        if k > s.width:
            raise InvalidArgumentError(f"n_components={k} exceeds the width of {hook} ({s.width})")
        if s.count < 2:
            raise DataError(f"{hook}: PCA needs at least 2 rows, got {s.count}")
        assert s.m2 is not None and s.mean is not None
        cov = s.m2 / (s.count - 1)
        values, vectors = np.linalg.eigh((cov + cov.T) / 2)  # ascending; symmetrised against rounding
        order = np.argsort(values)[::-1][:k]
        components = vectors[:, order].T
        big = np.argmax(np.abs(components), axis=1)
        components *= np.sign(components[np.arange(k), big])[:, None]
        pca = PCA(n_components=k)
        pca.mean_ = s.mean.copy()
        pca.components_ = np.ascontiguousarray(components)
        pca.explained_variance_ = np.clip(values[order], 0.0, None)
        pca.explained_variance_ratio_ = pca.explained_variance_ / np.trace(cov)
        return pca

    # --- top-k contexts ------------------------------------------------------------------
    def topk_table(self, hook: str, unit: int | str, model: Any = None) -> TopKTable:
        """The top-k contexts of neuron ``unit`` (an index) or direction ``unit`` (a name) of
        ``hook``: a list of records ``{rank, value, prompt_id, position, token, before, after}``
        that renders as an HTML table in Jupyter. Token texts come from the state (filled by
        :func:`corpus_stats`) or from ``model``'s tokenizer."""
        s = self._state(hook)
        if "topk" not in self.options.stats:
            raise InvalidArgumentError("topk_table() needs the 'topk' statistic")
        if isinstance(unit, str):
            if unit not in self.options.direction_names:
                raise InvalidArgumentError(f"no direction {unit!r}; directions: "
                                           f"{', '.join(self.options.direction_names) or 'none'}")
            if s.direction_top is None:
                raise InvalidArgumentError(f"{hook} (width {s.width}) has no direction statistics: the directions "
                                           f"have {self.options.directions.shape[0]} entries")  # type: ignore[union-attr]
            top, row, label = s.direction_top, self.options.direction_names.index(unit), f"direction {unit!r}"
        else:
            if not self.options.neurons:
                raise InvalidArgumentError("this state has no per-neuron top-k (neurons=False); pass a direction name")
            index = _positive_int(unit, "unit", 0)
            if index >= s.width:
                raise InvalidArgumentError(f"neuron {index} is out of range: {hook} has {s.width}")
            top, row, label = s.top, index, f"neuron {index}"
        assert top is not None
        if model is not None:
            self.fill_token_texts(model)
        before = self.options.window[0]
        records = []
        for rank in range(top.value.shape[1]):
            ids = top.window[row, rank]
            text = [self.token_texts.get(int(t), f"<{int(t)}>") for t in ids]
            records.append({"rank": rank + 1, "value": float(top.value[row, rank]),
                            "prompt_id": int(top.prompt[row, rank]), "position": int(top.position[row, rank]),
                            "token": text[before],
                            "before": "".join(t for t, i in zip(text[:before], ids[:before]) if i >= 0),
                            "after": "".join(t for t, i in zip(text[before + 1:], ids[before + 1:]) if i >= 0)})
        return TopKTable(records, title=f"{hook}, {label}: top {len(records)} of {s.count} rows")

    def fill_token_texts(self, model: Any) -> None:
        """Decode (with ``model``'s tokenizer) the token ids of the top-k windows whose text
        this state does not have yet, so the state renders without the model later."""
        missing = sorted(self._window_ids() - set(self.token_texts))
        if missing:
            self.token_texts.update(zip(missing, model.to_str_tokens(missing)))

    def _window_ids(self) -> set[int]:
        ids: set[int] = set()
        for s in self._hooks.values():
            for top in (s.top, s.direction_top):
                if top is not None:
                    ids.update(np.unique(top.window[top.window >= 0]).tolist())
        return ids

    # --- display ---------------------------------------------------------------------------
    def __repr__(self) -> str:
        return (f"CorpusStats({', '.join(self.options.stats)}; {len(self._hooks)} hooks, {self.n_prompts} prompts, "
                f"positions={self.options.positions!r}, model={self.model_name!r}, weights={self.weights!r})")

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><td>{html.escape(h)}</td><td>{s.width}</td><td>{s.count}</td></tr>"
                       for h, s in self._hooks.items())
        return (f"<p>{html.escape(repr(self))}</p><table><thead><tr><th>hook</th><th>width</th><th>rows</th></tr>"
                f"</thead><tbody>{rows}</tbody></table>")

    # --- saving ----------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """The state as an ``.npz`` archive (arrays plus a JSON ``meta`` entry)."""
        arrays: dict[str, np.ndarray] = {}
        hooks = []
        for i, (h, s) in enumerate(self._hooks.items()):
            hooks.append({"name": h, "width": s.width, "count": s.count})
            for key in ("mean", "m2", "hist", "direction_hist"):
                if getattr(s, key) is not None:
                    arrays[f"h{i}.{key}"] = getattr(s, key)
            for key, top in (("top", s.top), ("direction_top", s.direction_top)):
                if top is not None:
                    for part in ("value", "prompt", "position", "window"):
                        arrays[f"h{i}.{key}.{part}"] = getattr(top, part)
        if self.options.directions is not None:
            arrays["directions"] = self.options.directions
        keep = self._window_ids()  # token texts no longer referenced by any window are dropped
        meta = {"format": FORMAT, "options": self.options.to_json(), "model": self.model_name,
                "weights": self.weights, "hooks": hooks,
                "prompt_ranges": [list(r) for r in self.prompt_ranges],
                "token_texts": {str(t): x for t, x in sorted(self.token_texts.items()) if t in keep}}
        arrays["meta"] = np.array(json.dumps(meta))
        buf = io.BytesIO()
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "the data") -> CorpusStats:
        """A state from :meth:`to_bytes`; a malformed archive is a :class:`DataError`."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
            raise DataError(f"{source} is not a saved CorpusStats (.npz): {e}") from e
        try:
            return cls._from_arrays(arrays)
        except DataError as e:
            raise DataError(f"{source}: {e}") from None
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            # Anything else wrong in the layout; MindscopeError subclasses of ValueError
            # (bad options in the meta) are re-raised as DataError here too.
            raise DataError(f"{source} is a malformed CorpusStats archive: {e}") from None

    @classmethod
    def _from_arrays(cls, arrays: dict[str, np.ndarray]) -> CorpusStats:
        if "meta" not in arrays:
            raise DataError("no 'meta' entry")
        meta = json.loads(str(arrays.pop("meta")))
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise DataError(f"format is {meta.get('format') if isinstance(meta, dict) else None!r}, expected {FORMAT!r}")
        directions = arrays.pop("directions", None)
        try:
            options = _Options.from_json(meta["options"], None if directions is None else directions.astype(np.float64))
        except MindscopeError as e:
            raise DataError(f"invalid options: {e}") from None
        # States saved before the weights mode was recorded have none (they merge with any).
        self = cls._from_options(options, meta["model"], meta.get("weights"))
        self.prompt_ranges = _union_ranges([], [(int(lo), int(hi)) for lo, hi in meta["prompt_ranges"]])
        self.token_texts = {int(t): str(x) for t, x in meta["token_texts"].items()}
        for i, h in enumerate(meta["hooks"]):
            self._hooks[str(h["name"])] = self._load_hook(arrays, f"h{i}", int(h["width"]), int(h["count"]))
        if arrays:
            raise DataError(f"unexpected entries {', '.join(sorted(arrays))}")
        return self

    def _load_hook(self, arrays: dict[str, np.ndarray], key: str, width: int, count: int) -> _HookState:
        """One hook's arrays, checked against the shapes the options imply (popped from ``arrays``)."""
        opts = self.options
        if count < 1 or width < 1:
            raise DataError(f"{key}: count {count} / width {width} out of range")
        expected = self._empty_hook(width)
        kk = min(opts.k, count)
        s = _HookState(width, count)

        def take(name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
            if f"{key}.{name}" not in arrays:
                raise DataError(f"missing {key}.{name}")
            a = arrays.pop(f"{key}.{name}")
            if a.shape != shape or a.dtype != dtype:
                raise DataError(f"{key}.{name} has shape {a.shape} {a.dtype}, expected {shape} {np.dtype(dtype)}")
            return a

        if "mean" in opts.stats or "cov" in opts.stats:
            s.mean = take("mean", (width,), np.float64)
        if "cov" in opts.stats:
            s.m2 = take("m2", (width, width), np.float64)
        for name in ("hist", "direction_hist"):
            if getattr(expected, name) is not None:
                setattr(s, name, take(name, getattr(expected, name).shape, np.int64))
        for name in ("top", "direction_top"):
            empty = getattr(expected, name)
            if empty is not None:
                units, w = empty.value.shape[0], empty.window.shape[2]
                setattr(s, name, _TopK(take(f"{name}.value", (units, kk), np.float64),
                                       take(f"{name}.prompt", (units, kk), np.int64),
                                       take(f"{name}.position", (units, kk), np.int64),
                                       take(f"{name}.window", (units, kk, w), np.int64)))
        return s

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the state to ``path`` (an ``.npz`` archive with a JSON ``meta`` entry),
        atomically (a temporary file renamed when complete)."""
        path = os.fspath(path)
        tmp = f"{path}.partial"
        try:
            with open(tmp, "wb") as f:
                f.write(self.to_bytes())
            os.replace(tmp, path)
        except OSError as e:
            raise StorageError(f"cannot write {path}: {e}") from e

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CorpusStats:
        """A state written by :meth:`save`. A missing file is a :class:`StorageError`, a
        malformed one a :class:`DataError`."""
        path = os.fspath(path)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise StorageError(f"cannot read {path}: {e}") from e
        return cls.from_bytes(data, source=path)

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        # Pickled (e.g. shipped back from a worker) as its compact archive.
        return (CorpusStats.from_bytes, (self.to_bytes(),))


class TopKTable(list):
    """Top-k contexts as a list of records; renders as an HTML table in Jupyter (text escaped,
    the hit token highlighted)."""

    def __init__(self, records: Sequence[dict[str, Any]], title: str = ""):
        super().__init__(records)
        self.title = title

    def __repr__(self) -> str:
        lines = [self.title] if self.title else []
        for r in self:
            lines.append(f"{r['rank']:>3} {r['value']:>10.4g}  prompt {r['prompt_id']:>6} pos {r['position']:>4}  "
                         f"{r['before']}[[{r['token']}]]{r['after']}".replace("\n", "\\n"))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        e = html.escape
        body = "".join(
            f"<tr><td>{r['rank']}</td><td>{r['value']:.4g}</td><td>{r['prompt_id']}</td><td>{r['position']}</td>"
            f"<td style='text-align:left;white-space:pre-wrap'>{e(r['before'])}<mark style='font-weight:bold'>{e(r['token'])}</mark>"
            f"{e(r['after'])}</td></tr>" for r in self)
        return (f"<table class='mindscope-topk'><caption>{e(self.title)}</caption><thead><tr><th>rank</th>"
                f"<th>value</th><th>prompt</th><th>position</th><th>context</th></tr></thead><tbody>{body}"
                "</tbody></table>")


# --- running over a corpus ----------------------------------------------------------------

@dataclass
class BlockOptions:
    """What one block's worker needs: the hooks, the batch size and the state's options."""

    names: Any
    batch_size: int
    state: dict[str, Any] = field(default_factory=dict)  # CorpusStats keyword arguments


def _block_state(model: Any, texts: Sequence[str], first_prompt_id: int, options: BlockOptions,
                 progress: Callable[[int], None] | None = None) -> CorpusStats:
    """The statistics of one block of prompts (corpus ids ``first_prompt_id ...``): the unit of
    work of every engine (a worker runs this, the driver merges what comes back)."""
    positions = options.state.get("positions", "all")
    state = CorpusStats(**options.state, model_name=model.name, weights=model.weights)
    size = options.batch_size
    for start in range(0, len(texts), size):
        batch = list(texts[start:start + size])
        _, cache = model.run_with_cache(batch, names=options.names, positions=positions, return_logits=False,
                                        batch_size=size)
        state.update(cache, cache.tokens, first_prompt_id + start)
        if progress is not None:
            progress(len(batch))
    if "topk" in state.options.stats:
        state.fill_token_texts(model)  # on the worker, so the driver never needs the tokenizer
    return state


def corpus_stats(model: Any, corpus: str | os.PathLike[str] | Sequence[str],
                 names: Any = "blocks.*.hook_resid_post", stats: Sequence[str] | str = ("mean", "cov", "topk"),
                 positions: str = "all", batch_size: int = 32, k: int = 10, bins: int = 100,
                 range: tuple[float, float] | None = None, directions: Mapping[str, Any] | None = None,
                 engine: str = "local", ray_address: str | None = None, workers: int = 1,
                 threads: int | None = None, progress: bool | None = None, *,
                 direction_range: tuple[float, float] | None = None, neurons: bool = True,
                 window: tuple[int, int] = (8, 4), block_size: int = 256, column: str = "text",
                 weights: str | None = None) -> CorpusStats:
    """Streaming statistics of hooks over a corpus, without storing activations.

    Args:
        model: a :class:`HookedModel`, or a name / path (``engine="ray"`` needs one of these).
        corpus: a list of strings or a file (see :func:`mindscope.storage.read_texts`;
            ``column`` for CSV / JSONL / Parquet).
        names: hooks (names or globs) whose rows ``[batch, pos, ...]`` are flattened to
            ``[rows, d]``; attention patterns are refused.
        stats: among ``"mean"``, ``"cov"``, ``"hist"`` (needs ``range``), ``"topk"``.
        positions: ``"all"`` (a row per real token; padding is never counted) or ``"last"``.
        k, bins, range, direction_range, directions, neurons, window: see :class:`CorpusStats`.
        engine: ``"local"`` (this process) or ``"ray"`` (blocks of ``block_size`` prompts on
            ``workers`` workers, each ``threads`` threads, at ``ray_address``).
        batch_size: prompts per forward pass.
        progress: a bar with prompts/s and ETA (None: when interactive, False: never).
        weights: the weights mode a name or path is loaded in (``"quantized"``, ``"float32"``;
            None: the file's default). A loaded model keeps its own (Ray workers reload it in
            that mode); asking for another is an error.

    Returns:
        a :class:`CorpusStats`: ``result[hook][name]`` numpy arrays, ``.pca()``,
        ``.topk_table()``, ``.save()``.
    """
    from .model_spec import model_spec
    from .storage import read_texts

    state_kwargs = dict(stats=stats, positions=positions, k=k, bins=bins, range=range,
                        direction_range=direction_range, directions=directions, neurons=neurons, window=window)
    total = CorpusStats(**state_kwargs)  # validates every option before any work
    batch_size = _positive_int(batch_size, "batch_size")
    block_size = _positive_int(block_size, "block_size")
    if engine not in _ENGINES:
        raise InvalidArgumentError(f"engine must be one of {', '.join(_ENGINES)}, got {engine!r}")
    texts = read_texts(corpus, column)
    if not texts:
        raise DataError("the corpus is empty")
    blocks = [(lo, min(lo + block_size, len(texts))) for lo in np.arange(0, len(texts), block_size).tolist()]
    if engine == "local":
        return _local(model, weights, texts, blocks, names, batch_size, state_kwargs, total, ray_address, workers,
                      threads, progress)
    from .distributed import map_blocks  # says how to install Ray when it is missing
    if callable(names) and not isinstance(names, str):
        raise InvalidArgumentError('engine="ray" needs hook names or globs, not a predicate')
    fn = partial(_block_state, options=BlockOptions(names, batch_size, state_kwargs))
    # The spec carries the weights mode: workers reload a float32 model in float32.
    for _, part in map_blocks(model_spec(model, weights), blocks, texts, fn, engine=engine, ray_address=ray_address,
                              workers=workers, threads=threads, progress=progress):
        total.merge(part)  # in completion order: exact up to float64 rounding in any order
    return total


def _local(model: Any, weights: str | None, texts: list[str], blocks: list[tuple[int, int]], names: Any,
           batch_size: int, state_kwargs: dict[str, Any], total: CorpusStats, ray_address: str | None, workers: int,
           threads: int | None, progress: bool | None) -> CorpusStats:
    if workers != 1 or threads is not None or ray_address is not None:
        raise InvalidArgumentError('workers, threads and ray_address apply to engine="ray"; the local engine runs '
                                   "in this process (set RAYON_NUM_THREADS before importing mindscope)")
    from .model_spec import loaded, model_spec

    if loaded(model, weights) is None:
        if not isinstance(model, (str, os.PathLike)):
            raise InvalidArgumentError(f"model must be a HookedModel or a model name / path, got "
                                       f"{type(model).__name__}")
        model = model_spec(model, weights).load()
    hooks = model.resolve_hooks(names)  # unknown hooks fail here, before any forward pass
    options = BlockOptions(hooks, batch_size, state_kwargs)
    bar = ProgressBar(len(texts), on=check_progress(progress), label="corpus stats")
    try:
        for lo, hi in blocks:  # the same per-block work and merge as the distributed engine
            total.merge(_block_state(model, texts[lo:hi], lo, options, bar.update))
    finally:
        bar.close()
    return total
