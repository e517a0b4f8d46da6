"""Probes, projections, truth directions and metrics with a scikit-learn-style API.

Fitting runs in the Rust core (``mindscope._native``); prediction is a numpy matrix product.
Every estimator takes ``X`` as ``[n_samples, n_features]`` (float32 or float64, any memory order)
and records its standardisation (``mean_``, ``scale_``) when ``standardize=True``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from . import _native
from .errors import DataError, InvalidArgumentError, NotFittedError, ShapeError
from .progress import native_progress, progress_bar


T = TypeVar("T")
R = TypeVar("R")


def map_parallel(fn: Callable[[T], R], items: Iterable[T], workers: int | None = None,
                 on_done: Callable[[int], None] | None = None) -> list[R]:
    """``[fn(x) for x in items]`` on a thread pool. The Rust fits release the GIL and are
    single-threaded, so independent fits (one per layer) run side by side on all cores.
    ``on_done(1)`` is called as each item finishes (a progress bar's ``update``); on an
    exception (Ctrl-C) the items not started are dropped."""
    items = list(items)
    workers = workers or os.cpu_count() or 1

    def one(x: T) -> R:
        r = fn(x)
        if on_done is not None:
            on_done(1)
        return r

    if workers == 1 or len(items) < 2:
        return [one(x) for x in items]
    pool = ThreadPoolExecutor(max_workers=min(workers, len(items)))
    try:
        return list(pool.map(one, items))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _as_f64_2d(x: Any, what: str = "X") -> np.ndarray:
    try:
        arr = np.asarray(x)
        if arr.ndim == 2 and arr.dtype != np.float64:
            arr = arr.astype(np.float64)
    except (TypeError, ValueError, OverflowError) as e:  # strings, ragged lists, objects, huge ints
        raise DataError(f"{what} must hold numbers convertible to float64: {e}") from None
    if arr.ndim != 2:
        raise ShapeError(f"{what} must be 2-D [n_samples, n_features], got shape {arr.shape}")
    return arr


def _check_finite(arr: np.ndarray, what: str = "X", kind: str = "features") -> None:
    """NaN or inf anywhere is a :class:`DataError` naming the first one (prediction paths run in
    numpy, where NaN would silently turn into NaN scores)."""
    bad = ~np.isfinite(arr)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        where = f"index {first[0]}" if len(first) == 1 else f"row {first[0]}, column {first[1]}"
        raise DataError(f"{what} contains {arr[first]} at {where}: {kind} must be finite (no NaN or inf)")


def _check_rows(X: np.ndarray, minimum: int, who: str) -> None:
    """An empty or too small ``X`` says how many rows and features are needed, before the core
    (or numpy on an empty label array) fails less clearly."""
    if X.shape[1] == 0:
        raise DataError(f"{who} needs at least 1 feature (column of X), got shape {X.shape}")
    if X.shape[0] < minimum:
        raise DataError(f"{who} needs at least {minimum} samples (rows of X), got {X.shape[0]}")


def _int_param(value: Any, name: str, minimum: int) -> int:
    """An integer hyper-parameter (bool, float and str are refused rather than truncated)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidArgumentError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise InvalidArgumentError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def _float_param(value: Any, name: str, allow_zero: bool = False) -> float:
    """A positive (or non-negative) finite real hyper-parameter."""
    what = "a non-negative" if allow_zero else "a positive"
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError):
        raise InvalidArgumentError(f"{name} must be {what} number, got {value!r}") from None
    if isinstance(value, bool) or not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise InvalidArgumentError(f"{name} must be {what} number, got {value!r}")
    return v


