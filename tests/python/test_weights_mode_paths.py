"""The weights mode survives every path that loads a model again by name (issue 21): a model
loaded with ``weights="float32"`` and handed to ``map_blocks``, ``extract`` or ``corpus_stats``
is reloaded in float32 by the workers, not in the GGUF's default mode (quantized), which would
give other numbers without a word. Dumps record the mode in their manifest, and resuming a dump
with a model in another mode is refused. The CLI takes ``--weights``.

Local engine here; tests/python/test_distributed.py runs the Ray worker with a float32 model.
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

import mindscope as ms
from mindscope import distributed
from mindscope.cli import main as cli_main
from mindscope.errors import DataError, InvalidArgumentError, StorageError
from mindscope.model_spec import ModelSpec, model_spec

TEXTS = [f"Fact number {i}: the sky is {'blue' if i % 2 else 'green'}" for i in range(7)]
HOOK = "blocks.5.hook_resid_post"


def _weights_of(m, texts, first):
    return m.weights


def _last_resid(m, texts, first):
    _, cache = m.run_with_cache(texts, names=HOOK, positions="last", return_logits=False)
    return cache[HOOK]


# --- the spec --------------------------------------------------------------------------------

def test_spec_of_a_loaded_model_carries_its_mode(model, model_quantized):
    assert model_spec(model) == ModelSpec("smollm2-135m", "float32")
    assert model_spec(model_quantized) == ModelSpec("smollm2-135m", "quantized")
    assert model_spec("smollm2-135m") == ModelSpec("smollm2-135m", None)
    assert model_spec("smollm2-135m", "float32") == ModelSpec("smollm2-135m", "float32")
    spec = pickle.loads(pickle.dumps(model_spec(model)))  # shipped to Ray workers
    assert spec.load().weights == "float32"


def test_spec_refuses_a_mode_other_than_the_loaded_models(model):
    with pytest.raises(InvalidArgumentError, match="weights='float32'.*weights='quantized'"):
        model_spec(model, "quantized")
    with pytest.raises(InvalidArgumentError, match="weights"):
        model_spec("smollm2-135m", "int4")


def test_block_worker_loads_the_specs_mode(model):
    """The Ray actor's constructor (run here in-process): it loads what the spec says."""
    worker = distributed._BlockWorker(model_spec(model), _weights_of, None)
    assert worker.load_error is None and worker.model.weights == "float32"
    default = distributed._BlockWorker(model_spec("smollm2-135m"), _weights_of, None)
    assert default.model.weights == "quantized"


# --- map_blocks ------------------------------------------------------------------------------

def test_map_blocks_local_runs_in_the_mode_asked_for(model):
    blocks = [(0, 3), (3, 7)]
    assert dict(ms.map_blocks(model, blocks, TEXTS, _weights_of, progress=False)) == {0: "float32", 1: "float32"}
    by_name = dict(ms.map_blocks("smollm2-135m", blocks, TEXTS, _weights_of, weights="float32", progress=False))
    assert by_name == {0: "float32", 1: "float32"}
    default = dict(ms.map_blocks("smollm2-135m", blocks, TEXTS, _weights_of, progress=False))
    assert default == {0: "quantized", 1: "quantized"}
    with pytest.raises(InvalidArgumentError, match="quantized"):
        ms.map_blocks(model, blocks, TEXTS, _weights_of, weights="quantized")


def test_map_blocks_float32_rows_are_the_float32_models(model, model_quantized):
    """The numbers, not only the label: blocks run by name in float32 equal the float32 model's,
    and differ from the quantized model's."""
    _, cache = model.run_with_cache(TEXTS, names=HOOK, positions="last", return_logits=False)
    _, cache_q = model_quantized.run_with_cache(TEXTS, names=HOOK, positions="last", return_logits=False)
    got = dict(ms.map_blocks("smollm2-135m", [(0, 7)], TEXTS, _last_resid, weights="float32", progress=False))[0]
    np.testing.assert_allclose(got, cache[HOOK], rtol=0, atol=1e-5 * np.abs(cache[HOOK]).max())
    assert np.abs(got - cache_q[HOOK]).max() > 1e-3 * np.abs(cache[HOOK]).max()


# --- dumps -----------------------------------------------------------------------------------

