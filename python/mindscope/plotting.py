"""Figures drawn by the Rust core (plotters) into PNG files.

A figure is a grid of panels; each helper below returns one panel as a plain dict, and
:func:`save_figure` sends the whole description to Rust. Experiments' ``.plot(path)`` methods
are built from these, and researchers can compose their own::

    ms.plotting.save_figure("curves.png", [ms.plotting.lines_panel(
        {"accuracy": (layers, acc), "control": (layers, ctrl)}, title="POS probe",
        x_label="layer", y_label="accuracy")])
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

import numpy as np

from . import _native
from .errors import InvalidArgumentError

Panel = dict[str, Any]

#: Markers a scatter group can use.
MARKERS = ("circle", "ring", "triangle", "cross")
#: Legend places: a corner or side of the plot area, beside it, or ``"auto"`` (the first of those no
#: data passes through, else beside).
LEGEND_PLACES = ("auto", "upper_left", "upper_right", "lower_left", "lower_right", "center_left", "center_right",
                 "outside")
#: Pixel aspect (height of a degree of latitude over width of a degree of longitude) of the
#: world map: an equirectangular projection true at 37.5 degrees, whose areas are within a few
#: tens of percent of true size where most cities are.
MAP_ASPECT = 1.0 / math.cos(math.radians(37.5))


@functools.lru_cache(maxsize=1)
def world_land() -> dict[str, list[list[float]]]:
    """Land of the world at 1:110m (Natural Earth, public domain; see
    ``mindscope/geodata/README.md``), shipped in the package: ``{"land": rings, "lakes": rings,
    "coast": polylines}``, each a flat ``[lon0, lat0, lon1, lat1, ...]`` list in degrees. Pass
    it as ``scatter_panel(..., land=world_land())`` with x = longitude, y = latitude."""
    text = resources.files("mindscope").joinpath("geodata", "land_110m.json").read_text(encoding="utf-8")
    doc = json.loads(text)
    return {k: doc[k] for k in ("land", "lakes", "coast")}


def _check_choice(value: str, allowed: Sequence[str], what: str) -> str:
    if value not in allowed:
        raise InvalidArgumentError(f"{what} {value!r} is not known; allowed: {', '.join(allowed)}")
    return value


def _finite_or_none(values: Any) -> list[Any]:
    arr = np.asarray(values, dtype=np.float64).ravel()
    return [float(v) if np.isfinite(v) else None for v in arr]


def scatter_panel(
    x: Any, y: Any, groups: Sequence[Any] | None = None, *, title: str = "", x_label: str = "",
    y_label: str = "", line_to: tuple[Any, Any] | None = None, graticule: float | None = None,
    x_range: tuple[float, float] | None = None, y_range: tuple[float, float] | None = None,
    point_size: int = 3, group_styles: Mapping[str, tuple[int, str]] | None = None,
    land: Mapping[str, Any] | None = None, aspect: float | None = None, end_point_size: int = 0,
    legend: str = "auto",
) -> Panel:
    """Points ``[n]`` coloured by ``groups`` (any labels; legend in sorted order, or in the
    order of ``group_styles``, which maps each group to ``(palette index, marker)`` with a
    marker from :data:`MARKERS`), with optional faint segments to ``line_to = (x_end, y_end)``
    (ends marked by dark dots of ``end_point_size``), a light grid every ``graticule`` units
    (with ``land``: at the tick labels instead), ``land`` underneath (:func:`world_land`) and a fixed ``aspect`` (pixels per y unit / per x
    unit)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    panel: Panel = {"kind": "scatter", "title": title, "x_label": x_label, "y_label": y_label,
                    "x": x[keep].tolist(), "y": y[keep].tolist(), "point_size": point_size,
                    "end_point_size": end_point_size, "legend": _check_choice(legend, LEGEND_PLACES, "legend")}
    if groups is not None:
        g = np.asarray([str(v) for v in groups])[keep]
        if group_styles is not None:
            names = np.asarray(list(group_styles))
            missing = sorted(set(g.tolist()) - set(names.tolist()))
            if missing:
                raise InvalidArgumentError(f"groups {missing} have no entry in group_styles")
            idx = np.array([names.tolist().index(v) for v in g.tolist()], dtype=np.int64)
            panel["group_styles"] = [{"color": int(c), "marker": _check_choice(m, MARKERS, "marker")}
                                     for c, m in group_styles.values()]
        else:
            names, idx = np.unique(g, return_inverse=True)
        panel["groups"], panel["group_names"] = idx.tolist(), names.tolist()
    if land is not None:
        panel["land"] = {k: land.get(k, []) for k in ("land", "lakes", "coast")}
    if aspect is not None:
        panel["aspect"] = float(aspect)
    if line_to is not None:
        panel["line_to"] = [np.asarray(line_to[0], dtype=np.float64)[keep].tolist(),
                            np.asarray(line_to[1], dtype=np.float64)[keep].tolist()]
    if graticule is not None:
        panel["graticule"] = float(graticule)
    if x_range is not None:
        panel["x_range"] = list(map(float, x_range))
    if y_range is not None:
        panel["y_range"] = list(map(float, y_range))
    return panel


