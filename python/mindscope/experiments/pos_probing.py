"""Part-of-speech probing with control tasks (Hewitt & Liang 2019, "Designing and Interpreting
Probes with Control Tasks"): a probe's accuracy means little until it is compared with the same
probe's accuracy on a control task that only memorising word identity can solve."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import plotting, views
from ..analysis import LogisticProbe, control_task_labels, map_parallel, train_test_split_indices
from ..datasets import Sentence
from ..errors import DataError, InvalidArgumentError
from ..progress import check_progress, progress_bar
from ._result import ExperimentResult, int_arg


@dataclass
class WordActivations:
    """Activations of every word: ``features[site]`` ``[n_words, d_model]`` taken at each word's
    last sub-token; ``sentence`` ``[n_words]`` is the sentence index (for group splits)."""

    features: dict[str, np.ndarray]
    words: list[str]
    tags: np.ndarray
    sentence: np.ndarray

    def __repr__(self) -> str:
        return (f"WordActivations({len(self.words)} words of {len(np.unique(self.sentence))} sentences, "
                f"{len(self.features)} sites)")


def word_token_spans(model: Any, sentence: Sentence) -> list[tuple[int, int]]:
    """``(first, last)`` token index of each word: the tokens whose characters overlap it."""
    _, offsets = model.encode_with_offsets(sentence.text)
    out = []
    for (ws, we), word in zip(sentence.spans, sentence.words):
        hits = [i for i, (a, b) in enumerate(offsets) if b > a and a < we and b > ws]
        if not hits:
            raise DataError(f"sentence {sentence.id}: word {word!r} has no token")
        out.append((hits[0], hits[-1]))
    return out


def word_activations(model: Any, sentences: Sequence[Sentence], sites: Sequence[str],
                     batch_size: int = 32, progress: bool | None = None) -> WordActivations:
    """Run each sentence alone (no context across sentences) and gather ``sites`` (hook names)
    at each word's last sub-token. ``progress``: a bar counting sentences."""
    if not sentences:
        raise InvalidArgumentError("no sentences given")
    spans = [word_token_spans(model, s) for s in sentences]
    feats: dict[str, list[np.ndarray]] = {n: [] for n in sites}
    with progress_bar(len(sentences), progress, "sentences", "pos activations") as bar:
        for start in range(0, len(sentences), batch_size):
            chunk = sentences[start:start + batch_size]
            _, cache = model.run_with_cache([s.text for s in chunk], names=list(sites), positions="all",
                                            return_logits=False, batch_size=batch_size, progress=False)
            for name in sites:
                arr = cache[name]
                for j, sp in enumerate(spans[start:start + len(chunk)]):
                    feats[name].append(arr[j, [last for _, last in sp]])
            bar.update(len(chunk))
    words = [w for s in sentences for w in s.words]
    tags = np.array([t for s in sentences for t in s.upos])
    sentence = np.concatenate([np.full(len(s.words), i) for i, s in enumerate(sentences)])
    return WordActivations({n: np.concatenate(v) for n, v in feats.items()}, words, tags, sentence)


@dataclass(repr=False)
class PosProbingResult(ExperimentResult):
    """Per representation (``labels``: ``"embed"``, ``"random proj."``, ``"L0"``, ...): held-out
    ``accuracy``, ``control_accuracy`` and ``selectivity`` (= accuracy − control), plus
    ``train_accuracy``; ``majority`` is the most frequent tag's share of the test words."""

    model_name: str
    labels: list[str]
    layers: np.ndarray
    accuracy: np.ndarray
    train_accuracy: np.ndarray
    control_accuracy: np.ndarray
    selectivity: np.ndarray
    majority: float
    n_sentences: int
    n_words: int
    n_test_words: int
    C: float
    name = "pos_probing"

    def metrics(self) -> dict[str, Any]:
        best = int(np.argmax(self.selectivity))
        return {
            "model": self.model_name, "n_sentences": self.n_sentences, "n_words": self.n_words,
            "n_test_words": self.n_test_words, "C": self.C, "majority_baseline": self.majority,
            "best_selectivity": {"representation": self.labels[best], "accuracy": self.accuracy[best],
                                 "control_accuracy": self.control_accuracy[best],
                                 "selectivity": self.selectivity[best]},
            "per_representation": {"representation": self.labels, "layer": self.layers,
                                   "accuracy": self.accuracy, "train_accuracy": self.train_accuracy,
                                   "control_accuracy": self.control_accuracy,
                                   "selectivity": self.selectivity},
        }

    def view(self) -> views.View:
        """Accuracy, control accuracy and selectivity per layer (hover to read a layer); the
        majority tag and the random-projection baseline as dashed levels."""
        blocks = self.layers >= -1
        x = self.layers[blocks]
        levels = {"majority tag": self.majority}
        levels.update({f"{label} accuracy": float(a) for label, a, keep in zip(self.labels, self.accuracy, blocks) if not keep})
        panel = views.lines_panel(
            x, {"accuracy": self.accuracy[blocks], "control accuracy": self.control_accuracy[blocks],
                "selectivity": self.selectivity[blocks]},
            "layer", "held-out accuracy", dashed=["control accuracy"], hlines=levels, y_range=(0, 1),
            x_labels=[label for label, keep in zip(self.labels, blocks) if keep],
            title=f"POS probe, {self.n_test_words} held-out words")
        return views.View(f"Part of speech in {self.model_name}: accuracy vs control task", [panel])

    def plot(self, path: str | os.PathLike[str]) -> str:
        """Accuracy and control accuracy per layer (embedding at layer −1) with the majority-tag
        and random-projection baselines drawn as labelled levels, and selectivity (accuracy −
        control) on its own axis."""
        blocks = self.layers >= -1
        x = self.layers[blocks]
        levels, names = [self.majority], [f"majority tag ({self.majority:.2f})"]
        random = [i for i, label in enumerate(self.labels) if label == "random proj."]
        if random:
            levels.append(float(self.accuracy[random[0]]))
            names.append(f"probe on random projection ({levels[-1]:.2f})")
        acc = plotting.lines_panel(
            {"POS accuracy": (x, self.accuracy[blocks]), "control task accuracy": (x, self.control_accuracy[blocks])},
            dashed=["control task accuracy"], hlines=levels, hline_labels=names, y_range=(0, 1),
            x_label="layer (−1 = embeddings)", y_label="held-out accuracy",
            title=f"POS probe (17 UPOS tags) and control task, {self.n_test_words} held-out words")
        sel = plotting.lines_panel(
            {"selectivity": (x, self.selectivity[blocks])}, hlines=[0.0], x_label="layer (−1 = embeddings)",
            y_label="selectivity (accuracy − control accuracy)", title="Selectivity (Hewitt & Liang 2019)")
        return plotting.save_figure(path, [acc, sel], columns=2, width=1600, height=580, widths=[1.2, 0.8],
                                    title=f"Part of speech in {self.model_name}: accuracy vs control task")


