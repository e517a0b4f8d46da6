"""Reliability: Ctrl-C stops every long call quickly, captures stay within their memory bound (and
refuse up front what cannot fit), panics arrive as InternalError, and dumps catch tampering."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import mindscope as ms
from conftest import shared_path
from mindscope import errors, storage

# --- Ctrl-C ------------------------------------------------------------------------------

# Each job runs in a child process: the parent waits for "ready", lets the call run, sends
# SIGINT and times how long the child takes to print "interrupted" (KeyboardInterrupt raised
# out of the native call). The child then runs the same model again to show it is intact.
SIGINT_CHILD = textwrap.dedent("""
    import sys, time
    import numpy as np
    import mindscope as ms
    job = sys.argv[1]
    model = ms.load_model("smollm2-135m")
    many = [f"City number {i} lies in the country of" for i in range(4000)]
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20000, 576)).astype(np.float32)
    y = (X[:, 0] + 0.5 * rng.normal(size=20000) > 0).astype(int)
    jobs = {
        "run_with_cache": lambda: model.run_with_cache(many, names="blocks.*.hook_resid_post", positions="last"),
        "generate": lambda: model.generate("Once upon a time", max_new_tokens=4000, stop_at_eos=False),
        "attribution": lambda: [ms.attribution(model, " ".join(["word"] * 200) + " The capital of France is",
                                               " Paris") for _ in range(50)],
        "attribution_progress": lambda: [ms.attribution(model, " ".join(["word"] * 200) + " The capital of France is",
                                                        " Paris", progress=True) for _ in range(50)],
        "run_progress": lambda: model.run_with_cache(many, names="blocks.*.hook_resid_post", positions="last",
                                                     progress=True),
        "logistic": lambda: [ms.analysis.LogisticProbe(C=1e4, max_iter=100000, tol=0).fit(X, y) for _ in range(50)],
        # Repeated like the other jobs: one 30-layer sweep can end within the 2 s before SIGINT.
        "sweep": lambda: [ms.analysis.layer_sweep({f"blocks.{i}.hook_resid_post": X for i in range(30)}, y, C=1e4,
                                                  max_iter=100000, tol=0, progress=True) for _ in range(50)],
        "truth_direction": lambda: [ms.analysis.TruthDirection("lat").fit(X[:4000], y[:4000]) for _ in range(50)],
        # The last block: every layer runs, so 4000 prompts outlast the 4 s before SIGINT (block 3 no
        # longer did once the quantized kernels got faster).
        "dump": lambda: model.dump(many, sys.argv[2], names="blocks.29.hook_resid_post", part_size=64, quiet=True),
    }
    print("ready", flush=True)
    try:
        jobs[job]()
        print("finished", flush=True)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        out = model.generate("The capital of France is", max_new_tokens=3)
        print("after:", out, flush=True)