def test_extract_records_the_mode_and_computes_in_it(model, tmp_path):
    d = ms.extract("smollm2-135m", TEXTS, tmp_path / "f", names=HOOK, part_size=4, dtype="float32", quiet=True,
                   weights="float32")
    assert d.metadata["weights"] == "float32"
    _, cache = model.run_with_cache(TEXTS, names=HOOK, positions="last", return_logits=False)
    np.testing.assert_allclose(d[HOOK], cache[HOOK], rtol=0, atol=1e-5 * np.abs(cache[HOOK]).max())
    # A loaded model's own mode, and the default (quantized for this GGUF), are recorded too.
    assert ms.extract(model, TEXTS, tmp_path / "m", names=HOOK, quiet=True).metadata["weights"] == "float32"
    assert ms.extract("smollm2-135m", TEXTS, tmp_path / "q", names=HOOK, quiet=True).metadata["weights"] == "quantized"


def test_resume_refuses_a_dump_made_in_another_mode(model, model_quantized, tmp_path):
    out = tmp_path / "d"
    model.dump(TEXTS, out, names=HOOK, part_size=4, quiet=True)
    assert json.loads((out / "manifest.json").read_text())["weights"] == "float32"
    with pytest.raises(StorageError, match="weights='float32'.*weights='quantized'"):
        model_quantized.dump(TEXTS, out, names=HOOK, part_size=4, quiet=True, resume=True)
    with pytest.raises(StorageError, match="weights='float32'.*weights='quantized'"):
        ms.extract("smollm2-135m", TEXTS, out, names=HOOK, part_size=4, quiet=True, resume=True)
    # The same mode resumes; overwrite replaces the dump in the new mode.
    assert model.dump(TEXTS, out, names=HOOK, part_size=4, quiet=True, resume=True).metadata["weights"] == "float32"
    d = model_quantized.dump(TEXTS, out, names=HOOK, part_size=4, quiet=True, overwrite=True)
    assert d.metadata["weights"] == "quantized"


def test_resume_refuses_a_dump_that_does_not_record_its_mode(model, tmp_path):
    out = tmp_path / "d"
    model.dump(TEXTS, out, names=HOOK, part_size=4, quiet=True)
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["weights"]  # as written before the mode was recorded
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert ms.load_dump(out)[HOOK].shape == (len(TEXTS), model.d_model)  # still readable
    with pytest.raises(StorageError, match="does not record its weights mode"):
        model.dump(TEXTS, out, names=HOOK, part_size=4, quiet=True, resume=True)


def test_manifest_with_an_unknown_mode_is_refused(model, tmp_path):
    out = tmp_path / "d"
    model.dump(TEXTS, out, names=HOOK, part_size=4, quiet=True)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["weights"] = "int4"
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="'weights' must be one of quantized, float32"):
        ms.load_dump(out)


def test_part_writer_refuses_a_model_in_another_mode(model, model_quantized, tmp_path):
    from mindscope import storage

    spec = storage._spec(model, [HOOK], "last", "float16", len(TEXTS), 4, "arrow")
    writer = storage.PartWriter(tmp_path, spec)
    with pytest.raises(InvalidArgumentError, match="weights='float32'.*weights='quantized'"):
        writer.write(model_quantized, TEXTS[:4], 0, 4)
    assert writer.write(model, TEXTS[:4], 0, 4)["rows"] == 4


# --- corpus statistics -----------------------------------------------------------------------

def test_corpus_stats_loads_a_name_in_the_mode_asked_for(model):
    by_name = ms.corpus_stats("smollm2-135m", TEXTS, names=HOOK, stats=["mean"], weights="float32", progress=False)
    loaded = ms.corpus_stats(model, TEXTS, names=HOOK, stats=["mean"], progress=False)
    np.testing.assert_array_equal(by_name[HOOK]["mean"], loaded[HOOK]["mean"])
    with pytest.raises(InvalidArgumentError, match="quantized"):
        ms.corpus_stats(model, TEXTS, names=HOOK, stats=["mean"], weights="quantized", progress=False)


# --- command line ----------------------------------------------------------------------------

def test_cli_weights_option(tmp_path, capsys):
    assert cli_main(["extract", "--weights", "float32", "--out", str(tmp_path / "d"), "--names", HOOK, "--quiet",
                     str(_corpus(tmp_path))]) == 0
    assert ms.load_dump(tmp_path / "d").metadata["weights"] == "float32"
    # Resuming in the other mode: the library's refusal, with the flag spelled as on the command line.
    assert cli_main(["extract", "--weights", "quantized", "--out", str(tmp_path / "d"), "--names", HOOK, "--quiet",
                     "--resume", str(_corpus(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert "--weights 'float32'" in err and "'quantized'" in err
    with pytest.raises(SystemExit):
        cli_main(["generate", "Hi", "--weights", "int4"])
    assert "invalid choice: 'int4'" in capsys.readouterr().err


def _corpus(folder):
    path = folder / "corpus.txt"
    path.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    return path