def _class_labels(y: Any, n: int | None, what: str = "y") -> np.ndarray:
    """Class labels ``[n]``: any mutually comparable values, but no NaN or inf (``np.unique``
    would make NaN a class of its own) and no None."""
    y = np.asarray(y)
    if y.ndim != 1 or (n is not None and len(y) != n):
        expect = "" if n is None else f" with {n} labels (one per row of X)"
        raise ShapeError(f"{what} must be 1-D{expect}, got shape {y.shape}")
    if y.dtype.kind in "fc":
        _check_finite(y, what, "labels")
    elif y.dtype.kind == "O":
        for i, v in enumerate(y.tolist()):
            if v is None or (isinstance(v, float) and not np.isfinite(v)):
                raise DataError(f"{what} contains {v!r} at index {i}: labels must be finite values, not None/NaN/inf")
    elif y.dtype.kind not in "biuUS":
        raise DataError(f"{what} must hold numbers, strings or booleans, got dtype {y.dtype}")
    return y


def _binary_labels(y: Any, n: int | None, what: str = "labels") -> np.ndarray:
    """0/1 (or bool) labels as int64 ``[n]``; anything else (NaN, 0.5, 2, "yes") is refused
    instead of being truncated by ``astype``."""
    y = _class_labels(y, n, what)
    if y.dtype.kind in "US":
        raise DataError(f"{what} must be 0 (false) or 1 (true), got strings such as {y[0]!r}")
    try:
        ok = np.isin(y, [0, 1])
    except TypeError:
        ok = np.zeros(len(y), dtype=bool)
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        raise DataError(f"{what} must be 0 (false) or 1 (true), got {y.tolist()[i]!r} at index {i}")
    return y.astype(np.int64)


class _Estimator:
    _params: tuple[str, ...] = ()

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._params}

    def set_params(self, **params: Any) -> _Estimator:
        for k, v in params.items():
            if k not in self._params:
                raise InvalidArgumentError(f"unknown parameter '{k}'; allowed: {', '.join(self._params)}")
            setattr(self, k, v)
        return self

    def _check_fitted(self, attr: str) -> None:
        if not hasattr(self, attr):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: call fit(X, y) first")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


class RidgeProbe(_Estimator):
    """Ridge regression for one or several targets (e.g. latitude and longitude together).

    ``alphas``: one value or a grid; with a grid, alpha is chosen by efficient leave-one-out
    (``cv=None``) or k-fold (``cv=k``) cross-validation on the mean squared error over targets,
    as scikit-learn's ``RidgeCV`` does. Fitted: ``coef_`` ``[n_targets, n_features]`` (or
    ``[n_features]`` for a 1-D ``y``), ``intercept_``, ``alpha_``, ``cv_errors_``.
    """

    _params = ("alphas", "cv", "standardize", "random_state")

    def __init__(self, alphas: float | Sequence[float] = tuple(np.logspace(-1, 4, 11)),
                 cv: int | None = None, standardize: bool = True, random_state: int = 0):
        self.alphas = alphas
        self.cv = cv
        self.standardize = standardize
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> RidgeProbe:
        X = _as_f64_2d(X)
        # The core's leave-one-out needs 3 rows; with k-fold every fold needs one.
        _check_rows(X, 3, "RidgeProbe.fit")
        try:
            y_arr = np.asarray(y, dtype=np.float64)
        except (TypeError, ValueError, OverflowError) as e:
            raise DataError(f"y must hold numeric regression targets: {e}") from None
        if y_arr.ndim not in (1, 2):
            raise ShapeError(f"y must be [n_samples] or [n_samples, n_targets], got shape {y_arr.shape}")
        self._single = y_arr.ndim == 1
        Y = y_arr[:, None] if self._single else y_arr
        if Y.shape[0] != X.shape[0]:
            raise ShapeError(f"y has {Y.shape[0]} rows but X has {X.shape[0]}: they must match")
        if Y.shape[1] == 0:
            raise DataError(f"y has no targets (shape {y_arr.shape})")
        _check_finite(Y[:, 0] if self._single else Y, "y", "targets")
        if np.isscalar(self.alphas):
            alphas = [_float_param(self.alphas, "alphas")]
        else:
            try:
                alphas = [_float_param(a, "every alpha") for a in self.alphas]
            except TypeError:
                raise InvalidArgumentError(f"alphas must be a positive number or a list of them, "
                                           f"got {self.alphas!r}") from None
        cv = 0 if self.cv is None else _int_param(self.cv, "cv (folds)", 2)
        seed = _int_param(self.random_state, "random_state", 0)
        out = _native.ridge_fit(X, np.ascontiguousarray(Y), alphas, cv, seed, bool(self.standardize))
        coef = out["coef"].T  # [n_targets, n_features], like scikit-learn
        self.coef_ = coef[0] if self._single else coef
        self.intercept_ = out["intercept"][0] if self._single else out["intercept"]
        self.alpha_ = out["alpha"]
        self.cv_errors_ = np.asarray(out["cv_errors"])
        self.mean_, self.scale_ = out["mean"], out["scale"]
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X: Any) -> np.ndarray:
        """``[n_samples]`` or ``[n_samples, n_targets]``."""
        self._check_fitted("coef_")
        X = _as_f64_2d(X)
        if X.shape[1] != self.n_features_in_:
            raise ShapeError(f"X has {X.shape[1]} features but the probe was fitted on {self.n_features_in_}")
        _check_finite(X)
        return X @ np.asarray(self.coef_).T + self.intercept_

    def score(self, X: Any, y: Any) -> float:
        """Mean R² over targets."""
        return float(np.mean(r2_score(y, self.predict(X))))


