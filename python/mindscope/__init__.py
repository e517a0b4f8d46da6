"""mindscope: what is this language model thinking?

A Rust core runs transformer language models on the CPU with a hook at every layer; this
package is its thin Python face. Start with::

    import mindscope as ms
    model = ms.load_model("smollm2-135m")
    logits, cache = model.run_with_cache(["The capital of France is"],
                                         names="blocks.*.hook_resid_post", positions="last")
"""

from __future__ import annotations

from . import analysis, backend, datasets, errors, experiments, plotting, storage
from ._native import __version__
from .errors import *  # noqa: F401,F403  (typed exceptions at the top level)
from .hooks import ActivationCache, Intervention, PerPrompt
from .model import Generation, HookedModel, load_model
from .experiments import (
    LieDetector,
    attribution,
    confidence,
    logit_lens,
    pos_probing,
    truth_experiment,
    world_map,
)
from .registry import DEFAULT_MODEL, list_models
from .storage import Dump, load_dump

__all__ = [
    "__version__",
    "analysis",
    "backend",
    "datasets",
    "errors",
    "experiments",
    "plotting",
    "storage",
    "Dump",
    "load_dump",
    "LieDetector",
    "attribution",
    "confidence",
    "logit_lens",
    "pos_probing",
    "truth_experiment",
    "world_map",
    "ActivationCache",
    "Generation",
    "HookedModel",
    "Intervention",
    "PerPrompt",
    "DEFAULT_MODEL",
    "list_models",
    "load_model",
    *errors.__all__,
]
