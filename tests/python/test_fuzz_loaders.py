"""The model-file loaders against broken files: every load ends normally, with a model or a
typed `mindscope.errors` error, under a 3 GiB address-space limit and a timeout (see
`fuzz_loaders.py`, which also runs the long fuzz: `python tests/python/fuzz_loaders.py
--cases 5000 --seed 1`).

The loads run in worker processes, many cases per process: an abort or a refused allocation
kills the worker, which the driver reports as that case's finding and then carries on.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import fuzz_loaders as fz

# Enough random cases to hit every mutation kind dozens of times (about 15 s on 2 cores).
SEED = 20261206
RANDOM_CASES = 2000

TARGETED = fz.targeted_cases(Path("unused"))  # ids only; files are built in the worker


@pytest.fixture(scope="module")
def targeted():
    results = fz.run_cases(SEED, [c.id for c in TARGETED])
    return {r["id"]: r for r in results}


def _explain(r):
    return f"case {r['id']} ({r['desc']}): {r['verdict']}; {r['class']}: {r['message']}"


@pytest.mark.parametrize("case", TARGETED, ids=[c.id for c in TARGETED])
def test_targeted_case(targeted, case):
    r = targeted[case.id]
    assert r["verdict"] == "pass", _explain(r)
    if case.must_load:
        assert r["status"] == "loaded", _explain(r)
    if case.must_fail:
        assert r["status"] == "typed", _explain(r)


@pytest.mark.parametrize("cid", [c.id for c in TARGETED if c.id.startswith("sparse_")])
def test_huge_sparse_files_fail_fast(targeted, cid):
    # A 4 GiB file is refused from its first bytes: no read of the whole file, no mapping
    # larger than the 3 GiB limit (which would fail as a StorageError instead).
    r = targeted[cid]
    assert r["class"] == "ModelFormatError", _explain(r)
    assert r["seconds"] < 5, _explain(r)


def test_seeded_random_cases():
    results = fz.run_cases(SEED, [str(i) for i in range(RANDOM_CASES)])
    findings = [_explain(r) for r in results if r["verdict"] != "pass"]
    assert not findings, "\n".join(findings)
    # The generator must produce both loadable files and broken ones, or it tests nothing.
    loaded = sum(r["status"] == "loaded" for r in results)
    refused = sum(r["status"] == "typed" for r in results)
    assert loaded >= 5 and refused >= RANDOM_CASES // 2, (loaded, refused)


def test_case_generation_is_deterministic(tmp_path):
    # A finding is reproduced from its case number alone (`--only N`).
    for index in range(20):
        a_root, b_root = tmp_path / f"a{index}", tmp_path / f"b{index}"
        a_root.mkdir()
        b_root.mkdir()
        a = fz.random_case(SEED, index, a_root)
        b = fz.random_case(SEED, index, b_root)
        assert a.desc == b.desc
        if a.path.is_file():
            assert a.path.read_bytes() == b.path.read_bytes()
