"""The world map inside the model (Gurnee & Tegmark 2023, "Language Models Represent Space and
Time"): a linear probe reads latitude and longitude off city-name activations."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import plotting, views
from ..analysis import PCA, RidgeProbe, map_parallel, great_circle_km, kfold_indices, proximity_error, r2_score, train_test_split_indices
from ..datasets import Cities, world_cities
from ..errors import InvalidArgumentError
from ..hooks import PerPrompt
from ..progress import check_progress, progress_bar
from ._result import ExperimentResult, int_arg, text_arg

DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-1, 4, 11))


def name_positions(model: Any, template: str, names: Sequence[str]) -> tuple[list[str], Any]:
    """Prompts from ``template`` and the position of each name's last token in them."""
    if "{name}" not in template:
        raise InvalidArgumentError(f"template must contain '{{name}}', got {template!r}")
    prompts = [template.replace("{name}", n) for n in names]
    if template.endswith("{name}"):
        return prompts, "last"
    start = template.index("{name}")
    positions = []
    for n, p in zip(names, prompts):
        end = start + len(n)
        _, offsets = model.encode_with_offsets(p)
        last = max(i for i, (a, b) in enumerate(offsets) if a < end and b > a)
        positions.append(last)
    return prompts, PerPrompt(positions)


@dataclass(repr=False)
class WorldMapResult(ExperimentResult):
    """Per-layer probe quality and the best layer's predictions.

    Per layer (arrays ``[n_layers]``): ``r2_lat``, ``r2_lon``, ``r2_mean``, ``train_r2_mean``,
    ``mean_error_km``, ``median_error_km``, ``proximity_error``, ``alpha``. At ``best_layer``:
    ``true_latlon`` / ``pred_latlon`` ``[n_test, 2]`` for the held-out cities, ``pca_2d``
    ``[n_test, 2]`` (unsupervised projection of the same activations), ``continent_holdout``.
    """

    model_name: str
    template: str
    layers: np.ndarray
    r2_lat: np.ndarray
    r2_lon: np.ndarray
    train_r2_mean: np.ndarray
    mean_error_km: np.ndarray
    median_error_km: np.ndarray
    proximity_error: np.ndarray
    alpha: np.ndarray
    best_layer: int
    test_index: np.ndarray
    true_latlon: np.ndarray
    pred_latlon: np.ndarray
    pca_2d: np.ndarray
    pca_explained: np.ndarray
    continents: list[str]
    continent_holdout: list[dict[str, Any]]
    n_cities: int
    #: ``[n_cities, d_model]`` activations at ``best_layer`` and the split, to re-check findings.
    best_activations: np.ndarray = field(repr=False)
    train_index: np.ndarray = field(repr=False)
    #: The held-out cities' names (``[n_test]``, same order as ``true_latlon``).
    city_names: list[str] = field(default_factory=list)
    name = "world_map"

    @property
    def r2_mean(self) -> np.ndarray:
        return (self.r2_lat + self.r2_lon) / 2

    def metrics(self) -> dict[str, Any]:
        b = int(np.flatnonzero(self.layers == self.best_layer)[0])
        return {
            "model": self.model_name, "template": self.template, "n_cities": self.n_cities,
            "n_test": int(len(self.test_index)), "best_layer": self.best_layer,
            "best_r2_lat": self.r2_lat[b], "best_r2_lon": self.r2_lon[b], "best_r2_mean": self.r2_mean[b],
            "best_mean_error_km": self.mean_error_km[b], "best_median_error_km": self.median_error_km[b],
            "best_proximity_error": self.proximity_error[b],
            "pca_explained_variance_ratio": self.pca_explained,
            "per_layer": {"layer": self.layers, "r2_lat": self.r2_lat, "r2_lon": self.r2_lon,
                          "train_r2_mean": self.train_r2_mean, "mean_error_km": self.mean_error_km,
                          "median_error_km": self.median_error_km, "proximity_error": self.proximity_error,
                          "alpha": self.alpha},
            "continent_holdout": self.continent_holdout,
        }

    def view(self) -> views.View:
        """The held-out cities at their predicted places (hover one: name, true and predicted
        place, error) and the probe's R² per layer (hover to read a layer)."""
        names = self.city_names or [f"city {i}" for i in self.test_index.tolist()]
        km = great_circle_km(self.true_latlon, self.pred_latlon)
        world = views.map_panel(names, self.continents, self.true_latlon, self.pred_latlon, km,
                                title=f"Layer {self.best_layer}: held-out cities at their predicted places")
        curves = views.lines_panel(
            self.layers, {"R² latitude": self.r2_lat, "R² longitude": self.r2_lon, "train R² (mean)": self.train_r2_mean},
            "layer", "R²", dashed=["train R² (mean)"], mark=self.best_layer,
            notes=[f"median error {v:,.0f} km" for v in self.median_error_km], title="Held-out R² per layer")
        return views.View(f"World map inside {self.model_name} ({self.n_cities} cities)", [world, curves])

    def plot(self, path: str | os.PathLike[str]) -> str:
        """World map of held-out predictions (dots, coloured by continent) joined to the true
        positions (dark points) over land, the 2-D PCA of the same activations coloured by
        continent, and R² per layer."""
        t, p = self.true_latlon, self.pred_latlon
        b = int(np.flatnonzero(self.layers == self.best_layer)[0])
        world = plotting.scatter_panel(
            p[:, 1], p[:, 0], self.continents, line_to=(t[:, 1], t[:, 0]), graticule=30,
            x_range=(-180, 180), y_range=(-90, 90), x_label="longitude", y_label="latitude",
            land=plotting.world_land(), aspect=plotting.MAP_ASPECT, end_point_size=1, legend="outside",
            title=(f"{len(t)} held-out cities, layer {self.best_layer}: R² lat {self.r2_lat[b]:.2f}, "
                   f"lon {self.r2_lon[b]:.2f} (dot: predicted, line to the true city)"))
        # A few outlier cities can stretch PCA axes; frame the central 98% of the points.
        lo, hi = np.percentile(self.pca_2d, [1, 99], axis=0)
        pad = (hi - lo) * 0.08
        ev = self.pca_explained * 100
        eta = variance_share(self.pca_2d, self.continents)
        verdict = (f"continent explains {eta * 100:.0f}% of PC 1-2 variance" if eta >= 0.05
                   else f"no continent structure (continent explains {eta * 100:.0f}% of PC 1-2 variance)")
        pca = plotting.scatter_panel(
            self.pca_2d[:, 0], self.pca_2d[:, 1], self.continents, x_label=f"PC 1 ({ev[0]:.1f}% of variance)",
            y_label=f"PC 2 ({ev[1]:.1f}% of variance)", legend="outside",
            x_range=(lo[0] - pad[0], hi[0] + pad[0]), y_range=(lo[1] - pad[1], hi[1] + pad[1]),
            title=f"Unsupervised PCA, layer {self.best_layer}: {verdict}")
        curves = plotting.lines_panel(
            {"latitude, held-out": (self.layers, self.r2_lat), "longitude, held-out": (self.layers, self.r2_lon),
             "mean, training cities": (self.layers, self.train_r2_mean)},
            dashed=["mean, training cities"], hlines=[0.0], title="Probe R² per layer",
            x_label="layer", y_label="R²")
        return plotting.save_figure(path, [world, pca, curves], columns=3, width=2400, height=640,
                                    widths=[1.2, 0.9, 0.9],
                                    title=f"World map inside {self.model_name} ({self.n_cities} cities)")


