"""PLACEHOLDER written against the shared issue-20 interface until the lead's ``metrics.py``
lands on main (take main's version on merge)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import InvalidArgumentError

MetricLike = tuple


def _token(model: Any, t: Any) -> int:
    if isinstance(t, str):
        return model.token_id(t)
    if isinstance(t, (int, np.integer)) and not isinstance(t, bool):
        return int(t)
    raise InvalidArgumentError(f"a metric target must be a token string or an id, got {t!r}")


def resolve_metric(model: Any, metric: MetricLike, position: int | None = None) -> dict:
    if not isinstance(metric, tuple) or not metric:
        raise InvalidArgumentError(f"a metric is a tuple such as ('logprob', ' Paris'), got {metric!r}")
    kind = metric[0]
    if kind == "logprob" and len(metric) == 2:
        spec: dict = {"kind": "logprob", "target": _token(model, metric[1])}
    elif kind == "logit_diff" and len(metric) == 3:
        spec = {"kind": "logit_diff", "a": _token(model, metric[1]), "b": _token(model, metric[2])}
    elif kind == "logits_dot" and len(metric) == 2:
        spec = {"kind": "logits_dot", "weights": np.asarray(metric[1], dtype=np.float32).ravel().tolist()}
    else:
        raise InvalidArgumentError(f"unknown metric {metric!r}")
    spec["position"] = position
    return spec


def metric_name(metric: MetricLike) -> str:
    kind = metric[0]
    if kind == "logprob":
        return f"log p({metric[1]!r})"
    if kind == "logit_diff":
        return f"logit({metric[1]!r}) - logit({metric[2]!r})"
    return "weights · logits"
