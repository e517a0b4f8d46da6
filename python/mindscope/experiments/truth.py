"""A lie detector: directions in activation space that separate true from false statements
(Marks & Tegmark 2023, "The Geometry of Truth"; Zou et al. 2023, "Representation Engineering";
Burns et al. 2022, CCS), evaluated per layer, across datasets, and causally."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import plotting, views
from ..analysis import PCA, TruthDirection, auroc, map_parallel, train_test_split_indices
from ..datasets import Statements, city_statements
from ..errors import DataError, InvalidArgumentError, NotFittedError, StorageError
from ..hooks import Intervention
from ..progress import check_progress, progress_bar
from ._result import ExperimentResult, int_arg, write_json_atomic
from .world_map import variance_share

METHODS = ("mass_mean", "logistic", "lat", "ccs")
QUESTION = "Is the following statement true or false?\nStatement: {statement}\nAnswer (True or False):"


def statement_activations(model: Any, statements: Statements | Sequence[str], layers: Sequence[int],
                          batch_size: int = 32, progress: bool | None = None) -> np.ndarray:
    """``blocks.{i}.hook_resid_post`` at each statement's final token: ``[layers, n, d_model]``."""
    texts = statements.text if isinstance(statements, Statements) else list(statements)
    return model.layer_activations(texts, layers, positions="last", batch_size=batch_size, progress=progress)


def _check_balanced(s: Statements) -> None:
    counts = np.bincount(s.label, minlength=2)
    if counts.min() == 0:
        raise DataError(f"{s.name}: all {len(s)} statements are {'true' if counts[1] else 'false'}; "
                        "a truth direction needs both true and false statements")
    if counts.min() / counts.sum() < 0.2:
        raise DataError(f"{s.name}: {counts[1]} true vs {counts[0]} false statements; balance the classes "
                        "(at least 20% each) so accuracy is not won by the majority class")


def _fit_direction(method: str, X: np.ndarray, y: np.ndarray, pairs: list[tuple[int, int]] | None,
                   seed: int) -> TruthDirection:
    return TruthDirection(method=method, random_state=seed).fit(X, y, pairs=pairs)


def _pairs_within(method: str, s: Statements, index: np.ndarray) -> list[tuple[int, int]] | None:
    """The pairs ``method`` learns from, both members in ``index``, re-indexed into it: CCS
    takes (statement, negation) pairs, LAT (true, false) pairs that differ only in truth."""
    if method not in ("lat", "ccs"):
        return None
    pos = {int(i): k for k, i in enumerate(index.tolist())}
    pairs = s.pairs() if method == "ccs" else s.truth_pairs()
    out = [(pos[a], pos[b]) for a, b in pairs if a in pos and b in pos]
    if not out:
        raise DataError(f"{s.name}: method '{method}' needs paired statements "
                        f"({'statement/negation' if method == 'ccs' else 'true/false about the same thing'})")
    return out


