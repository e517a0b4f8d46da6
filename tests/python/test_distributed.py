"""Corpus extraction on Ray (issue 22): same rows as a local run, exactly once under a killed
actor and a killed driver, resume, errors naming the prompt range, the install message.

The Ray tests share one local Ray instance (2 CPUs, 300 MB object store, no dashboard, bound
to 127.0.0.1), started by a fixture and stopped in its finalizer. Every test is bounded by an
alarm, and every subprocess by a timeout.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import mindscope as ms
from mindscope import distributed, storage
from mindscope.progress import ProgressBar

TEXTS = [f"Fact number {i}: the sky is {'blue' if i % 2 else 'green'}" for i in range(23)]
HOOKS = ["blocks.3.hook_resid_post", "blocks.20.hook_resid_post"]
REPO = Path(__file__).resolve().parents[2]
TEST_SECONDS = 150


@pytest.fixture(autouse=True)
def _bounded():
    """Fail a test that runs longer than TEST_SECONDS instead of hanging CI."""
    def expire(signum, frame):
        raise TimeoutError(f"test ran longer than {TEST_SECONDS} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(TEST_SECONDS)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray instance for this module; its address, for drivers in subprocesses."""
    # Read by Ray when it is imported: keep every Ray process on the loopback interface
    # (Ray otherwise swaps 127.0.0.1 for the machine's routable address).
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        pytest.fail('Ray Data is not installed; these tests need it: pip install "mindscope[ray]" '
                    '(or pip install -e ".[test]")')
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, object_store_memory=300 * 2**20, include_dashboard=False,
             _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def write_corpus(folder: Path, texts: list[str]) -> Path:
    """``texts`` split over a .txt, a .jsonl and a .parquet file whose names sort in order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True)
    a, b = len(texts) // 3, 2 * len(texts) // 3
    (folder / "00.txt").write_text("\n".join(texts[:a]) + "\n", encoding="utf-8")
    (folder / "01.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[a:b]), encoding="utf-8")
    pq.write_table(pa.table({"text": texts[b:]}), folder / "02.parquet")
    (folder / "notes.md").write_text("not a corpus file\n")
    return folder


def cli(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mindscope.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=REPO)


def assert_same_rows(a: ms.Dump, b: ms.Dump) -> None:
    assert a.n_rows == b.n_rows and a.metadata["hooks"] == b.metadata["hooks"]
    for column in ("prompt_id", "position", "token_id", *a.metadata["hooks"]):
        np.testing.assert_array_equal(a[column], b[column], err_msg=column)
    assert list(a["token_text"]) == list(b["token_text"])


# --- local engine (no Ray) ------------------------------------------------------------------

def test_local_extract_writes_the_files_of_model_dump(model, tmp_path):
    a = model.dump(TEXTS, tmp_path / "a", names=HOOKS, part_size=5, quiet=True)
    b = ms.extract("smollm2-135m", TEXTS, tmp_path / "b", names=HOOKS, part_size=5, quiet=True,
                   weights="float32")  # the fixture's mode (the GGUF's default is quantized)
    assert a.metadata["weights"] == b.metadata["weights"] == "float32"
    assert_same_rows(a, b)
    assert [p["file"] for p in b.metadata["parts"]] == [f"part-{k:05d}.arrow" for k in range(5)]
    assert [(p["first_prompt"], p["n_prompts"]) for p in b.metadata["parts"]] == [(0, 5), (5, 5), (10, 5), (15, 5), (20, 3)]
    ms.load_dump(tmp_path / "b", verify=True)
    assert sorted(f.name for f in (tmp_path / "b").iterdir()) == ["manifest.json"] + [f"part-{k:05d}.arrow" for k in range(5)]


def test_folder_corpus_is_read_in_name_order(tmp_path):
    assert storage.read_texts(write_corpus(tmp_path / "c", TEXTS)) == TEXTS
    (tmp_path / "empty").mkdir()
    with pytest.raises(ms.DataError, match="no corpus files"):
        storage.read_texts(tmp_path / "empty")


def test_local_map_blocks_errors_name_the_prompt_range():
    def fn(model, texts, first):
        if first == 4:
            raise ValueError("bad block")
        return len(texts)

    it = ms.map_blocks("smollm2-135m", [(0, 4), (4, 8)], TEXTS, fn, progress=False)
    assert next(it) == (0, 4)
    with pytest.raises(ms.WorkerError, match=r"block 1 \(prompts \[4, 8\)\).*ValueError: bad block") as e:
        next(it)
    assert e.value.prompt_range == (4, 8) and isinstance(e.value.__cause__, ValueError)
    with pytest.raises(ms.InvalidArgumentError, match="threads is for engine='ray'"):
        ms.map_blocks("smollm2-135m", [(0, 4)], TEXTS, fn, threads=2)
    with pytest.raises(ms.InvalidArgumentError, match="within"):
        ms.map_blocks("smollm2-135m", [(0, 99)], TEXTS, fn)


def test_progress_bar_shows_rate_and_eta_on_a_terminal_and_in_jupyter(monkeypatch):
    import io
    import types

    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", Tty())
    bar = ProgressBar(100, on=True)
    bar.t0 -= 2.0  # as if 2 s had passed
    bar.update(40)
    bar.close()
    line = sys.stderr.getvalue()
    assert line.startswith("\r[") and "40/100 prompts" in line and " prompts/s " in line and line.endswith("\n")
    eta = float(line.split("ETA ")[1].split("s")[0])
    assert 2.0 <= eta <= 3.2  # 60 prompts left at ~20/s

    # Jupyter: one display, updated in place (IPython display handles; no widget library).
    shown: list[str] = []

    class Handle:
        def update(self, text):
            shown.append(repr(text))  # shown as plain text

    class ZMQInteractiveShell:
        pass

    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: ZMQInteractiveShell()
    display_mod = types.ModuleType("IPython.display")
    display_mod.display = lambda text, display_id: shown.append(repr(text)) or Handle()
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", display_mod)
    bar = ProgressBar(10, on=True)
    bar.update(5)
    bar.update(5)
    # Displayed at the first draw, then updated (at most every 0.25 s, always at the end).
    assert len(shown) == 2 and "10/10 prompts" in shown[-1] and "ETA 0s" in shown[-1]
    assert ProgressBar(10, on=False).handle is None


def test_engine_ray_without_ray_says_how_to_install(monkeypatch, tmp_path):
    # None in sys.modules makes `import ray` raise ImportError, as if it were not installed.
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ms.InvalidArgumentError, match=r'pip install "mindscope\[ray\]"'):
        ms.extract("smollm2-135m", TEXTS, tmp_path / "d", engine="ray")
    assert not (tmp_path / "d").exists()  # refused before anything was read or written


# --- Ray engine -----------------------------------------------------------------------------

def test_ray_extract_matches_a_local_run_of_the_same_corpus(ray_local, tmp_path):
    corpus = write_corpus(tmp_path / "corpus", TEXTS)
    # The local reference runs with one thread, like each Ray actor here: the core splits a
    # batch into one chunk per thread, and chunk shapes change the float rounding.
    r = cli("extract", str(corpus), "--out", str(tmp_path / "local"), "--names", "blocks.3.hook_resid_post",
            "--part-size", "5", "--quiet", env={"RAYON_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    d = ms.extract("smollm2-135m", corpus, tmp_path / "ray", names="blocks.3.hook_resid_post", part_size=5,
                   quiet=True, engine="ray", workers=2, threads=1)
    assert_same_rows(ms.load_dump(tmp_path / "local"), d)
    ms.load_dump(tmp_path / "ray", verify=True)
    assert [p["index"] for p in d.metadata["parts"]] == [0, 1, 2, 3, 4]
    assert not [f for f in os.listdir(tmp_path / "ray") if f.startswith(".")]  # no temporary files left


def test_ray_map_blocks_reads_a_shared_corpus_and_yields_each_block_once(ray_local, tmp_path):
    corpus = write_corpus(tmp_path / "corpus", TEXTS)
    blocks = [(0, 7), (7, 7), (7, 16), (16, 23)]
    got = dict(ms.map_blocks("smollm2-135m", blocks, None, lambda m, texts, first: (first, texts), corpus=corpus,
                             engine="ray", workers=2, threads=1, progress=False))
    assert got == {i: (lo, TEXTS[lo:hi]) for i, (lo, hi) in enumerate(blocks)}


def test_ray_workers_load_the_weights_mode_of_the_model_given(ray_local, model):
    """A model loaded in float32 is reloaded in float32 on the actors (the spec carries the
    mode), not in the GGUF's default (quantized); a name alone gets that default."""
    blocks = [(0, 5), (5, 10)]
    got = dict(ms.map_blocks(model, blocks, TEXTS, lambda m, texts, first: m.weights, engine="ray", workers=1,
                             progress=False))
    assert got == {0: "float32", 1: "float32"}
    got = dict(ms.map_blocks("smollm2-135m", blocks[:1], TEXTS, lambda m, texts, first: m.weights, engine="ray",
                             workers=1, progress=False))
    assert got == {0: "quantized"}


