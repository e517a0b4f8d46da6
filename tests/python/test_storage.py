"""Activation dumps: round trip, readers (pyarrow, pandas, polars, DuckDB), crash safety, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import mindscope as ms
from mindscope import storage

TEXTS = [f"Fact number {i}: the sky is {'blue' if i % 2 else 'green'}" for i in range(23)]
HOOKS = ["blocks.3.hook_resid_post", "blocks.20.hook_resid_post"]


def reference(model, texts, positions="last"):
    _, cache = model.run_with_cache(texts, names=HOOKS, positions=positions, return_logits=False)
    return cache


def test_round_trip_float32_last_is_exact_and_memory_mapped(model, tmp_path):
    d = model.dump(TEXTS, tmp_path / "d", names=HOOKS, dtype="float32", part_size=100, quiet=True)
    ref = reference(model, TEXTS)
    for h in HOOKS:
        arr = d[h]
        assert isinstance(arr, np.memmap) and arr.dtype == np.float32 and arr.shape == (len(TEXTS), model.d_model)
        np.testing.assert_array_equal(arr, ref[h])
    np.testing.assert_array_equal(d.prompt_id, np.arange(len(TEXTS)))
    np.testing.assert_array_equal(d.position, ref.lengths - 1)
    meta = d.metadata
    assert meta["model"]["sha256"] == model.weights_sha256() and len(meta["model"]["sha256"]) == 64
    assert meta["hooks"] == HOOKS and meta["dtype"] == "float32" and meta["mindscope_version"]


def test_all_positions_in_several_parts_float16(model, tmp_path):
    d = model.dump(TEXTS, tmp_path / "d", names="blocks.3.hook_resid_post", positions="all", part_size=5,
                   quiet=True)
    ref = reference(model, TEXTS, "all")
    assert len(d.metadata["parts"]) == 5 and d.n_rows == int(ref.lengths.sum())
    want = np.concatenate([ref["blocks.3.hook_resid_post"][i, :n] for i, n in enumerate(ref.lengths)])
    got = d["blocks.3.hook_resid_post"].astype(np.float32)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())
    rows = d.where([4])
    assert (d.prompt_id[rows] == 4).all() and len(rows) == ref.lengths[4]
    assert "".join(d["token_text"][rows]) == TEXTS[4]


def test_other_readers_get_the_same_numbers(model, tmp_path):
    import duckdb
    import pandas as pd
    import polars as pl
    import pyarrow.feather as feather

    d = model.dump(TEXTS, tmp_path / "d", names=HOOKS, dtype="float32", part_size=100, quiet=True)
    f = d.part_files()[0]
    ours = np.asarray(d[HOOKS[1]])
    table = feather.read_table(f)
    np.testing.assert_array_equal(np.stack(table.column(HOOKS[1]).to_numpy(zero_copy_only=False)), ours)
    assert json.loads(table.schema.metadata[b"mindscope"])["hooks"] == HOOKS
    np.testing.assert_array_equal(np.stack(pd.read_feather(f)[HOOKS[1]].to_numpy()), ours)
    np.testing.assert_array_equal(pl.read_ipc(f)[HOOKS[1]].to_numpy(), ours)
    tbl = table  # noqa: F841  (DuckDB finds the pyarrow table by its variable name)
    got = duckdb.sql(f'select "{HOOKS[1]}" as v from tbl order by prompt_id').fetchnumpy()["v"]
    np.testing.assert_allclose(np.stack(got), ours, rtol=0, atol=0)


def test_refuses_other_spec_and_overwrites_on_request(model, tmp_path):
    out = tmp_path / "d"
    model.dump(TEXTS[:4], out, names=HOOKS, quiet=True)
    with pytest.raises(ms.StorageError, match="another model or spec"):
        model.dump(TEXTS[:4], out, names=HOOKS[:1], quiet=True)
    with pytest.raises(ms.StorageError, match="already holds this dump"):
        model.dump(TEXTS[:4], out, names=HOOKS, quiet=True)
    d = model.dump(TEXTS[:4], out, names=HOOKS[:1], overwrite=True, quiet=True)
    assert d.metadata["hooks"] == HOOKS[:1]


KILL_SCRIPT = r"""
import os, signal, sys
import mindscope as ms
from mindscope import _native, storage
real = _native.write_dump_part
calls = []
def dying(path, *args):
    calls.append(path)
    if len(calls) == 3:  # killed while writing the third part
        open(str(path.parent / ".part-00002.arrow.partial"), "wb").write(b"ARROW1 half")
        os.kill(os.getpid(), signal.SIGKILL)
    return real(path, *args)
