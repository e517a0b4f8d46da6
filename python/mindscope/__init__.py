"""mindscope: what is this language model thinking?

A Rust core runs transformer language models on the CPU with a hook at every layer; this
package is its thin Python face. Start with::

    import mindscope as ms
    model = ms.load_model("smollm2-135m")
    logits, cache = model.run_with_cache(["The capital of France is"],
                                         names="blocks.*.hook_resid_post", positions="last")
"""

from __future__ import annotations

import os as _os

# candle runs its own element-wise ops (the ones the core has no kernel for, e.g. the encoder's
# LayerNorm and bias adds) on a thread pool of its own: RAYON_NUM_THREADS - 1 spinning workers
# behind one lock. When a batch runs one chunk per core, the chunks queue for that pool and
# its worker competes with them for the cores. Without it (element-wise ops on the calling
# thread) all-MiniLM-L6 embedded 32 x 64 tokens in 0.36 s instead of 0.51 s on 2 cores; the
# decoders' hot ops have kernels of their own and were unchanged. candle reads this once,
# when it first needs the pool, so it is set before the native module loads; a value the user
# set wins.
_os.environ.setdefault("CANDLE_NUM_THREADS", "1")

from ._native import default_threads as _default_threads  # noqa: E402

# candle's CPU matmul (the attention products) asks for its thread count at every call and,
# without RAYON_NUM_THREADS, counts the physical cores by reading /proc/cpuinfo each time: 7 %
# of a generated token's CPU time (SmolLM2, 2 cores), on the thread the other core waits for.
# The value is what rayon's pool takes anyway; a value the user set wins.
_os.environ.setdefault("RAYON_NUM_THREADS", str(_default_threads()))

from . import analysis, backend, datasets, distributed, errors, experiments, plotting, stats, storage, views
from ._native import __version__
from .errors import *  # noqa: F401,F403  (typed exceptions at the top level)
from .hooks import ActivationCache, Intervention, PerPrompt
from .model import Generation, Gradients, HookedModel, load_model
from .gradients import attribution_patching, integrated_gradients, saliency
from .patching import activation_patching
from .site_scores import SiteScores
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
from .stats import CorpusStats, corpus_stats
from .storage import Dump, load_dump
from .distributed import extract, map_blocks

__all__ = [
    "__version__",
    "analysis",
    "backend",
    "datasets",
    "errors",
    "experiments",
    "plotting",
    "stats",
    "storage",
    "views",
    "CorpusStats",
    "corpus_stats",
    "distributed",
    "extract",
    "map_blocks",
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
    "activation_patching",
    "Generation",
    "Gradients",
    "SiteScores",
    "attribution_patching",
    "integrated_gradients",
    "saliency",
    "HookedModel",
    "Intervention",
    "PerPrompt",
    "DEFAULT_MODEL",
    "list_models",
    "load_model",
    *errors.__all__,
]
