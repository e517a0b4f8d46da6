"""Activation patching: the exhaustive ground truth that attribution patching approximates.

For a clean prompt and a corrupt one of the same length (e.g. the names of an indirect-object
sentence swapped), run the corrupt prompt once per site with one activation taken from the
clean run, and read a metric of the final logits::

    scores = ms.activation_patching(model, "When Mary and John went to the store, John gave a drink to",
                                    "When Mary and John went to the store, Mary gave a drink to",
                                    ("logit_diff", " Mary", " John"), sites=("resid_pre", "head"))
    scores.scores["resid_pre"]   # [layer, position]: the patched run's logit difference
    scores.plot("patching.png")

The core runs the patches packed, continuing the corrupt run: a patch at (layer l, position t)
recomputes only blocks l.. at positions t.. up to the metric's position, and positions before
the first token where the prompts differ are not run at all (patching them changes nothing).
``naive=True`` runs one full forward per patch instead (the reference the fast path is tested
against).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .errors import InvalidArgumentError
from .metrics import MetricLike, metric_name, resolve_metric
from .progress import native_progress
from .site_scores import SITES, SiteScores

Prompt = str | Sequence[int]


def _ids(model: Any, prompt: Prompt, what: str) -> list[int]:
    if isinstance(prompt, str):
        return model.to_tokens(prompt)
    try:
        return [int(i) for i in prompt]
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{what} must be a text or a list of token ids, got {prompt!r:.80}") from None


def activation_patching(
    model: Any,
    clean: Prompt,
    corrupt: Prompt,
    metric: MetricLike,
    sites: str | Sequence[str] = SITES,
    *,
    position: int | None = None,
    naive: bool = False,
    rows_per_batch: int = 4096,
    progress: bool | None = None,
) -> SiteScores:
    """The corrupt prompt's ``metric`` with each activation patched in from the clean prompt,
    one patch at a time.

    ``clean``, ``corrupt``: texts or token ids with the same number of tokens. ``metric``:
    ``("logprob", target)``, ``("logit_diff", a, b)`` or ``("logits_dot", weights [vocab])``
    (targets as one-token strings or ids), read at ``position`` (default: the last token).
    ``sites``: any of ``"resid_pre"``, ``"attn_out"``, ``"mlp_out"`` (one (layer, position) at a
    time) and ``"head"`` (``attn.hook_z`` of one head at every position).

    Returns :class:`SiteScores` with ``scores[site]`` the patched run's metric, ``[layer,
    position]`` (``[layer, head]`` for ``"head"``), and ``baseline`` ``{"clean", "corrupt"}``:
    the unpatched runs' metrics. A cell equal to ``baseline["corrupt"]`` means the patch does
    not matter; one at ``baseline["clean"]`` restores the clean behaviour.

    ``rows_per_batch``: about how many patched positions one packed run holds (bounds memory;
    several packs run one per core). ``naive=True``: one full forward per patch instead.
    ``progress``: a bar counting patches (None: when interactive, False: never).
    """
    clean_ids = _ids(model, clean, "clean")
    corrupt_ids = _ids(model, corrupt, "corrupt")
    if len(clean_ids) != len(corrupt_ids):
        raise InvalidArgumentError(
            "the clean and corrupt prompts must have the same number of tokens to patch position by "
            f"position: clean has {len(clean_ids)} {model.to_str_tokens(clean_ids)}, corrupt has "
            f"{len(corrupt_ids)} {model.to_str_tokens(corrupt_ids)}")
    site_list = [sites] if isinstance(sites, str) else list(sites)
    request = {
        "clean_ids": clean_ids, "corrupt_ids": corrupt_ids,
        "metric": resolve_metric(model, metric, position),
        "sites": site_list, "naive": bool(naive), "rows_per_batch": rows_per_batch,
    }
    with native_progress(progress, "patches", "activation patching") as report:
        out = model._native.activation_patching(json.dumps(request), report)
    return SiteScores(
        method="activation_patching",
        metric=metric_name(metric, model),
        tokens=model.to_str_tokens(clean_ids),
        scores=dict(out["scores"]),
        baseline={"clean": float(out["clean"]), "corrupt": float(out["corrupt"])},
    )