_native.write_dump_part = dying
model = ms.load_model(weights="float32")  # the mode of the test's model, which resumes the dump
texts = [f"Fact number {i}: the sky is blue" for i in range(23)]
model.dump(texts, sys.argv[1], names="blocks.3.hook_resid_post", part_size=5, quiet=True)
"""


def test_kill_9_then_resume_without_duplicates(model, tmp_path):
    out = tmp_path / "d"
    res = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(out)], capture_output=True)
    assert res.returncode == -9, res.stderr.decode()[-500:]
    partial = storage.load_dump(out)
    assert [p["index"] for p in partial.metadata["parts"]] == [0, 1]
    assert (partial.prompt_id == np.repeat(np.arange(10), 1)).all()
    texts = [f"Fact number {i}: the sky is blue" for i in range(23)]
    assert (out / ".part-00002.arrow.partial").exists()
    d = model.dump(texts, out, names="blocks.3.hook_resid_post", part_size=5, resume=True, quiet=True)
    np.testing.assert_array_equal(d.prompt_id, np.arange(23))
    assert not list(out.glob(".*.partial"))
    ref = model.run_with_cache(texts, names="blocks.3.hook_resid_post", positions="last")[1]
    np.testing.assert_allclose(d["blocks.3.hook_resid_post"].astype(np.float32), ref["blocks.3.hook_resid_post"],
                               rtol=1e-3, atol=0.05)


def test_corrupted_part_is_named_and_others_still_read(model, tmp_path):
    d = model.dump(TEXTS, tmp_path / "d", names=HOOKS[:1], part_size=10, quiet=True)
    bad = d.part_files()[1]
    bad.write_bytes(bad.read_bytes()[:200])
    fresh = storage.load_dump(tmp_path / "d")
    with pytest.raises(ms.DataError, match="part-00001.arrow"):
        fresh[HOOKS[0]]
    assert fresh.read_part(0, HOOKS[0]).shape == (10, model.d_model)
    assert fresh.read_part(2, HOOKS[0]).shape == (3, model.d_model)


def test_inputs_and_bad_input(model, tmp_path):
    jl = tmp_path / "in.jsonl"
    jl.write_text('{"text": "a b c"}\n{"nope": 1}\n{"text": "d e"}\n')
    with pytest.raises(ms.DataError, match=r"in.jsonl:2"):
        storage.read_texts(jl)
    assert storage.read_texts(jl, skip_bad_lines=True) == ["a b c", "d e"]
    txt = tmp_path / "in.txt"
    txt.write_text("first prompt\n\nsecond prompt\n")
    assert storage.read_texts(txt) == ["first prompt", "second prompt"]
    csvf = tmp_path / "in.csv"
    csvf.write_text("id,text\n1,hello\n2,world\n")
    assert storage.read_texts(csvf) == ["hello", "world"]
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ms.DataError, match="empty"):
        model.dump(tmp_path / "empty.txt", tmp_path / "e", quiet=True)
    with pytest.raises(ms.StorageError):
        model.dump(["x"], "/dev/null/cannot", quiet=True)
    with pytest.raises(ms.InvalidArgumentError, match="dtype"):
        model.dump(["x"], tmp_path / "f", dtype="int8", quiet=True)
    with pytest.raises(ms.StorageError, match="not a mindscope dump"):
        ms.load_dump(tmp_path)


def test_cli_extract(tmp_path):
    src = tmp_path / "prompts.txt"
    src.write_text("The capital of France is\nParis is in\n")
    out = tmp_path / "dump"
    res = subprocess.run([sys.executable, "-m", "mindscope.cli", "extract", str(src), "--out", str(out),
                          "--names", "blocks.5.hook_resid_post", "--quiet"], capture_output=True, text=True,
                         env={**os.environ})
    assert res.returncode == 0, res.stderr
    d = ms.load_dump(out)
    assert d["blocks.5.hook_resid_post"].shape == (2, 576)


def test_parquet_dump_round_trip_and_readers(model, tmp_path):
    import duckdb
    import pandas as pd
    import polars as pl
    import pyarrow.parquet as pq

    ref = reference(model, TEXTS)
    d = model.dump(TEXTS, tmp_path / "p", names=HOOKS, dtype="float32", part_size=10, quiet=True, format="parquet")
    assert [f.suffix for f in d.part_files()] == [".parquet"] * 3 and d.metadata["file_format"] == "parquet"
    for h in HOOKS:
        # Parts of 10 run in other batches (other padding, other matmul blocking) than the
        # reference: f32 rounding only, a few ulps of the residual's massive activations (~160).
        np.testing.assert_allclose(d[h], ref[h], rtol=2e-6, atol=1e-4)
    np.testing.assert_array_equal(d.prompt_id, np.arange(len(TEXTS)))
    assert list(d["token_text"][:1]) == model.to_str_tokens(ref.tokens[0])[-1:]
    # Every reader sees the same numbers, DuckDB straight from the files.
    files = [str(f) for f in d.part_files()]
    ours = np.asarray(d[HOOKS[1]])
    table = pq.read_table(files[0])
    assert json.loads(table.schema.metadata[b"mindscope"])["hooks"] == HOOKS
    np.testing.assert_array_equal(np.stack(pd.read_parquet(files[0])[HOOKS[1]].to_numpy()), ours[:10])
    np.testing.assert_array_equal(pl.read_parquet(files[1])[HOOKS[1]].to_numpy(), ours[10:20])
    got = duckdb.sql(f"select \"{HOOKS[1]}\" as v from read_parquet({files!r}) order by prompt_id").fetchnumpy()["v"]
    np.testing.assert_array_equal(np.stack(got), ours)
    # float16 Parquet reads back as float16 (pyarrow agrees).
    h = model.dump(TEXTS[:4], tmp_path / "h", names=HOOKS[:1], quiet=True, format="parquet")
    assert h[HOOKS[0]].dtype == np.float16
    np.testing.assert_array_equal(np.stack(pq.read_table(h.part_files()[0]).column(HOOKS[0]).to_numpy(
        zero_copy_only=False)), h[HOOKS[0]])


def test_parquet_damage_and_format_changes_are_refused(model, tmp_path):
    d = model.dump(TEXTS, tmp_path / "p", names=HOOKS[:1], part_size=10, quiet=True, format="parquet")
    bad = d.part_files()[1]
    bad.write_bytes(bad.read_bytes()[:100])
    fresh = storage.load_dump(tmp_path / "p")
    with pytest.raises(ms.DataError, match="part-00001.parquet"):
        fresh[HOOKS[0]]
    assert fresh.read_part(0, HOOKS[0]).shape == (10, model.d_model)
    # Resume recomputes the damaged part; switching format needs overwrite.
    with pytest.warns(UserWarning, match="recomputing part 1"):
        again = model.dump(TEXTS, tmp_path / "p", names=HOOKS[:1], part_size=10, quiet=True, format="parquet",
                           resume=True)
    assert again[HOOKS[0]].shape == (len(TEXTS), model.d_model)
    with pytest.raises(ms.StorageError, match="another model or spec"):
        model.dump(TEXTS, tmp_path / "p", names=HOOKS[:1], part_size=10, quiet=True, format="arrow", resume=True)
    with pytest.raises(ms.InvalidArgumentError, match="format must be one of arrow, parquet"):
        model.dump(TEXTS, tmp_path / "q", names=HOOKS[:1], format="csv")
