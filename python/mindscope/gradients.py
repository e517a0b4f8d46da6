"""Gradient attribution methods on ``HookedModel.gradients``: saliency (gradient norm and
gradient × input per token), integrated gradients on the token embeddings (with Captum's
completeness gap), and attribution patching (AtP) per layer, position and attention head."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InvalidArgumentError
from .metrics import metric_name, resolve_metric
from .model import HookedModel
from .site_scores import SiteScores

EMBED = "hook_embed"


def _as_metric(target: Any) -> tuple:
    """A metric tuple, or a target token (string or id) meaning ``("logprob", target)``."""
    if isinstance(target, (tuple, list)):
        return tuple(target)
    return ("logprob", target)


def _one_prompt(prompt: Any, what: str = "prompt") -> str | list[int]:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(i, (int, np.integer)) for i in prompt):
        return [int(i) for i in prompt]
    raise InvalidArgumentError(f"{what} must be one string or one list of token ids, got {type(prompt).__name__}")


@dataclass
class Saliency:
    """Per-token saliency of a metric. ``grad_norm`` ``[pos]``: L2 norm of d metric / d token
    embedding; ``input_x_grad`` ``[pos]``: embedding · gradient summed over d_model;
    ``grads`` ``[pos, d_model]``."""

    tokens: list[str]
    metric: str
    value: float
    grad_norm: np.ndarray
    input_x_grad: np.ndarray
    grads: np.ndarray


def saliency(model: HookedModel, prompt: str | list[int], target: Any, position: int | None = None) -> Saliency:
    """Gradient norm and gradient × input per token of ``prompt`` for ``target`` (a token
    string or id: its log-probability; or any metric tuple) at ``position`` (default: last)."""
    prompt = _one_prompt(prompt)
    metric = _as_metric(target)
    out = model.gradients([prompt], metric, names=[EMBED], position=position, return_activations=True)
    g = out.grads[EMBED][0]
    x = out.activations[EMBED][0]
    return Saliency(
        tokens=model.to_str_tokens(out.tokens[0]),
        metric=metric_name(metric, model),
        value=float(out.metric[0]),
        grad_norm=np.linalg.norm(g.astype(np.float64), axis=-1),
        input_x_grad=(x.astype(np.float64) * g).sum(-1),
        grads=g,
    )


@dataclass
class IntegratedGradients:
    """Integrated gradients on the token embeddings. ``attributions`` ``[pos]`` (summed over
    d_model; ``attributions_full`` ``[pos, d_model]``) sum to about ``metric_input -
    metric_baseline``; ``delta`` is the completeness gap ``sum(attributions) - (metric_input -
    metric_baseline)`` (Captum's convergence delta)."""

    tokens: list[str]
    metric: str
    attributions: np.ndarray
    attributions_full: np.ndarray
    metric_input: float
    metric_baseline: float
    delta: float
    n_steps: int


def _baseline(model: HookedModel, baseline: Any, x: np.ndarray) -> np.ndarray:
    t, d = x.shape
    if isinstance(baseline, str) and baseline == "zeros":
        return np.zeros_like(x)
    if isinstance(baseline, (str, int, np.integer)) and not isinstance(baseline, bool):
        tid = model.token_id(baseline) if isinstance(baseline, str) else int(baseline)
        if not 0 <= tid < model.cfg["vocab_size"]:
            raise InvalidArgumentError(f"baseline token id {tid} is out of range (vocabulary size {model.cfg['vocab_size']})")
        _, cache = model.run_with_cache([[tid] * t], names=[EMBED], return_logits=False)
        return cache[EMBED][0]
    b = np.asarray(baseline, dtype=np.float32)
    if b.shape != (t, d):
        raise InvalidArgumentError(
            f"baseline must be 'zeros', a token (string or id), or embeddings of shape [{t}, {d}]; got shape {b.shape}"
        )
    if not np.isfinite(b).all():
        raise InvalidArgumentError("baseline embeddings contain NaN or inf")
    return b


def integrated_gradients(
    model: HookedModel,
    prompt: str | list[int],
    target: Any,
    baseline: Any = "zeros",
    n_steps: int = 32,
    batch_size: int = 8,
    position: int | None = None,
    progress: bool | None = None,
) -> IntegratedGradients:
    """Integrated gradients of ``target`` (a token: its log-probability; or a metric tuple)
    on the token embeddings of ``prompt``: ``(x - b) · mean_k grad(b + alpha_k (x - b))``
    with midpoint alphas ``(k + 0.5) / n_steps``, ``batch_size`` steps per batched call.

    baseline: ``"zeros"``, a token (string or id) repeated at every position, or embeddings
    ``[pos, d_model]``. ``progress``: a bar over the steps' block passes (None: when
    interactive, False: never).
    """
    prompt = _one_prompt(prompt)
    if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or n_steps < 1:
        raise InvalidArgumentError(f"n_steps must be a positive int, got {n_steps!r}")
    metric = _as_metric(target)
    resolve_metric(model, metric, position)  # bad targets fail before any forward
    _, cache = model.run_with_cache([prompt], names=[EMBED], return_logits=False)
    x = cache[EMBED][0]
    b = _baseline(model, baseline, x)
    alphas = (np.arange(n_steps) + 0.5) / n_steps
    path = b[None] + alphas[:, None, None].astype(np.float32) * (x - b)[None]
    # The endpoints ride along as the last two rows of the path.
    rows = np.concatenate([path, x[None], b[None]]).astype(np.float32)
    out = model.gradients(None, metric, names=[EMBED], position=position, batch_size=batch_size, embeddings=rows,
                          progress=progress)
    g = out.grads[EMBED][:n_steps].astype(np.float64)
    full = (x - b).astype(np.float64) * g.mean(0)
    attributions = full.sum(-1)
    m_x, m_b = float(out.metric[n_steps]), float(out.metric[n_steps + 1])
    tokens = model.to_str_tokens(prompt)
    return IntegratedGradients(
        tokens=tokens,
        metric=metric_name(metric, model),
        attributions=attributions,
        attributions_full=full,
        metric_input=m_x,
        metric_baseline=m_b,
        delta=float(attributions.sum() - (m_x - m_b)),
        n_steps=int(n_steps),
    )


def _metric_of_logits(spec: dict, logits: np.ndarray) -> float:
    """The metric of one logits row ``[vocab]`` (float64)."""
    row = logits.astype(np.float64)
    if spec["kind"] == "logprob":
        m = row.max()
        return float(row[spec["target"]] - m - np.log(np.exp(row - m).sum()))
    if spec["kind"] == "logit_diff":
        return float(row[spec["a"]] - row[spec["b"]])
    return float(np.dot(np.asarray(spec["weights"]), row))


def attribution_patching(
    model: HookedModel,
    clean: str | list[int],
    corrupt: str | list[int],
    metric: tuple,
    position: int | None = None,
    progress: bool | None = None,
) -> SiteScores:
    """Attribution patching (AtP): the first-order estimate of patching each clean activation
    into the corrupt run, ``(clean - corrupt) · d metric / d activation`` with the gradient
    taken on the corrupt run. Sites ``resid_pre``, ``attn_out``, ``mlp_out`` ``[layer,
    position]`` (summed over d_model) and ``head`` ``[layer, head]`` (on ``attn.hook_z``,
    the head outputs before the output projection, summed over d_head and positions).
    The prompts must have the same number of tokens. ``progress``: a bar over the backward
    pass (None: when interactive, False: never)."""
    clean, corrupt = _one_prompt(clean, "clean"), _one_prompt(corrupt, "corrupt")
    spec = resolve_metric(model, metric, position)
    clean_ids = model.to_tokens(clean) if isinstance(clean, str) else clean
    corrupt_ids = model.to_tokens(corrupt) if isinstance(corrupt, str) else corrupt
    if len(clean_ids) != len(corrupt_ids):
        raise InvalidArgumentError(
            f"clean and corrupt prompts must have the same number of tokens: clean has {len(clean_ids)} "
            f"({model.to_str_tokens(clean_ids)}), corrupt has {len(corrupt_ids)} ({model.to_str_tokens(corrupt_ids)})"
        )
    n = model.n_layers
    kinds = {"resid_pre": "hook_resid_pre", "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out",
             "head": "attn.hook_z"}
    names = [f"blocks.{i}.{k}" for k in kinds.values() for i in range(n)]
    logits, cache = model.run_with_cache([clean_ids], names=names, return_logits="all")
    t_metric = len(clean_ids) - 1 if position is None else position
    if t_metric >= len(clean_ids):
        raise InvalidArgumentError(
            f"metric position {t_metric} is beyond the prompt, which has {len(clean_ids)} tokens"
        )
    m_clean = _metric_of_logits(spec, logits[0, t_metric])
    out = model.gradients([corrupt_ids], metric, names=names, position=position, return_activations=True,
                          progress=progress)
    scores: dict[str, np.ndarray] = {}
    for site, kind in kinds.items():
        per_layer = []
        for i in range(n):
            name = f"blocks.{i}.{kind}"
            diff = cache[name][0].astype(np.float64) - out.activations[name][0]
            prod = diff * out.grads[name][0]
            # [pos, d] -> [pos]; z [pos, head, d_head] -> [head]
            per_layer.append(prod.sum(-1) if site != "head" else prod.sum(-1).sum(0))
        scores[site] = np.stack(per_layer)
    return SiteScores(
        method="attribution_patching",
        metric=metric_name(metric, model),
        tokens=model.to_str_tokens(clean_ids),
        scores=scores,
        baseline={"clean": m_clean, "corrupt": float(out.metric[0])},
    )