""")


def _interrupt(job: str, *args: str, delay: float = 2.0) -> tuple[float, list[str]]:
    child = subprocess.Popen([sys.executable, "-c", SIGINT_CHILD, job, *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        first = child.stdout.readline().strip()
        assert first == "ready", child.stderr.read() if child.stderr else first
        time.sleep(delay)
        sent = time.perf_counter()
        child.send_signal(signal.SIGINT)
        line = child.stdout.readline().strip()
        elapsed = time.perf_counter() - sent
        rest, err = child.communicate(timeout=120)
    finally:
        child.kill()
    assert line == "interrupted", f"{job}: got {line!r}; stderr: {err[-800:]}"
    print(f"{job}: KeyboardInterrupt {elapsed:.3f} s after SIGINT")
    assert child.returncode == 0, err[-800:]
    return elapsed, rest.splitlines()


# The promise is 1 s (measured: ~0.05-0.2 s); the bound leaves room for a busy shared machine.
CTRL_C_BOUND_S = 3.0


@pytest.mark.parametrize("job", ["run_with_cache", "generate", "attribution", "logistic", "truth_direction",
                                 "run_progress", "attribution_progress", "sweep"])
def test_ctrl_c_stops_a_long_call_and_the_model_still_works(job):
    elapsed, rest = _interrupt(job)
    assert elapsed < CTRL_C_BOUND_S, f"{job}: KeyboardInterrupt after {elapsed:.2f} s"
    assert rest and rest[0].startswith("after:") and "Paris" in rest[0], rest


def test_ctrl_c_during_a_dump_keeps_its_complete_parts(model_quantized, tmp_path):
    out = tmp_path / "d"
    elapsed, _ = _interrupt("dump", str(out), delay=4.0)
    assert elapsed < CTRL_C_BOUND_S
    partial = storage.load_dump(out, verify=True)  # complete parts only, checksums intact
    parts = partial.metadata["parts"]
    assert parts and len(parts) < 4000 // 64, "the interrupt came before the first or after the last part"
    lo, n = parts[0]["first_prompt"], parts[0]["n_prompts"]
    texts = [f"City number {i} lies in the country of" for i in range(lo, lo + n)]
    # The child loads the model in the GGUF's default mode (quantized), and the dump says so.
    assert partial.metadata["weights"] == "quantized"
    _, ref = model_quantized.run_with_cache(texts, names="blocks.29.hook_resid_post", positions="last",
                                            return_logits=False)
    np.testing.assert_array_equal(partial.read_part(0, "prompt_id"), np.arange(lo, lo + n))
    np.testing.assert_allclose(partial.read_part(0, "blocks.29.hook_resid_post").astype(np.float32),
                               ref["blocks.29.hook_resid_post"], rtol=1e-3, atol=0.05)


# --- panics and error classes ---------------------------------------------------------------

def test_internal_error_is_an_ordinary_exception_of_the_package():
    assert issubclass(errors.InternalError, errors.MindscopeError)
    assert issubclass(errors.InternalError, Exception)
    assert issubclass(errors.ResourceError, errors.MindscopeError)
    assert issubclass(errors.ResourceError, MemoryError)


# --- memory ---------------------------------------------------------------------------------

def test_patterns_of_prompts_of_different_lengths_at_the_last_position(model):
    prompts = ["Hi", "The capital of France is Paris and the capital of Italy is"]
    name = "blocks.2.attn.hook_pattern"
    _, cache = model.run_with_cache(prompts, names=name, positions="last", batch_size=1)
    t = max(len(model.to_tokens(p)) for p in prompts)
    assert cache[name].shape == (2, model.cfg["n_heads"], t)
    for i, p in enumerate(prompts):
        _, alone = model.run_with_cache(p, names=name, positions="last")
        n = len(model.to_tokens(p))
        np.testing.assert_allclose(cache[name][i, :, :n], alone[name][0], atol=1e-6)
        assert (cache[name][i, :, n:] == 0).all()  # keys past the prompt: padding, zero


MEMORY_CHILD = textwrap.dedent("""
    import mindscope as ms
    model = ms.load_model("smollm2-135m")
    model.run_with_cache("warm up", names="blocks.0.hook_resid_post")
    def status(key):  # VmHWM, not ru_maxrss, which Linux carries over from the parent
        return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key + ":"))
    base = status("VmRSS")
    prompts = [f"The city number {i} is located in the country of" for i in range(100)]
    logits, cache = model.run_with_cache(prompts, batch_size=8)
    returned = sum(a.nbytes for a in cache.values()) + logits.nbytes
    print(returned, status("VmHWM") - base)
""")


def test_a_large_capture_holds_the_returned_arrays_plus_one_batch():
    # Every hook at every position of 100 prompts: about 1 GiB returned. Chunks are written into
    # the final arrays as they finish, so the process grows by that plus one batch's working
    # set (it grew by 1.8x the returned bytes when chunks were concatenated at the end).
    res = subprocess.run([sys.executable, "-c", MEMORY_CHILD], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-800:]
    returned, growth = map(int, res.stdout.split())
    assert returned > 900 << 20
    assert growth < returned + (250 << 20), f"grew by {growth / 2**20:.0f} MiB for {returned / 2**20:.0f} MiB returned"


def test_a_capture_that_cannot_fit_is_refused_before_it_starts(model):
    long = " ".join(["word"] * 2000)  # 16 prompts x 2,000 tokens, every pattern: ~ 2 TB
    t0 = time.perf_counter()
    with pytest.raises(ms.ResourceError, match=r'positions="last".*model\.dump') as e:
        model.run_with_cache([long] * 16, names="blocks.*.attn.hook_pattern")
    assert "GiB" in str(e.value) and time.perf_counter() - t0 < 30


def test_memory_limit_from_the_environment_is_respected(tmp_path):
    code = textwrap.dedent("""
        import os
        import mindscope as ms
        m = ms.load_model("smollm2-135m")
        os.environ["MINDSCOPE_MEMORY_LIMIT"] = str(4 << 20)  # read at each call
        m.run_with_cache(["one prompt"], names="blocks.0.hook_resid_post", positions="last")
        try:
            m.run_with_cache(["one prompt"] * 64, names="blocks.*.hook_resid_post")
        except ms.ResourceError as e:
            print("refused:", e)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-800:]
    assert "refused:" in res.stdout and "0.0 GiB of memory is available" in res.stdout, res.stdout


