"""Which input tokens matter for an output: input ablation (delete / replace / mask each token,
word or window and measure the target's log-probability), next to attention-based attribution
(the target position's attention per layer, and attention rollout, Abnar & Zuidema 2020)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import plotting, views
from ..errors import InvalidArgumentError
from ..progress import check_progress
from ._result import ExperimentResult, int_arg, text_arg

ABLATIONS = ("delete", "replace", "zero", "mean")
UNITS = ("token", "word", "window")


@dataclass(repr=False)
class AttributionResult(ExperimentResult):
    """``effect[i]`` = log p(target | prompt) − log p(target | prompt with span i ablated):
    positive where the span supports the target. ``spans`` are token ranges ``[start, end)`` of
    ``tokens``; ``attention`` ``[layers, tokens]`` is the head-averaged attention of the last
    prompt position, ``rollout`` ``[tokens]`` its attention rollout."""

    model_name: str
    prompt: str
    target: str
    tokens: list[str]
    spans: list[tuple[int, int]]
    span_labels: list[str]
    ablation: str
    clean_logprob: float
    ablated_logprob: np.ndarray
    attention: np.ndarray
    rollout: np.ndarray
    #: What is measured: ``"log p"`` of the target (decoders) or ``"cosine"`` similarity of the
    #: sentence embedding to the target's (encoders); ``clean_logprob`` / ``ablated_logprob``
    #: then hold similarities.
    measure: str = "log p"
    name = "attribution"

    @property
    def effect(self) -> np.ndarray:
        return self.clean_logprob - self.ablated_logprob

    def token_effect(self) -> np.ndarray:
        """Per token ``[tokens]``: the effect of the span it belongs to (for word units; for
        windows, the mean over windows covering it)."""
        total = np.zeros(len(self.tokens))
        count = np.zeros(len(self.tokens))
        for (s, e), v in zip(self.spans, self.effect):
            total[s:e] += v
            count[s:e] += 1
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)

    def metrics(self) -> dict[str, Any]:
        order = np.argsort(-self.effect)
        return {
            "model": self.model_name, "prompt": self.prompt, "target": self.target,
            "ablation": self.ablation, "measure": self.measure, "clean_logprob": self.clean_logprob,
            "clean_prob": float(np.exp(self.clean_logprob)),
            "spans": [{"span": list(self.spans[i]), "text": self.span_labels[i], "effect": self.effect[i],
                       "ablated_logprob": self.ablated_logprob[i]} for i in range(len(self.spans))],
            "most_important": [self.span_labels[i] for i in order[:3]],
            "attention_last_layer": self.attention[-1], "rollout": self.rollout,
        }

    def view(self) -> views.View:
        """The prompt coloured by ablation effect (or attention, or rollout: buttons); hover a
        token for all three."""
        effect = f"Δ {self.measure}"
        notes = [""] * len(self.tokens)
        for (s, e), label in zip(self.spans, self.span_labels):
            for i in range(s, e):
                notes[i] = f"{notes[i]}, {label!r}" if notes[i] else f"in {label!r}"
        query = "mean position" if self.measure == "cosine" else "last position"
        return views.token_values_view(
            self.tokens, {effect: self.token_effect(), f"attention of the {query} (last layer)": self.attention[-1],
                          "attention rollout": self.rollout},
            diverging=[effect], notes=notes,
            header=f"Target {self.target!r}: {self.measure} {self.clean_logprob:.3f} on the whole prompt; "
                   f"{effect} = drop when the span is ablated ({self.ablation}); red supports the target.",
            title=f"What matters for {self.target!r} after {self.prompt!r} ({self.model_name})")

    def plot(self, path: str | os.PathLike[str]) -> str:
        """Tokens coloured by ablation effect (one compact row), above the attention of the last
        position per layer and, when it says more than "everything on one token", its rollout."""
        effect = plotting.heatmap_panel(
            self.token_effect(), col_labels=self.tokens, row_labels=["effect"], diverging=True, annotate=True,
            title=f"Ablation ({self.ablation}): drop in {self.measure} of {self.target!r}; red = supports it")
        layers = np.arange(self.attention.shape[0])
        query = "every position (mean)" if self.measure == "cosine" else "the last position"
        attn = plotting.heatmap_panel(
            self.attention, col_labels=self.tokens, row_labels=[f"L{i}" for i in layers],
            title=f"Attention of {query} (mean over heads)", y_label="layer")
        panels, heights = [effect, attn], [1.0, 0.6 + 0.12 * len(layers)]
        top = int(np.argmax(self.rollout))
        if self.rollout[top] >= ROLLOUT_UNINFORMATIVE:
            attn["title"] += f"; rollout not shown ({self.rollout[top]:.2f} of it on {self.tokens[top]!r})"
        else:
            panels.append(plotting.heatmap_panel(self.rollout, col_labels=self.tokens, row_labels=["rollout"],
                                                 annotate=True, title="Attention rollout"))
            heights.append(1.0)
        width = max(900, min(2400, 70 * len(self.tokens) + 200))
        unit = 150  # pixels per unit of height: a one-row heatmap with rotated token labels
        return plotting.save_figure(path, panels, columns=1, width=width, height=int(unit * sum(heights)) + 40,
                                    heights=heights, title=f"What matters for {self.target!r} in this prompt")


#: A rollout with at least this share on one token (usually the first: attention sinks) says
#: nothing about the other tokens, so the figure leaves it out.
ROLLOUT_UNINFORMATIVE = 0.9


def _target_ids(model: Any, prompt_ids: list[int], target: str | None) -> tuple[list[int], str]:
    if target is None:
        logits = model.run([prompt_ids], return_logits="last")[0]
        top = int(np.argmax(logits))
        return [top], model.decode([top])
    if not isinstance(target, str) or target == "":
        raise InvalidArgumentError("the target is empty: give the continuation to score, e.g. ' Paris'")
    ids = model.to_tokens(target)
    if model.cfg.get("add_bos") and ids and ids[0] == model.cfg.get("bos_token_id"):
        ids = ids[1:]
    if not ids:
        raise InvalidArgumentError(f"the target {target!r} tokenizes to no tokens")
    return ids, target


def _spans(model: Any, prompt: str, n_tokens: int, unit: str, window: int) -> list[tuple[int, int]]:
    if unit == "token":
        return [(i, i + 1) for i in range(n_tokens)]
    if unit == "window":
        if not 1 <= window <= n_tokens:
            raise InvalidArgumentError(f"window {window} must be between 1 and the prompt's {n_tokens} tokens")
        return [(i, i + window) for i in range(n_tokens - window + 1)]
    if unit == "word":
        _, offsets = model.encode_with_offsets(prompt)
        spans: list[tuple[int, int]] = []
        for i, (a, b) in enumerate(offsets):
            # A token starts a new word if its text begins with whitespace (or it is the first).
            starts_word = not spans or (a < len(prompt) and prompt[a:b][:1].isspace())
            if starts_word:
                spans.append((i, i + 1))
            else:
                spans[-1] = (spans[-1][0], i + 1)
        return spans
    raise InvalidArgumentError(f"unit '{unit}' is not known; allowed: {', '.join(UNITS)}")


def attention_attribution(model: Any, prompt_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Head-averaged attention of the last position per layer ``[layers, tokens]`` and its
    attention rollout ``[tokens]`` (residual-corrected: ``0.5 A + 0.5 I`` per layer). For an
    encoder, whose sentence embedding pools every position, the mean over query positions."""
    _, cache = model.run_with_cache([prompt_ids], names="blocks.*.attn.hook_pattern", positions="all",
                                    return_logits=False)
    mats = [cache[f"blocks.{i}.attn.hook_pattern"][0].mean(axis=0) for i in range(model.n_layers)]
    n = len(prompt_ids)
    rollout = np.eye(n)
    for a in mats:
        rollout = (0.5 * a + 0.5 * np.eye(n)) @ rollout
    if getattr(model, "is_encoder", False):
        return np.stack([a.mean(axis=0) for a in mats]), rollout.mean(axis=0)
    return np.stack([a[-1] for a in mats]), rollout[-1]


