"""What a worker needs to load the same model as the caller: a name or path and the weights
mode. Paths that reload a model by name (``map_blocks``, ``extract``, ``corpus_stats`` with
``engine="ray"``) ship a :class:`ModelSpec`, so a model loaded with ``weights="float32"`` is
reloaded in float32 and not in the file's default mode (quantized for a quantized GGUF)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .errors import InvalidArgumentError, MindscopeError
from .model import HookedModel, check_weights_mode, load_model


@dataclass(frozen=True)
class ModelSpec:
    """``source``: a registered name, Hub id or an absolute path; ``weights``: ``"quantized"``,
    ``"float32"`` or None (the file's default, see :func:`mindscope.load_model`)."""

    source: str
    weights: str | None = None

    def load(self) -> HookedModel:
        return load_model(self.source, weights=self.weights, progress=False)

    def __str__(self) -> str:
        return repr(self.source) if self.weights is None else f"{self.source!r} (weights={self.weights!r})"


def model_spec(model: Any, weights: str | None = None) -> ModelSpec:
    """A :class:`ModelSpec` for ``model``: a name or path (made absolute when it exists, as
    workers may run elsewhere) with ``weights``, a :class:`ModelSpec`, or a loaded
    :class:`HookedModel` (its name when that resolves, else its one file or folder, and the mode
    it runs in). ``weights`` that contradicts a loaded model's mode is refused."""
    check_weights_mode(weights)
    if isinstance(model, ModelSpec):
        _same_mode(model.weights, weights, str(model))
        return model if weights is None else ModelSpec(model.source, weights)
    if isinstance(model, (str, os.PathLike)):
        s = os.fspath(model)
        return ModelSpec(os.path.abspath(s) if os.path.exists(s) else s, weights)
    if isinstance(model, HookedModel):
        _same_mode(model.weights, weights, model.name)
        return ModelSpec(_reloadable_source(model), model.weights)
    raise InvalidArgumentError(f"the model must be a name, a path or a loaded HookedModel, got {type(model).__name__}")


def loaded(model: Any, weights: str | None = None) -> HookedModel | None:
    """``model`` itself when it is a loaded :class:`HookedModel` (whose mode must agree with
    ``weights``, when given), else None: in-process runs use it instead of loading it again."""
    check_weights_mode(weights)
    if isinstance(model, HookedModel):
        _same_mode(model.weights, weights, model.name)
        return model
    return None


def _same_mode(have: str | None, asked: str | None, what: str) -> None:
    if have is not None and asked is not None and have != asked:
        raise InvalidArgumentError(f"{what} runs with weights={have!r}, but weights={asked!r} was asked for; "
                                   f"load the model with weights={asked!r} or leave weights out")


def _reloadable_source(model: HookedModel) -> str:
    from .registry import resolve_model_paths

    try:
        resolve_model_paths(model.name, None)
        return model.name
    except (MindscopeError, OSError):
        pass
    files = model._weight_files  # a model loaded from a path: its one file or folder
    if len(files) == 1 and os.path.exists(files[0]):
        return os.path.abspath(files[0])
    raise InvalidArgumentError("workers load the model again from its name or path; this one has neither "
                               f"({model.name!r}): pass its name or path (e.g. \"smollm2-135m\")")