def _unique_classes(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted classes and each label's index; labels that cannot be ordered (e.g. 1 and "a")
    are a :class:`DataError` rather than numpy's TypeError."""
    try:
        classes, idx = np.unique(y, return_inverse=True)
    except TypeError as e:
        raise DataError(f"labels must be mutually comparable (all numbers or all strings): {e}") from None
    return classes, idx.reshape(-1)


class LogisticProbe(_Estimator):
    """Logistic regression (binary or multinomial) with L2 strength ``C`` as in scikit-learn,
    fitted by L-BFGS in the Rust core.

    Labels can be any hashable values; ``classes_`` holds them sorted. ``class_weight`` is
    ``None``, ``"balanced"`` (``n / (n_classes * count)``, as scikit-learn) or a dict
    ``{label: weight}``. Fitted: ``coef_`` (``[1, n_features]`` binary, ``[n_classes,
    n_features]`` multinomial), ``intercept_``, ``n_iter_``.
    """

    _params = ("C", "max_iter", "tol", "standardize", "class_weight")

    def __init__(self, C: float = 1.0, max_iter: int = 1000, tol: float = 1e-4, standardize: bool = True,
                 class_weight: str | Mapping[Any, float] | None = None):
        self.C = C
        self.max_iter = max_iter
        self.tol = tol
        self.standardize = standardize
        self.class_weight = class_weight

    def _class_weights(self, idx: np.ndarray) -> list[float] | None:
        cw = self.class_weight
        if cw is None:
            return None
        k = len(self.classes_)
        if cw == "balanced":
            counts = np.bincount(idx, minlength=k)
            return (len(idx) / (k * counts)).tolist()
        if isinstance(cw, Mapping):
            unknown = [c for c in cw if c not in set(self.classes_.tolist())]
            if unknown:
                raise InvalidArgumentError(f"class_weight names classes {unknown} that are not in y")
            weights = [cw.get(c, 1.0) for c in self.classes_.tolist()]
            try:
                return [_float_param(w, "a class weight") for w in weights]
            except InvalidArgumentError as e:
                raise InvalidArgumentError(f"class_weight values must be positive numbers: {e}") from None
        raise InvalidArgumentError(f"class_weight must be None, 'balanced' or a dict, got {cw!r}")

    def fit(self, X: Any, y: Any) -> LogisticProbe:
        X = _as_f64_2d(X)
        _check_rows(X, 2, "LogisticProbe.fit")
        y = _class_labels(y, X.shape[0])
        self.classes_, idx = _unique_classes(y)
        if len(self.classes_) < 2:
            raise DataError(f"y contains a single class ({self.classes_[0]!r}): a classifier needs at least two")
        out = _native.logistic_fit(X, idx.astype(np.int64).tolist(), len(self.classes_), _float_param(self.C, "C"),
                                   _int_param(self.max_iter, "max_iter", 1), _float_param(self.tol, "tol", allow_zero=True),
                                   bool(self.standardize), self._class_weights(idx))
        self.coef_ = out["coef"].T
        self.intercept_ = out["intercept"]
        self.mean_, self.scale_ = out["mean"], out["scale"]
        self.n_iter_ = int(out["n_iter"])
        self.n_features_in_ = X.shape[1]
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        self._check_fitted("coef_")
        X = _as_f64_2d(X)
        if X.shape[1] != self.n_features_in_:
            raise ShapeError(f"X has {X.shape[1]} features but the probe was fitted on {self.n_features_in_}")
        _check_finite(X)
        d = X @ self.coef_.T + self.intercept_
        return d[:, 0] if d.shape[1] == 1 else d

    def predict_proba(self, X: Any) -> np.ndarray:
        """``[n_samples, n_classes]``."""
        d = self.decision_function(X)
        if d.ndim == 1:
            p1 = 1.0 / (1.0 + np.exp(-d))
            return np.stack([1 - p1, p1], axis=1)
        d = d - d.max(axis=1, keepdims=True)
        e = np.exp(d)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, X: Any) -> np.ndarray:
        self._check_fitted("coef_")
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def score(self, X: Any, y: Any) -> float:
        """Accuracy."""
        return float(np.mean(self.predict(X) == np.asarray(y)))


