"""The interactive views in a real headless browser (Debian's chromium, over the DevTools
protocol): each page loads with no script error and no request beyond its own file, the elements
are there, and hovering (a real mouse move) shows the numbers of the result behind the view.

Screenshots of every page go to $MINDSCOPE_TEST_OUTPUT/views/ when that is set (else to pytest's
temporary folder; the path is printed). A missing chromium FAILS these tests with the command
that installs it; MINDSCOPE_SKIP_BROWSER_TESTS=1 skips them explicitly.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

import mindscope as ms
from headless_browser import INSTALL_HINT, HeadlessBrowser, find_chromium
from mindscope.analysis import great_circle_km
from mindscope.experiments.logit_lens import ConfidenceResult, expected_calibration_error
from mindscope.experiments.pos_probing import PosProbingResult
from mindscope.experiments.truth import TruthResult


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if os.environ.get("MINDSCOPE_SKIP_BROWSER_TESTS") == "1":
        pytest.skip("MINDSCOPE_SKIP_BROWSER_TESTS=1")
    binary = find_chromium()
    if binary is None:
        pytest.fail(INSTALL_HINT)
    if importlib.util.find_spec("websocket") is None:
        pytest.fail("the view tests drive Chromium through websocket-client: pip install websocket-client "
                    '(part of the test extra: pip install ".[test]")')
    b = HeadlessBrowser(binary, tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    out = os.environ.get("MINDSCOPE_TEST_OUTPUT")
    folder = Path(out) / "views" if out else tmp_path_factory.mktemp("views")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"view pages and screenshots: {folder}")
    return folder


def load(browser: HeadlessBrowser, page: str, path: Path) -> None:
    """Open ``page`` (HTML text) from ``path``; it must render without errors or requests."""
    path.write_text(page, encoding="utf-8")
    browser.open(path)
    assert browser.errors() == []
    assert browser.requests() == [path.resolve().as_uri()], "the page asked for something beyond itself"
    assert browser.evaluate("document.querySelectorAll('.ms-noscript').length") == 0, "the script did not run"


def readout(browser: HeadlessBrowser, root: str = "") -> str:
    return browser.evaluate(f"document.querySelector('{root} .ms-readout').textContent")


def alphas(browser: HeadlessBrowser, selector: str) -> list[float]:
    """The alpha of each matching element's computed background (0 when transparent)."""
    colours = browser.evaluate(
        f"[...document.querySelectorAll('{selector}')].map(e => getComputedStyle(e).backgroundColor)")
    out = []
    for c in colours:
        parts = re.findall(r"[\d.]+", c)
        out.append(float(parts[3]) if len(parts) == 4 else (1.0 if c.startswith("rgb(") else 0.0))
    return out


def shown(token: str) -> str:
    """A token as the views print it (newlines, tabs and all-space tokens as symbols, the empty
    token as ∅)."""
    if token and set(token) == {" "}:
        return "␣" * len(token)
    return token.replace("\n", "↵").replace("\t", "⇥") or "∅"


def top_weights(text: str) -> list[tuple[int, float]]:
    """(position, weight) pairs of an attention readout: "'tok'@3 0.412 · ..."."""
    return [(int(i), float(v)) for i, v in re.findall(r"@(\d+) ([0-9.]+)", text)]


