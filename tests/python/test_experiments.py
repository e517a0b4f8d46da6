"""The experiments end to end on the packaged model, checked against scikit-learn and brute force."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.preprocessing import StandardScaler

import mindscope as ms
from mindscope.datasets import city_statements, true_false_csv, ud_pos, world_cities
from mindscope.experiments import (
    LieDetector,
    attribution,
    confidence,
    expected_calibration_error,
    logit_lens,
    pos_probing,
    truth_experiment,
    world_map,
)
from mindscope.experiments.pos_probing import word_token_spans

from conftest import shared_path


@pytest.fixture(scope="module")
def world(model):
    return world_map(model, world_cities(n=3000, seed=0), layers=range(1, model.n_layers, 4))


def test_world_map_matches_sklearn_ridgecv(world):
    """Acceptance: best layer's held-out R² (mean of lat and lon) within 0.03 of RidgeCV."""
    X, y = world.best_activations, world_cities(n=3000, seed=0).latlon
    train, test = world.train_index, world.test_index
    scaler = StandardScaler().fit(X[train])
    ref = RidgeCV(alphas=np.logspace(-1, 4, 11)).fit(scaler.transform(X[train]), y[train])
    pred = ref.predict(scaler.transform(X[test]))
    ss_res = ((y[test] - pred) ** 2).sum(0)
    ss_tot = ((y[test] - y[test].mean(0)) ** 2).sum(0)
    sk_r2 = float(np.mean(1 - ss_res / ss_tot))
    ours = world.metrics()["best_r2_mean"]
    assert abs(ours - sk_r2) < 0.03, (ours, sk_r2)
    # A real signal: clearly above zero, and the map beats guessing the mean by a wide margin.
    assert ours > 0.25
    assert world.metrics()["best_proximity_error"] < 0.35