# --- dumps: integrity and containment ---------------------------------------------------------

TEXTS = [f"Fact number {i}: the sky is blue" for i in range(12)]
HOOK = "blocks.2.hook_resid_post"


@pytest.fixture()
def small_dump(model, tmp_path):
    return model.dump(TEXTS, tmp_path / "d", names=HOOK, part_size=5, quiet=True, dtype="float32")


def _flip_a_value(path: Path) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2  # inside the activation column, not the footer
    data[i] ^= 0x40
    path.write_bytes(bytes(data))


def test_manifest_records_checksums_and_verify_catches_a_flipped_value(small_dump, tmp_path):
    parts = small_dump.metadata["parts"]
    assert all(len(p["crc32"]) == 8 for p in parts)
    assert ms.load_dump(tmp_path / "d", verify=True).n_rows == len(TEXTS)
    _flip_a_value(small_dump.part_files()[1])
    storage.load_dump(tmp_path / "d")  # opening does not read the parts
    with pytest.raises(ms.DataError, match=r"part 1 .*part-00001\.arrow.*changed since it was written"):
        ms.load_dump(tmp_path / "d", verify=True)


def test_resume_recomputes_a_tampered_part(model, small_dump, tmp_path):
    clean = np.array(small_dump[HOOK])
    _flip_a_value(small_dump.part_files()[0])
    with pytest.warns(UserWarning, match="recomputing part 0"):
        d = model.dump(TEXTS, tmp_path / "d", names=HOOK, part_size=5, quiet=True, dtype="float32", resume=True)
    np.testing.assert_array_equal(d[HOOK], clean)
    ms.load_dump(tmp_path / "d", verify=True)


def _edit_manifest(folder: Path, edit) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("file", ["../../etc/passwd", "/etc/passwd", "sub/part-00000.arrow", ".."])
def test_a_part_path_outside_the_folder_is_refused(small_dump, tmp_path, file):
    _edit_manifest(tmp_path / "d", lambda m: m["parts"][0].update(file=file))
    with pytest.raises(ms.DataError, match="not a file inside the dump folder"):
        ms.load_dump(tmp_path / "d")


def test_row_counts_are_checked_against_the_parts(small_dump, tmp_path):
    _edit_manifest(tmp_path / "d", lambda m: m["parts"][1].update(rows=7))
    d = ms.load_dump(tmp_path / "d")
    assert d.read_part(0, HOOK).shape == (5, ms.load_model("smollm2-135m").d_model)
    with pytest.raises(ms.DataError, match="holds 5 rows, the manifest records 7"):
        d.read_part(1, HOOK)


@pytest.mark.parametrize("content", [
    b"{", b"\xff\xfe{}", b"[]", b'{"format": "mindscope.dump/1"}',
    b'{"format": "mindscope.dump/1", "hooks": "x", "positions": "last", "dtype": "float32", "n_prompts": 1,'
    b' "part_size": 1, "parts": [], "model": {}}',
    b'{"format": "mindscope.dump/1", "hooks": [], "positions": "last", "dtype": "float32", "n_prompts": 1,'
    b' "part_size": 1, "parts": [{"index": "0"}], "model": {}}',
])
def test_malformed_manifests_are_data_errors(tmp_path, content):
    (tmp_path / "manifest.json").write_bytes(content)
    with pytest.raises(ms.DataError, match="manifest.json"):
        ms.load_dump(tmp_path)


# --- user hook functions ----------------------------------------------------------------------

def test_a_hook_functions_own_exception_comes_back_as_itself(model):
    class Mine(Exception):
        pass

    def chained(act, name):
        try:
            {}["missing"]
        except KeyError as e:
            raise Mine("from my hook") from e

    with pytest.raises(Mine, match="from my hook") as info:
        model.run("Hello", interventions=[("blocks.1.hook_resid_post", chained)])
    assert isinstance(info.value.__cause__, KeyError)
    assert any(entry.name == "chained" for entry in info.traceback)

    def leave(act, name):
        raise SystemExit(3)

    with pytest.raises(SystemExit) as exit_info:
        model.run("Hello", interventions=[("blocks.1.hook_resid_post", leave)])
    assert exit_info.value.code == 3
    assert model.generate("The capital of France is", max_new_tokens=2)  # the model still runs


# --- silent wrong results and untyped errors found by probing -----------------------------------

def test_a_tiny_temperature_is_greedy(model):
    prompt = "The capital of France is"
    assert model.generate(prompt, max_new_tokens=6, temperature=1e-310, seed=1) == \
        model.generate(prompt, max_new_tokens=6, temperature=0.0)