def lines_panel(
    series: Mapping[str, tuple[Any, Any]], *, title: str = "", x_label: str = "", y_label: str = "",
    hlines: Sequence[float] = (), dashed: Sequence[str] = (), markers: bool = True,
    y_range: tuple[float, float] | None = None, legend: str = "auto",
    hline_labels: Sequence[str] = (), point_labels: Mapping[str, Sequence[str]] | None = None,
    x_range: tuple[float, float] | None = None,
) -> Panel:
    """Named ``(x, y)`` series, e.g. a metric per layer; ``hlines`` are dashed reference
    levels (chance) named in the legend by ``hline_labels``, ``dashed`` names series drawn dashed
    (controls), ``point_labels[name]`` is a text per point of that series (e.g. counts);
    ``legend`` is one of :data:`LEGEND_PLACES` (default: a free corner, else beside the plot)."""
    out: list[dict[str, Any]] = []
    for name, (x, y) in series.items():
        xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        keep = np.isfinite(xs) & np.isfinite(ys)
        entry = {"name": name, "x": xs[keep].tolist(), "y": ys[keep].tolist(),
                 "markers": markers, "dashed": name in dashed}
        if point_labels and name in point_labels:
            labels = [str(t) for t in point_labels[name]]
            if len(labels) != len(xs):
                raise InvalidArgumentError(f"series {name!r}: {len(labels)} point labels for {len(xs)} points")
            entry["point_labels"] = [t for t, k in zip(labels, keep) if k]
        out.append(entry)
    if hline_labels and len(hline_labels) != len(hlines):
        raise InvalidArgumentError(f"{len(hline_labels)} hline labels for {len(hlines)} hlines")
    panel: Panel = {"kind": "lines", "title": title, "x_label": x_label, "y_label": y_label,
                    "series": out, "hlines": [float(h) for h in hlines],
                    "hline_labels": [str(t) for t in hline_labels],
                    "legend": _check_choice(legend, LEGEND_PLACES, "legend")}
    if x_range is not None:
        panel["x_range"] = list(map(float, x_range))
    if y_range is not None:
        panel["y_range"] = list(map(float, y_range))
    return panel