def attribution(
    model: Any,
    prompt: str,
    target: str | None = None,
    ablation: str = "delete",
    replace_with: str = " ",
    unit: str = "token",
    window: int = 2,
    batch_size: int = 64,
    progress: bool | None = None,
) -> AttributionResult:
    """Input-ablation attribution of ``target`` (default: the model's top next token) after
    ``prompt``.

    ``ablation``: ``"delete"`` the span, ``"replace"`` each of its tokens with the single token
    ``replace_with``, or set its input embeddings to ``"zero"`` or the vocabulary ``"mean"``.
    ``unit``: single tokens, whitespace-delimited ``"word"``s, or sliding ``"window"``s of
    ``window`` tokens. Each variant recomputes only the positions after its first change
    (reusing the clean prompt's keys and values before it); up to ``batch_size`` variants
    run packed together, and only rows that predict the target reach the LM head.
    ``progress``: a bar counting the scored variants (None: when interactive; False: never).
    """
    progress = check_progress(progress)
    if ablation not in ABLATIONS:
        raise InvalidArgumentError(f"ablation '{ablation}' is not known; allowed: {', '.join(ABLATIONS)}")
    if not isinstance(prompt, str) or not prompt:
        raise InvalidArgumentError(f"the prompt must be a non-empty string, got {prompt!r}")
    if target is not None and not isinstance(target, str):
        raise InvalidArgumentError(f"target must be a string or None, got {target!r}")
    text_arg(replace_with, "replace_with")
    window = int_arg(window, "window", 1)
    batch_size = int_arg(batch_size, "batch_size", 1)
    if getattr(model, "is_encoder", False):
        return _encoder_attribution(model, prompt, target, ablation, replace_with, unit, window, batch_size,
                                    progress)
    ids = model.to_tokens(prompt)
    target_ids, target_text = _target_ids(model, ids, target)
    spans = _spans(model, prompt, len(ids), unit, window)
    replace_id = model.token_id(replace_with) if ablation == "replace" else None
    clean, ablated = model.ablation_scores(ids, target_ids, spans, ablation, replace_id, batch_size,
                                           progress=progress)
    tokens = model.to_str_tokens(ids)
    attn, rollout = attention_attribution(model, ids)
    return AttributionResult(
        model_name=model.name, prompt=prompt, target=target_text, tokens=tokens, spans=spans,
        span_labels=["".join(tokens[s:e]) for s, e in spans], ablation=ablation, clean_logprob=clean,
        ablated_logprob=np.asarray(ablated), attention=attn, rollout=rollout,
    )