class PCA(_Estimator):
    """Principal components: ``components_`` ``[n_components, n_features]`` (unit rows, largest
    entry positive), ``explained_variance_``, ``explained_variance_ratio_``, ``mean_``.

    ``whiten=True`` divides each projection by its component's standard deviation. A component
    with zero variance (data of lower rank than ``n_components``; numerically zero means at most
    1e-12 of the largest variance) has nothing to divide by, so ``fit`` raises a
    :class:`DataError` saying how many components are affected and which ``n_components`` would
    work, rather than returning inf or noise blown up by 1e6+. Without whitening such components
    are kept (their projections are ~0).
    """

    _params = ("n_components", "whiten")

    def __init__(self, n_components: int = 2, whiten: bool = False):
        self.n_components = n_components
        self.whiten = whiten

    def fit(self, X: Any, y: Any = None) -> PCA:
        X = _as_f64_2d(X)
        _check_rows(X, 2, "PCA.fit")
        k = _int_param(self.n_components, "n_components", 1)
        out = _native.pca_fit(X, k, bool(self.whiten))
        self.mean_ = out["mean"]
        self.components_ = out["components"]
        self.explained_variance_ = out["explained_variance"]
        self.explained_variance_ratio_ = out["explained_variance_ratio"]
        return self

    def transform(self, X: Any) -> np.ndarray:
        """``[n_samples, n_components]``."""
        self._check_fitted("components_")
        X = _as_f64_2d(X)
        if X.shape[1] != self.mean_.shape[0]:
            raise ShapeError(f"X has {X.shape[1]} features but PCA was fitted on {self.mean_.shape[0]}")
        _check_finite(X)
        Z = (X - self.mean_) @ self.components_.T
        return Z / np.sqrt(self.explained_variance_) if self.whiten else Z

    def fit_transform(self, X: Any, y: Any = None) -> np.ndarray:
        return self.fit(X).transform(X)


TRUTH_METHODS = ("mass_mean", "mass_mean_iid", "logistic", "lat", "ccs")


