"""The analysis toolkit against scikit-learn (an independent reference) and planted answers."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.decomposition import PCA as SkPCA
from sklearn.linear_model import LogisticRegression, Ridge, RidgeCV
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mindscope import analysis as A
from mindscope import errors


def blobs(n=1200, d=40, k=3, seed=0, sep=1.0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, d)) * sep
    y = rng.integers(0, k, n)
    X = centers[y] + rng.standard_normal((n, d)) * 2.0 + rng.standard_normal(d) * 5
    return X, y


@pytest.mark.parametrize("k", [2, 5])
def test_logistic_matches_sklearn_accuracy(k):
    X, y = blobs(k=k, seed=k)
    tr, te = A.train_test_split_indices(len(y), 0.25, seed=1)
    ours = A.LogisticProbe(C=0.1, max_iter=500).fit(X[tr], y[tr])
    sk = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=1000)).fit(X[tr], y[tr])
    acc_ours, acc_sk = ours.score(X[te], y[te]), sk.score(X[te], y[te])
    assert abs(acc_ours - acc_sk) <= 0.005, (acc_ours, acc_sk)
    assert 0.5 < acc_ours < 1.0  # the task is neither trivial nor hopeless
    proba = ours.predict_proba(X[te])
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-9)
    np.testing.assert_allclose(proba, sk.predict_proba(X[te]), atol=2e-2)


@pytest.mark.parametrize("k", [2, 3])
def test_probes_take_float32_and_fortran_order_alike(k):
    """float32 and F-ordered input give the probe of the same float64, C-ordered numbers."""
    X, y = blobs(n=400, d=12, k=k, seed=7)
    X32 = X.astype(np.float32)
    X64 = X32.astype(np.float64)  # the very values float32 input carries
    ref = A.LogisticProbe(C=0.5, tol=1e-8).fit(X64, y)
    ridge_ref = A.RidgeProbe(alphas=[1.0]).fit(X64, X64[:, :2] @ [1.0, -2.0])
    for variant in (X32, np.asfortranarray(X32), np.asfortranarray(X64)):
        probe = A.LogisticProbe(C=0.5, tol=1e-8).fit(variant, y)
        np.testing.assert_allclose(probe.coef_, ref.coef_, rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(probe.predict(variant), ref.predict(X64))
        ridge = A.RidgeProbe(alphas=[1.0]).fit(variant, X64[:, :2] @ [1.0, -2.0])
        np.testing.assert_allclose(ridge.coef_, ridge_ref.coef_, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("k,class_weight", [(2, None), (2, "balanced"), (4, "balanced"), (3, {0: 5.0})])
def test_logistic_coefficients_match_sklearn(k, class_weight):
    """Same objective as scikit-learn (weighted log-loss + L2 / C): the same coefficients."""
    X, y = blobs(n=900, d=20, k=k, seed=3)
    keep = (y != 0) | (np.arange(len(y)) % 4 == 0)  # make class 0 rare
    X, y = X[keep], y[keep]
    ours = A.LogisticProbe(C=0.5, tol=1e-8, class_weight=class_weight).fit(X, y)
    sc = StandardScaler().fit(X)
    sk = LogisticRegression(C=0.5, tol=1e-10, max_iter=10000, class_weight=class_weight).fit(sc.transform(X), y)
    sk_coef = sk.coef_ / sc.scale_
    np.testing.assert_allclose(ours.coef_, sk_coef, atol=1e-3 * np.abs(sk_coef).max())
    assert ours.n_iter_ > 0


def test_balanced_class_weights_raise_minority_recall():
    X, y = blobs(n=2000, d=10, k=2, seed=5, sep=0.3)
    keep = (y == 1) | (np.arange(len(y)) % 10 == 0)
    X, y = X[keep], y[keep]
    plain = A.LogisticProbe(C=1.0).fit(X, y)
    bal = A.LogisticProbe(C=1.0, class_weight="balanced").fit(X, y)
    recall = lambda m: np.mean(m.predict(X[y == 0]) == 0)  # noqa: E731
    assert recall(bal) > recall(plain) + 0.1
    with pytest.raises(errors.InvalidArgumentError, match="class_weight"):
        A.LogisticProbe(class_weight="heavy").fit(X, y)
    with pytest.raises(errors.InvalidArgumentError, match="not in y"):
        A.LogisticProbe(class_weight={7: 2.0}).fit(X, y)


def test_logistic_keeps_label_values():
    X, y = blobs(k=2)
    names = np.array(["false", "true"])[y]
    p = A.LogisticProbe().fit(X, names)
    assert set(p.predict(X)) <= {"false", "true"}
    assert list(p.classes_) == ["false", "true"]


@pytest.mark.parametrize("standardize", [False, True])
def test_ridge_coefficients_match_sklearn(standardize):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 30)) * rng.uniform(0.5, 3, 30) + 2
    Y = X @ rng.standard_normal((30, 2)) + rng.standard_normal((300, 2))
    ours = A.RidgeProbe(alphas=3.0, standardize=standardize).fit(X, Y)
    if standardize:
        sc = StandardScaler().fit(X)
        sk = Ridge(alpha=3.0).fit(sc.transform(X), Y)
        sk_coef = sk.coef_ / sc.scale_
    else:
        sk = Ridge(alpha=3.0).fit(X, Y)
        sk_coef = sk.coef_
    rel = np.abs(ours.coef_ - sk_coef) / np.abs(sk_coef).max()
    assert rel.max() <= 1e-4
    np.testing.assert_allclose(ours.predict(X), sk.predict(sc.transform(X) if standardize else X), rtol=1e-6, atol=1e-6)


def test_ridge_loo_picks_the_same_alpha_as_ridgecv():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((200, 60))
    Y = X[:, :5] @ rng.standard_normal((5, 2)) + 2 * rng.standard_normal((200, 2))
    alphas = np.logspace(-1, 4, 11)
    ours = A.RidgeProbe(alphas=alphas, standardize=False).fit(X, Y)
    sk = RidgeCV(alphas=alphas).fit(X, Y)
    assert ours.alpha_ == pytest.approx(sk.alpha_)
    kf = A.RidgeProbe(alphas=alphas, cv=5).fit(X, Y)
    assert kf.alpha_ in alphas


def test_ridge_wide_data():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((40, 200))
    y = X[:, 0] * 3
    ours = A.RidgeProbe(alphas=1.0, standardize=False).fit(X, y)
    sk = Ridge(alpha=1.0).fit(X, y)
    np.testing.assert_allclose(ours.coef_, sk.coef_, atol=1e-6 * np.abs(sk.coef_).max())


def test_pca_matches_sklearn():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((500, 20)) @ rng.standard_normal((20, 20))
    ours = A.PCA(5).fit(X)
    sk = SkPCA(5).fit(X)
    np.testing.assert_allclose(ours.explained_variance_ratio_, sk.explained_variance_ratio_, atol=1e-5)
    np.testing.assert_allclose(ours.explained_variance_, sk.explained_variance_, rtol=1e-5)
    for a, b in zip(ours.components_, sk.components_):
        assert min(np.abs(a - b).max(), np.abs(a + b).max()) < 1e-6
    Z = ours.transform(X)
    np.testing.assert_allclose(np.abs(Z), np.abs(sk.transform(X)), atol=1e-6)


def test_auroc_equals_sklearn():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 1000)
    s = np.round(rng.standard_normal(1000) + y, 1)  # many ties
    assert abs(A.auroc(y, s) - roc_auc_score(y, s)) <= 1e-9


@pytest.mark.parametrize("method", ["mass_mean", "mass_mean_iid", "logistic", "lat", "ccs"])
def test_truth_direction_recovers_planted_direction(method):
    rng = np.random.default_rng(5)
    n, d = 4000, 30
    direction = rng.standard_normal(d)
    direction /= np.linalg.norm(direction)
    truth = rng.integers(0, 2, n)
    base = rng.standard_normal((n, d))
    sign = np.where(truth == 1, 1.0, -1.0)[:, None]
    statements = base + 1.0 * sign * direction
    negations = base - 1.0 * sign * direction  # a negation flips the truth
    X = np.concatenate([statements, negations])
    y = np.concatenate([truth, 1 - truth])
    pairs = [(i, i + n) for i in range(n)]
    t = A.TruthDirection(method).fit(X, y, pairs=pairs)
    cos = float(t.direction_ @ direction)
    assert cos > 0.99, cos
    res = t.evaluate(X, y)
    assert res["accuracy"] > 0.8 and res["auroc"] > 0.9


def test_layer_sweep_and_control_task():
    rng = np.random.default_rng(6)
    n, d = 600, 16
    y = rng.integers(0, 2, n)
    informative = rng.standard_normal((n, d)) + 2.0 * y[:, None]
    noise = rng.standard_normal((n, d))
    table = A.layer_sweep(np.stack([noise, informative]), y, C=1.0,
                          control_labels=A.control_task_labels([str(i % 50) for i in range(n)], y))
    assert table["test"][1] > 0.95 and table["test"][0] < 0.65
    assert table["selectivity"][1] > 0.3
    groups = np.arange(n) // 10
    tr, te = A.train_test_split_indices(n, 0.2, seed=0, groups=groups)
    assert not set(groups[tr]) & set(groups[te])
    folds = A.kfold_indices(n, 5, groups=groups)
    assert all(not set(groups[a]) & set(groups[b]) for a, b in folds)


def test_metrics():
    np.testing.assert_allclose(A.great_circle_km([[48.8566, 2.3522]], [[51.5074, -0.1278]]), [343.5], atol=2)
    y = np.array([[0, 0], [10, 0], [0, 10.0]])
    assert A.proximity_error(y, y).tolist() == [0, 0, 0]
    assert A.balanced_accuracy([0, 0, 0, 1], [0, 0, 0, 0]) == 0.5
    assert A.confusion_matrix([0, 1, 1], [0, 1, 0]).tolist() == [[1, 0], [1, 1]]


# --- bad input ------------------------------------------------------------------------------

def test_bad_input_raises_typed_errors():
    X, y = blobs(k=2, n=100)
    Xn = X.copy()
    Xn[3, 4] = np.nan
    with pytest.raises(errors.DataError, match="NaN"):
        A.LogisticProbe().fit(Xn, y)
    with pytest.raises(errors.DataError, match="inf"):
        A.RidgeProbe().fit(np.where(X > 3, np.inf, X), y.astype(float))
    with pytest.raises(errors.ShapeError, match="must match|labels"):
        A.LogisticProbe().fit(X, y[:-1])
    with pytest.raises(errors.DataError, match="single class"):
        A.LogisticProbe().fit(X, np.zeros(100))
    with pytest.raises(errors.DataError, match="single class"):
        A.TruthDirection().fit(X, np.ones(100))
    with pytest.raises(errors.InvalidArgumentError, match="n_components"):
        A.PCA(50).fit(X[:, :10])
    with pytest.raises(errors.NotFittedError):
        A.LogisticProbe().predict(X)
    with pytest.raises(errors.NotFittedError):
        A.PCA().transform(X)
    with pytest.raises(errors.InvalidArgumentError, match="method"):
        A.TruthDirection("vibes").fit(X, y)
    with pytest.raises(errors.ShapeError, match="features"):
        A.RidgeProbe().fit(X, y.astype(float)).predict(X[:, :3])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k,class_weight", [(2, None), (2, "balanced"), (4, None)])
def test_layer_sweep_equals_one_probe_per_layer(dtype, k, class_weight):
    # The sweep reads the layers in place in the core; it must give what fitting
    # LogisticProbe on each layer's training rows gives.
    rng = np.random.default_rng(11)
    n, d, layers = 500, 12, 3
    y = rng.choice(k, n, p=None if k > 2 else [0.7, 0.3])
    X = rng.standard_normal((layers, n, d)) + np.arange(layers)[:, None, None] * 0.4 * y[None, :, None]
    X[:, :, 0] = X[:, :, 0] * 30 + 5  # a large, offset feature: standardization matters
    X = X.astype(dtype)
    table = A.layer_sweep(X, y, C=0.5, class_weight=class_weight)
    train, test = A.train_test_split_indices(n, 0.2, 0)
    for layer in range(layers):
        probe = A.LogisticProbe(C=0.5, class_weight=class_weight).fit(X[layer][train], y[train])
        assert abs(table["train"][layer] - probe.score(X[layer][train], y[train])) <= 1 / len(train)
        assert abs(table["test"][layer] - probe.score(X[layer][test], y[test])) <= 1 / len(test)
    assert table["test"][-1] > table["test"][0]


def test_layer_sweep_bad_input():
    X = np.zeros((2, 10, 3), np.float32)
    y = np.array([0, 1] * 5)
    X[1, 4, 2] = np.nan
    with pytest.raises(errors.DataError, match="layer 1"):
        A.layer_sweep(X, y)
    with pytest.raises(errors.DataError, match="single class"):
        A.layer_sweep(np.ones((1, 10, 3)), np.zeros(10))
    with pytest.raises(errors.ShapeError):
        A.layer_sweep(np.ones((1, 10, 3)), y, control_labels=y[:5])
