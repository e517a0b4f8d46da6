"""Progress of long calls: the core reports (done, total) to a Python callable as batches
finish; bars show rate and ETA when forced or interactive and nothing otherwise; raising
KeyboardInterrupt from the callable stops the work and leaves the model usable."""

from __future__ import annotations

import json
import re
import sys
import time
import types

import numpy as np
import pytest

import mindscope as ms
from mindscope import cli, errors, progress
from mindscope.analysis import layer_sweep

PROMPTS = [f"City number {i} lies in the country of" for i in range(48)]
DUR = r"\d+(?:s|m\d\ds|h\d\dm)"  # how the bar writes a duration: 12s, 1m02s, 1h05m


class Recorder:
    """A progress callable that records every (done, total) and the thread it ran on."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []
        self.threads: set[str] = set()

    def __call__(self, done: int, total: int) -> None:
        import threading

        self.calls.append((done, total))
        self.threads.add(threading.current_thread().name)

    def check(self, total: int) -> None:
        assert self.calls, "the callable was never called"
        assert all(t == total for _, t in self.calls), self.calls
        dones = [d for d, _ in self.calls]
        assert dones == sorted(dones), f"not monotone: {dones}"
        assert dones[-1] == total, self.calls
        # Called from the thread that made the call (here the main thread), never a worker.
        assert self.threads == {"MainThread"}, self.threads


def _request(model, prompts, batch_size=4):
    return {"prompts": prompts, "names": ["blocks.3.hook_resid_post"], "positions": "last",
            "stop_at_layer": None, "logits": False, "interventions": None, "batch_size": batch_size}


# --- the core's reports -----------------------------------------------------------------------

def test_a_run_reports_monotone_counts_reaching_the_total(model):
    rec = Recorder()
    _, with_progress, _ = model._native.run(_request(model, PROMPTS), rec)
    rec.check(len(PROMPTS))
    _, without, _ = model._native.run(_request(model, PROMPTS))
    # Reporting does not change what is computed.
    np.testing.assert_array_equal(dict(with_progress)["blocks.3.hook_resid_post"],
                                  dict(without)["blocks.3.hook_resid_post"])


def test_attribution_and_sweep_report_their_units(model):
    ids = model.to_tokens(" ".join(["word"] * 40) + " The capital of France is")
    target = model.to_tokens(" Paris")
    spans = [(i, i + 1) for i in range(len(ids))]
    rec = Recorder()
    model._native.ablation_scores({"prompt_ids": ids, "target_ids": target, "spans": spans, "ablation": "delete",
                                   "replace_id": None, "batch_size": 8, "rows_per_batch": 2048, "naive": False}, rec)
    rec.check(len(spans) + 1)  # the clean sequence and every variant

    rng = np.random.default_rng(0)
    layers = [np.ascontiguousarray(rng.normal(size=(200, 16)).astype(np.float32)) for _ in range(5)]
    y = [int(v) for v in rng.integers(0, 2, 200)]
    rec = Recorder()
    ms._native.logistic_sweep(layers, [(y, 2, None)], list(range(160)), list(range(160, 200)),
                              1.0, 100, 1e-6, True, rec)
    rec.check(5)


def test_gradients_and_patching_report_their_units(model):
    from mindscope.metrics import resolve_metric

    prompts = ["The capital of France is", "The Eiffel Tower is in the city of"]
    spec = resolve_metric(model, ("logprob", " Paris"))
    rec = Recorder()
    metric, _, _, _ = model._native.gradients(
        {"prompts": prompts, "embeddings": None, "metric": json.dumps(spec), "names": ["blocks.0.hook_resid_pre"],
         "interventions": None, "batch_size": 1, "return_activations": False}, rec)
    rec.check(len(prompts) * 2 * model.n_layers)  # a forward and a backward pass per block and prompt
    np.testing.assert_allclose(metric, model.gradients(prompts, ("logprob", " Paris")).metric, rtol=1e-5)

    clean = "When Mary and John went to the store, John gave a drink to"
    corrupt = "When Mary and John went to the store, Mary gave a drink to"
    request = {"clean_ids": model.to_tokens(clean), "corrupt_ids": model.to_tokens(corrupt),
               "metric": resolve_metric(model, ("logit_diff", " Mary", " John")), "sites": ["resid_pre"],
               "naive": False, "rows_per_batch": 64}
    rec = Recorder()
    model._native.activation_patching(json.dumps(request), rec)
    # One unit per patch: every layer at every position from the first differing token (9) on.
    rec.check(model.n_layers * (len(request["corrupt_ids"]) - 9))


def test_a_callable_raising_keyboard_interrupt_stops_the_run_and_the_model_still_works(model):
    many = [f"City number {i} lies in the country of" for i in range(3000)]
    raised_at: list[float] = []

    def stop(done: int, total: int) -> None:
        if done > 0:
            raised_at.append(time.perf_counter())
            raise KeyboardInterrupt

    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        model._native.run(_request(model, many, 8), stop)
    stopped = time.perf_counter()
    assert raised_at, "the callable never saw a finished batch"
    lag = stopped - raised_at[0]
    print(f"KeyboardInterrupt from the progress callable: the run returned {lag:.3f} s later "
          f"({stopped - t0:.2f} s into a run of {len(many)} prompts)")
    # The promise is 1 s (a batch in flight per core finishes its current layer); the bound
    # leaves room for a busy shared machine.
    assert lag < 3.0
    logits = model.run(["The capital of France is"], return_logits="last", progress=False)
    assert model.to_str_tokens([int(np.argmax(logits[0]))]) == [" Paris"]


def test_any_exception_from_the_callable_comes_back_as_itself(model):
    class Mine(Exception):
        pass

    def fail(done: int, total: int) -> None:
        raise Mine("from the progress callable")

    with pytest.raises(Mine, match="from the progress callable"):
        model._native.run(_request(model, PROMPTS[:8]), fail)


# --- what the user sees -----------------------------------------------------------------------

def test_progress_false_and_non_interactive_output_print_nothing(model, capfd):
    model.run_with_cache(PROMPTS, names="blocks.3.hook_resid_post", positions="last", batch_size=4,
                         progress=False)
    model.run_with_cache(PROMPTS, names="blocks.3.hook_resid_post", positions="last", batch_size=4)
    ms.attribution(model, "The capital of France is", " Paris")
    out, err = capfd.readouterr()
    assert out == "" and err == "", (out, err)
    assert progress.shows(False) is False
    assert progress.shows(None) is False  # pytest captures stderr: not a terminal, no Jupyter


def test_a_forced_bar_prints_rate_and_eta(model, capfd):
    model.run_with_cache(PROMPTS * 2, names="blocks.*.hook_resid_post", positions="last", batch_size=2,
                         progress=True)
    _, err = capfd.readouterr()
    lines = [line for line in err.split("\r") if line.strip()]
    assert lines, "a forced bar printed nothing"
    final = lines[-1]
    assert re.search(r"^run: \[#{30}\] 96/96 prompts  \d+\.\d prompts/s  " + DUR + "  ETA 0s", final), final
    assert err.endswith("\n")  # the line is ended when the call returns
    # While the run was going, lines gave a remaining time (a number, not "?").
    assert any(re.search(r"/96 prompts  \d+\.\d prompts/s  " + DUR + r"  ETA " + DUR, line) for line in lines[:-1]), lines


def test_an_interactive_terminal_gets_a_bar_only_for_calls_that_take_a_while(model, capfd, monkeypatch):
    monkeypatch.setattr(progress, "_stderr_is_terminal", lambda: True)
    model.run_with_cache(PROMPTS[:2], names="blocks.3.hook_resid_post", positions="last")
    assert capfd.readouterr().err == ""  # quicker than the half-second delay: no trace
    bar = progress.ProgressBar(10, None, "items", "slow")
    bar.t0 -= 1.0  # as if the work had started a second ago
    bar.update(4)
    bar.close()
    err = capfd.readouterr().err
    assert re.search(r"slow: \[#{12}\.{18}\] 4/10 items  \d+\.\d items/s  1s  ETA 2s", err), err
    assert err.endswith("\n")


def test_jupyter_gets_one_text_line_updated_in_place(monkeypatch, capfd):
    shown: list[str] = []
    updates: list[str] = []

    class Handle:
        def update(self, obj: object) -> None:
            updates.append(repr(obj))  # shown as plain text, without quotes

    def display(obj: object, display_id: bool = False) -> Handle:
        assert display_id is True
        shown.append(repr(obj))
        return Handle()

    fake = types.ModuleType("IPython.display")
    fake.display = display  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython.display", fake)
    monkeypatch.setattr(progress, "_jupyter", lambda: True)
    with progress.native_progress(True, "variants", "attribution") as report:
        assert report is not None
        for done in range(0, 21):
            report(done, 20)
    assert len(shown) == 1, shown  # one display, then updates to it
    assert re.search(r"attribution: \[#{30}\] 20/20 variants  \d+\.\d variants/s", updates[-1]), updates[-1]
    assert capfd.readouterr().err == ""  # nothing on stderr in a notebook


def test_bad_progress_values_are_refused(model):
    with pytest.raises(errors.InvalidArgumentError, match="progress must be True, False or None"):
        model.run(["hello"], progress="yes")
    with pytest.raises(errors.InvalidArgumentError, match="progress must be True, False or None"):
        ms.attribution(model, "The capital of France is", " Paris", progress=1)


def test_experiments_and_sweeps_show_one_bar_per_stage(model, capfd):
    ms.attribution(model, " ".join(["word"] * 30) + " The capital of France is", " Paris", progress=True)
    rng = np.random.default_rng(0)
    acts = rng.normal(size=(4, 120, 8)).astype(np.float32)
    layer_sweep(acts, rng.integers(0, 2, 120), progress=True)
    layer_sweep(acts, rng.normal(size=120), probe="ridge", progress=True)
    err = capfd.readouterr().err
    finals = [chunk.split("\r")[-1].strip() for chunk in err.split("\n") if chunk.strip()]
    assert any(re.match(r"attribution: \[#{30}\] (\d+)/\1 variants", f) for f in finals), finals
    assert sum(bool(re.match(r"layer sweep: \[#{30}\] 4/4 probes", f)) for f in finals) == 2, finals


def test_the_cli_takes_progress_flags(model, tmp_path, capfd):
    args = ["attribution", "--prompt", "The capital of France is", "--target", " Paris", "--out", str(tmp_path)]
    assert cli.main([*args, "--no-progress"]) == 0
    assert capfd.readouterr().err == ""
    assert cli.main([*args, "--progress"]) == 0
    err = capfd.readouterr().err
    assert re.search(r"attribution: \[#{30}\] \d+/\d+ variants", err), err


def test_a_model_load_counts_its_tensors(capfd):
    from conftest import shared_path

    rec = Recorder()
    native = ms._native.Model.load(str(shared_path("models", "tiny", "llama3")), progress=rec)
    assert native.config()["n_layers"] >= 1
    rec.check(rec.calls[-1][1])
    assert len(rec.calls) >= 1
    ms.load_model("smollm2-135m", progress=True)
    err = capfd.readouterr().err
    assert re.search(r"load: \[#{30}\] (\d+)/\1 tensors  \d+\.\d tensors/s", err), err


def test_a_jupyter_kernel_shows_the_bar_as_one_output_updated_in_place(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("import mindscope as ms\nmodel = ms.load_model('smollm2-135m', progress=False)"),
        nbformat.v4.new_code_cell(
            "prompts = [f'City number {i} lies in the country of' for i in range(200)]\n"
            "_ = model.run_with_cache(prompts, names='blocks.*.hook_resid_post', positions='last', batch_size=8)"),
        nbformat.v4.new_code_cell("_ = model.run(['Paris is in'])"),
    ]
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = nb.cells[1].outputs
    # nbclient applies the kernel's display updates to the output they target: one output,
    # holding the last line drawn; nothing went to stderr.
    assert [o.output_type for o in outputs] == ["display_data"], outputs
    text = outputs[0].data["text/plain"]
    assert re.match(r"run: \[#{30}\] 200/200 prompts  \d+\.\d prompts/s  " + DUR + "  ETA 0s$", text), text
    assert nb.cells[2].outputs == []  # a quick call leaves no bar