def _pairs(pairs: Any, n: int) -> list[tuple[int, int]]:
    """``(i, j)`` row pairs, each index in ``0..n``."""
    out = []
    try:
        for a, b in pairs:
            if any(isinstance(v, (bool, float)) or not isinstance(v, (int, np.integer)) for v in (a, b)):
                raise TypeError
            out.append((int(a), int(b)))
    except (TypeError, ValueError):
        raise InvalidArgumentError("pairs must be a list of (row index, row index) integer pairs") from None
    bad = [p for p in out if not (0 <= p[0] < n and 0 <= p[1] < n)]
    if bad:
        raise InvalidArgumentError(f"pair {bad[0]} indexes outside X's {n} rows (allowed 0 to {n - 1})")
    return out


class TruthDirection(_Estimator):
    """A direction separating true (1) from false (0) statements.

    ``method``: ``"mass_mean"`` (difference of class means), ``"mass_mean_iid"``
    (covariance-corrected), ``"logistic"``, ``"lat"`` (first direction of paired differences;
    ``pairs`` optional) or ``"ccs"`` (unsupervised on ``pairs`` of statement and negation; the sign
    is fixed from the labels afterwards). Fitted: ``direction_`` ``[n_features]`` (unit norm),
    ``threshold_``; ``score(X)`` is ``X @ direction_`` (higher = truer).
    """

    _params = ("method", "random_state")

    def __init__(self, method: str = "mass_mean", random_state: int = 0):
        self.method = method
        self.random_state = random_state

    def fit(self, X: Any, y: Any, pairs: Sequence[tuple[int, int]] | None = None) -> TruthDirection:
        if self.method not in TRUTH_METHODS:
            raise InvalidArgumentError(f"method '{self.method}' is not known; allowed: {', '.join(TRUTH_METHODS)}")
        X = _as_f64_2d(X)
        _check_rows(X, 2, "TruthDirection.fit")
        y = _binary_labels(y, X.shape[0])
        p = None if pairs is None else _pairs(pairs, X.shape[0])
        out = _native.truth_fit(X, y.tolist(), self.method, p, _int_param(self.random_state, "random_state", 0))
        self.direction_ = out["direction"]
        self.threshold_ = float(out["threshold"])
        return self

    def score(self, X: Any) -> np.ndarray:  # type: ignore[override]
        """Truth score per row ``[n_samples]``."""
        self._check_fitted("direction_")
        X = _as_f64_2d(X)
        if X.shape[1] != self.direction_.shape[0]:
            raise ShapeError(f"X has {X.shape[1]} features but the direction has {self.direction_.shape[0]}")
        _check_finite(X)
        return X @ self.direction_

    def predict(self, X: Any) -> np.ndarray:
        return (self.score(X) > self.threshold_).astype(np.int64)

    def evaluate(self, X: Any, y: Any) -> dict[str, float]:
        """``{"accuracy", "auroc"}`` on a (possibly different) labelled set."""
        s = self.score(X)
        y = _binary_labels(y, len(s))
        return {"accuracy": float(np.mean((s > self.threshold_) == (y == 1))), "auroc": auroc(y, s)}


# --- metrics ------------------------------------------------------------------------------

def auroc(y_true: Any, scores: Any) -> float:
    """Area under the ROC curve (ties averaged), equal to scikit-learn's ``roc_auc_score``."""
    try:
        s = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DataError(f"scores must be numbers: {e}") from None
    if s.ndim != 1:
        raise ShapeError(f"scores must be 1-D, got shape {s.shape}")
    y = _binary_labels(y_true, len(s), "y_true")
    _check_finite(s, "scores", "scores")
    return float(_native.auroc(y.tolist(), s))


def accuracy(y_true: Any, y_pred: Any) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ShapeError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in shape")
    return float(np.mean(y_true == y_pred))


def balanced_accuracy(y_true: Any, y_pred: Any) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1 or not len(y_true):
        raise ShapeError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must be equally long, non-empty 1-D arrays")
    recalls = [np.mean(y_pred[y_true == c] == c) for c in np.unique(y_true)]
    return float(np.mean(recalls))