@dataclass(repr=False)
class TruthResult(ExperimentResult):
    """Truth directions per method and layer, with the layer chosen on a validation split.

    The statements are split by city into train (60 %), validation (20 %) and test (20 %).
    ``val_accuracy`` / ``val_auroc`` ``[methods, layers]``: directions fitted on train, scored on
    validation; they alone choose ``chosen_layers[method]`` (the layer of best validation
    accuracy), ``best_method`` (the best validation accuracy at its chosen layer) and
    ``best_layer`` (its chosen layer). ``accuracy`` / ``auroc`` ``[methods, layers]``:
    directions fitted on train + validation (``train_index``), scored on the test split
    (``test_index``), which plays no part in any choice. Layer 0 is the control (it holds
    little beyond the tokens themselves). ``generalization[method][train][test]`` at
    ``best_layer`` (mass-mean and logistic); ``causal`` the intervention effect on P(True);
    ``pca_2d`` + ``pca_labels`` of the test activations at ``best_layer``."""

    model_name: str
    methods: list[str]
    layers: np.ndarray
    accuracy: np.ndarray
    auroc: np.ndarray
    val_accuracy: np.ndarray
    val_auroc: np.ndarray
    chosen_layers: dict[str, int]
    best_layer: int
    best_method: str
    generalization: dict[str, dict[str, dict[str, dict[str, float]]]]
    causal: dict[str, Any]
    pca_2d: np.ndarray
    pca_labels: np.ndarray
    n_statements: dict[str, int]
    best_layer_activations: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)
    train_index: np.ndarray = field(repr=False)
    test_index: np.ndarray = field(repr=False)
    val_index: np.ndarray = field(repr=False)
    #: ``[n_test]`` which held-out statements are negated (the PCA's two clusters); None if unknown.
    pca_negated: np.ndarray | None = field(default=None, repr=False)
    name = "lie_detector"

    def metrics(self) -> dict[str, Any]:
        m = self.methods.index(self.best_method)
        b = int(np.flatnonzero(self.layers == self.best_layer)[0])
        control = int(np.flatnonzero(self.layers == 0)[0])
        at = {meth: int(np.flatnonzero(self.layers == layer)[0]) for meth, layer in self.chosen_layers.items()}
        return {
            "model": self.model_name, "n_statements": self.n_statements, "best_layer": self.best_layer,
            "best_method": self.best_method, "best_accuracy": self.accuracy[m, b], "best_auroc": self.auroc[m, b],
            "selection": "layer per method and best method chosen by validation accuracy (directions fitted "
                         "on train); accuracies are on the test split (directions fitted on train + validation)",
            "chosen_layers": {meth: {"layer": self.chosen_layers[meth],
                                     "val_accuracy": self.val_accuracy[i, at[meth]],
                                     "test_accuracy": self.accuracy[i, at[meth]],
                                     "test_auroc": self.auroc[i, at[meth]]}
                              for i, meth in enumerate(self.methods) if meth in at},
            "control_layer0": {meth: {"accuracy": self.accuracy[i, control], "auroc": self.auroc[i, control]}
                                  for i, meth in enumerate(self.methods)},
            "at_best_layer": {meth: {"accuracy": self.accuracy[i, b], "auroc": self.auroc[i, b]}
                              for i, meth in enumerate(self.methods)},
            "per_layer": {"layer": self.layers,
                          **{f"{meth}_accuracy": self.accuracy[i] for i, meth in enumerate(self.methods)},
                          **{f"{meth}_auroc": self.auroc[i] for i, meth in enumerate(self.methods)},
                          **{f"{meth}_val_accuracy": self.val_accuracy[i] for i, meth in enumerate(self.methods)}},
            "generalization": self.generalization, "causal": self.causal,
        }

    def view(self) -> views.View:
        """Held-out accuracy and AUROC per layer for each method (hover to read a layer)."""
        panels = [views.lines_panel(self.layers, dict(zip(self.methods, values)), "layer", label,
                                    hlines={"chance": 0.5}, mark=self.best_layer, title=f"Held-out {label} per layer")
                  for label, values in (("accuracy", self.accuracy), ("AUROC", self.auroc))]
        return views.View(f"Truth directions in {self.model_name} (best: {self.best_method} at layer "
                          f"{self.best_layer})", panels)

    def plot(self, path: str | os.PathLike[str]) -> str:
        """Top-2 PCA of held-out activations (affirmative and negated statements, coloured by
        truth), accuracy per layer and method, and the generalization matrix of the logistic
        direction (accuracy and AUROC per cell)."""
        truth = np.where(self.pca_labels == 1, "true", "false")
        if self.pca_negated is not None:
            form = np.where(self.pca_negated, "negated", "affirmative")
            groups = [f"{f}, {t}" for f, t in zip(form, truth)]
            # Truth is the colour (blue true, red false); the statement form is the marker.
            styles = {"affirmative, true": (0, "circle"), "affirmative, false": (3, "circle"),
                      "negated, true": (0, "triangle"), "negated, false": (3, "triangle")}
            styles = {k: v for k, v in styles.items() if k in set(groups)}
            share = variance_share(self.pca_2d, form)
            what = (f"the clusters are affirmative vs negated ({share * 100:.0f}% of PC 1-2 variance)"
                    if share >= 0.5 else f"statement form explains {share * 100:.0f}% of PC 1-2 variance")
        else:
            groups, styles = list(truth), {"true": (0, "circle"), "false": (3, "circle")}
            what = "coloured by truth"
        pca = plotting.scatter_panel(
            self.pca_2d[:, 0], self.pca_2d[:, 1], groups, group_styles=styles, legend="outside",
            x_label="PC 1", y_label="PC 2",
            title=f"Held-out statements, layer {self.best_layer}, top-2 PCA: {what}")
        curves = plotting.lines_panel(
            {meth: (self.layers, self.accuracy[i]) for i, meth in enumerate(self.methods)},
            hlines=[0.5], hline_labels=["chance"], y_range=(0.3, 1.0), x_label="layer (0 = control)",
            y_label="held-out accuracy", title="Truth directions per layer")
        gen = self.generalization.get("logistic", {})
        trains = list(gen)
        tests = list(next(iter(gen.values()))) if gen else []
        acc = np.array([[gen[a][b]["accuracy"] for b in tests] for a in trains]) if gen else np.full((1, 1), np.nan)
        auc = np.array([[gen[a][b]["auroc"] for b in tests] for a in trains]) if gen else np.full((1, 1), np.nan)
        # Accuracy near 0.5 can hide a direction that separates perfectly but flipped (AUROC near 0).
        text = [[f"{acc[i, j]:.2f}\nAUROC {auc[i, j]:.2f}" for j in range(acc.shape[1])] for i in range(acc.shape[0])]
        heat = plotting.heatmap_panel(acc, row_labels=trains, col_labels=tests, cell_text=text, vmin=0, vmax=1,
                                      x_label="tested on", y_label="trained on",
                                      title=f"Logistic direction, layer {self.best_layer}: accuracy (AUROC)")
        return plotting.save_figure(path, [pca, curves, heat], columns=3, width=2200, height=620,
                                    widths=[1.1, 1.0, 0.9], title=f"A lie detector in {self.model_name}")


