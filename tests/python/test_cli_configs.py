"""`mindscope run CONFIG`: the example configs shipped with the package run and leave a
reproducible results folder (metrics, plot, the config itself, versions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import mindscope

CONFIGS = sorted((Path(mindscope.__file__).parent / "configs").glob("*.toml"))


def test_example_configs_exist():
    assert len(CONFIGS) >= 3


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_config_runs(config: Path, tmp_path: Path):
    # Run where a user with only the package would: outside the checkout, no $MINDSCOPE_DATA.
    env = {k: v for k, v in os.environ.items() if k != "MINDSCOPE_DATA"}
    res = subprocess.run([sys.executable, "-m", "mindscope.cli", "run", str(config), "--out", str(tmp_path)],
                         capture_output=True, text=True, cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    files = {p.name for p in folder.iterdir()}
    assert {"metrics.json", "config.toml", "versions.json", f"{folder.name}.png"} <= files
    assert (folder / "config.toml").read_text() == config.read_text()
    assert json.loads((folder / "versions.json").read_text())["weights_sha256"]
    metrics = json.loads((folder / "metrics.json").read_text())
    if folder.name == "lie_detector":
        # The transfer test ran on the 612 facts shipped with the package.
        assert metrics["n_statements"]["facts"] == 612
        assert "facts" in metrics["generalization"]["logistic"]["both"]


def test_bad_config(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[experiment]\nname = "world-map"\ncitiez = 3\n')
    res = subprocess.run([sys.executable, "-m", "mindscope.cli", "run", str(bad)], capture_output=True, text=True)
    assert res.returncode == 2 and "unknown parameters ['citiez']" in res.stderr
    bad.write_text('[experiment]\nname = "telepathy"\n')
    res = subprocess.run([sys.executable, "-m", "mindscope.cli", "run", str(bad)], capture_output=True, text=True)
    assert res.returncode == 2 and "must be one of" in res.stderr