def test_attention_view_hover_shows_the_pattern(model, browser, shots):
    prompt = "The capital of France is Paris, and the capital of Italy is"
    _, cache = model.run_with_cache(prompt, names="blocks.*.attn.hook_pattern", return_logits=False)
    tokens = cache.str_tokens(0)
    n = len(tokens)
    patterns = np.stack([cache[f"blocks.{i}.attn.hook_pattern"][0] for i in range(model.n_layers)])
    load(browser, cache.view().page(), shots / "attention.html")

    assert browser.evaluate("[...document.querySelectorAll('.ms-token')].map(e => e.textContent)") == list(map(shown, tokens))
    assert browser.evaluate("document.querySelectorAll('.ms-layer option').length") == model.n_layers
    assert browser.evaluate("document.querySelectorAll('.ms-thumb canvas').length") == model.cfg["n_heads"] + 1

    def check(weights: np.ndarray) -> None:
        """The readout's top 5 are the 5 largest weights, to the 0.001 the view keeps; every
        token's shade is its weight relative to the largest."""
        shown = top_weights(readout(browser))
        assert len(shown) == min(5, n)
        np.testing.assert_allclose([v for _, v in shown], np.sort(weights)[::-1][:5], atol=6e-4)
        for i, v in shown:
            assert abs(weights[i] - v) <= 6e-4, (i, weights[i], v)
        expect = np.round(weights, 3) / np.round(weights, 3).max()
        np.testing.assert_allclose(alphas(browser, ".ms-token"), expect, atol=0.006)

    last = model.n_layers - 1
    # Before any hover: the last token of the last layer, head 0.
    assert readout(browser).startswith(f"'{shown(tokens[-1])}' (position {n - 1}), layer {last}, head 0 attends to:")
    check(patterns[last, 0, n - 1])

    browser.hover(".ms-token[data-i='5']")
    text = readout(browser)
    assert text.startswith(f"'{shown(tokens[5])}' (position 5), layer {last}, head 0 attends to:")
    check(patterns[last, 0, 5])
    assert alphas(browser, ".ms-token")[6:] == [0.0] * (n - 6), "a causal model attends to no later token"
    browser.screenshot(shots / "attention_hover.png")

    browser.click(".ms-thumb[data-head='3']")
    browser.hover(".ms-token[data-i='7']")
    assert "head 3 attends to" in readout(browser)
    check(patterns[last, 3, 7])

    browser.evaluate("(() => { const s = document.querySelector('.ms-layer'); s.value = '2';"
                     " s.dispatchEvent(new Event('change')); })()")
    browser.click(f".ms-thumb[data-head='{model.cfg['n_heads']}']")   # the mean of the heads
    browser.hover(".ms-token[data-i='9']")
    assert "layer 2, mean of heads attends to" in readout(browser)
    check(np.round(patterns[2, :, 9], 3).mean(0))

    browser.click(".ms-direction .ms-button[data-i='1']")   # what attends to the hovered token
    browser.hover(".ms-token[data-i='4']")
    assert readout(browser).startswith(f"attending to '{shown(tokens[4])}' (position 4), layer 2, mean of heads:")
    check(np.round(patterns[2, :, :, 4], 3).mean(0))
    browser.screenshot(shots / "attention_layer2_mean_keys.png")


def test_views_in_one_page_do_not_collide(browser, shots):
    rng = np.random.default_rng(0)
    tokens = ["<b>bold?</b>", "</script><script>window.pwned = 1</script>", " & ", " end"]
    patterns = rng.dirichlet(np.ones(4), size=(2, 3, 4))            # [layers, heads, q, k]
    first = ms.views.attention_view(tokens, patterns, title="first")
    second = ms.views.attention_view(tokens[::-1], patterns[::-1], title="second")
    # The same view shown twice (as Jupyter does when a cell is re-displayed) and another one.
    page = f"<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>" \
           f"{first.html()}{first.html()}{second.html()}</body></html>"
    load(browser, page, shots / "three_views.html")

    ids = browser.evaluate("[...document.querySelectorAll('.ms-view')].map(e => e.id)")
    assert len(ids) == 3 and len(set(ids)) == 3
    assert browser.evaluate("window.pwned === undefined && document.querySelectorAll('.ms-view b').length === 0")
    assert browser.evaluate(f"[...document.querySelectorAll('#{ids[0]} .ms-token')].map(e => e.textContent)") == tokens
    before = [readout(browser, f"#{i}") for i in ids]
    browser.hover(f"#{ids[1]} .ms-token[data-i='1']")
    after = [readout(browser, f"#{i}") for i in ids]
    assert after[0] == before[0] and after[2] == before[2]
    assert after[1] != before[1] and after[1].startswith(f"'{tokens[1]}' (position 1)")
    browser.screenshot(shots / "three_views.png")