def _score_split(method: str, X: np.ndarray, s: Statements, train: np.ndarray, test: np.ndarray,
                 seed: int) -> tuple[float, float]:
    pairs = _pairs_within(method, s, train)
    try:
        d = _fit_direction(method, X[train], s.label[train], pairs, seed)
    except DataError:  # no direction at all (e.g. identical activations): nothing to report
        return float("nan"), float("nan")
    ev = d.evaluate(X[test], s.label[test])
    return ev["accuracy"], ev["auroc"]


def truth_experiment(
    model: Any,
    statements: Statements | None = None,
    facts: Statements | None = None,
    layers: Sequence[int] | None = None,
    methods: Sequence[str] = METHODS,
    n_cities: int | None = 400,
    test_size: float = 0.2,
    seed: int = 0,
    causal_scale: float = 4.0,
    causal_n: int = 40,
    batch_size: int = 32,
    val_size: float = 0.2,
    progress: bool | None = None,
) -> TruthResult:
    """Fit each truth direction on every layer, choose each method's layer on a validation
    split, and report its accuracy on a test split that played no part in the choice.

    ``statements`` default to :func:`city_statements` with negations (``n_cities`` cities,
    400 by default, i.e. 1,600 statements; ``None`` takes every unambiguous city, about 1,000;
    false countries drawn from the true countries' distribution), split by city into train,
    validation (``val_size``) and test (``test_size``). LAT and CCS use the (statement,
    negation) pairs. See :class:`TruthResult` for what is chosen on which split. At the best
    layer, directions trained on the
    affirmative statements, the negated ones, or both are tested on each of them and on
    ``facts`` (an out-of-distribution set, e.g. ``facts_true_false.csv``): the generalization
    matrix. Causal check: ``causal_scale`` times the class-mean separation along the mass-mean
    direction is added to the residual stream at the best of the first 60% of layers while the
    model answers "True or False?" for ``causal_n`` test statements (the layer chosen by mean
    validation accuracy). ``progress``: one bar per stage (activations, directions, causal
    runs; None: when interactive, False: never).
    """
    progress = check_progress(progress)
    seed = int_arg(seed, "seed", 0)
    causal_n = int_arg(causal_n, "causal_n", 1)
    batch_size = int_arg(batch_size, "batch_size", 1)
    if isinstance(methods, str):
        methods = [methods]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise InvalidArgumentError(f"methods {unknown or '[]'} are not known; allowed: {', '.join(METHODS)}")
    s = statements if statements is not None else city_statements(n_cities=n_cities, seed=seed, negations=True)
    _check_balanced(s)
    # Layer 0 is always included: it is the control (little more than token identity there).
    chosen = sorted(set([0] + model.check_layers(layers)))
    acts = statement_activations(model, s, chosen, batch_size, progress)
    layer_ids = np.array(chosen)
    fit_idx, test, train, val = three_way_split(s, test_size, val_size, seed)
    jobs = [(meth, X) for meth in methods for X in acts]
    # Per (method, layer): fitted on train and scored on validation (for the choices), then
    # fitted on train + validation and scored on test (the reported numbers).
    with progress_bar(len(jobs), progress, "directions", "truth directions") as bar:
        scores = map_parallel(lambda job: (_score_split(job[0], job[1], s, train, val, seed),
                                           _score_split(job[0], job[1], s, fit_idx, test, seed)), jobs,
                              on_done=bar.update)
    shape = (len(methods), len(acts))
    val_acc = np.array([sc[0][0] for sc in scores]).reshape(shape)
    val_auc = np.array([sc[0][1] for sc in scores]).reshape(shape)
    acc = np.array([sc[1][0] for sc in scores]).reshape(shape)
    auc = np.array([sc[1][1] for sc in scores]).reshape(shape)
    picks = choose_on_validation(val_acc)
    if not picks:
        raise DataError(f"{s.name}: no method found a direction at any layer (the activations do not vary)")
    chosen_layers = {methods[i]: int(layer_ids[k]) for i, k in picks.items()}
    m_best = max(picks, key=lambda i: (val_acc[i, picks[i]], -i))  # ties: the first method listed
    best_method, b = methods[m_best], picks[m_best]
    best_layer = int(layer_ids[b])
    X = acts[b]

    negated = s.negated.astype(bool)
    test_sets: dict[str, tuple[np.ndarray, np.ndarray]] = {
        "affirmative": (X[test][~negated[test]], s.label[test][~negated[test]]),
        "negated": (X[test][negated[test]], s.label[test][negated[test]]),
    }
    if facts is not None:
        _check_balanced(facts)
        test_sets["facts"] = (statement_activations(model, facts, [best_layer], batch_size, progress)[0], facts.label)
    train_sets = {"affirmative": fit_idx[~negated[fit_idx]], "negated": fit_idx[negated[fit_idx]], "both": fit_idx}
    generalization: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for meth in ("mass_mean", "logistic"):
        generalization[meth] = {}
        for tname, idx in train_sets.items():
            if len(np.unique(s.label[idx])) < 2:
                continue
            d = _fit_direction(meth, X[idx], s.label[idx], None, seed)
            generalization[meth][tname] = {k: d.evaluate(Xt, yt) for k, (Xt, yt) in test_sets.items() if len(yt)}

    pca = PCA(2).fit(X[fit_idx])
    # Marks & Tegmark find truth directions causal in the middle of the network; later layers
    # may classify well but no longer feed the answer. Intervene at the best layer among the
    # first 60% of blocks (measured on SmolLM2: effect largest at blocks 14-18, nil at 22).
    early = [k for k, layer in enumerate(layer_ids) if 0 < layer <= 0.6 * model.n_layers] or [b]
    c = max(early, key=lambda k: np.nanmean(val_acc[:, k]))
    causal = causal_check(model, acts[c][fit_idx], s.label[fit_idx], int(layer_ids[c]),
                          [s.text[i] for i in test[:causal_n]], s.label[test[:causal_n]], causal_scale, seed,
                          progress)
    return TruthResult(
        model_name=model.name, methods=list(methods), layers=layer_ids, accuracy=acc, auroc=auc,
        val_accuracy=val_acc, val_auroc=val_auc, chosen_layers=chosen_layers,
        best_layer=best_layer, best_method=best_method, generalization=generalization, causal=causal,
        pca_2d=pca.transform(X[test]), pca_labels=s.label[test],
        n_statements={"train": int(len(train)), "validation": int(len(val)), "test": int(len(test)),
                      **({"facts": len(facts)} if facts is not None else {})},
        best_layer_activations=X, labels=s.label, train_index=fit_idx, test_index=test, val_index=val,
        pca_negated=negated[test],
    )


