"""Shared fixtures: the packaged model (loaded once) and the shared reference data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("MINDSCOPE_SHARED", REPO.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """A file under ../shared; fail (not skip) with a clear message if it is missing."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.fail(
            f"shared data missing: {path}. The tests read ../shared/ next to the repository "
            "(or set MINDSCOPE_SHARED)."
        )
    return path


@pytest.fixture(scope="session")
def model():
    return _installed("smollm2-135m")


@pytest.fixture(scope="session")
def smollm2_reference():
    """The three reference prompts: (text, npz arrays) computed with transformers."""
    folder = shared_path("reference", "smollm2")
    meta = json.loads((folder / "meta.json").read_text())
    out = []
    for i, prompt in enumerate(meta["prompts"]):
        with np.load(folder / f"prompt{i}.npz") as z:
            out.append((prompt["text"], {k: z[k] for k in z.files}))
    return out


def _installed(name: str, weights: str = "float32"):
    """A packaged model; fails with the registry's install command (the one README and the
    load error give) when it is missing. Float32 by default: the reference tests compare the
    exact computation with transformers'."""
    import mindscope as ms
    from mindscope.registry import REGISTRY

    if ms.list_models().get(name) is None:
        pytest.fail(f"model '{name}' is not installed: {REGISTRY[name].install}")
    return ms.load_model(name, weights=weights)


@pytest.fixture(scope="session")
def gemma():
    return _installed("gemma3-270m")


@pytest.fixture(scope="session")
def model_quantized():
    """SmolLM2 with its GGUF's Q4_1 / Q8_0 blocks kept as stored."""
    return _installed("smollm2-135m", "quantized")


@pytest.fixture(scope="session")
def gemma_quantized():
    return _installed("gemma3-270m", "quantized")


@pytest.fixture(scope="session")
def minilm():
    return _installed("minilm-l6")