def test_view_runs_when_inserted_like_a_notebook_output(browser, shots):
    """JupyterLab, VS Code and the classic Notebook put an output's HTML into the page with
    innerHTML and then run its scripts; untrusted outputs keep the scripts off."""
    view = ms.views.probe_curves_view([0, 1, 2], {"accuracy": [0.5, 0.7, 0.9]}, title="inserted")
    load(browser, "<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>"
         "<div id='trusted'></div><div id='untrusted'></div></body></html>", shots / "inserted.html")
    browser.evaluate(f"""(() => {{
        document.getElementById('untrusted').innerHTML = {json.dumps(view.html())};
        const out = document.getElementById('trusted');
        out.innerHTML = {json.dumps(view.html())};
        for (const old of out.querySelectorAll('script:not([type])')) {{
            const s = document.createElement('script');
            s.textContent = old.textContent;
            old.replaceWith(s);
        }}
    }})()""")
    assert browser.errors() == []
    assert browser.evaluate("document.querySelectorAll('#trusted svg.ms-lines').length") == 1
    assert browser.evaluate("document.querySelectorAll('#untrusted svg.ms-lines').length") == 0
    assert "needs JavaScript" in browser.evaluate("document.querySelector('#untrusted .ms-noscript').textContent")
    browser.hover("#trusted .ms-overlay", dx=0.99)
    assert readout(browser, "#trusted") == "layer 2: accuracy 0.900"
    browser.screenshot(shots / "inserted.png")


def test_attribution_view_hover_shows_the_effects(model, browser, shots):
    attr = ms.attribution(model, "When Mary and John went to the store, John gave a drink to", " Mary", unit="word")
    load(browser, attr.view().page(), shots / "attribution.html")
    tokens = browser.evaluate("[...document.querySelectorAll('.ms-token')].map(e => e.textContent)")
    assert tokens == list(map(shown, attr.tokens))
    effect = attr.token_effect()
    strongest = int(np.nanargmax(np.abs(effect)))
    colours = browser.evaluate("[...document.querySelectorAll('.ms-token')].map(e => getComputedStyle(e).backgroundColor)")
    assert colours[strongest] == ("rgb(214, 39, 40)" if effect[strongest] > 0 else "rgb(31, 119, 180)")
    np.testing.assert_allclose(alphas(browser, ".ms-token"), np.nan_to_num(np.abs(effect)) / np.nanmax(np.abs(effect)),
                               atol=0.006)

    for i in (strongest, len(tokens) - 1):
        assert np.isfinite(effect[i])
        browser.hover(f".ms-token[data-i='{i}']")
        text = readout(browser)
        assert text.startswith(f"'{tokens[i]}' (token {i}, in ")
        assert f"Δ log p {effect[i]:.3f}" in text
        assert f"attention rollout {attr.rollout[i]:.3f}" in text
        assert f"(last layer) {attr.attention[-1][i]:.3f}" in text
    browser.screenshot(shots / "attribution_hover.png")

    browser.click(".ms-measures .ms-button[data-i='2']")   # colour by rollout
    np.testing.assert_allclose(alphas(browser, ".ms-token"), attr.rollout / attr.rollout.max(), atol=0.006)
    browser.screenshot(shots / "attribution_rollout.png")


