"""Every notebook runs top to bottom on the packaged model (a failing cell fails the test)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import REPO, shared_path

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_all_notebooks_are_collected():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06", "07", "08", "09"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MINDSCOPE_DATA", str(shared_path("data")))
    monkeypatch.setenv("MINDSCOPE_SHARED", str(shared_path()))
    nb = nbformat.read(path, as_version=4)
    # Run in a scratch folder so figures written by the notebook do not land in the repo.
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    # Every story after the capture tour ends in a figure drawn by the Rust core.
    if not path.stem.startswith("01"):
        assert [p for p in tmp_path.iterdir() if p.suffix == ".png"]