def confusion_matrix(y_true: Any, y_pred: Any, labels: Sequence[Any] | None = None) -> np.ndarray:
    """``cm[i, j]`` = count of true ``labels[i]`` predicted as ``labels[j]``."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ShapeError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must be equally long 1-D arrays")
    labels = np.unique(np.concatenate([y_true, y_pred])) if labels is None else np.asarray(labels)
    index = {v: i for i, v in enumerate(labels.tolist())}
    cm = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for t, p in zip(y_true.tolist(), y_pred.tolist()):
        if t in index and p in index:
            cm[index[t], index[p]] += 1
    return cm


def r2_score(y_true: Any, y_pred: Any) -> np.ndarray:
    """R² per target: ``[n_targets]`` (a 1-element array for 1-D input)."""
    try:
        a = np.asarray(y_true, dtype=np.float64)
        b = np.asarray(y_pred, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DataError(f"y_true and y_pred must be numbers: {e}") from None
    if a.shape != b.shape or a.ndim not in (1, 2):
        raise ShapeError(f"y_true {a.shape} and y_pred {b.shape} must have the same [n] or [n, targets] shape")
    _check_finite(a, "y_true", "targets")
    _check_finite(b, "y_pred", "predictions")
    a2, b2 = (a[:, None], b[:, None]) if a.ndim == 1 else (a, b)
    return np.asarray(_native.r2_per_target(np.ascontiguousarray(a2), np.ascontiguousarray(b2)))


def great_circle_km(latlon_a: Any, latlon_b: Any) -> np.ndarray:
    """Haversine distances ``[n]`` in km between two ``[n, 2]`` arrays of (lat, lon) degrees."""
    a, b = _as_f64_2d(latlon_a, "latlon_a"), _as_f64_2d(latlon_b, "latlon_b")
    _check_finite(a, "latlon_a", "coordinates")
    _check_finite(b, "latlon_b", "coordinates")
    return _native.great_circle_km(a, b)


def proximity_error(y_true: Any, y_pred: Any) -> np.ndarray:
    """Per entity, the fraction of other entities whose prediction is closer to its true
    position than its own prediction (Gurnee & Tegmark 2023). ``[n]``; 0 is perfect."""
    a, b = _as_f64_2d(y_true, "y_true"), _as_f64_2d(y_pred, "y_pred")
    _check_finite(a, "y_true", "coordinates")
    _check_finite(b, "y_pred", "coordinates")
    return _native.proximity_error(a, b)


# --- splits, sweeps, control tasks --------------------------------------------------------

def train_test_split_indices(n: int, test_size: float = 0.2, seed: int = 0,
                             groups: Sequence[Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``range(n)``; with ``groups``, every member of a group lands on one side."""
    n = _int_param(n, "n (samples to split)", 2)
    if isinstance(test_size, bool) or not isinstance(test_size, (int, float, np.floating)) or not 0 < test_size < 1:
        raise InvalidArgumentError(f"test_size must be a fraction in (0, 1), got {test_size!r}")
    rng = np.random.default_rng(_int_param(seed, "seed", 0))
    if groups is None:
        order = rng.permutation(n)
        n_test = max(1, int(round(n * test_size)))
        return np.sort(order[n_test:]), np.sort(order[:n_test])
    groups = np.asarray(groups)
    if len(groups) != n:
        raise ShapeError(f"groups has {len(groups)} entries for {n} samples")
    uniq = np.unique(groups)
    if len(uniq) < 2:
        raise DataError(f"a grouped split needs at least 2 distinct groups, got {len(uniq)}")
    test_groups = set(rng.permutation(uniq)[: max(1, int(round(len(uniq) * test_size)))].tolist())
    is_test = np.array([g in test_groups for g in groups.tolist()])
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def kfold_indices(n: int, k: int = 5, seed: int = 0, groups: Sequence[Any] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Seeded k-fold (group k-fold with ``groups``): a list of (train, test) index arrays."""
    k = _int_param(k, "k (folds)", 2)
    n = _int_param(n, "n (samples)", 0)
    rng = np.random.default_rng(_int_param(seed, "seed", 0))
    keys = np.arange(n) if groups is None else np.asarray(groups)
    if len(keys) != n:
        raise ShapeError(f"groups has {len(keys)} entries for {n} samples")
    uniq = rng.permutation(np.unique(keys))
    if len(uniq) < k:
        raise DataError(f"{k} folds need at least {k} {'groups' if groups is not None else 'samples'}, "
                        f"got {len(uniq)}: lower k")
    fold_of = {g: i % k for i, g in enumerate(uniq.tolist())}
    fold = np.array([fold_of[g] for g in keys.tolist()])
    return [(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in range(k)]


def control_task_labels(word_types: Sequence[str], labels: Sequence[Any], seed: int = 0) -> np.ndarray:
    """Hewitt & Liang (2019) control task: each word type gets one random label drawn from the
    empirical label distribution, and every occurrence of the type carries it."""
    labels = np.asarray(labels)
    types = [str(w) for w in word_types]
    if len(types) != len(labels):
        raise ShapeError(f"{len(types)} word types for {len(labels)} labels")
    rng = np.random.default_rng(seed)
    values, counts = np.unique(labels, return_counts=True)
    p = counts / counts.sum()
    mapping: dict[str, Any] = {}
    for t in sorted(set(types)):
        mapping[t] = values[rng.choice(len(values), p=p)]
    return np.array([mapping[t] for t in types])


def _native_logistic_sweep(stack: list[np.ndarray], targets: list[np.ndarray], train: np.ndarray,
                           test: np.ndarray, probe_params: dict[str, Any],
                           progress: bool | None = None) -> list[list[tuple[float, float]]]:
    """Every (layer, target) logistic probe in one core call that reads the layers in place:
    float32 stays float32, only non-contiguous or other dtypes are converted."""
    template = LogisticProbe(**probe_params)
    specs = []
    for t in targets:
        if t.ndim != 1:
            raise ShapeError(f"labels must be 1-D, got shape {t.shape}")
        probe = template.__class__(**template.get_params())
        probe.classes_, idx = _unique_classes(t)
        if len(probe.classes_) < 2:
            raise DataError(f"labels contain a single class ({probe.classes_[0]!r}): a probe needs at least two")
        specs.append((idx.astype(np.int64).tolist(), len(probe.classes_), probe._class_weights(idx[train])))
    dtype = np.float32 if all(X.dtype == np.float32 for X in stack) else np.float64
    layers = [np.ascontiguousarray(X, dtype=dtype) for X in stack]
    for layer, X in enumerate(layers):
        if X.ndim != 2:
            raise ShapeError(f"layer {layer} must be [n, d], got shape {X.shape}")
    with native_progress(progress, "probes", "layer sweep") as report:
        out = _native.logistic_sweep(layers, specs, train.tolist(), test.tolist(), _float_param(template.C, "C"),
                                     _int_param(template.max_iter, "max_iter", 1),
                                     _float_param(template.tol, "tol", allow_zero=True), bool(template.standardize),
                                     report)
    return [[(train_acc, test_acc) for train_acc, test_acc, _, _ in per_target] for per_target in out]


def layer_sweep(
    activations: np.ndarray | Mapping[str, np.ndarray],
    y: Any,
    probe: str = "logistic",
    test_size: float = 0.2,
    seed: int = 0,
    groups: Sequence[Any] | None = None,
    control_labels: Any | None = None,
    progress: bool | None = None,
    **probe_params: Any,
) -> dict[str, np.ndarray]:
    """Fit one probe per layer and report train and held-out metrics.

    ``activations`` is ``[layers, n, d]`` or an ActivationCache / mapping (its
    ``blocks.*.hook_resid_post`` arrays ``[n, d]`` are used in layer order). ``probe`` is
    ``"logistic"`` (accuracy) or ``"ridge"`` (mean R²). With ``control_labels`` the same probe
    is fitted on them and ``selectivity = test - control_test`` is reported. ``progress``: a
    bar counting the probes fitted (None: when interactive; False: never; True: always).
    Returns a dict of equal-length arrays (``pandas.DataFrame(result)`` gives a table).
    """
    if isinstance(activations, Mapping):
        names = sorted((n for n in activations if n.startswith("blocks.") and n.endswith("hook_resid_post")),
                       key=lambda n: int(n.split(".")[1]))
        stack = [np.asarray(activations[n]) for n in names]
    else:
        arr = np.asarray(activations)
        if arr.ndim != 3:
            raise ShapeError(f"activations must be [layers, n, d], got shape {arr.shape}")
        stack = list(arr)
    if not stack:
        raise DataError("activations hold no layers (no blocks.*.hook_resid_post array)")
    if probe not in ("logistic", "ridge"):
        raise InvalidArgumentError(f"probe must be 'logistic' or 'ridge', got '{probe}'")
    allowed = (LogisticProbe if probe == "logistic" else RidgeProbe)._params
    unknown = sorted(set(probe_params) - set(allowed))
    if unknown:
        raise InvalidArgumentError(f"unknown {probe} probe parameters {unknown}; allowed: {', '.join(allowed)}")
    if probe == "logistic":
        y = _class_labels(y, None)
    else:
        try:
            y = np.asarray(y, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise DataError(f"y must hold numeric regression targets for probe='ridge': {e}") from None
        _check_finite(y, "y", "targets")
    n = len(y)
    # A held-out split needs a few rows on each side before any probe can be scored.
    if n < 4:
        raise DataError(f"layer_sweep needs at least 4 samples (labels), got {n}")
    train, test = train_test_split_indices(n, test_size, seed, groups)
    for layer, X in enumerate(stack):
        if X.ndim != 2 or X.shape[0] != n:
            raise ShapeError(f"layer {layer} must be [{n}, d] (one row per label), got shape {X.shape}")
    if control_labels is None:
        targets = [y]
    elif probe == "logistic":
        targets = [y, _class_labels(control_labels, n, "control_labels")]
    else:
        control = np.asarray(control_labels, dtype=np.float64)
        _check_finite(control, "control_labels", "targets")
        targets = [y, control]
    if len(targets[-1]) != n:
        raise ShapeError(f"control_labels has {len(targets[-1])} entries for {n} labels")
    if probe == "logistic":
        per_layer = _native_logistic_sweep(stack, targets, train, test, probe_params, progress)
    else:
        def fit(job: tuple[np.ndarray, np.ndarray]) -> tuple[float, float]:
            X, t = job
            m = RidgeProbe(**probe_params).fit(X[train], t[train])
            return m.score(X[train], t[train]), m.score(X[test], t[test])

        # One fit per (layer, target), side by side on all cores (the fits release the GIL).
        jobs = [(X, t) for X in stack for t in targets]
        with progress_bar(len(jobs), progress, "probes", "layer sweep") as bar:
            scores = map_parallel(fit, jobs, on_done=bar.update)
        per_layer = [scores[i:i + len(targets)] for i in range(0, len(scores), len(targets))]
    rows: dict[str, list[float]] = {"layer": list(range(len(stack))),
                                    "train": [s[0][0] for s in per_layer], "test": [s[0][1] for s in per_layer]}
    if control_labels is not None:
        rows["control_train"] = [s[1][0] for s in per_layer]
        rows["control_test"] = [s[1][1] for s in per_layer]
        rows["selectivity"] = [a - b for a, b in zip(rows["test"], rows["control_test"])]
    return {k: np.asarray(v) for k, v in rows.items()}