def test_logit_lens_view_hover_shows_the_top_tokens(model, browser, shots):
    lens = ms.logit_lens(model, "The capital of France is", " Paris")
    load(browser, lens.view().page(), shots / "logit_lens.html")
    n_layers, n_pos = lens.target_prob.shape
    cells = browser.evaluate("[...document.querySelectorAll('.ms-cell')].map(e => e.textContent)")
    assert cells == [shown(lens.top_tokens[layer][pos][0]) for layer in range(n_layers) for pos in range(n_pos)]
    np.testing.assert_allclose(alphas(browser, ".ms-cell"), lens.top_probs[:, :, 0].ravel(), atol=0.006)

    for layer, pos in ((n_layers - 1, n_pos - 1), (n_layers // 2, 2)):
        browser.hover(f".ms-cell[data-r='{layer}'][data-c='{pos}']")
        text = readout(browser)
        assert text.startswith(f"L{layer}, after '{shown(lens.tokens[pos])}' (position {pos}): ")
        guesses = " · ".join(f"'{shown(t)}' {p:.3f}" for t, p in zip(lens.top_tokens[layer][pos], lens.top_probs[layer, pos]))
        assert guesses in text
        assert text.endswith(f"p(' Paris') {lens.target_prob[layer, pos]:.3f}, rank {lens.target_rank[layer, pos]}")
    browser.screenshot(shots / "logit_lens_hover.png")

    browser.click(".ms-measures .ms-button[data-i='1']")   # colour by p(target)
    np.testing.assert_allclose(alphas(browser, ".ms-cell"), lens.target_prob.ravel(), atol=0.006)


def test_world_map_view_hover_names_the_city(model, browser, shots):
    wm = ms.world_map(model, ms.datasets.world_cities(n=150), layers=[2, 14, 26])
    load(browser, wm.view().page(), shots / "world_map.html")
    n = len(wm.test_index)
    assert browser.evaluate("document.querySelectorAll('.ms-point').length") == n
    assert browser.evaluate("[...document.querySelectorAll('.ms-legend')][0].children.length") == len(set(wm.continents))
    km = great_circle_km(wm.true_latlon, wm.pred_latlon)
    # Dots may overlap; hover only those on top at their own centre.
    on_top = browser.evaluate("""[...document.querySelectorAll('.ms-point')].filter(c => {
        const r = c.getBoundingClientRect(); c.scrollIntoView({block: 'center'});
        const q = c.getBoundingClientRect();
        return document.elementFromPoint(q.left + q.width / 2, q.top + q.height / 2) === c;
    }).map(c => +c.dataset.i)""")
    assert len(on_top) >= n // 2
    for i in (on_top[0], on_top[len(on_top) // 2], on_top[-1]):
        browser.hover(f".ms-point[data-i='{i}']")
        text = readout(browser)
        assert text.startswith(f"{wm.city_names[i]} ({wm.continents[i]}): true ")
        assert text.endswith(f"error {round(float(km[i])):,} km")
        lat = wm.true_latlon[i, 0]
        assert f"true {abs(lat):.1f}°{'N' if lat >= 0 else 'S'}" in text
    browser.screenshot(shots / "world_map_hover.png")

    # The R² curves: hovering over a layer's x reads that layer.
    for k, layer in enumerate(wm.layers):
        browser.hover(".ms-overlay", dx=k / (len(wm.layers) - 1) * 0.98 + 0.01)
        text = browser.evaluate("document.querySelectorAll('.ms-readout')[1].textContent")
        assert text == (f"layer {layer}: R² latitude {wm.r2_lat[k]:.3f} · R² longitude {wm.r2_lon[k]:.3f} · "
                        f"train R² (mean) {wm.train_r2_mean[k]:.3f} (median error {wm.median_error_km[k]:,.0f} km)")
    browser.screenshot(shots / "world_map_curves.png")


def test_probe_curve_views_read_each_layer(browser, shots):
    """The lie detector's and POS probe's curves, and the confidence bins, on results built
    from seeded random numbers (the view shows whatever the result holds)."""
    rng = np.random.default_rng(1)
    layers = np.arange(0, 30, 3)
    methods = ["mass_mean", "logistic", "lat", "ccs"]
    acc, auc = rng.uniform(0.5, 0.9, (4, len(layers))), rng.uniform(0.5, 1.0, (4, len(layers)))
    truth = TruthResult(
        model_name="m", methods=methods, layers=layers, accuracy=acc, auroc=auc, val_accuracy=acc, val_auroc=auc,
        chosen_layers={m: 21 for m in methods}, best_layer=21, best_method="logistic",
        generalization={}, causal={}, pca_2d=np.zeros((2, 2)), pca_labels=np.zeros(2), n_statements={},
        best_layer_activations=np.zeros((2, 3)), labels=np.zeros(2), train_index=np.arange(1), test_index=np.arange(1),
        val_index=np.arange(1))
    labels = ["embed", "random proj."] + [f"L{i}" for i in layers]
    reps = np.concatenate([[-1, -2], layers])
    a, c = rng.uniform(0.8, 0.95, len(reps)), rng.uniform(0.4, 0.7, len(reps))
    pos = PosProbingResult(
        model_name="m", labels=labels, layers=reps, accuracy=a, train_accuracy=a, control_accuracy=c,
        selectivity=a - c, majority=0.17, n_sentences=3, n_words=30, n_test_words=6, C=1.0)
    conf_values, correct = rng.uniform(0, 1, 200), rng.uniform(0, 1, 200) < 0.4
    ece, cb, ab, cnt = expected_calibration_error(conf_values, correct)
    conf = ConfidenceResult(
        model_name="m", prompts=[f"q{i}" for i in range(200)], answers=["a"] * 200, predictions=["b"] * 200,
        confidence=conf_values, correct=correct, answer_prob=conf_values, bin_confidence=cb, bin_accuracy=ab,
        bin_count=cnt, ece=ece)

    def read(panel: int, x: float, xs: np.ndarray) -> str:
        """Hover the plot of ``panel`` at ``x`` (of the plotted ``xs``) and return its readout."""
        browser.hover(".ms-overlay", dx=(x - xs.min()) / (xs.max() - xs.min()) * 0.98 + 0.01, index=panel)
        return browser.evaluate(f"document.querySelectorAll('.ms-readout')[{panel}].textContent")

    load(browser, truth.view().page(), shots / "lie_detector.html")
    assert browser.evaluate("document.querySelectorAll('.ms-series').length") == 8   # 4 methods x (accuracy, AUROC)
    for k in (0, 7):
        assert read(0, layers[k], layers) == f"layer {layers[k]}: " + " · ".join(
            f"{m} {acc[i, k]:.3f}" for i, m in enumerate(methods))
        assert read(1, layers[k], layers).startswith(f"layer {layers[k]}: mass_mean {auc[0, k]:.3f}")
    browser.screenshot(shots / "lie_detector.png")

    load(browser, pos.view().page(), shots / "pos_probing.html")
    blocks = [i for i, r in enumerate(reps) if r >= -1]
    for i in blocks:
        assert read(0, reps[i], reps[blocks]) == (f"layer {labels[i]}: accuracy {a[i]:.3f} · control accuracy {c[i]:.3f} · "
                                           f"selectivity {a[i] - c[i]:.3f}")
    legend = browser.evaluate("document.querySelector('.ms-legend').textContent")
    assert f"random proj. accuracy {a[1]:.3f}" in legend and "majority tag 0.170" in legend
    browser.screenshot(shots / "pos_probing.png")

    load(browser, conf.view().page(), shots / "confidence.html")
    for b in range(10):
        text = read(0, (b + 0.5) / 10, (np.arange(10) + 0.5) / 10)
        m = re.fullmatch(rf"confidence bin {b / 10:.1f}-{(b + 1) / 10:.1f}: accuracy (\S+) · mean confidence (\S+) "
                         rf"\({cnt[b]} questions\)", text)
        assert m, text
        for shown_value, value in zip(m.groups(), (ab[b], cb[b])):   # a bin without questions shows a dash
            assert shown_value == "–" if np.isnan(value) else abs(float(shown_value) - value) <= 5e-4 + 1e-12
    assert browser.evaluate("document.querySelectorAll('.ms-table tr').length") == 21
    browser.screenshot(shots / "confidence.png")


def test_lines_with_missing_values(browser, shots):
    """NaN (a layer without a value) breaks a line and reads as a dash; an all-NaN series
    still draws the axes."""
    view = ms.views.probe_curves_view([0, 1, 2], {"none": [np.nan] * 3, "gap": [0.2, np.nan, 0.4]})
    load(browser, view.page(), shots / "missing.html")
    paths = browser.evaluate("[...document.querySelectorAll('.ms-series')].map(e => e.getAttribute('d'))")
    assert paths[0] == "" and paths[1].count("M") == 2 and "L" not in paths[1]
    browser.hover(".ms-overlay", dx=0.5)
    assert readout(browser) == "layer 1: none – · gap –"
    browser.hover(".ms-overlay", dx=0.99)
    assert readout(browser) == "layer 2: none – · gap 0.400"
