"""What the figures show: land where land is, text in heatmap cells, the panels each experiment
draws (checked on the plot request sent to Rust and on the pixels of the PNG)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mindscope as ms
from mindscope import plotting
from mindscope.experiments import attribution, confidence, logit_lens, truth_experiment, world_map
from mindscope.experiments.world_map import variance_share
from mindscope.datasets import city_statements, world_cities

# The renderer's fixed layout (src/plot/layout.rs): margin and tick-label areas, in pixels.
MARGIN, X_LABEL_AREA, Y_LABEL_AREA = 8, 40, 56
LAND, WATER = (226, 222, 210), (243, 247, 251)


def read_png(path: Path) -> np.ndarray:
    """``[height, width, 3]`` uint8 of an 8-bit RGB, non-interlaced PNG (what the renderer writes)."""
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, (w, h) = 8, b"", (0, 0)
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert (depth, color, interlace) == (8, 2, 0)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = zlib.decompress(idat)
    stride = w * 3
    out = np.zeros((h, stride), dtype=np.int64)
    prev = np.zeros(stride, dtype=np.int64)
    for y in range(h):
        f, line = raw[y * (stride + 1)], np.frombuffer(raw, np.uint8, stride, y * (stride + 1) + 1).astype(np.int64)
        if f == 0:
            cur = line
        elif f == 2:
            cur = (line + prev) & 255
        else:  # Sub, Average, Paeth depend on the pixel to the left: byte by byte
            cur = np.zeros(stride, dtype=np.int64)
            for i in range(stride):
                a = cur[i - 3] if i >= 3 else 0
                b, c = prev[i], prev[i - 3] if i >= 3 else 0
                if f == 1:
                    pred = a
                elif f == 3:
                    pred = (a + b) // 2
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                cur[i] = (line[i] + pred) & 255
        out[y], prev = cur, cur
    return out.reshape(h, w, 3).astype(np.uint8)


def _on_land(lon: float, lat: float) -> bool:
    def inside(ring: list[float]) -> bool:
        xs, ys, hit = ring[0::2], ring[1::2], False
        for x0, y0, x1, y1 in zip(xs, ys, xs[1:], ys[1:]):
            if (y0 > lat) != (y1 > lat) and lon < x0 + (lat - y0) * (x1 - x0) / (y1 - y0):
                hit = not hit
        return hit
    land = plotting.world_land()
    return any(inside(r) for r in land["land"]) and not any(inside(r) for r in land["lakes"])


PLACES = {"Paris": (2.35, 48.86, True), "Nairobi": (36.8, -1.3, True), "Moscow": (37.6, 55.75, True),
          "Ulaanbaatar": (106.9, 47.9, True), "Brasilia": (-47.9, -15.8, True), "Chicago": (-87.6, 41.9, True),
          "mid-Atlantic": (-40.0, 30.0, False), "mid-Pacific": (-145.0, 5.0, False),
          "Indian Ocean": (80.0, -20.0, False), "Caspian Sea": (50.5, 42.0, False)}


def test_shipped_land_outline_puts_cities_on_land_and_oceans_off_it():
    land = plotting.world_land()
    assert 50 < len(land["land"]) < 1000 and land["coast"]
    for name, (lon, lat, expected) in PLACES.items():
        assert _on_land(lon, lat) is expected, name


def test_map_pixels_show_land_where_land_is(tmp_path):
    w, h = 720, 400
    panel = plotting.scatter_panel([], [], x_range=(-180, 180), y_range=(-90, 90), land=plotting.world_land())
    img = read_png(plotting.save_figure(tmp_path / "map.png", [panel], width=w, height=h))
    pw, ph = w - 2 * MARGIN - Y_LABEL_AREA, h - 2 * MARGIN - X_LABEL_AREA
    for name, (lon, lat, expected) in PLACES.items():
        x = int(MARGIN + Y_LABEL_AREA + (lon + 180) / 360 * pw)
        y = int(MARGIN + (90 - lat) / 180 * ph)
        patch = img[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3)
        colour = LAND if expected else WATER
        assert (patch == colour).all(axis=1).sum() >= 5, (name, patch.tolist())


def test_heatmap_cell_text_is_drawn_and_stays_in_its_cell(tmp_path):
    def draw(text: str) -> np.ndarray:
        panel = plotting.heatmap_panel([[0.5, 0.5]], cell_text=[[text, ""]], vmin=0, vmax=1)
        return read_png(plotting.save_figure(tmp_path / "h.png", [panel], width=400, height=200))

    with_text, without = draw("0.93\nAUROC 0.12"), draw("")
    changed = (with_text != without).any(axis=2)
    cols = np.flatnonzero(changed.any(axis=0))
    assert changed.sum() > 100
    # Cells span [8, 400 - 84): text only in the left half.
    assert cols.min() > 8 and cols.max() < (8 + 400 - 84) // 2
    # Two lines: changed rows form two bands separated by a gap.
    rows = np.flatnonzero(changed.any(axis=1))
    assert np.diff(rows).max() > 1


def test_plot_requests_are_validated(tmp_path):
    with pytest.raises(ms.InvalidArgumentError, match="positive values"):
        plotting.save_figure(tmp_path / "a.png", [plotting.heatmap_panel([[0.0, 0.5]], log_scale=True)])
    with pytest.raises(ms.InvalidArgumentError, match="cell_text must be 1 rows of 2"):
        plotting.save_figure(tmp_path / "a.png", [plotting.heatmap_panel([[1, 2]], cell_text=[["a"]])])
    with pytest.raises(ms.InvalidArgumentError, match="no entry in group_styles"):
        plotting.scatter_panel([0, 1], [0, 1], ["a", "b"], group_styles={"a": (0, "circle")})
    with pytest.raises(ms.InvalidArgumentError, match="marker 'star' is not known"):
        plotting.scatter_panel([0], [0], ["a"], group_styles={"a": (0, "star")})
    with pytest.raises(ms.InvalidArgumentError, match="legend 'middle' is not known"):
        plotting.lines_panel({"x": ([0], [0])}, legend="middle")
    ok = plotting.lines_panel({"x": ([0, 1], [0, 1])})
    with pytest.raises(ms.InvalidArgumentError, match="widths must be 2 positive"):
        plotting.save_figure(tmp_path / "a.png", [ok, ok], widths=[1])
    with pytest.raises(ms.InvalidArgumentError, match="2 hline labels for 0 hlines"):
        plotting.save_figure(tmp_path / "a.png", [{**ok, "hline_labels": ["a", "b"]}])
    with pytest.raises(ms.InvalidArgumentError, match="series 'b' has 1 heights for 2 bars"):
        plotting.save_figure(tmp_path / "a.png", [plotting.bars_panel([0, 1], {"a": [1, 2], "b": [1]}, width=1)])
    bars = plotting.bars_panel([0.25, 0.75], {"right": [3, 1], "wrong": [1, 2]}, width=0.5)
    assert read_png(plotting.save_figure(tmp_path / "b.png", [bars], width=300, height=200)).shape == (200, 300, 3)


def test_variance_share_is_zero_for_mixed_and_one_for_separate_groups():
    rng = np.random.default_rng(0)
    labels = ["a", "b"] * 200
    assert variance_share(rng.normal(size=(400, 2)), labels) < 0.02
    apart = np.array([[0.0, 0.0] if g == "a" else [10.0, 0.0] for g in labels]) + rng.normal(size=(400, 2)) * 0.01
    assert variance_share(apart, labels) > 0.99


@pytest.fixture
def captured(monkeypatch):
    """The panels and layout of the next figure, instead of a PNG."""
    calls: list[dict[str, Any]] = []

    def capture(path: Any, panels: Any, **kw: Any) -> str:
        calls.append({"panels": list(panels), **kw})
        return str(path)

    monkeypatch.setattr(plotting, "save_figure", capture)
    return calls


def test_world_map_figure(model, captured):
    result = world_map(model, world_cities(n=200, seed=0), layers=[4, 12])
    result.plot("x.png")
    world, pca, curves = captured[0]["panels"]
    assert world["land"]["land"] and world["aspect"] == pytest.approx(plotting.MAP_ASPECT)
    assert world["line_to"] and world["end_point_size"] > 0
    assert set(world["group_names"]) == set(result.continents)
    assert "% of variance" in pca["x_label"] and "% of variance" in pca["y_label"]
    assert "continent" in pca["title"] and set(pca["group_names"]) == set(result.continents)
    assert "held-out" not in curves["title"]
    names = [s["name"] for s in curves["series"]]
    assert [n for n in names if "held-out" in n] == ["latitude, held-out", "longitude, held-out"]


def test_lie_detector_figure(model, captured):
    result = truth_experiment(model, city_statements(n_cities=40, seed=0, negations=True), layers=[6, 12],
                              methods=["mass_mean", "logistic"], causal_n=4)
    result.plot("x.png")
    pca, _, heat = captured[0]["panels"]
    assert set(pca["group_names"]) == {"affirmative, true", "affirmative, false", "negated, true", "negated, false"}
    styles = dict(zip(pca["group_names"], pca["group_styles"]))
    assert styles["affirmative, true"]["color"] == styles["negated, true"]["color"]  # colour = truth
    assert styles["affirmative, true"]["marker"] != styles["negated, true"]["marker"]  # marker = form
    assert (heat["x_label"], heat["y_label"]) == ("tested on", "trained on")
    assert all("AUROC" in t for row in heat["cell_text"] for t in row)


def test_attribution_figure_drops_a_rollout_that_sits_on_one_token(model, captured):
    result = attribution(model, "The Eiffel Tower is in the city of", " Paris")
    result.plot("x.png")
    titles = [p["title"] for p in captured[0]["panels"]]
    concentrated = bool(result.rollout.max() >= 0.9)
    assert ("Attention rollout" in titles) is not concentrated
    assert ("rollout not shown" in titles[1]) is concentrated
    heights = captured[0]["heights"]
    assert heights[0] < heights[1]  # the one-row effect strip is compact next to the layer x token map


def test_logit_lens_figure(model, captured):
    result = logit_lens(model, "The capital of France is")
    result.plot("x.png")
    heat, curve = captured[0]["panels"]
    assert heat["log_scale"] and heat["vmin"] > 0
    assert len(heat["cell_text"]) == model.n_layers
    assert heat["cell_text"][-1][-1].replace("·", " ") == result.top_tokens[-1][-1][0][:9]
    assert curve["legend"] == "auto"


def test_confidence_figure(model, captured):
    prompts = ["The capital of France is", "The capital of Japan is", "The capital of Italy is"]
    result = confidence(model, prompts, [" Paris", " Tokyo", " Rome"], n_bins=5)
    result.plot("x.png")
    rel, hist = captured[0]["panels"]
    model_series = next(s for s in rel["series"] if s["name"] == "model")
    assert sum(int(t[2:]) for t in model_series["point_labels"]) == 3
    assert hist["kind"] == "bars"
    assert sum(sum(s["heights"]) for s in hist["series"]) == 3


def test_pos_figure_puts_selectivity_on_its_own_axis(captured):
    from mindscope.experiments.pos_probing import PosProbingResult

    acc, ctrl = np.array([0.8, 0.3, 0.85, 0.9]), np.array([0.6, 0.2, 0.5, 0.55])
    result = PosProbingResult(model_name="m", labels=["embed", "random proj.", "L0", "L3"], layers=np.array([-1, -2, 0, 3]),
                              accuracy=acc, train_accuracy=acc, control_accuracy=ctrl, selectivity=acc - ctrl,
                              majority=0.17, n_sentences=10, n_words=100, n_test_words=20, C=0.1)
    result.plot("x.png")
    acc_panel, sel_panel = captured[0]["panels"]
    assert [s["name"] for s in sel_panel["series"]] == ["selectivity"]
    assert "selectivity" in sel_panel["y_label"] and "selectivity" not in acc_panel["y_label"]
    assert acc_panel["hlines"] == [0.17, 0.3] and "random projection" in acc_panel["hline_labels"][1]
