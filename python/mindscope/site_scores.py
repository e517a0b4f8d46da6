"""PLACEHOLDER written against the shared issue-20 interface until the lead's
``site_scores.py`` lands on main (take main's version on merge, then add ``plot``)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

SITES = ("resid_pre", "attn_out", "mlp_out", "head")


@dataclass(repr=False)
class SiteScores:
    method: str
    metric: str
    tokens: list[str]
    scores: dict[str, np.ndarray]
    baseline: dict[str, float]

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}{list(v.shape)}" for k, v in self.scores.items())
        return f"SiteScores({self.method}, {self.metric}: {shapes})"

    def plot(self, path: str | os.PathLike[str], site: str | None = None) -> str:
        """Heatmaps of the scores into the PNG at ``path`` (see
        :func:`mindscope.plotting.plot_site_scores`); returns the path."""
        from .plotting import plot_site_scores

        return plot_site_scores(self, path, site=site)
