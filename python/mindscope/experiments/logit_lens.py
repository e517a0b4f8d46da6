"""Asking the model: the logit lens (nostalgebraist 2020) and the model's own confidence.

- :func:`logit_lens`: the final norm and unembedding applied to every layer's residual stream,
  so each layer's "current guess" can be read as tokens.
- :func:`confidence`: the probability the model gives its own answer on questions with known
  answers, with a reliability diagram and expected calibration error (ECE).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import plotting, views
from ..errors import InvalidArgumentError, ShapeError
from ._result import ExperimentResult, int_arg


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


@dataclass(repr=False)
class LogitLensResult(ExperimentResult):
    """``target_prob`` / ``target_rank`` ``[layers, positions]`` for ``target`` (the next
    token after each position is scored against the same target token), and
    ``top_tokens[layer][pos]`` the ``k`` most likely tokens with ``top_probs``."""

    model_name: str
    prompt: str
    tokens: list[str]
    target: str
    target_prob: np.ndarray
    target_rank: np.ndarray
    top_tokens: list[list[list[str]]]
    top_probs: np.ndarray
    name = "logit_lens"

    def metrics(self) -> dict[str, Any]:
        last = self.target_prob[:, -1]
        first = int(np.argmax(self.target_rank[:, -1] == 0)) if (self.target_rank[:, -1] == 0).any() else None
        return {
            "model": self.model_name, "prompt": self.prompt, "target": self.target,
            "target_prob_last_position": last, "target_rank_last_position": self.target_rank[:, -1],
            "first_layer_target_is_top1": first,
            "top1_last_position": [layer[-1][0] for layer in self.top_tokens],
        }

    def view(self) -> views.View:
        """Every layer's top guess at every position (hover for the top k and the target)."""
        n_layers = self.target_prob.shape[0]
        return views.logit_lens_view(
            self.tokens, [f"L{i}" for i in range(n_layers)], self.top_tokens, self.top_probs, self.target,
            self.target_prob, self.target_rank, title=f"Logit lens on {self.prompt!r} ({self.model_name})")

    def plot(self, path: str | os.PathLike[str]) -> str:
        """Heatmap of the target's probability (layers x positions, log colour scale) with each
        layer's top-1 token written in its cell, and the probabilities per layer at the last
        position."""
        n_layers = self.target_prob.shape[0]
        text = [[_cell_token(layer[pos][0]) for pos in range(len(self.tokens))] for layer in self.top_tokens]
        heat = plotting.heatmap_panel(
            self.target_prob, col_labels=self.tokens, row_labels=[f"L{i}" for i in range(n_layers)],
            cell_text=text, log_scale=True, vmin=LENS_VMIN, vmax=1.0, y_label="layer", x_label="position",
            title=f"Colour: p({self.target!r}) from each layer (log scale); text: that layer's top-1 token")
        layers = np.arange(n_layers)
        curve = plotting.lines_panel(
            {f"p({self.target!r})": (layers, self.target_prob[:, -1]),
             "p(top-1 token)": (layers, self.top_probs[:, -1, 0])},
            dashed=["p(top-1 token)"], title="At the last position", x_label="layer", y_label="probability",
            y_range=(0, 1), legend="auto")
        return plotting.save_figure(path, [heat, curve], columns=2, width=2000, height=max(700, 26 * n_layers + 140),
                                    widths=[1.45, 0.55], title=f"Logit lens on {self.model_name}: {self.prompt!r}")


#: Lowest probability the logit-lens colour scale resolves; smaller ones share its colour.
LENS_VMIN = 1e-6


def _cell_token(token: str, limit: int = 9) -> str:
    """A token as cell text: spaces and newlines visible (as in the axis labels), long ones cut."""
    shown = token.replace(" ", "·").replace("\n", "↵").replace("\t", "→")
    return shown if len(shown) <= limit else shown[:limit - 1] + "…"