def test_ray_errors_name_the_prompt_range(ray_local):
    def fn(model, texts, first):
        if first == 10:
            raise KeyError("no such thing")
        return first

    with pytest.raises(ms.WorkerError, match=r"prompts \[10, 15\)\).*KeyError") as e:
        for _ in ms.map_blocks("smollm2-135m", [(0, 5), (5, 10), (10, 15)], TEXTS, fn, engine="ray",
                               workers=1, progress=False):
            pass
    assert e.value.prompt_range == (10, 15) and isinstance(e.value.__cause__, KeyError)
    assert "raise KeyError" in e.value.remote_traceback
    with pytest.raises(ms.WorkerError, match=r"prompts \[0, 5\)\).*loading model 'no-such-model'"):
        list(ms.map_blocks("no-such-model", [(0, 5)], TEXTS, fn, engine="ray", progress=False))


def test_killed_actor_mid_block_gives_each_part_once(ray_local, tmp_path, monkeypatch):
    import ray

    attempts = tmp_path / "attempts"
    attempts.mkdir()

    class KillOnce(distributed._ExtractBlock):
        """Writes its part, then has Ray kill its actor before the result is returned (the
        worst moment: the file is there, the driver has not heard of it); once."""

        def __call__(self, model, texts, first):
            (attempts / f"{first}-{time.time_ns()}").touch()
            entry = super().__call__(model, texts, first)
            marker = attempts / "killed"
            if first == 5 and not marker.exists():
                marker.touch()
                ray.kill(ray.get_runtime_context().current_actor, no_restart=False)
                time.sleep(60)  # dies here; Ray restarts the actor and retries the block
            return entry

    monkeypatch.setattr(distributed, "_ExtractBlock", KillOnce)
    d = ms.extract("smollm2-135m", TEXTS, tmp_path / "d", names=HOOKS, part_size=5, quiet=True,
                   engine="ray", workers=2, threads=1)
    tried = sorted(int(f.name.split("-")[0]) for f in attempts.iterdir() if f.name != "killed")
    assert (attempts / "killed").exists() and tried.count(5) == 2, tried
    assert [p["index"] for p in d.metadata["parts"]] == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(d.prompt_id, np.arange(len(TEXTS)))  # every prompt once
    ms.load_dump(tmp_path / "d", verify=True)