def pos_probing(
    model: Any,
    sentences: Sequence[Sentence],
    layers: Sequence[int] | None = None,
    C: float = 0.1,
    max_iter: int = 100,
    test_size: float = 0.2,
    seed: int = 0,
    random_baseline: bool = True,
    batch_size: int = 32,
    progress: bool | None = None,
) -> PosProbingResult:
    """Probe ``layers`` (default every 3rd block) and the embeddings for UPOS tags.

    Each word is represented by its last sub-token's ``hook_resid_post`` (``hook_embed`` for the
    embedding baseline). The split is grouped by sentence; the control task gives every
    lower-cased word type a random tag from the real tag distribution (seeded); selectivity is
    accuracy minus control accuracy on the held-out words. With ``random_baseline``, the same
    probe also runs on a fixed random projection of the embeddings. ``progress``: one bar per
    stage (activations, probes; None: when interactive, False: never).
    """
    progress = check_progress(progress)
    seed = int_arg(seed, "seed", 0)
    max_iter = int_arg(max_iter, "max_iter", 1)
    batch_size = int_arg(batch_size, "batch_size", 1)
    if isinstance(sentences, (str, bytes)) or not all(isinstance(s, Sentence) for s in sentences):
        raise InvalidArgumentError("sentences must be a list of Sentence (from ms.datasets.ud_pos)")
    chosen = model.check_layers(range(0, model.n_layers, 3) if layers is None else layers)
    sites = ["hook_embed"] + [f"blocks.{i}.hook_resid_post" for i in chosen]
    data = word_activations(model, sentences, sites, batch_size, progress)
    train, test = train_test_split_indices(len(data.tags), test_size, seed, groups=data.sentence)
    control = control_task_labels([w.lower() for w in data.words], data.tags, seed=seed)
    reps: list[tuple[str, int, np.ndarray]] = [("embed", -1, data.features["hook_embed"])]
    if random_baseline:
        d = model.d_model
        proj = np.random.default_rng(seed).normal(size=(d, d)).astype(np.float32) / np.sqrt(d)
        reps.append(("random proj.", -2, data.features["hook_embed"] @ proj))
    reps += [(f"L{i}", i, data.features[f"blocks.{i}.hook_resid_post"]) for i in chosen]

    def fit(job: tuple[np.ndarray, np.ndarray]) -> tuple[float, float]:
        X, y = job
        probe = LogisticProbe(C=C, max_iter=max_iter).fit(X[train], y[train])
        return probe.score(X[train], y[train]), probe.score(X[test], y[test])

    jobs = [(X, y) for _, _, X in reps for y in (data.tags, control)]
    with progress_bar(len(jobs), progress, "probes", "pos probes") as bar:
        scores = map_parallel(fit, jobs, on_done=bar.update)
    task, ctrl = scores[0::2], scores[1::2]
    values, counts = np.unique(data.tags[test], return_counts=True)
    acc = np.array([t[1] for t in task])
    cacc = np.array([c[1] for c in ctrl])
    return PosProbingResult(
        model_name=model.name, labels=[r[0] for r in reps], layers=np.array([r[1] for r in reps]),
        accuracy=acc, train_accuracy=np.array([t[0] for t in task]), control_accuracy=cacc,
        selectivity=acc - cacc, majority=float(counts.max() / counts.sum()), n_sentences=len(sentences),
        n_words=len(data.tags), n_test_words=len(test), C=C,
    )
