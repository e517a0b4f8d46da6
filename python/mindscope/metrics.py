"""Metrics: one scalar of the final logits at one position of a prompt.

Gradients (``HookedModel.gradients``, ``ms.saliency``, ...) differentiate a metric, and
activation patching measures it on patched runs. A metric is spelled as a tuple:

- ``("logprob", target)``: ``log_softmax(logits)[target]``
- ``("logit_diff", a, b)``: ``logits[a] - logits[b]``
- ``("logits_dot", weights)``: ``weights · logits`` with ``weights`` of shape ``[vocab]``

Targets are token ids or strings that are exactly one token (``" Paris"``). The position is a
prompt's last token unless one is given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Union

import numpy as np

from .errors import DataError, InvalidArgumentError, ShapeError

if TYPE_CHECKING:
    from .model import HookedModel

TokenLike = Union[str, int]
MetricLike = tuple

_FORMS = '("logprob", target), ("logit_diff", a, b) or ("logits_dot", weights)'
_ARITY = {"logprob": 1, "logit_diff": 2, "logits_dot": 1}


def _parts(metric: Any) -> tuple[str, tuple[Any, ...]]:
    if not isinstance(metric, (tuple, list)) or not metric or not isinstance(metric[0], str):
        raise InvalidArgumentError(f"a metric is {_FORMS}; got {metric!r:.200}")
    kind, args = metric[0], tuple(metric[1:])
    if kind not in _ARITY:
        raise InvalidArgumentError(f"unknown metric kind {kind!r}; allowed: {_FORMS}")
    if len(args) != _ARITY[kind]:
        raise InvalidArgumentError(f"metric {kind!r} takes {_ARITY[kind]} argument(s), got {len(args)}; allowed: {_FORMS}")
    return kind, args


def _token(model: HookedModel, value: Any, what: str) -> int:
    vocab = int(model.cfg["vocab_size"])
    if isinstance(value, str):
        return model.token_id(value)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if not 0 <= int(value) < vocab:
            raise InvalidArgumentError(f"metric {what} token id {int(value)} is out of range: the vocabulary has {vocab} tokens")
        return int(value)
    raise InvalidArgumentError(f"metric {what} must be a token string or an int id, got {type(value).__name__}")


def resolve_metric(model: HookedModel, metric: MetricLike, position: int | None = None) -> dict[str, Any]:
    """The JSON-able spec the core takes: ``{"kind": ..., "target" | "a", "b" | "weights": ...,
    "position": ...}``. ``position``: ``None`` for each prompt's last token, else a
    non-negative index (checked against each prompt's length by the core)."""
    kind, args = _parts(metric)
    if position is not None and (not isinstance(position, (int, np.integer)) or isinstance(position, bool) or position < 0):
        raise InvalidArgumentError(f"position must be None (the last token) or a non-negative int, got {position!r}")
    spec: dict[str, Any] = {"kind": kind, "position": None if position is None else int(position)}
    if kind == "logprob":
        spec["target"] = _token(model, args[0], "target")
    elif kind == "logit_diff":
        spec["a"] = _token(model, args[0], "a")
        spec["b"] = _token(model, args[1], "b")
    else:
        weights = np.asarray(args[0], dtype=np.float64)
        vocab = int(model.cfg["vocab_size"])
        if weights.shape != (vocab,):
            raise ShapeError(f"logits_dot weights must have shape [vocab] = ({vocab},), got {weights.shape}")
        if not np.isfinite(weights).all():
            raise DataError("logits_dot weights contain NaN or inf")
        spec["weights"] = weights.astype(np.float32).tolist()
    return spec


def metric_name(metric: MetricLike, model: HookedModel | None = None) -> str:
    """A short label: ``"log p(' Paris')"``, ``"logit(' Mary') - logit(' John')"``, ``"w · logits"``."""
    kind, args = _parts(metric)

    def show(t: Any) -> str:
        if isinstance(t, str):
            return repr(t)
        if model is not None:
            return repr(model.decode([int(t)]))
        return f"#{int(t)}"

    if kind == "logprob":
        return f"log p({show(args[0])})"
    if kind == "logit_diff":
        return f"logit({show(args[0])}) - logit({show(args[1])})"
    return "w · logits"