def test_killed_driver_then_resume_computes_only_missing_parts(ray_local, tmp_path):
    corpus = tmp_path / "corpus.txt"
    texts = TEXTS * 4  # 92 prompts, 23 parts of 4
    corpus.write_text("\n".join(texts) + "\n")
    out = tmp_path / "d"
    args = ["extract", str(corpus), "--out", str(out), "--names", "blocks.3.hook_resid_post", "--part-size", "4",
            "--batch-size", "1", "--quiet", "--engine", "ray", "--address", ray_local, "--workers", "1",
            "--threads", "1"]
    driver = subprocess.Popen([sys.executable, "-m", "mindscope.cli", *args], cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        committed: list[dict] = []
        while len(committed) < 2:  # wait for two committed parts, then kill the driver mid-job
            assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the driver committed no parts in 90 s"
            time.sleep(0.2)
            if (out / "manifest.json").exists():
                committed = json.loads((out / "manifest.json").read_text())["parts"]
        driver.kill()
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    manifest = json.loads((out / "manifest.json").read_text())
    kept = {p["file"]: os.stat(out / p["file"]).st_ino for p in manifest["parts"]}
    assert 2 <= len(kept) < 23
    r = cli(*args)
    assert r.returncode != 0 and "pass --resume" in r.stderr  # an unfinished dump is not silently redone
    r = cli(*args, "--resume")
    assert r.returncode == 0, r.stderr
    d = ms.load_dump(out, verify=True)
    assert [p["index"] for p in d.metadata["parts"]] == list(range(23))
    assert {f: os.stat(out / f).st_ino for f in kept} == kept  # kept parts were not rewritten
    np.testing.assert_array_equal(d.prompt_id, np.arange(len(texts)))
    # The same rows as one uninterrupted run (same engine and threads).
    full = ms.extract("smollm2-135m", corpus, tmp_path / "full", names="blocks.3.hook_resid_post", part_size=4,
                      batch_size=1, quiet=True, engine="ray", workers=2, threads=1)
    assert_same_rows(full, d)


def test_ctrl_c_stops_the_ray_job_and_frees_its_actors(ray_local, tmp_path):
    import ray

    started = tmp_path / "started"
    code = f"""
import time, mindscope as ms
def slow(model, texts, first):
    open({str(started)!r}, "a").close()
    time.sleep(120)
try:
    for _ in ms.map_blocks("smollm2-135m", [(0, 5), (5, 10)], {TEXTS!r}, slow, engine="ray",
                           ray_address={ray_local!r}, workers=2, threads=1, progress=False):
        pass
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""
    driver = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while not started.exists():
            assert driver.poll() is None, driver.stderr.read()[-2000:]
            assert time.monotonic() < deadline, "no block started in 90 s"
            time.sleep(0.2)
        assert ray.available_resources().get("CPU", 0) < 2  # the actors hold the cores
        t0 = time.monotonic()
        driver.send_signal(signal.SIGINT)
        out, err = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert "interrupted" in out, err[-2000:]
    assert time.monotonic() - t0 < 30  # not after the 120 s blocks
    deadline = time.monotonic() + 30
    while ray.available_resources().get("CPU", 0) < 2:  # the actors are gone with the job
        assert time.monotonic() < deadline, f"actors still hold CPUs: {ray.available_resources()}"
        time.sleep(0.5)


STATS_KW = dict(names="blocks.3.hook_resid_post", stats=["mean", "cov", "hist", "topk"], range=(-20.0, 20.0), bins=16,
                k=5, block_size=5, progress=False)


def test_corpus_stats_on_ray_equal_a_local_run(ray_local, model, tmp_path):
    # The local reference runs with one thread, like each actor: the same blocks then run the
    # same chunks, so histograms and top-k must agree exactly (mean and covariance up to the
    # float64 rounding of another merge order).
    code = ("import sys, mindscope as ms; from test_distributed import STATS_KW, TEXTS; "
            "ms.corpus_stats('smollm2-135m', TEXTS, **STATS_KW).save(sys.argv[1])")
    env = {**os.environ, "RAYON_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "local.npz")], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-800:]
    local = ms.CorpusStats.load(tmp_path / "local.npz")["blocks.3.hook_resid_post"]
    remote = ms.corpus_stats("smollm2-135m", TEXTS, engine="ray", workers=2, threads=1,
                             **STATS_KW)["blocks.3.hook_resid_post"]
    assert remote["count"] == local["count"] == sum(len(model.to_tokens(t)) for t in TEXTS)
    np.testing.assert_allclose(remote["mean"], local["mean"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(remote["cov"], local["cov"], rtol=1e-10, atol=1e-10)
    for key in ("hist", "hist_underflow", "hist_overflow", "topk_value", "topk_prompt", "topk_position",
                "topk_tokens"):
        np.testing.assert_array_equal(remote[key], local[key], err_msg=key)