def test_world_map_outputs(world, tmp_path):
    m = world.metrics()
    assert len(m["per_layer"]["layer"]) == len(world.layers) == 8
    assert world.pred_latlon.shape == world.true_latlon.shape == (len(world.test_index), 2)
    assert world.pca_2d.shape == (len(world.test_index), 2)
    assert {h["continent"] for h in m["continent_holdout"]} >= {"Africa", "Asia", "Europe"}
    for h in m["continent_holdout"]:  # holding a continent out makes its predictions worse
        assert h["mean_error_km_held_out"] > 0.9 * h["mean_error_km_random_split"]
    paths = world.save(tmp_path / "wm")
    assert open(paths["plot"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert json.loads(open(paths["metrics"]).read())["best_layer"] == world.best_layer
    page = open(paths["view"], encoding="utf-8").read()  # the interactive view, beside the PNG
    ascii_name = next(n for n in world.city_names if n.isascii() and n.isalpha())
    assert page.startswith("<!DOCTYPE html>") and ascii_name in page


def test_world_map_bad_input(model):
    with pytest.raises(ms.InvalidArgumentError, match="out of range"):
        world_map(model, world_cities(n=50), layers=[model.n_layers])
    with pytest.raises(ms.InvalidArgumentError, match="template"):
        world_map(model, world_cities(n=50), template="no placeholder")


def test_world_map_template_takes_last_name_token(model):
    from mindscope.experiments.world_map import name_positions

    prompts, pos = name_positions(model, "{name} is a city", ["Buenos Aires"])
    ids, offsets = model.encode_with_offsets(prompts[0])
    a, b = offsets[pos.indices[0]]
    assert prompts[0][a:b].endswith("Aires")


def test_pos_probing_selectivity(model):
    sentences = ud_pos(shared_path("data", "ud_ewt_pos.jsonl"), max_sentences=120)
    r = pos_probing(model, sentences, layers=[3, 12])
    assert r.labels == ["embed", "random proj.", "L3", "L12"]
    np.testing.assert_allclose(r.selectivity, r.accuracy - r.control_accuracy)
    assert (r.accuracy > r.majority + 0.3).all()
    # The contextual layers are more selective than the embeddings (word identity only).
    assert r.selectivity[3] > r.selectivity[0]
    assert r.n_words == sum(len(s.words) for s in sentences)


def test_word_alignment_covers_multi_token_words(model):
    s = ud_pos(shared_path("data", "ud_ewt_pos.jsonl"), max_sentences=3)[2]
    spans = word_token_spans(model, s)
    _, offsets = model.encode_with_offsets(s.text)
    for (first, last), (ws, we) in zip(spans, s.spans):
        assert first <= last
        assert offsets[first][0] <= ws + 1 and offsets[last][1] >= we


@pytest.fixture(scope="module")
def truth(model):
    facts = true_false_csv(shared_path("data", "facts_true_false.csv"), "facts")
    return truth_experiment(model, facts=facts, n_cities=250, layers=[4, 10, 14, 18, 22], causal_n=20)


def test_truth_logistic_matches_sklearn(truth):
    """Acceptance: best layer's logistic-direction accuracy within 2 points of scikit-learn."""
    X, y = truth.best_layer_activations, truth.labels
    tr, te = truth.train_index, truth.test_index
    scaler = StandardScaler().fit(X[tr])
    sk = LogisticRegression(C=0.1, max_iter=2000).fit(scaler.transform(X[tr]), y[tr])
    sk_acc = sk.score(scaler.transform(X[te]), y[te])
    b = int(np.flatnonzero(truth.layers == truth.best_layer)[0])
    ours = truth.accuracy[truth.methods.index("logistic"), b]
    assert abs(ours - sk_acc) <= 0.02, (ours, sk_acc)
    assert ours > 0.75


def test_truth_layer_is_chosen_on_validation_and_reported_on_test(truth):
    """Each method's layer is its best on the validation split (directions fitted on train);
    the best method is the best on validation at its layer; the accuracy reported for it is
    the test split's at that layer (fitted on train + validation). Test statements are about
    cities that neither the fits nor the choices saw."""
    assert not set(truth.val_index.tolist()) & set(truth.test_index.tolist())
    assert set(truth.val_index.tolist()) <= set(truth.train_index.tolist())
    m = truth.metrics()
    for i, meth in enumerate(truth.methods):
        k = int(np.nanargmax(truth.val_accuracy[i]))
        assert truth.chosen_layers[meth] == int(truth.layers[k])
        assert m["chosen_layers"][meth]["test_accuracy"] == truth.accuracy[i, k]
    best = truth.methods.index(truth.best_method)
    k = int(np.flatnonzero(truth.layers == truth.best_layer)[0])
    assert truth.best_layer == truth.chosen_layers[truth.best_method]
    assert truth.val_accuracy[best, k] == max(np.nanmax(row) for row in truth.val_accuracy)
    assert m["best_accuracy"] == truth.accuracy[best, k]
    assert m["n_statements"]["validation"] == len(truth.val_index)
    assert len(repr(truth)) < 400 and "array(" not in repr(truth)


def test_truth_report(truth, tmp_path):
    m = truth.metrics()
    assert 0 in truth.layers  # the control layer is always there
    assert m["control_layer0"]["logistic"]["accuracy"] < 0.62  # no country prior to exploit
    assert set(m["generalization"]["logistic"]["both"]) == {"affirmative", "negated", "facts"}
    assert set(m["causal"]["mean_p_true"]) == {"subtract", "none", "add"}
    assert truth.save(tmp_path)["plot"].endswith(".png")


def test_truth_direction_is_causal_in_middle_layers(model):
    """Marks & Tegmark's intervention: adding the truth direction at a middle layer raises the
    model's P(True) for false statements; subtracting it lowers P(True) for true ones."""
    from mindscope.analysis import train_test_split_indices
    from mindscope.experiments.truth import causal_check, statement_activations

    s = city_statements(n_cities=150, negations=True)
    X = statement_activations(model, s, [16])[0]
    train, test = train_test_split_indices(len(s), 0.2, 0, groups=s.group)
    c = causal_check(model, X[train], s.label[train], 16, [s.text[i] for i in test[:16]], s.label[test[:16]], 4.0)
    p = c["mean_p_true"]
    assert p["add"]["false_statements"] > p["none"]["false_statements"] + 0.03
    assert p["subtract"]["true_statements"] < p["none"]["true_statements"] - 0.01


def test_truth_bad_input(model):
    s = city_statements(n_cities=10)
    only_true = s.subset(s.label == 1)
    with pytest.raises(ms.DataError, match="all .* are true"):
        truth_experiment(model, statements=only_true, layers=[1])
    with pytest.raises(ms.InvalidArgumentError, match="not known"):
        truth_experiment(model, statements=s, methods=["svm"])


def test_city_statements_are_debiased():
    s = city_statements(n_cities=300, seed=1)
    countries = [t.rsplit(" in ", 1)[1] for t in s.text]
    true_c = {c for c, y in zip(countries, s.label) if y == 1}
    false_c = [c for c, y in zip(countries, s.label) if y == 0]
    # False countries come from the true countries' distribution, not uniformly from all.
    assert np.mean([c in true_c for c in false_c]) > 0.95
    assert s.label.mean() == 0.5


def test_lie_detector_fit_score_save_load(model, tmp_path):
    det = LieDetector.fit(model, layer=14, n_cities=120)
    claims = ["The city of Paris is in France.", "The city of Paris is in Peru.",
              "The city of Tokyo is in Japan.", "The city of Tokyo is in Brazil."]
    scores = det.score(claims)
    assert scores[0] > scores[1] and scores[2] > scores[3]
    path = det.save(tmp_path / "det.json")
    again = LieDetector.load(path, model)
    np.testing.assert_allclose(again.direction, det.direction)
    np.testing.assert_allclose(again.predict_proba(claims), det.predict_proba(claims))
    data = json.loads(open(path).read())
    old = {k: v for k, v in data.items() if k != "calibration"}  # as saved before predict_proba existed
    (tmp_path / "old.json").write_text(json.dumps(old))
    with pytest.raises(ms.NotFittedError, match="fit it again"):
        LieDetector.load(tmp_path / "old.json", model).predict_proba(claims)
    data["model"]["d_model"] = 640
    (tmp_path / "other.json").write_text(json.dumps(data))
    with pytest.raises(ms.InvalidArgumentError, match="fitted on model"):
        LieDetector.load(tmp_path / "other.json", model)
    with pytest.raises(ms.StorageError):
        LieDetector.load(tmp_path / "missing.json", model)


def test_lie_detector_predict_proba_is_calibrated(model):
    """predict_proba is the signed score through a logistic curve fitted on the detector's
    training statements: in [0, 1], ordered like the score, equal to scikit-learn's logistic
    regression on those scores (Platt's targets as weights), and its mean on the training
    statements is their (smoothed) fraction of true ones. The layer is chosen on validation."""
    from sklearn.linear_model import LogisticRegression

    from mindscope.experiments.truth import three_way_split

    det = LieDetector.fit(model, n_cities=100)
    assert det.metrics["layer_chosen_on"] == "validation" and 0 <= det.metrics["validation_accuracy"] <= 1
    s = city_statements(n_cities=100, seed=0, negations=True)
    fit_idx, test, _, _ = three_way_split(s, 0.2, 0.2, 0)
    texts = [s.text[i] for i in fit_idx]
    score, p = det.score(texts), det.predict_proba(texts)
    assert ((p >= 0) & (p <= 1)).all()
    assert np.all(np.diff(p[np.argsort(score)]) >= 0)
    y = s.label[fit_idx]
    n1, n0 = int(y.sum()), int((1 - y).sum())
    t = np.where(y == 1, (n1 + 1) / (n1 + 2), 1 / (n0 + 2))
    sk = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10_000).fit(
        np.r_[score, score][:, None], np.r_[np.ones(len(y)), np.zeros(len(y))], sample_weight=np.r_[t, 1 - t])
    np.testing.assert_allclose(p, sk.predict_proba(score[:, None])[:, 1], atol=1e-4)
    assert abs(p.mean() - t.mean()) < 1e-4  # exact on the fit's scores; these are recomputed
    # The reported held-out accuracy is this detector's on the test split.
    test_pred = det.predict([s.text[i] for i in test])
    # (recomputed in other batches: a statement on the threshold may flip)
    assert abs(np.mean(test_pred == s.label[test]) - det.metrics["held_out_accuracy"]) <= 1 / len(test) + 1e-9


PROMPT = "When Mary and John went to the store, John gave a drink to"


@pytest.mark.parametrize("batch_size", [5, 64])
@pytest.mark.parametrize("ablation", ["delete", "replace", "zero", "mean"])
def test_ablation_equals_naive_forward_passes(model, ablation, batch_size):
    """Prefix reuse + packing must give the numbers of one full forward per variant, whether
    the variants run in several packs after a cached clean run (5) or in one pack with it (64)."""
    ids = model.to_tokens(PROMPT)
    target = model.to_tokens(" Mary and")
    spans = [(i, i + 1) for i in range(len(ids))] + [(2, 5), (0, 3)]
    rep = model.token_id(" ") if ablation == "replace" else None
    fast = model.ablation_scores(ids, target, spans, ablation, rep, batch_size)
    slow = model.ablation_scores(ids, target, spans, ablation, rep, 5, naive=True)
    assert abs(fast[0] - slow[0]) < 1e-4
    # Both are f32 forwards whose matmuls sum in different orders (different row counts); the
    # residual stream's massive activations amplify that to ~2e-5 relative on unlikely targets
    # (measured: 2.7e-4 on a log-prob of -11.5), hence the small relative term.
    np.testing.assert_allclose(fast[1], slow[1], atol=1e-4, rtol=3e-5)


def test_ablation_clean_score_equals_model_logprob(model):
    r = attribution(model, PROMPT, " Mary")
    logits = model.run(PROMPT, return_logits="last")[0].astype(np.float64)
    logp = logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
    assert abs(r.clean_logprob - logp[model.token_id(" Mary")]) < 1e-4
    # The name being given is the one that matters most among the names.
    eff = dict(zip(r.span_labels, r.effect))
    assert eff[" Mary"] > eff[" John"]


def test_attribution_units_and_attention(model, tmp_path):
    words = attribution(model, PROMPT, " Mary", unit="word")
    assert [s for s in words.span_labels][:3] == ["When", " Mary", " and"]
    win = attribution(model, PROMPT, " Mary", unit="window", window=3, ablation="mean")
    assert len(win.spans) == len(win.tokens) - 2
    assert words.attention.shape == (model.n_layers, len(words.tokens))
    np.testing.assert_allclose(words.attention.sum(axis=1), 1.0, atol=1e-4)
    assert abs(words.rollout.sum() - 1.0) < 1e-6
    assert words.save(tmp_path)["plot"].endswith(".png")


def test_attribution_bad_input(model):
    with pytest.raises(ms.InvalidArgumentError, match="target is empty"):
        attribution(model, PROMPT, "")
    with pytest.raises(ms.InvalidArgumentError, match="window"):
        attribution(model, "Hello there", " friend", unit="window", window=50)
    with pytest.raises(ms.InvalidArgumentError, match="not known"):
        attribution(model, PROMPT, " Mary", ablation="shuffle")
    with pytest.raises(ms.InvalidArgumentError, match="deleting every prompt token"):
        model.ablation_scores(model.to_tokens("Hi"), [11], [(0, 1)], "delete", None, 4)


def test_logit_lens_last_layer_is_the_model_output(model):
    r = logit_lens(model, "The capital of France is", " Paris")
    logits = model.run("The capital of France is", return_logits="all")[0].astype(np.float64)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(r.target_prob[-1], p[:, model.token_id(" Paris")], atol=1e-4)
    assert r.target_rank[-1, -1] == 0
    assert r.top_tokens[-1][-1][0] == " Paris"


def test_confidence_and_ece(model):
    conf = np.array([0.95, 0.9, 0.15, 0.55])
    correct = np.array([1, 0, 0, 1])
    ece, cb, ab, cnt = expected_calibration_error(conf, correct, n_bins=10)
    # Bins: [0.9, 1.0] holds 0.95 and 0.9 (accuracy 0.5), then 0.15 and 0.55 alone.
    manual = (2 * abs(0.5 - 0.925) + abs(0.0 - 0.15) + abs(1.0 - 0.55)) / 4
    assert abs(ece - manual) < 1e-12 and cnt.sum() == 4
    r = confidence(model, ["The capital of France is", "The capital of Japan is"], [" Paris", " Tokyo"])
    assert r.correct[0] and r.confidence.shape == (2,)
    assert np.all(r.answer_prob <= r.confidence + 1e-12)
    with pytest.raises(ms.ShapeError):
        confidence(model, ["a"], [" b", " c"])
