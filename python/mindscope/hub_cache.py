"""Models in the Hugging Face Hub cache, found offline.

``huggingface_hub`` keeps a repository ``org/name`` as
``<cache>/models--org--name/snapshots/<revision>/`` (files symlinked into ``blobs/``), with
``refs/main`` naming the revision of the branch last downloaded. The cache is ``$HF_HUB_CACHE``,
else ``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub``, else
``~/.cache/huggingface/hub`` (``huggingface_hub``'s own rules). Nothing is downloaded here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def cache_dirs() -> list[Path]:
    """Where the Hub cache may be, in the order ``huggingface_hub`` looks."""
    dirs: list[Path] = []
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            dirs.append(Path(os.environ[var]).expanduser())
    if os.environ.get("HF_HOME"):
        dirs.append(Path(os.environ["HF_HOME"]).expanduser() / "hub")
    xdg = os.environ.get("XDG_CACHE_HOME")
    dirs.append((Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface" / "hub")
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def is_repo_id(text: str) -> bool:
    """Whether ``text`` looks like a Hub repository id (``gpt2``, ``EleutherAI/pythia-160m``)."""
    return bool(_REPO_ID.match(text)) and ".." not in text


def _folder_name(repo_id: str) -> str:
    return "models--" + repo_id.replace("/", "--")


def _loadable(snapshot: Path) -> bool:
    """A snapshot mindscope can load: a Hugging Face model folder, or GGUF files."""
    return (snapshot / "config.json").is_file() or any(snapshot.glob("*.gguf"))


def snapshot(repo_dir: Path, revision: str | None = None) -> Path | None:
    """The snapshot of a cached repository: ``revision`` (a commit hash or a branch/tag under
    ``refs/``), else ``refs/main``'s, else the only (or most recently written) loadable one."""
    snaps = repo_dir / "snapshots"
    if not snaps.is_dir():
        return None
    if revision is None and (repo_dir / "refs" / "main").is_file():
        revision = "main"
    if revision is not None:
        ref = repo_dir / "refs" / revision
        commit = ref.read_text().strip() if ref.is_file() else revision
        path = snaps / commit
        return path if path.is_dir() and _loadable(path) else None
    candidates = [p for p in snaps.iterdir() if p.is_dir() and _loadable(p)]
    if not candidates:
        return None
    return max(candidates, key=lambda p: p.stat().st_mtime)


def find(repo_id: str, revision: str | None = None) -> tuple[Path | None, list[Path]]:
    """The snapshot folder of ``repo_id`` in the first cache that has it, and every place
    looked (for the error message when none does)."""
    looked = []
    for cache in cache_dirs():
        repo_dir = cache / _folder_name(repo_id)
        looked.append(repo_dir)
        if repo_dir.is_dir():
            found = snapshot(repo_dir, revision)
            if found is not None:
                return found, looked
    return None, looked


def cached_models() -> dict[str, Path]:
    """Every loadable repository in the caches: repo id -> snapshot folder."""
    out: dict[str, Path] = {}
    for cache in cache_dirs():
        if not cache.is_dir():
            continue
        for repo_dir in sorted(cache.glob("models--*")):
            repo_id = repo_dir.name[len("models--"):].replace("--", "/")
            if repo_id in out:
                continue
            found = snapshot(repo_dir)
            if found is not None:
                out[repo_id] = found
    return out
