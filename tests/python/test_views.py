"""The views' HTML without a browser: self-contained, unique ids, data escaped, bad input
refused, and show() / to_html() / _repr_html_ on results and caches (the browser tests are in
test_views_browser.py)."""

from __future__ import annotations

import json
import os
import pickle
import re

import numpy as np
import pytest

import mindscope as ms
from mindscope.errors import DataError, InvalidArgumentError, ShapeError, StorageError


def _data(fragment: str) -> dict:
    m = re.search(r'<script type="application/json" class="ms-data">(.*?)</script>', fragment, re.S)
    assert m, "no data block"
    return json.loads(m.group(1))


def test_view_html_is_self_contained_and_escaped():
    tokens = ["</script><script>alert(1)</script>", " <!--", " &amp;"]
    view = ms.views.token_values_view(tokens, {"v": [1.0, np.nan, -2.0]}, diverging=["v"])
    fragment = view.html()
    # Nothing is fetched: no URL (the SVG namespace is a name, never loaded), no src/href, no
    # import; the script and styles are inline.
    assert not re.search(r"https?://|\bsrc=|\bhref=|@import|\bimport\(", fragment.replace("http://www.w3.org/2000/svg", ""))
    # The data block ends only at its own closing tag, and decodes back to the tokens (NaN as null).
    assert fragment.count("</script>") == 2 and "<script>alert" not in fragment
    panel = _data(fragment)["panels"][0]
    assert panel["tokens"] == tokens and panel["measures"][0]["values"] == [1.0, None, -2.0]


def test_every_rendering_gets_its_own_id():
    view = ms.views.table_view(["a"], [[1]])
    ids = [re.search(r'id="(ms-view-[0-9a-f]+)"', view.html()).group(1) for _ in range(3)]
    assert len(set(ids)) == 3
    assert view._repr_html_() != view._repr_html_()


def test_bad_view_input_is_refused():
    with pytest.raises(ShapeError, match=r"\[layers, heads, 2, 2\]"):
        ms.views.attention_view(["a", "b"], np.full((1, 1, 3, 3), 1 / 3))
    with pytest.raises(DataError, match="probabilities"):
        ms.views.attention_view(["a"], np.full((1, 1, 1, 1), np.nan))
    with pytest.raises(InvalidArgumentError, match="list of strings"):
        ms.views.attention_view("ab", np.ones((1, 1, 2, 2)) / 2)
    with pytest.raises(InvalidArgumentError, match="fewer layers"):
        ms.views.attention_view(["a"] * 400, np.zeros((30, 9, 400, 400)))
    with pytest.raises(ShapeError, match="2 values for 3 tokens"):
        ms.views.token_values_view(["a", "b", "c"], {"v": [1, 2]})
    with pytest.raises(ShapeError, match="3 values for 2 x values"):
        ms.views.probe_curves_view([0, 1], {"acc": [1, 2, 3]})
    with pytest.raises(ShapeError):
        ms.views.world_map_view(["x"], ["Europe"], [[0, 0]], [[0, 0], [1, 1]], [0.0])


def test_to_html_and_show_outside_jupyter(tmp_path, capsys):
    view = ms.views.probe_curves_view([0, 1, 2], {"acc": [0.5, 0.6, 0.7]})
    path = view.to_html(tmp_path / "sub" / "curves.html")
    page = (tmp_path / "sub" / "curves.html").read_text(encoding="utf-8")
    assert path.endswith("curves.html") and page.startswith("<!DOCTYPE html>") and 'class="ms-view"' in page
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["curves.html"]   # no partial file left
    shown = view.show()   # pytest is not a Jupyter kernel: a temporary file, and a line saying where
    try:
        assert shown in capsys.readouterr().out and open(shown, encoding="utf-8").read().startswith("<!DOCTYPE html>")
    finally:
        os.unlink(shown)
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match="cannot write the view"):
        view.to_html(tmp_path / "file" / "view.html")


def test_cache_views(model, tmp_path):
    _, cache = model.run_with_cache(["Paris is in", "The capital of France is"],
                                    names=["blocks.0.attn.hook_pattern", "blocks.3.attn.hook_pattern",
                                           "blocks.3.hook_resid_post"], return_logits=False)
    assert cache.str_tokens(1) == model.to_str_tokens("The capital of France is")
    copy = pickle.loads(pickle.dumps(cache))   # a cache still pickles (the tokenizer stays behind)
    assert copy.str_tokens(1) == cache.str_tokens(1) and np.array_equal(copy["blocks.3.hook_resid_post"],
                                                                        cache["blocks.3.hook_resid_post"])
    panel = _data(cache.attention_view(1, layers=[3]).html())["panels"][0]
    n = int(cache.lengths[1])
    assert panel["tokens"] == cache.str_tokens(1) and panel["layers"] == ["layer 3"]
    expect = np.rint(cache["blocks.3.attn.hook_pattern"][1, :, :n, :n] * 1000)
    assert np.array_equal(np.array(panel["patterns"][0]), expect)   # the padded prompt is cut to its length
    assert _data(cache._repr_html_())["panels"][0]["kind"] == "attention"
    with pytest.raises(InvalidArgumentError, match=r"layers \[5\] were not captured; captured: \[0, 3\]"):
        cache.attention_view(0, layers=[5])
    with pytest.raises(InvalidArgumentError, match=r"index in \[0, 2\)"):
        cache.attention_view(2)

    _, last = model.run_with_cache("Paris is in", names="blocks.*.attn.hook_pattern", positions="last",
                                   return_logits=False)
    with pytest.raises(InvalidArgumentError, match='positions="all"'):
        last.attention_view()
    table = _data(last._repr_html_())["panels"][0]   # without every position: what the cache holds
    assert table["kind"] == "table" and len(table["rows"]) == model.n_layers
    assert table["rows"][0][:2] == ["blocks.0.attn.hook_pattern", " x ".join(map(str, last["blocks.0.attn.hook_pattern"].shape))]
    assert cache.to_html(tmp_path / "cache.html").endswith("cache.html")


def test_cache_too_large_for_an_attention_view_shows_a_table():
    pattern = np.zeros((1, 300, 120, 120), dtype=np.float32)   # 4.3 million weights
    cache = ms.ActivationCache({"blocks.0.attn.hook_pattern": pattern}, [list(range(120))], "all")
    with pytest.raises(InvalidArgumentError, match="fewer layers"):
        cache.attention_view()
    table = _data(cache._repr_html_())["panels"][0]
    assert table["kind"] == "table" and table["rows"] == [["blocks.0.attn.hook_pattern", "1 x 300 x 120 x 120", "float32"]]
    assert cache.str_tokens(0)[:2] == ["#0", "#1"]   # made without a tokenizer


def test_results_have_views(model, tmp_path):
    lens = ms.logit_lens(model, "The capital of France is", " Paris", k=3)
    panel = _data(lens._repr_html_())["panels"][0]
    assert panel["kind"] == "logit_lens" and panel["top_tokens"] == lens.top_tokens
    assert np.allclose(panel["target_prob"], lens.target_prob)
    assert lens.to_html(tmp_path / "lens.html").endswith("lens.html")


def test_show_in_jupyter_displays_the_view(monkeypatch):
    import IPython.display

    shown = []
    monkeypatch.setattr(ms.views._page, "_in_jupyter", lambda: True)
    monkeypatch.setattr(IPython.display, "display", lambda obj: shown.append(obj))
    view = ms.views.table_view(["a"], [[1]])
    assert view.show() is None and shown == [view]