def _encoder_attribution(model: Any, prompt: str, target: str | None, ablation: str, replace_with: str,
                         unit: str, window: int, batch_size: int, progress: bool | None) -> AttributionResult:
    """Ablation against a sentence embedding: the cosine similarity of ``prompt``'s embedding
    to ``target``'s (default: to the unablated prompt's own), with each span deleted or
    replaced (default replacement: ``[MASK]``). Special tokens ([CLS], [SEP]) are kept."""
    if ablation not in ("delete", "replace"):
        raise InvalidArgumentError(
            f"ablation '{ablation}' needs next-token log-probs; an encoder allows: delete, replace")
    ids = model.to_tokens(prompt)
    special = {model.cfg.get("bos_token_id"), model.cfg.get("eos_token_id")}
    spans = [(s, e) for s, e in _spans(model, prompt, len(ids), unit, window)
             if not all(ids[k] in special for k in range(s, e))]
    if not spans:
        raise InvalidArgumentError(f"the prompt {prompt!r} has no tokens to ablate besides special tokens")
    if ablation == "replace":
        token = "[MASK]" if replace_with == " " else replace_with
        replace_id = model._native.token_to_id(token)
        if replace_id is None:
            raise InvalidArgumentError(f"{token!r} is not a vocabulary entry of {model.name}")
    variants = []
    for s, e in spans:
        if ablation == "delete":
            variants.append(ids[:s] + ids[e:])
        else:
            variants.append(ids[:s] + [replace_id] * (e - s) + ids[e:])
    reference = model.embed([target], progress=False)[0] if target else model.embed([ids], progress=False)[0]
    clean = float(model.embed([ids], progress=False)[0] @ reference)
    ablated = model.embed(variants, batch_size=batch_size, progress=progress) @ reference
    tokens = model.to_str_tokens(ids)
    attn, rollout = attention_attribution(model, ids)
    return AttributionResult(
        model_name=model.name, prompt=prompt, target=target or prompt, tokens=tokens, spans=spans,
        span_labels=["".join(tokens[s:e]) for s, e in spans], ablation=ablation, clean_logprob=clean,
        ablated_logprob=np.asarray(ablated, dtype=np.float64), attention=attn, rollout=rollout,
        measure="cosine",
    )