def variance_share(points: np.ndarray, labels: Sequence[str]) -> float:
    """Share of the variance of ``points`` ``[n, k]`` explained by ``labels`` ``[n]`` (e.g.
    continents): between-group over total sum of squares, summed over the k axes. 0 when the
    groups overlap completely (same means), 1 when each group is a single point."""
    points = np.asarray(points, dtype=np.float64)
    labels = np.asarray(labels)
    centred = points - points.mean(axis=0)
    total = float((centred ** 2).sum())
    if total == 0:
        return 0.0
    between = sum(float((labels == c).sum()) * float((centred[labels == c].mean(axis=0) ** 2).sum())
                  for c in np.unique(labels))
    return between / total


def _probe_metrics(latlon_true: np.ndarray, latlon_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    r2 = r2_score(latlon_true, latlon_pred)
    km = great_circle_km(latlon_true, latlon_pred)
    return r2, km, float(np.mean(proximity_error(latlon_true, latlon_pred)))


def world_map(
    model: Any,
    cities: Cities | None = None,
    layers: Sequence[int] | None = None,
    template: str = "{name}",
    test_size: float = 0.2,
    seed: int = 0,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    holdout_min_cities: int = 40,
    batch_size: int = 64,
    progress: bool | None = None,
) -> WorldMapResult:
    """Probe every layer for the cities' latitude and longitude.

    Activations: ``blocks.{i}.hook_resid_post`` at the last token of each city name, prompted as
    ``template`` (default: the bare name). A ridge probe (standardized features, alpha by
    leave-one-out CV over ``alphas``) is fitted on a seeded ``1 - test_size`` split; held-out R²,
    great-circle error and proximity error are reported per layer. At the best layer (mean R²),
    each continent with at least ``holdout_min_cities`` cities is held out as a block and compared
    with out-of-fold predictions from a 5-fold random split. ``progress``: one bar per stage
    (activations, probes; None: when interactive, False: never).
    """
    progress = check_progress(progress)
    cities = world_cities() if cities is None else cities
    if not isinstance(cities, Cities):
        raise InvalidArgumentError(f"cities must be a Cities table (ms.world_cities()), got {type(cities).__name__}")
    text_arg(template, "template")
    seed = int_arg(seed, "seed", 0)
    holdout_min_cities = int_arg(holdout_min_cities, "holdout_min_cities", 2)
    batch_size = int_arg(batch_size, "batch_size", 1)
    if len(cities) < 10:
        raise InvalidArgumentError(f"need at least 10 cities, got {len(cities)}")
    chosen = model.check_layers(layers)
    prompts, positions = name_positions(model, template, cities.name)
    acts = model.layer_activations(prompts, chosen, positions=positions, batch_size=batch_size, progress=progress)
    y = cities.latlon
    train, test = train_test_split_indices(len(cities), test_size, seed)
    def fit_layer(X: np.ndarray) -> tuple[RidgeProbe, np.ndarray]:
        probe = RidgeProbe(alphas=alphas).fit(X[train], y[train])
        return probe, probe.predict(X[test])

    rows: dict[str, list[float]] = {k: [] for k in ("r2_lat", "r2_lon", "train", "km_mean", "km_median", "prox", "alpha")}
    preds = []
    with progress_bar(len(acts), progress, "layers", "world map probes") as bar:
        fitted = map_parallel(fit_layer, acts, on_done=bar.update)
    for X, (probe, pred) in zip(acts, fitted):
        r2, km, prox = _probe_metrics(y[test], pred)
        rows["r2_lat"].append(r2[0])
        rows["r2_lon"].append(r2[1])
        rows["train"].append(probe.score(X[train], y[train]))
        rows["km_mean"].append(float(km.mean()))
        rows["km_median"].append(float(np.median(km)))
        rows["prox"].append(prox)
        rows["alpha"].append(probe.alpha_)
        preds.append(pred)
    r2_mean = (np.array(rows["r2_lat"]) + np.array(rows["r2_lon"])) / 2
    b = int(np.argmax(r2_mean))
    X_best = acts[b]
    # PCA on standardized features: raw residual streams have a few "massive" dimensions that
    # would take 99% of the variance and hide everything else.
    mu, sd = X_best[train].mean(0), X_best[train].std(0) + 1e-6
    Z = (X_best - mu) / sd
    pca = PCA(2).fit(Z[train])
    return WorldMapResult(
        model_name=model.name, template=template, layers=np.array(chosen),
        r2_lat=np.array(rows["r2_lat"]), r2_lon=np.array(rows["r2_lon"]), train_r2_mean=np.array(rows["train"]),
        mean_error_km=np.array(rows["km_mean"]), median_error_km=np.array(rows["km_median"]),
        proximity_error=np.array(rows["prox"]), alpha=np.array(rows["alpha"]), best_layer=chosen[b],
        test_index=test, true_latlon=y[test], pred_latlon=preds[b], pca_2d=pca.transform(Z[test]),
        pca_explained=pca.explained_variance_ratio_, continents=[cities.continent[i] for i in test.tolist()],
        continent_holdout=continent_holdout(X_best, cities, alphas, seed, holdout_min_cities),
        n_cities=len(cities), best_activations=X_best, train_index=train,
        city_names=[cities.name[i] for i in test.tolist()],
    )


def continent_holdout(X: np.ndarray, cities: Cities, alphas: Sequence[float], seed: int,
                      min_cities: int) -> list[dict[str, Any]]:
    """Block hold-out: for each continent, train on all others and predict it; compare with
    out-of-fold predictions of a random 5-fold split (same cities, same probe)."""
    y = cities.latlon
    folds = kfold_indices(len(cities), 5, seed)
    continents = np.array(cities.continent)
    blocks = [c for c in sorted(set(cities.continent)) if (continents == c).sum() >= min_cities]
    # Train masks: the 5 random folds' complements, then each continent's complement.
    train_masks = [np.isin(np.arange(len(y)), te, invert=True) for _, te in folds]
    train_masks += [continents != c for c in blocks]
    probes = map_parallel(lambda m: RidgeProbe(alphas=alphas).fit(X[m], y[m]), train_masks)
    oof = np.zeros_like(y)
    for (_, te), probe in zip(folds, probes):
        oof[te] = probe.predict(X[te])
    out = []
    for c, probe in zip(blocks, probes[len(folds):]):
        held = continents == c
        pred = probe.predict(X[held])
        out.append({
            "continent": c, "n": int(held.sum()),
            "mean_error_km_random_split": float(great_circle_km(y[held], oof[held]).mean()),
            "mean_error_km_held_out": float(great_circle_km(y[held], pred).mean()),
            "mean_shift_km": float(great_circle_km(oof[held], pred).mean()),
        })
    return out