def logit_lens(model: Any, prompt: str, target: str | None = None, k: int = 5,
               progress: bool | None = None) -> LogitLensResult:
    """Apply the final norm + unembedding to ``blocks.{i}.hook_resid_post`` at every position.
    ``target`` (one token, e.g. ``" Paris"``) defaults to the model's final top-1 prediction.
    ``progress``: a bar for the forward pass (None: when interactive, False: never)."""
    if not isinstance(prompt, str) or not prompt:
        raise InvalidArgumentError(f"the prompt must be a non-empty string, got {prompt!r}")
    if target is not None and not isinstance(target, str):
        raise InvalidArgumentError(f"target must be a string or None, got {target!r}")
    k = int_arg(k, "k", 1)
    ids = model.to_tokens(prompt)
    _, cache = model.run_with_cache([ids], names="blocks.*.hook_resid_post", positions="all", return_logits=False,
                                    progress=progress)
    resid = np.stack([cache[f"blocks.{i}.hook_resid_post"][0] for i in range(model.n_layers)])
    logp = _log_softmax(model.unembed(resid).astype(np.float64))  # [layers, pos, vocab]
    target_id = int(np.argmax(logp[-1, -1])) if target is None else model.token_id(target)
    target_text = model.decode([target_id]) if target is None else target
    t = logp[..., target_id]
    rank = (logp > t[..., None]).sum(axis=-1)
    top = np.argsort(-logp, axis=-1)[..., :k]
    top_tokens = [[model.to_str_tokens(row.tolist()) for row in layer] for layer in top]
    return LogitLensResult(
        model_name=model.name, prompt=prompt, tokens=model.to_str_tokens(ids), target=target_text,
        target_prob=np.exp(t), target_rank=rank, top_tokens=top_tokens,
        top_probs=np.exp(np.take_along_axis(logp, top, axis=-1)),
    )


