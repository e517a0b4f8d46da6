"""Scores per model site (residual stream, attention and MLP outputs, heads): the result of
attribution patching and activation patching."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SITES = ("resid_pre", "attn_out", "mlp_out", "head")


@dataclass(repr=False)
class SiteScores:
    """Scores of one method per site.

    ``scores[site]`` is ``[layer, position]`` for ``"resid_pre"``, ``"attn_out"`` and
    ``"mlp_out"``, and ``[layer, head]`` for ``"head"``. ``tokens`` are the (clean) prompt's
    tokens; ``baseline`` holds reference metric values, e.g. ``{"clean": ..., "corrupt": ...}``.
    """

    method: str
    metric: str
    tokens: list[str]
    scores: dict[str, np.ndarray]
    baseline: dict[str, float] = field(default_factory=dict)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}{list(v.shape)}" for k, v in self.scores.items())
        base = ", ".join(f"{k}={v:.4g}" for k, v in self.baseline.items())
        return f"SiteScores({self.method}, metric={self.metric}, {len(self.tokens)} tokens, {shapes}{', ' + base if base else ''})"
