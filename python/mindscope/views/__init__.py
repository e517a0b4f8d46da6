"""Interactive views for Jupyter and the browser: one function per view, each returning a
:class:`View` (self-contained HTML: the data as JSON, mindscope's own small script inline).

The experiment results and :class:`~mindscope.ActivationCache` call these from their
``_repr_html_`` / ``view()`` / ``show()`` / ``to_html(path)``; they also work on any arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import DataError, InvalidArgumentError, ShapeError
from ._page import View

__all__ = ["View", "attention_view", "token_values_view", "logit_lens_view", "world_map_view",
           "probe_curves_view", "table_view", "lines_panel", "map_panel", "table_panel"]

#: Above this many attention weights the page would be tens of MB; ask for fewer layers instead.
MAX_ATTENTION_VALUES = 4_000_000


def _strings(values: Sequence[Any], name: str) -> list[str]:
    if isinstance(values, str) or not all(isinstance(v, str) for v in values):
        raise InvalidArgumentError(f"{name} must be a list of strings")
    return list(values)


def _array(values: Any, name: str, ndim: int) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != ndim:
        raise ShapeError(f"{name} must be {ndim}-D, got shape {a.shape}")
    return a


def attention_view(tokens: Sequence[str], patterns: Any, layer_names: Sequence[str] | None = None,
                   title: str = "Attention patterns") -> View:
    """Attention of one prompt, per layer and head: hover a token to see what it attends to.

    Args:
        tokens: the prompt's token texts, ``[pos]``.
        patterns: ``[layers, heads, pos, pos]`` softmax probabilities (query rows, key columns);
            shown to 0.001.
        layer_names: one label per layer (default ``"layer 0"``, ...).
    """
    tokens = _strings(tokens, "tokens")
    p = _array(patterns, "patterns", 4)
    n_layers, n_heads, n_q, n_k = p.shape
    if n_q != n_k or n_q != len(tokens):
        raise ShapeError(f"patterns must be [layers, heads, {len(tokens)}, {len(tokens)}] for "
                         f"{len(tokens)} tokens, got {p.shape}")
    if p.size > MAX_ATTENTION_VALUES:
        raise InvalidArgumentError(
            f"{p.size:,} attention weights would make a page of tens of MB (limit "
            f"{MAX_ATTENTION_VALUES:,}): show fewer layers or a shorter prompt")
    if not np.isfinite(p).all():
        raise DataError(f"patterns hold {int((~np.isfinite(p)).sum())} NaN or infinite values; "
                        "they must be probabilities in [0, 1]")
    if p.min() < -1e-3 or p.max() > 1 + 1e-3:
        raise DataError(f"patterns must be probabilities in [0, 1]; got values in [{p.min():.3g}, {p.max():.3g}]")
    names = [f"layer {i}" for i in range(n_layers)] if layer_names is None else _strings(layer_names, "layer_names")
    if len(names) != n_layers:
        raise ShapeError(f"{len(names)} layer_names for {n_layers} layers")
    # Thousandths as integers: a third of the JSON of 3-decimal floats.
    quantized = np.rint(np.clip(p, 0, 1) * 1000).astype(np.int32)
    return View(title, [{"kind": "attention", "tokens": tokens, "layers": names, "heads": n_heads,
                         "patterns": quantized}])


def token_values_view(tokens: Sequence[str], measures: Mapping[str, Any], diverging: Sequence[str] = (),
                      notes: Sequence[str] | None = None, header: str = "", digits: int = 3,
                      title: str = "Values per token") -> View:
    """The text with each token coloured by a value (buttons pick which); hover a token for all
    of them. ``measures``: name -> ``[pos]`` values; names in ``diverging`` are coloured blue
    (negative) to red (positive); ``notes``: one extra label per token (e.g. its word)."""
    tokens = _strings(tokens, "tokens")
    if not measures:
        raise InvalidArgumentError("measures is empty: give at least one name -> [pos] values")
    ms = []
    for name, values in measures.items():
        v = _array(values, f"measure {name!r}", 1)
        if len(v) != len(tokens):
            raise ShapeError(f"measure {name!r} has {len(v)} values for {len(tokens)} tokens")
        ms.append({"name": name, "values": v, "diverging": name in diverging, "digits": digits})
    if notes is not None and len(_strings(notes, "notes")) != len(tokens):
        raise ShapeError(f"{len(notes)} notes for {len(tokens)} tokens")
    panel = {"kind": "tokens", "tokens": tokens, "measures": ms, "header": header}
    if notes is not None:
        panel["notes"] = list(notes)
    return View(title, [panel])


def logit_lens_view(tokens: Sequence[str], layer_names: Sequence[str], top_tokens: Sequence[Sequence[Sequence[str]]],
                    top_probs: Any, target: str, target_prob: Any, target_rank: Any,
                    title: str = "Logit lens") -> View:
    """Layers x positions, each cell the layer's top guess for the next token; hover a cell for
    the top ``k`` with probabilities and the target's probability and rank.

    Shapes: ``top_tokens`` / ``top_probs`` ``[layers, pos, k]``, ``target_prob`` / ``target_rank``
    ``[layers, pos]``.
    """
    tokens = _strings(tokens, "tokens")
    names = _strings(layer_names, "layer_names")
    probs = _array(top_probs, "top_probs", 3)
    tp, tr = _array(target_prob, "target_prob", 2), np.asarray(target_rank)
    shape = (len(names), len(tokens))
    if probs.shape[:2] != shape or tp.shape != shape or tr.shape != shape:
        raise ShapeError(f"expected [layers, pos] = {shape} for top_probs / target_prob / target_rank, got "
                         f"{probs.shape[:2]}, {tp.shape}, {tr.shape}")
    if len(top_tokens) != shape[0] or any(len(row) != shape[1] for row in top_tokens):
        raise ShapeError(f"top_tokens must be [layers, pos, k] with [layers, pos] = {shape}")
    return View(title, [{"kind": "logit_lens", "tokens": tokens, "layers": names,
                         "top_tokens": [[list(c) for c in row] for row in top_tokens], "top_probs": probs,
                         "target": target, "target_prob": tp, "target_rank": tr.astype(np.int64)}])


def lines_panel(x: Sequence[float], series: Mapping[str, Any], x_label: str, y_label: str,
                dashed: Sequence[str] = (), hlines: Mapping[str, float] | None = None, mark: float | None = None,
                x_labels: Sequence[str] | None = None, notes: Sequence[str] | None = None,
                y_range: tuple[float, float] | None = None, title: str = "") -> dict[str, Any]:
    """One line chart (a panel for :class:`View`): ``series`` name -> ``[len(x)]`` values (NaN
    breaks a line), ``hlines`` name -> level, ``mark`` an x to flag (e.g. the best layer)."""
    xs = _array(x, "x", 1)
    if len(xs) == 0 or not np.isfinite(xs).all():
        raise ShapeError("x must be a non-empty list of finite numbers")
    out = []
    for name, values in series.items():
        v = _array(values, f"series {name!r}", 1)
        if len(v) != len(xs):
            raise ShapeError(f"series {name!r} has {len(v)} values for {len(xs)} x values")
        out.append({"name": name, "y": v, "dashed": name in dashed})
    for extra, label in ((x_labels, "x_labels"), (notes, "notes")):
        if extra is not None and len(extra) != len(xs):
            raise ShapeError(f"{len(extra)} {label} for {len(xs)} x values")
    panel: dict[str, Any] = {"kind": "lines", "title": title, "x": xs, "series": out, "x_label": x_label,
                             "y_label": y_label, "hlines": [{"name": k, "y": v} for k, v in (hlines or {}).items()],
                             "mark": mark}
    if x_labels is not None:
        panel["x_labels"] = [str(v) for v in x_labels]
    if notes is not None:
        panel["notes"] = [str(v) for v in notes]
    if y_range is not None:
        panel["y_range"] = list(y_range)
    return panel


def probe_curves_view(layers: Sequence[float], curves: Mapping[str, Any], y_label: str = "held-out score",
                      title: str = "Probe per layer", **options: Any) -> View:
    """Per-layer probe curves; hover the plot to read every curve at one layer. ``options`` are
    those of :func:`lines_panel` (``dashed``, ``hlines``, ``mark``, ``x_labels``, ...)."""
    return View(title, [lines_panel(layers, curves, "layer", y_label, **options)])


def map_panel(names: Sequence[str], groups: Sequence[str], true_latlon: Any, pred_latlon: Any,
              error_km: Any, title: str = "") -> dict[str, Any]:
    """Predicted positions on an equirectangular world (graticule every 30°), each linked to the
    true one. ``true_latlon`` / ``pred_latlon`` ``[n, 2]`` degrees, ``error_km`` ``[n]``."""
    names, groups = _strings(names, "names"), _strings(groups, "groups")
    t, p, e = _array(true_latlon, "true_latlon", 2), _array(pred_latlon, "pred_latlon", 2), _array(error_km, "error_km", 1)
    n = len(names)
    if len(groups) != n or t.shape != (n, 2) or p.shape != (n, 2) or e.shape != (n,):
        raise ShapeError(f"for {n} names: groups [n], true_latlon / pred_latlon [n, 2] and error_km [n]; got "
                         f"{len(groups)}, {t.shape}, {p.shape}, {e.shape}")
    return {"kind": "map", "title": title, "name": names, "group": groups, "true_lat": t[:, 0], "true_lon": t[:, 1],
            "pred_lat": p[:, 0], "pred_lon": p[:, 1], "error_km": e}


def world_map_view(names: Sequence[str], groups: Sequence[str], true_latlon: Any, pred_latlon: Any,
                   error_km: Any, title: str = "World map") -> View:
    """Cities at their predicted positions (hover one for its name, true and predicted place and
    error); see :func:`map_panel` for the shapes."""
    return View(title, [map_panel(names, groups, true_latlon, pred_latlon, error_km)])


def table_panel(columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> dict[str, Any]:
    """A plain table (a panel for :class:`View`); cells are shown as text."""
    columns = [str(c) for c in columns]
    if any(len(r) != len(columns) for r in rows):
        raise ShapeError(f"every row must have {len(columns)} cells, one per column")
    return {"kind": "table", "title": title, "columns": columns, "rows": [[str(v) for v in r] for r in rows]}


def table_view(columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> View:
    """A plain table (e.g. what a cache holds)."""
    return View(title, [table_panel(columns, rows)])