@pytest.mark.parametrize("kwargs, match", [
    ({"max_new_tokens": 2**64 - 1}, "max_new_tokens must be an integer from 0 to"),
    ({"max_new_tokens": -1}, "max_new_tokens"),
    ({"top_k": -1, "temperature": 1.0}, "top_k must be an integer from 1"),
    ({"seed": -1, "temperature": 1.0}, "seed must be an integer from 0"),
    ({"temperature": float("nan")}, "temperature"),
    ({"top_p": float("inf"), "temperature": 1.0}, "top_p"),
])
def test_bad_generation_arguments_are_typed_errors(model, kwargs, match):
    with pytest.raises(errors.InvalidArgumentError, match=match):
        model.generate("Hello", **kwargs)


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_steering_scales_are_refused(model, scale):
    vector = np.ones(model.d_model, np.float32)
    with pytest.raises(errors.InvalidArgumentError, match="finite"):
        model.run("Hello", interventions=[("blocks.0.hook_resid_post", ("add", vector, scale))])


@pytest.mark.parametrize("prompts, kwargs, match", [
    ([[1, -2, 3]], {}, "token ids"),
    ([[1, 10**9, 3]], {}, "out of range"),
    ("Hello", {"stop_at_layer": -1, "return_logits": False}, "stop_at_layer must be an integer"),
    ("lone \ud800 surrogate", {}, "not valid Unicode"),
    (None, {}, "prompts is required"),
    (5, {}, "prompts must be a string"),
    (["ok", None], {}, "prompt 1"),
    (["ok", 3.5], {}, "prompt 1"),
])
def test_bad_prompts_and_ids_are_typed_errors(model, prompts, kwargs, match):
    with pytest.raises(errors.InvalidArgumentError, match=match):
        model.run_with_cache(prompts, names="blocks.0.hook_resid_post", **kwargs)


def test_wide_truth_directions_use_the_dual_and_finish():
    # 20 rows x 5,000 features ran for over 10 minutes through the d x d covariance.
    code = textwrap.dedent("""
        import numpy as np, mindscope as ms
        rng = np.random.default_rng(0)
        X = rng.normal(size=(20, 5000)); y = np.array([0, 1] * 10)
        X[y == 1, :10] += 3.0
        for method in ("mass_mean_iid", "lat"):
            t = ms.analysis.TruthDirection(method).fit(X, y)
            assert np.isfinite(t.direction_).all() and abs(np.linalg.norm(t.direction_) - 1) < 1e-6
            print(method, t.evaluate(X, y)["auroc"])
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-800:]
    aurocs = {line.split()[0]: float(line.split()[1]) for line in res.stdout.splitlines()}
    assert aurocs["mass_mean_iid"] == 1.0 and aurocs["lat"] >= 0.5, aurocs


# --- loading: what the file holds must fit, and the tokenizer must fit the weights ----------

def _tiny_copy(tmp_path: Path, family: str) -> Path:
    src = shared_path("models", "tiny", family)
    dst = tmp_path / family
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).symlink_to(f)
    return dst


def test_weights_that_cannot_fit_are_refused_before_converting(tmp_path, monkeypatch):
    folder = _tiny_copy(tmp_path, "gpt2")
    monkeypatch.setenv("MINDSCOPE_MEMORY_LIMIT", "1000")
    with pytest.raises(ms.ResourceError, match=r"weights take .* GiB as float32, but only 0\.0 GiB"):
        ms.load_model(folder)
    monkeypatch.delenv("MINDSCOPE_MEMORY_LIMIT")
    assert ms.load_model(folder).n_layers == 3


def test_a_tokenizer_larger_than_the_vocabulary_is_refused(tmp_path):
    folder = _tiny_copy(tmp_path, "gpt2")
    tok = json.loads((folder / "tokenizer.json").read_text())
    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    tok["added_tokens"].append({"id": vocab, "content": "<extra>", "single_word": False, "lstrip": False,
                                "rstrip": False, "normalized": False, "special": True})
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(ms.ModelFormatError, match=f"tokenizer has {vocab + 1} tokens .* is {vocab}"):
        ms.load_model(folder)


@pytest.mark.parametrize("kwargs", [{"batch_size": 2.5}, {"part_size": "10"}, {"part_size": 0}, {"batch_size": True}])
def test_dump_sizes_must_be_positive_integers(model, tmp_path, kwargs):
    with pytest.raises(errors.InvalidArgumentError, match="must be an integer of at least 1"):
        model.dump(TEXTS, tmp_path / "d", names=HOOK, quiet=True, **kwargs)