@dataclass(repr=False)
class ConfidenceResult(ExperimentResult):
    """Per question: ``confidence`` (probability of the model's top next token), ``correct``
    (that token is the answer's first token), ``answer_prob`` (probability of the answer's first
    token). Reliability bins: ``bin_confidence``, ``bin_accuracy``, ``bin_count``; ``ece``."""

    model_name: str
    prompts: list[str]
    answers: list[str]
    predictions: list[str]
    confidence: np.ndarray
    correct: np.ndarray
    answer_prob: np.ndarray
    bin_confidence: np.ndarray
    bin_accuracy: np.ndarray
    bin_count: np.ndarray
    ece: float
    name = "confidence"

    def metrics(self) -> dict[str, Any]:
        return {
            "model": self.model_name, "n_questions": len(self.prompts), "accuracy": float(self.correct.mean()),
            "mean_confidence": float(self.confidence.mean()), "ece": self.ece,
            "mean_answer_prob": float(self.answer_prob.mean()),
            "bins": {"confidence": self.bin_confidence, "accuracy": self.bin_accuracy, "count": self.bin_count},
            "examples": [{"prompt": p, "answer": a, "prediction": q, "confidence": c}
                         for p, a, q, c in list(zip(self.prompts, self.answers, self.predictions,
                                                    self.confidence.tolist()))[:10]],
        }

    def view(self) -> views.View:
        """Accuracy and mean confidence per confidence bin (hover a bin for its count), and the
        first questions with the model's answers."""
        n = len(self.bin_count)
        bins = views.lines_panel(
            (np.arange(n) + 0.5) / n, {"accuracy": self.bin_accuracy, "mean confidence": self.bin_confidence},
            "confidence bin", "accuracy", dashed=["mean confidence"], y_range=(0, 1),
            x_labels=[f"{b / n:.1f}-{(b + 1) / n:.1f}" for b in range(n)],
            notes=[f"{c} questions" for c in self.bin_count.tolist()],
            title=f"Reliability: accuracy {self.correct.mean():.2f}, ECE {self.ece:.3f}")
        rows = [[p, a, q, f"{c:.3f}", "yes" if ok else "no"]
                for p, a, q, c, ok in list(zip(self.prompts, self.answers, self.predictions, self.confidence.tolist(),
                                               self.correct.tolist()))[:20]]
        table = views.table_panel(["prompt", "answer", "model's answer", "confidence", "correct"], rows,
                                  title=f"First {len(rows)} of {len(self.prompts)} questions")
        return views.View(f"Does {self.model_name} know when it knows?", [bins, table])

    def plot(self, path: str | os.PathLike[str]) -> str:
        """Reliability diagram (accuracy per confidence bin against the diagonal, each bin's
        question count written beside it) and a histogram of the confidences, split into right
        and wrong answers."""
        has = self.bin_count > 0
        rel = plotting.lines_panel(
            {"perfect calibration": ([0, 1], [0, 1]),
             "model": (self.bin_confidence[has], self.bin_accuracy[has])},
            point_labels={"model": [f"n={c}" for c in self.bin_count[has]]},
            dashed=["perfect calibration"], x_label="confidence (probability of own answer)",
            y_label="accuracy", y_range=(0, 1), x_range=(0, 1), legend="upper_left",
            title=f"Reliability: accuracy {self.correct.mean():.2f}, ECE {self.ece:.3f} (n = questions per bin)")
        n_hist = 20
        edges = np.linspace(0, 1, n_hist + 1)
        right = np.histogram(self.confidence[self.correct], bins=edges)[0]
        wrong = np.histogram(self.confidence[~self.correct], bins=edges)[0]
        hist = plotting.bars_panel(
            (edges[:-1] + edges[1:]) / 2, {"right": right, "wrong": wrong}, width=1 / n_hist, x_range=(0, 1),
            x_label="confidence (probability of own answer)", y_label="questions",
            title=f"Confidence histogram ({n_hist} bins)")
        return plotting.save_figure(path, [rel, hist], columns=2, width=1500, height=600,
                                    title=f"Does {self.model_name} know when it knows? ({len(self.prompts)} questions)")


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 10
                               ) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """ECE with ``n_bins`` equal-width bins: ``sum_b |acc_b - conf_b| * n_b / n``; also returns
    per-bin mean confidence, accuracy and count (NaN for empty bins)."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if confidence.shape != correct.shape or confidence.ndim != 1 or len(confidence) == 0:
        raise ShapeError("confidence and correct must be equal-length, non-empty 1-D arrays")
    which = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    conf_b, acc_b, cnt = np.full(n_bins, np.nan), np.full(n_bins, np.nan), np.zeros(n_bins, dtype=np.int64)
    ece = 0.0
    for b in range(n_bins):
        sel = which == b
        cnt[b] = sel.sum()
        if cnt[b]:
            conf_b[b], acc_b[b] = confidence[sel].mean(), correct[sel].mean()
            ece += abs(acc_b[b] - conf_b[b]) * cnt[b] / len(confidence)
    return float(ece), conf_b, acc_b, cnt


def confidence(model: Any, prompts: Sequence[str], answers: Sequence[str], n_bins: int = 10,
               batch_size: int = 32, progress: bool | None = None) -> ConfidenceResult:
    """Score the model's next-token answer to each prompt against the known answer's first
    token (e.g. ``"The capital of France is"`` -> ``" Paris"``). ``progress``: a bar counting
    prompts (None: when interactive, False: never)."""
    n_bins = int_arg(n_bins, "n_bins", 1)
    batch_size = int_arg(batch_size, "batch_size", 1)
    if isinstance(prompts, str) or isinstance(answers, str):
        raise InvalidArgumentError("prompts and answers must be lists of strings, not a single string")
    if not all(isinstance(t, str) for t in [*prompts, *answers]):
        raise InvalidArgumentError("prompts and answers must be lists of strings")
    if len(prompts) != len(answers) or not prompts:
        raise ShapeError(f"need equally many prompts and answers (got {len(prompts)} and {len(answers)}), at least one")
    answer_ids = []
    for a in answers:
        ids = model.to_tokens(a)
        if not ids:
            raise InvalidArgumentError(f"answer {a!r} tokenizes to no tokens")
        answer_ids.append(ids[0])
    logits = model.run(list(prompts), return_logits="last", batch_size=batch_size, progress=progress)
    logp = _log_softmax(logits.astype(np.float64))
    top = logp.argmax(axis=1)
    conf = np.exp(logp.max(axis=1))
    correct = top == np.array(answer_ids)
    ece, cb, ab, cnt = expected_calibration_error(conf, correct, n_bins)
    return ConfidenceResult(
        model_name=model.name, prompts=list(prompts), answers=list(answers),
        predictions=model.to_str_tokens(top.tolist()), confidence=conf, correct=correct,
        answer_prob=np.exp(logp[np.arange(len(prompts)), answer_ids]), bin_confidence=cb, bin_accuracy=ab,
        bin_count=cnt, ece=ece,
    )