def three_way_split(s: Statements, test_size: float, val_size: float,
                    seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split statements by group (city) into ``(train + validation, test, train, validation)``
    index arrays; ``test_size`` and ``val_size`` are fractions of all statements. The test
    split is the one a two-way ``train_test_split_indices(n, test_size, seed)`` gives."""
    for name, v in (("test_size", test_size), ("val_size", val_size)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating)) or not 0 < v < 1:
            raise InvalidArgumentError(f"{name} must be a fraction in (0, 1), got {v!r}")
    if test_size + val_size >= 1:
        raise InvalidArgumentError(f"test_size + val_size must be below 1 (the rest is the training split), "
                                   f"got {test_size} + {val_size}")
    fit_idx, test = train_test_split_indices(len(s), test_size, seed, groups=s.group)
    tr, va = train_test_split_indices(len(fit_idx), val_size / (1 - test_size), seed, groups=s.group[fit_idx])
    return fit_idx, test, fit_idx[tr], fit_idx[va]


def choose_on_validation(val_accuracy: np.ndarray) -> dict[int, int]:
    """Per method (row of ``val_accuracy`` ``[methods, layers]``), the layer index of its best
    validation accuracy (ties: the earlier layer); methods without any direction (all NaN)
    are left out."""
    return {i: int(np.nanargmax(row)) for i, row in enumerate(val_accuracy) if np.isfinite(row).any()}


def _p_true(model: Any, statements: Sequence[str], interventions: list[Intervention] | None,
            progress: bool | None = None) -> np.ndarray:
    """P(" True") / (P(" True") + P(" False")) for the question about each statement."""
    t, f = model.token_id(" True"), model.token_id(" False")
    logits = model.run([QUESTION.format(statement=x) for x in statements], return_logits="last",
                       interventions=interventions, progress=progress)
    return 1.0 / (1.0 + np.exp(logits[:, f].astype(np.float64) - logits[:, t]))


def causal_check(model: Any, X: np.ndarray, y: np.ndarray, layer: int, statements: Sequence[str],
                 labels: np.ndarray, scale: float, seed: int = 0, progress: bool | None = None) -> dict[str, Any]:
    """Add ``±scale`` x (class-mean separation along the mass-mean direction) at every position
    of ``blocks.{layer}.hook_resid_post`` and report the mean P(True) on true and false
    statements for -, 0 and + (Marks & Tegmark 2023, section 5)."""
    d = _fit_direction("mass_mean", X, y, None, seed)
    sep = float((X[y == 1] @ d.direction_).mean() - (X[y == 0] @ d.direction_).mean())
    out: dict[str, Any] = {"layer": layer, "direction": "mass_mean", "scale": scale, "separation": sep,
                           "n_statements": len(statements), "mean_p_true": {}}
    labels = np.asarray(labels)
    for sign, key in ((-1.0, "subtract"), (0.0, "none"), (1.0, "add")):
        ivs = None if sign == 0 else [Intervention(f"blocks.{layer}.hook_resid_post", "add",
                                                   value=d.direction_.astype(np.float32), scale=sign * scale * sep)]
        p = _p_true(model, statements, ivs, progress)
        out["mean_p_true"][key] = {"true_statements": float(p[labels == 1].mean()) if (labels == 1).any() else None,
                                   "false_statements": float(p[labels == 0].mean()) if (labels == 0).any() else None}
    return out


def platt_scaling(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """``(a, b)`` with ``P(true) = 1 / (1 + exp(-(a * score + b)))`` fitted by maximum
    likelihood (Newton's method) on Platt's (1999) targets ``(n_true + 1) / (n_true + 2)`` and
    ``1 / (n_false + 2)`` instead of 1 and 0, so that separable scores still give finite
    ``a`` and ``b`` (probabilities short of exactly 0 and 1)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    n_true, n_false = int((y == 1).sum()), int((y == 0).sum())
    if n_true == 0 or n_false == 0 or len(s) != len(y):
        raise DataError("calibration needs scores of both true and false statements")
    t = np.where(y == 1, (n_true + 1) / (n_true + 2), 1 / (n_false + 2))
    # Newton on standardized scores (well conditioned), mapped back at the end.
    mu, sd = float(s.mean()), float(s.std())
    z = (s - mu) / sd if sd > 0 else np.zeros_like(s)
    A = np.stack([z, np.ones_like(z)], axis=1)
    w = np.array([0.0, math.log(t.mean() / (1 - t.mean()))])
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(A @ w)))
        grad = A.T @ (p - t)
        hess = A.T @ (A * (p * (1 - p))[:, None]) + 1e-12 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    a = w[0] / sd if sd > 0 else 0.0
    return float(a), float(w[1] - a * mu)