def heatmap_panel(
    values: Any, *, row_labels: Sequence[str] = (), col_labels: Sequence[str] = (), title: str = "",
    diverging: bool = False, annotate: bool = False, x_label: str = "", y_label: str = "",
    cell_text: Sequence[Sequence[str]] | None = None, log_scale: bool = False,
    vmin: float | None = None, vmax: float | None = None,
) -> Panel:
    """A ``[rows, cols]`` matrix as coloured cells; ``diverging`` centres a blue-white-red scale
    on 0 (signed effects), ``log_scale`` colours by log10 (values below ``vmin`` take the lowest
    colour). ``annotate`` prints each value in its cell, ``cell_text`` ``[rows][cols]`` prints
    any text instead (``\n`` for a second line); the font shrinks to fit, and text that cannot
    fit is left out. NaN cells stay blank."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        v = v[None, :]
    panel: Panel = {"kind": "heatmap", "title": title, "values": [_finite_or_none(r) for r in v],
                    "row_labels": [str(s) for s in row_labels], "col_labels": [str(s) for s in col_labels],
                    "diverging": diverging, "annotate": annotate, "x_label": x_label, "y_label": y_label,
                    "log_scale": log_scale}
    if cell_text is not None:
        panel["cell_text"] = [[str(t) for t in row] for row in cell_text]
    if vmin is not None:
        panel["vmin"] = float(vmin)
    if vmax is not None:
        panel["vmax"] = float(vmax)
    return panel


def bars_panel(
    x: Any, heights: Mapping[str, Any], *, width: float, title: str = "", x_label: str = "",
    y_label: str = "", x_range: tuple[float, float] | None = None, legend: str = "auto",
) -> Panel:
    """Bars centred at ``x`` ``[bins]`` of ``width``; each entry of ``heights`` (name ->
    ``[bins]``, >= 0) is stacked on the previous ones, e.g. a histogram split by outcome."""
    return {"kind": "bars", "title": title, "x_label": x_label, "y_label": y_label,
            "x": np.asarray(x, dtype=np.float64).tolist(), "width": float(width),
            "series": [{"name": n, "heights": np.asarray(h, dtype=np.float64).tolist()} for n, h in heights.items()],
            "legend": _check_choice(legend, LEGEND_PLACES, "legend"),
            **({"x_range": list(map(float, x_range))} if x_range is not None else {})}


def save_figure(path: str | os.PathLike[str], panels: Sequence[Panel], *, columns: int | None = None,
                width: int | None = None, height: int | None = None, title: str | None = None,
                widths: Sequence[float] | None = None, heights: Sequence[float] | None = None) -> str:
    """Render ``panels`` in a grid (``columns`` per row, default all in one row) into the PNG at
    ``path``; returns the path. ``widths`` / ``heights`` are relative sizes of the columns and
    rows (equal by default). The file is replaced atomically."""
    panels = list(panels)
    cols = columns or len(panels)
    rows = -(-len(panels) // max(cols, 1))
    spec: dict[str, Any] = {"panels": panels, "columns": cols, "title": title,
                            "width": width or min(600 * cols, 2400),
                            "height": height or 480 * rows + (30 if title else 0)}
    if widths is not None:
        spec["widths"] = [float(w) for w in widths]
    if heights is not None:
        spec["heights"] = [float(h) for h in heights]
    path = os.fspath(path)
    _native.render_figure(json.dumps(spec, allow_nan=False), path)
    return path


# --- per-site and per-token attribution heatmaps (activation / attribution patching, saliency) ---

_SITE_TITLES = {"resid_pre": "residual stream (resid_pre)", "attn_out": "attention output",
                "mlp_out": "MLP output", "head": "attention heads (z, all positions)"}


def site_scores_panels(scores: Any, sites: Sequence[str] | None = None,
                       relative_to: str | None = "auto") -> list[Panel]:
    """One heatmap panel per site of a :class:`mindscope.site_scores.SiteScores`: layer x
    position (token labels) for ``resid_pre``/``attn_out``/``mlp_out``, layer x head for
    ``head``. ``relative_to``: a ``baseline`` key subtracted from the scores (``"auto"``:
    ``"corrupt"`` for activation patching, whose scores are the patched run's metric, so cells
    show the patch's effect; nothing for methods that already score effects)."""
    names = list(scores.scores) if sites is None else list(sites)
    missing = [s for s in names if s not in scores.scores]
    if missing:
        raise InvalidArgumentError(f"no scores for site(s) {missing}; these have: {list(scores.scores)}")
    if relative_to == "auto":
        relative_to = "corrupt" if scores.method == "activation_patching" else None
    if relative_to is not None and relative_to not in scores.baseline:
        raise InvalidArgumentError(
            f"relative_to={relative_to!r} is not a baseline of these scores: {list(scores.baseline)}")
    shift = scores.baseline[relative_to] if relative_to is not None else 0.0
    what = f"{scores.metric} − {relative_to}" if relative_to is not None else scores.metric
    panels = []
    for site in names:
        values = np.asarray(scores.scores[site], dtype=np.float64) - shift
        layers = [str(i) for i in range(values.shape[0])]
        if site == "head":
            cols, x_label = [f"h{h}" for h in range(values.shape[1])], "head"
        else:
            cols, x_label = list(scores.tokens)[: values.shape[1]], "position"
        panels.append(heatmap_panel(
            values, row_labels=layers, col_labels=cols, diverging=True, x_label=x_label, y_label="layer",
            title=f"{_SITE_TITLES.get(site, site)}: {what}"))
    return panels


def plot_site_scores(scores: Any, path: str | os.PathLike[str], site: str | Sequence[str] | None = None,
                     relative_to: str | None = "auto") -> str:
    """Heatmaps of a :class:`SiteScores` (all its sites, or ``site``) side by side into the PNG at
    ``path``; see :func:`site_scores_panels`. Returns the path."""
    sites = [site] if isinstance(site, str) else site
    panels = site_scores_panels(scores, sites, relative_to)
    n_layers = max(np.asarray(scores.scores[s]).shape[0] for s in (sites or list(scores.scores)))
    columns = min(len(panels), 2)
    rows = -(-len(panels) // columns)
    height = rows * max(420, 22 * n_layers + 200)
    return save_figure(path, panels, columns=columns, width=700 * columns, height=height,
                       title=f"{scores.method.replace('_', ' ')}: {scores.metric}")


def plot_token_scores(path: str | os.PathLike[str], tokens: Sequence[str],
                      scores: Mapping[str, Any] | Any, *, title: str = "", annotate: bool = True) -> str:
    """Per-token attributions (saliency, input x gradient, integrated gradients) as a heatmap
    with one row per method over the prompt's ``tokens``: ``scores`` is ``{method: [T]}`` or a
    single ``[T]`` array. A diverging scale centred on 0, each row as given (rows of different
    methods share the colour scale, so normalise them first if their units differ). Returns the
    path."""
    rows = dict(scores) if isinstance(scores, Mapping) else {"score": scores}
    values = []
    for name, v in rows.items():
        v = np.asarray(v, dtype=np.float64).ravel()
        if v.shape[0] != len(tokens):
            raise InvalidArgumentError(f"{name}: {v.shape[0]} scores for {len(tokens)} tokens")
        values.append(v)
    panel = heatmap_panel(np.stack(values), row_labels=list(rows), col_labels=list(tokens), title=title,
                          diverging=True, annotate=annotate, x_label="token")
    width = max(600, 60 * len(tokens) + 200)
    return save_figure(path, [panel], width=min(width, 4000), height=260 + 45 * len(values))
