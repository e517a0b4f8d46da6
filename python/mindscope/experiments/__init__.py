"""End-to-end experiments: each is one call returning a result object with arrays, ``metrics()``,
``plot(path)`` and ``save(folder)``.

- :func:`world_map` — latitude/longitude probes on city names (Gurnee & Tegmark 2023).
- :func:`pos_probing` — part of speech with control tasks (Hewitt & Liang 2019).
- :func:`truth_experiment` and :class:`LieDetector` — truth directions (Marks & Tegmark 2023).
- :func:`attribution` — input ablation and attention attribution.
- :func:`logit_lens` and :func:`confidence` — asking the model directly.
"""

from .attribution import AttributionResult, attribution
from .logit_lens import ConfidenceResult, LogitLensResult, confidence, expected_calibration_error, logit_lens
from .pos_probing import PosProbingResult, pos_probing, word_activations
from .truth import LieDetector, TruthResult, causal_check, truth_experiment
from .world_map import WorldMapResult, world_map

__all__ = [
    "AttributionResult", "ConfidenceResult", "LieDetector", "LogitLensResult", "PosProbingResult",
    "TruthResult", "WorldMapResult", "attribution", "causal_check", "confidence",
    "expected_calibration_error", "logit_lens", "pos_probing", "truth_experiment", "word_activations",
    "world_map",
]