class LieDetector:
    """A truth direction at one layer of one model.

    - ``score(statements)``: the signed distance of each statement's activation from the
      decision threshold along the (unit-norm) direction, in activation units; ``> 0`` reads
      as true. Comparable between statements, not a probability.
    - ``predict_proba(statements)``: P(true) in [0, 1], the score passed through a logistic
      curve fitted on the detector's training statements (Platt scaling).
    - ``predict``: 1 where ``score > 0``, else 0. ``save`` / ``load`` keep the detector.

    >>> detector = ms.LieDetector.fit(model)                      # city statements, best layer
    >>> detector.predict_proba(["The city of Paris is in France.", "The city of Paris is in Peru."])
    """

    def __init__(self, model: Any, layer: int, direction: np.ndarray, threshold: float, method: str,
                 fingerprint: dict[str, Any], metrics: dict[str, Any] | None = None,
                 calibration: tuple[float, float] | None = None):
        self.model = model
        self.layer = layer
        self.direction = np.asarray(direction, dtype=np.float64)
        self.threshold = float(threshold)
        self.method = method
        self.fingerprint = fingerprint
        self.metrics = metrics or {}
        #: ``(a, b)`` of ``predict_proba`` (``None`` for a detector saved before it existed).
        self.calibration = None if calibration is None else (float(calibration[0]), float(calibration[1]))

    @staticmethod
    def model_fingerprint(model: Any) -> dict[str, Any]:
        c = model.cfg
        return {"name": model.name, "architecture": c.get("architecture"), "n_layers": c["n_layers"],
                "d_model": c["d_model"], "vocab_size": c.get("vocab_size")}

    @classmethod
    def fit(cls, model: Any, statements: Statements | None = None, layer: int | None = None,
            method: str = "logistic", n_cities: int | None = 400, seed: int = 0,
            progress: bool | None = None) -> LieDetector:
        """Fit on ``statements`` (default: city statements with negations from ``n_cities``
        cities), split by group into train (60 %), validation (20 %) and test (20 %). Without
        ``layer``, a direction fitted on train is scored on validation at every block and the
        best block is kept. The detector is then fitted on train + validation at that layer,
        ``predict_proba`` calibrated on the same statements, and ``metrics`` report its accuracy
        on the test split (``held_out_accuracy``), which no choice has seen. ``progress``: one
        bar per stage (activations, layers)."""
        progress = check_progress(progress)
        if method not in METHODS:
            raise InvalidArgumentError(f"method '{method}' is not known; allowed: {', '.join(METHODS)}")
        seed = int_arg(seed, "seed", 0)
        if layer is not None:
            layer = int_arg(layer, "layer", 0)
        s = statements if statements is not None else city_statements(n_cities=n_cities, seed=seed, negations=True)
        _check_balanced(s)
        layers = model.check_layers(None if layer is None else [layer])
        acts = statement_activations(model, s, layers, progress=progress)
        fit_idx, test, train, val = three_way_split(s, 0.2, 0.2, seed)
        with progress_bar(len(acts), progress, "layers", "lie detector layers") as bar:
            val_scores = map_parallel(lambda X: _score_split(method, X, s, train, val, seed), list(acts),
                                      on_done=bar.update)
        picks = choose_on_validation(np.array([[v[0] for v in val_scores]]))
        if not picks:
            raise DataError(f"{s.name}: method '{method}' found no direction at any layer")
        k = picks[0]
        X = acts[k]
        d = _fit_direction(method, X[fit_idx], s.label[fit_idx], _pairs_within(method, s, fit_idx), seed)
        test_eval = d.evaluate(X[test], s.label[test])
        calibration = platt_scaling(X[fit_idx] @ d.direction_ - d.threshold_, s.label[fit_idx])
        return cls(model, layers[k], d.direction_, d.threshold_, method, cls.model_fingerprint(model),
                   {"held_out_accuracy": test_eval["accuracy"], "held_out_auroc": test_eval["auroc"],
                    "validation_accuracy": val_scores[k][0], "layer_chosen_on": "validation",
                    "n_statements": len(s), "n_train": int(len(fit_idx)), "n_test": int(len(test))},
                   calibration)

    def score(self, statements: Sequence[str]) -> np.ndarray:
        """Truth score per statement ``[n]``: the signed distance of its activation from the
        decision threshold along the unit-norm direction (positive = true, in activation
        units; not a probability: see :meth:`predict_proba`)."""
        if isinstance(statements, str):
            statements = [statements]
        if not statements:
            raise InvalidArgumentError("no statements to score")
        X = statement_activations(self.model, list(statements), [self.layer])[0]
        return X @ self.direction - self.threshold

    def predict_proba(self, statements: Sequence[str]) -> np.ndarray:
        """P(true) per statement ``[n]``, in [0, 1]: :meth:`score` through the logistic curve
        fitted on the detector's training statements (Platt scaling, ``calibration``)."""
        if self.calibration is None:
            raise NotFittedError("this detector has no calibration (saved by an older mindscope); "
                                 "fit it again with LieDetector.fit to get predict_proba")
        a, b = self.calibration
        return 1.0 / (1.0 + np.exp(-(a * self.score(statements) + b)))

    def predict(self, statements: Sequence[str]) -> np.ndarray:
        """1 (true) where :meth:`score` is positive, else 0."""
        return (self.score(statements) > 0).astype(np.int64)

    def evaluate(self, statements: Statements) -> dict[str, float]:
        s = self.score(statements.text)
        return {"accuracy": float(np.mean((s > 0) == (statements.label == 1))), "auroc": auroc(statements.label, s)}

    def save(self, path: str | os.PathLike[str]) -> str:
        """Write the detector as JSON (direction, threshold, layer, method, model fingerprint)."""
        write_json_atomic(Path(path), {"format": "mindscope.lie_detector/1", "layer": self.layer,
                                       "method": self.method, "threshold": self.threshold,
                                       "direction": self.direction, "model": self.fingerprint,
                                       "metrics": self.metrics,
                                       "calibration": None if self.calibration is None else list(self.calibration)})
        return os.fspath(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], model: Any) -> LieDetector:
        """Read a saved detector for ``model``; refuses one fitted on a different model. A file
        that is not a detector (not UTF-8 JSON, not an object, a missing key, a value of the
        wrong type) is a :class:`DataError` naming the file and the problem."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise StorageError(f"{path} does not exist") from e
        except UnicodeDecodeError as e:
            raise DataError(f"{path} is not a saved lie detector: not UTF-8 text (byte {e.start})") from None
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"{path} is not a saved lie detector: {e}") from e
        if not isinstance(data, dict):
            raise DataError(f"{path} is not a saved lie detector: the JSON is a {type(data).__name__}, "
                            "not an object")
        if data.get("format") != "mindscope.lie_detector/1":
            raise DataError(f"{path} is not a saved lie detector (format {data.get('format')!r}, "
                            "expected 'mindscope.lie_detector/1')")
        fields = _detector_fields(path, data)
        mine = cls.model_fingerprint(model)
        if fields["model"] != mine:
            raise InvalidArgumentError(f"{path} was fitted on model {fields['model']}, not on this one ({mine}); "
                                       "fit a detector for this model")
        if len(fields["direction"]) != mine["d_model"] or not 0 <= fields["layer"] < mine["n_layers"]:
            raise DataError(f"{path}: layer {fields['layer']} / a direction of {len(fields['direction'])} values "
                            f"does not fit this model ({mine['n_layers']} layers, d_model {mine['d_model']})")
        return cls(model, fields["layer"], fields["direction"], fields["threshold"], fields["method"],
                   fields["model"], fields["metrics"], fields["calibration"])

    def __repr__(self) -> str:
        acc = self.metrics.get("held_out_accuracy")
        return (f"LieDetector(model={self.fingerprint['name']!r}, layer={self.layer}, method={self.method!r}"
                + (f", held_out_accuracy={acc:.3f})" if acc is not None else ")"))


def _detector_fields(path: str | os.PathLike[str], data: dict[str, Any]) -> dict[str, Any]:
    """The typed fields of a saved detector; a missing key or a wrong type is a DataError that
    says which key and what it should hold."""
    def fail(key: str, want: str) -> DataError:
        got = "missing" if key not in data else f"{type(data[key]).__name__} {data[key]!r:.60}"
        return DataError(f"{path} is not a valid saved lie detector: '{key}' must be {want}, got {got}")

    def number(v: Any) -> bool:
        try:  # float() of a 400-digit JSON integer overflows
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
        except OverflowError:
            return False

    layer = data.get("layer")
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise fail("layer", "an integer")
    method = data.get("method")
    if method not in METHODS:
        raise fail("method", f"one of {', '.join(METHODS)}")
    threshold = data.get("threshold")
    if not number(threshold):
        raise fail("threshold", "a finite number")
    direction = data.get("direction")
    if not isinstance(direction, list) or not direction or not all(number(v) for v in direction):
        raise fail("direction", "a non-empty list of finite numbers")
    model = data.get("model")
    if not isinstance(model, dict):
        raise fail("model", "an object (the model fingerprint)")
    metrics = data.get("metrics", {})
    if metrics is not None and not isinstance(metrics, dict):
        raise fail("metrics", "an object")
    calibration = data.get("calibration")  # absent in files saved before predict_proba existed
    if calibration is not None and not (isinstance(calibration, list) and len(calibration) == 2
                                        and all(number(v) for v in calibration)):
        raise fail("calibration", "null or a list of two finite numbers [a, b]")
    return {"layer": layer, "method": method, "threshold": float(threshold),
            "direction": np.asarray(direction, dtype=np.float64), "model": model, "metrics": metrics,
            "calibration": None if calibration is None else (float(calibration[0]), float(calibration[1]))}
