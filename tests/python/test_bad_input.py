"""Bad input gets a typed error that says what was wrong, never a silent wrong number, an
untyped exception from inside mindscope, or (from the CLI) a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import mindscope as ms
from mindscope.analysis import PCA, LogisticProbe, RidgeProbe, TruthDirection, auroc, layer_sweep
from mindscope.errors import DataError, InvalidArgumentError, MindscopeError, ShapeError, StorageError


def blobs(n: int = 120, d: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    X = rng.normal(size=(n, d)) + 1.5 * y[:, None] * np.eye(d)[0]
    return X, y


# --- 1. NaN / inf labels and targets ------------------------------------------------------

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_logistic_refuses_non_finite_labels(bad: float):
    X, y = blobs()
    y = y.astype(float)
    y[7] = bad
    with pytest.raises(DataError, match="labels must be finite"):
        LogisticProbe().fit(X, y)
    # An object array with a float NaN among strings, and None, are refused as well.
    labels = np.array(["a", "b"] * 60, dtype=object)
    labels[3] = float("nan")
    with pytest.raises(DataError, match="index 3"):
        LogisticProbe().fit(X, labels)
    labels[3] = None
    with pytest.raises(DataError, match="None"):
        LogisticProbe().fit(X, labels)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_ridge_refuses_non_finite_targets(bad: float):
    X, _ = blobs()
    y = X[:, 0] * 2.0
    y[5] = bad
    with pytest.raises(DataError, match="targets must be finite"):
        RidgeProbe().fit(X, y)
    Y = np.stack([y, y], axis=1)
    with pytest.raises(DataError, match="row 5, column 0"):
        RidgeProbe().fit(X, Y)


def test_non_finite_features_are_refused_everywhere():
    X, y = blobs()
    X[3, 2] = np.nan
    for fit in (lambda: LogisticProbe().fit(X, y), lambda: RidgeProbe().fit(X, y.astype(float)),
                lambda: PCA(2).fit(X), lambda: TruthDirection().fit(X, y)):
        with pytest.raises(DataError, match="row 3, column 2"):
            fit()
    # Prediction runs in numpy: NaN there would silently give NaN scores.
    good, _ = blobs()
    for est in (LogisticProbe().fit(good, y), RidgeProbe().fit(good, y.astype(float)), PCA(2).fit(good)):
        with pytest.raises(DataError, match="must be finite"):
            (est.transform if isinstance(est, PCA) else est.predict)(X)
    with pytest.raises(DataError, match="must be finite"):
        TruthDirection().fit(good, y).score(X)


def test_truth_direction_labels_must_be_zero_or_one():
    X, y = blobs()
    for bad, what in ((np.nan, "labels must be finite"), (0.5, "1 \\(true\\), got 0.5 at index 4"),
                      (2, "1 \\(true\\), got 2.0 at index 4")):
        labels = y.astype(float)
        labels[4] = bad
        with pytest.raises(DataError, match=what):
            TruthDirection().fit(X, labels)
    with pytest.raises(DataError, match="y_true"):
        auroc(np.array([0, 1, np.nan]), [0.1, 0.2, 0.3])
    with pytest.raises(InvalidArgumentError, match="pair"):
        TruthDirection("lat").fit(X, y, pairs=[(0, 1), (-1, 2)])


def test_metrics_refuse_nan_and_mismatched_input():
    from mindscope.analysis import balanced_accuracy, confusion_matrix, great_circle_km, proximity_error, r2_score

    with pytest.raises(DataError, match="y_true contains nan"):
        r2_score([1.0, 2.0, np.nan], [1.0, 2.0, 3.0])
    with pytest.raises(DataError, match="must be numbers"):
        r2_score(["a"], [1.0])
    with pytest.raises(ShapeError):
        balanced_accuracy([1, 2], [1])  # was an IndexError
    with pytest.raises(ShapeError):
        confusion_matrix([1, 2], [1])  # zip() used to drop the unmatched label silently
    with pytest.raises(DataError, match="coordinates must be finite"):
        great_circle_km([[0.0, 0.0]], [[0.0, np.nan]])
    with pytest.raises(DataError, match="coordinates must be finite"):
        proximity_error([[0.0, 0.0], [1.0, 1.0]], [[0.0, np.nan], [1.0, 1.0]])
    X, y = blobs()
    with pytest.raises(InvalidArgumentError, match="class_weight values"):
        LogisticProbe(class_weight={0: "x"}).fit(X, y)


def test_layer_sweep_refuses_nan_labels_and_unknown_params():
    X, y = blobs()
    stack = np.stack([X, X]).astype(np.float32)
    labels = y.astype(float)
    labels[0] = np.nan
    with pytest.raises(DataError, match="labels must be finite"):
        layer_sweep(stack, labels)
    with pytest.raises(DataError, match="targets must be finite"):
        layer_sweep(stack, labels, probe="ridge")
    with pytest.raises(InvalidArgumentError, match="unknown logistic probe parameters \\['alpha'\\]"):
        layer_sweep(stack, y, alpha=3)
    with pytest.raises(DataError, match="single class"):
        layer_sweep(stack, np.zeros(len(y)))


# --- 2. empty and tiny inputs ----------------------------------------------------------------

def test_empty_and_one_row_fits_are_data_errors():
    X, y = blobs()
    for est, yy in ((LogisticProbe(), y), (RidgeProbe(), y.astype(float)), (TruthDirection(), y)):
        for rows in (0, 1):
            with pytest.raises(DataError, match=f"needs at least \\d+ samples \\(rows of X\\), got {rows}"):
                est.fit(X[:rows], yy[:rows])
    with pytest.raises(DataError, match="got 0"):
        PCA(2).fit(X[:0])
    with pytest.raises(DataError, match="at least 1 feature"):
        LogisticProbe().fit(X[:, :0], y)
    with pytest.raises(DataError, match="at least 4 samples"):
        layer_sweep(np.zeros((2, 0, 3)), [])


def test_hyper_parameters_are_checked_not_truncated():
    X, y = blobs()
    with pytest.raises(InvalidArgumentError, match="n_components"):
        PCA(n_components=2.5).fit(X)
    with pytest.raises(InvalidArgumentError, match="C must be a positive number"):
        LogisticProbe(C="big").fit(X, y)
    with pytest.raises(InvalidArgumentError, match="cv"):
        RidgeProbe(cv=1).fit(X, y.astype(float))
    with pytest.raises(DataError, match="convertible to float64"):
        LogisticProbe().fit([["a", "b"], ["c", "d"]], [0, 1])
    with pytest.raises(DataError, match="mutually comparable"):
        LogisticProbe().fit(X[:4], np.array([1, "a", 1, "a"], dtype=object))


# --- 3. features at extreme scales ---------------------------------------------------------

@pytest.mark.parametrize("scale", [1e300, 1e-300, 1e150])
def test_logistic_is_scale_equivariant(scale: float):
    """Standardisation makes the fit scale-free: coef scales by 1/scale, predictions agree.
    (At 1e300 the variance used to overflow to inf, the scale fell back to 1 and coef_ came
    out all zeros.)"""
    X, y = blobs()
    ref = LogisticProbe(tol=1e-8).fit(X, y)
    big = LogisticProbe(tol=1e-8).fit(X * scale, y)
    assert np.all(np.isfinite(big.coef_)) and np.any(big.coef_ != 0)
    np.testing.assert_allclose(big.coef_ * scale, ref.coef_, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(big.intercept_, ref.intercept_, rtol=1e-5, atol=1e-8)
    assert (big.predict(X * scale) == ref.predict(X)).all()


@pytest.mark.parametrize("scale", [1e20, 1e200, 1e300])
def test_unstandardized_logistic_on_huge_features(scale: float):
    """standardize=False on huge raw values returned all-zero coefficients (the gradient
    tolerance was out of reach). The L2 penalty is negligible at such scales, so the fit must
    match an almost unregularised fit on the unscaled data."""
    X, y = blobs()
    ref = LogisticProbe(standardize=False, C=1e12, tol=1e-10).fit(X, y)
    big = LogisticProbe(standardize=False, tol=1e-10).fit(X * scale, y)
    np.testing.assert_allclose(big.coef_ * scale, ref.coef_, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(big.intercept_, ref.intercept_, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("scale", [1e300, 1e-300, 1e150, 1e-150])
def test_ridge_and_pca_are_scale_equivariant(scale: float):
    X, y = blobs()
    t = X @ np.arange(1.0, 7.0)
    ref = RidgeProbe(alphas=1.0).fit(X, t)
    big = RidgeProbe(alphas=1.0).fit(X * scale, t)
    np.testing.assert_allclose(big.coef_ * scale, ref.coef_, rtol=1e-6)
    if abs(np.log10(scale)) > 154:  # the variance (scale^2) is beyond float64: refused
        with pytest.raises(DataError, match="too large or too small for float64"):
            PCA(3).fit(X * scale)
        return
    p_ref, p_big = PCA(3, whiten=True).fit(X), PCA(3, whiten=True).fit(X * scale)
    np.testing.assert_allclose(p_big.components_, p_ref.components_, atol=1e-9)
    np.testing.assert_allclose(p_big.explained_variance_ / scale**2, p_ref.explained_variance_, rtol=1e-9)
    np.testing.assert_allclose(p_big.transform(X * scale), p_ref.transform(X), atol=1e-9)


@pytest.mark.parametrize("method", ["mass_mean", "mass_mean_iid", "logistic", "lat"])
@pytest.mark.parametrize("scale", [1e300, 1e-300])
def test_truth_directions_are_scale_invariant(method: str, scale: float):
    """Used to fail with "the fitted direction is zero" (a squared norm overflowed)."""
    X, y = blobs()
    pairs = [(i + 1, i) for i in range(0, len(y), 2)]  # (true, false)
    ref = TruthDirection(method).fit(X, y, pairs=pairs)
    big = TruthDirection(method).fit(X * scale, y, pairs=pairs)
    np.testing.assert_allclose(big.direction_, ref.direction_, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(big.threshold_ / scale, ref.threshold_, rtol=1e-5, atol=1e-8)


def test_unrepresentable_results_are_refused():
    X, y = blobs()
    # coef ~ 1 / 1e307 underflows below float64's normal range: refused, not returned as 0.
    with pytest.raises(DataError, match="too large or too small for float64"):
        LogisticProbe().fit(X * 1e307, y)


# --- 4. whitening zero-variance components --------------------------------------------------

def test_pca_whiten_refuses_zero_variance_components():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 3)) @ rng.normal(size=(3, 8))  # rank 3 in 8 dimensions
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy divide-by-zero warning either
        with pytest.raises(DataError, match="1 of the 4 requested components have zero variance.*n_components <= 3"):
            PCA(n_components=4, whiten=True).fit(X)
        Z = PCA(n_components=3, whiten=True).fit(X).transform(X)
    assert np.isfinite(Z).all()
    np.testing.assert_allclose(Z.std(axis=0, ddof=1), 1.0, rtol=1e-6)
    assert np.isfinite(PCA(n_components=4).fit(X).transform(X)).all()  # unwhitened: kept, ~0
    with pytest.raises(DataError, match="zero variance"):
        PCA(n_components=1, whiten=True).fit(np.ones((5, 3)))


# --- 5. malformed lie-detector files --------------------------------------------------------

class _FakeModel:
    name = "fake"
    cfg = {"architecture": "llama", "n_layers": 4, "d_model": 3, "vocab_size": 10}


def _detector_json(**changes: object) -> dict:
    good = {"format": "mindscope.lie_detector/1", "layer": 2, "method": "logistic", "threshold": 0.5,
            "direction": [1.0, 0.0, 0.0], "metrics": {},
            "model": ms.LieDetector.model_fingerprint(_FakeModel())}
    good.update(changes)
    return {k: v for k, v in good.items() if v is not ...}


def test_lie_detector_load_good_file(tmp_path: Path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(_detector_json()))
    d = ms.LieDetector.load(path, _FakeModel())
    assert d.layer == 2 and d.direction.tolist() == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("content,match", [
    (json.dumps({"format": "mindscope.lie_detector/1"}), "'layer' must be an integer, got missing"),
    (json.dumps(_detector_json(direction=...)), "'direction' must be a non-empty list"),
    (json.dumps(_detector_json(layer="2")), "'layer' must be an integer, got str"),
    (json.dumps(_detector_json(threshold=None)), "'threshold' must be a finite number"),
    (json.dumps(_detector_json(direction=["x", 1, 2])), "'direction'"),
    (json.dumps(_detector_json(method="magic")), "'method' must be one of"),
    (json.dumps(_detector_json(model="fake")), "'model' must be an object"),
    (json.dumps(_detector_json(metrics=[1])), "'metrics' must be an object"),
    (json.dumps(_detector_json(layer=9)), "does not fit this model"),
    (json.dumps(_detector_json(direction=[1.0, 2.0])), "does not fit this model"),
    (json.dumps([1, 2, 3]), "the JSON is a list, not an object"),
    (b"\xff\xfe{}", "not UTF-8"),
    ("{not json", "not a saved lie detector"),
])
def test_lie_detector_load_malformed(tmp_path: Path, content: str | bytes, match: str):
    path = tmp_path / "d.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError, match=match) as info:
        ms.LieDetector.load(path, _FakeModel())
    assert str(path) in str(info.value)


# --- 6. prompt files -------------------------------------------------------------------------

def test_csv_unterminated_quote_is_a_bad_line(tmp_path: Path):
    from mindscope.storage import read_texts

    path = tmp_path / "p.csv"
    path.write_text('text\nfirst\n"abc\ndef\nghi\n')
    with pytest.raises(DataError, match=r"p\.csv:3: a quoted field opened here is never closed"):
        read_texts(path)
    with pytest.warns(UserWarning, match="skipped lines 3-5"):
        assert read_texts(path, skip_bad_lines=True) == ["first"]
    # A quoted field may legitimately span lines.
    path.write_text('text\n"a\nb"\nc\n')
    assert read_texts(path) == ["a\nb", "c"]
    # Text after a closing quote is malformed too (it used to be glued on silently).
    path.write_text('text\n"abc"x\nok\n')
    with pytest.raises(DataError, match=r"p\.csv:2: malformed CSV line"):
        read_texts(path)
    assert read_texts(path, skip_bad_lines=True) == ["ok"]


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".csv"])
def test_non_utf8_prompt_file(tmp_path: Path, suffix: str):
    from mindscope.storage import read_texts

    path = tmp_path / f"p{suffix}"
    header = {".txt": b"", ".jsonl": b"", ".csv": b"text\n"}[suffix]
    line = {".txt": b"hello\n", ".jsonl": b'{"text": "hello"}\n', ".csv": b"hello\n"}[suffix]
    path.write_bytes(header + line + b"caf\xe9\n")
    first_bad = 2 + (suffix == ".csv")
    byte = len(header) + len(line) + 3
    with pytest.raises(DataError, match=f"p\\{suffix}:{first_bad}: not UTF-8 text \\(byte {byte} "):
        read_texts(path)


def test_txt_crlf_lines_lose_the_carriage_return(tmp_path: Path):
    from mindscope.storage import read_texts

    path = tmp_path / "p.txt"
    path.write_bytes(b"one\r\ntwo\r\n")
    assert read_texts(path) == ["one", "two"]


# --- 8. datasets and experiments: typed errors for wrong argument types ---------------------

def test_datasets_refuse_wrong_argument_types(tmp_path: Path):
    with pytest.raises(InvalidArgumentError, match="n must be an integer"):
        ms.datasets.world_cities(n="x")
    with pytest.raises(InvalidArgumentError, match="seed must be an integer"):
        ms.datasets.world_cities(n=10, seed=1.5)
    with pytest.raises(InvalidArgumentError, match="n_cities"):
        ms.datasets.city_statements(n_cities="5")
    with pytest.raises(DataError, match="labels must be"):
        ms.datasets.Statements(["a", "b"], np.array([1.0, np.nan]), np.arange(2))
    bad = tmp_path / "facts.csv"
    bad.write_bytes(b"statement,label\nok,1\ncaf\xe9,0\n")
    with pytest.raises(DataError, match="facts.csv:3: not UTF-8"):
        ms.datasets.true_false_csv(bad)
    bad.write_text('statement,label\n"unterminated,1\nx,0\n')
    with pytest.raises(DataError, match="malformed CSV"):
        ms.datasets.true_false_csv(bad)
    pos = tmp_path / "pos.jsonl"
    pos.write_text(json.dumps({"text": "Hi", "words": "Hi", "upos": "INTJ"}) + "\n")
    with pytest.raises(DataError, match="lists of strings"):
        ms.datasets.ud_pos(pos)
    with pytest.raises(InvalidArgumentError, match="max_sentences"):
        ms.datasets.ud_pos(pos, max_sentences="all")


def test_splits_refuse_bad_arguments():
    from mindscope.analysis import kfold_indices, train_test_split_indices

    with pytest.raises(InvalidArgumentError, match="n \\(samples to split\\)"):
        train_test_split_indices(1)
    with pytest.raises(InvalidArgumentError, match="test_size"):
        train_test_split_indices(10, test_size="0.2")
    with pytest.raises(DataError, match="5 folds need at least 5 samples"):
        kfold_indices(3, k=5)


def test_experiments_refuse_bad_arguments(model):
    from mindscope.experiments import attribution, logit_lens

    with pytest.raises(InvalidArgumentError, match="k must be an integer"):
        logit_lens(model, "The capital of France is", k="5")
    with pytest.raises(InvalidArgumentError, match="window must be an integer"):
        attribution(model, "The capital of France is", unit="window", window=None)
    with pytest.raises(InvalidArgumentError, match="cities must be a Cities table"):
        ms.experiments.world_map(model, cities=["Paris"] * 20)
    with pytest.raises(InvalidArgumentError, match="prompts and answers must be lists"):
        ms.experiments.confidence(model, "The capital of France is", " Paris")


# --- 7. the command line ---------------------------------------------------------------------

def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mindscope.cli", *args], capture_output=True, text=True,
                          timeout=600)


def assert_clean_error(res: subprocess.CompletedProcess, match: str, code: int = 2) -> None:
    assert res.returncode == code, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("mindscope: error:")]
    assert len(lines) == 1, res.stderr
    assert match in lines[0], res.stderr


@pytest.mark.parametrize("argv,match", [
    (["generate", "hi", "--top-k", "-1"], "argument --top-k: must be an integer >= 1, got -1"),
    (["generate", "hi", "--seed", "-1"], "argument --seed: must be an integer >= 0, got -1"),
    (["generate", "hi", "--top-p", "1.5"], "argument --top-p: must be a number in (0, 1], got 1.5"),
    (["world-map", "--cities", "many"], "argument --cities: must be an integer >= 1, got 'many'"),
    (["run", "/nonexistent/config.toml"], "config file /nonexistent/config.toml does not exist"),
    (["extract", "/nonexistent/prompts.txt", "--out", "/tmp/x"], "/nonexistent/prompts.txt does not exist"),
])
def test_cli_usage_errors(argv: list[str], match: str):
    assert_clean_error(cli(*argv), match)


def test_cli_non_utf8_prompts_file(tmp_path: Path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"hello\ncaf\xe9\n")
    res = cli("extract", str(prompts), "--out", str(tmp_path / "dump"))
    assert_clean_error(res, f"{prompts}:2: not UTF-8 text")
    assert not (tmp_path / "dump").exists()


def test_cli_bad_csv_names_the_flag(tmp_path: Path):
    prompts = tmp_path / "prompts.csv"
    prompts.write_text('text\n"abc\ndef\n')
    res = cli("extract", str(prompts), "--out", str(tmp_path / "dump"))
    assert_clean_error(res, "prompts.csv:2: a quoted field opened here is never closed")
    assert "(pass --skip-bad-lines to skip such lines)" in res.stderr


def test_cli_translates_python_argument_names():
    from mindscope.cli import _for_cli, build_parser

    extract = build_parser().subcommands["extract"]
    msg = "x already holds this dump; pass resume=True to complete it or overwrite=True"
    assert _for_cli(msg, extract) == "x already holds this dump; pass --resume to complete it or --overwrite"


@pytest.mark.parametrize("body,match", [
    ('[experiment]\nname = "world-map"\ncities = "many"\n',
     "[experiment] cities (--cities) must be an integer, got str 'many'"),
    ('[experiment]\nname = "world-map"\ncities = 0\n', "[experiment] cities (--cities) must be an integer >= 1, got 0"),
    ('[experiment]\nname = "world-map"\nseed = -1\n', "seed (--seed) must be an integer >= 0, got -1"),
    ('[experiment]\nname = "world-map"\ntemplate = 3\n', "template (--template) must be a string, got int 3"),
    ('[experiment]\nname = "attribution"\nunit = "sentence"\n', "unit (--unit) must be one of token, word, window"),
    ('[experiment]\nname = "world-map"\ncities = true\n', "must be an integer, got bool True"),
    ('[experiment]\nname = "world-map"\ncitiez = 3\n', "unknown parameters ['citiez'] for 'world-map'"),
    ('[experiment]\nname = "world-map"\n[extra]\nx = 1\n', "unknown top-level keys ['extra']"),
    ('experiment = 3\n', "needs an [experiment] table"),
    ('[experiment\n', "is not valid TOML"),
])
def test_cli_run_validates_the_config(tmp_path: Path, body: str, match: str):
    config = tmp_path / "c.toml"
    config.write_text(body)
    assert_clean_error(cli("run", str(config)), match)


def test_cli_run_non_utf8_config(tmp_path: Path):
    config = tmp_path / "c.toml"
    config.write_bytes(b'[experiment]\nname = "caf\xe9"\n')
    assert_clean_error(cli("run", str(config)), "is not UTF-8 text")


def test_cli_version_and_help_texts():
    from mindscope.cli import build_parser

    res = cli("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"mindscope {ms.__version__}"
    parser = build_parser()
    for name, sub in parser.subcommands.items():
        for action in sub._actions:
            assert action.help, f"mindscope {name} {action.option_strings or action.dest} has no help text"


def test_cli_exit_codes():
    import errno

    from mindscope.cli import _exit_code
    from mindscope.errors import ComputeError, ResourceError

    assert _exit_code(DataError("x")) == 2
    assert _exit_code(FileNotFoundError(errno.ENOENT, "no", "f")) == 2
    assert _exit_code(OSError(errno.ENOSPC, "full")) == 1
    assert _exit_code(ResourceError("x")) == 1 and _exit_code(ComputeError("x")) == 1
    err = StorageError("cannot write")
    err.__cause__ = OSError(errno.ENOSPC, "full")
    assert _exit_code(err) == 1
    assert issubclass(StorageError, MindscopeError) and issubclass(ShapeError, InvalidArgumentError)


def test_cli_bugs_keep_their_traceback(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """Bad input is one line; a bug (InternalError, or an exception mindscope does not expect)
    keeps its traceback so that it can be reported; --debug shows it for every error."""
    from mindscope import cli
    from mindscope.errors import InternalError

    def raising(exc: BaseException):
        def run(args):
            raise exc
        return run

    monkeypatch.setattr(cli, "_cmd_run", raising(InternalError("panic in the core")))
    assert cli.main(["run", "c.toml"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "mindscope: internal error" in err
    monkeypatch.setattr(cli, "_cmd_run", raising(TypeError("a bug")))
    with pytest.raises(TypeError, match="a bug"):
        cli.main(["run", "c.toml"])
    monkeypatch.setattr(cli, "_cmd_run", raising(DataError("bad data")))
    assert cli.main(["run", "c.toml"]) == 2
    assert capsys.readouterr().err == "mindscope: error: bad data\n"
    assert cli.main(["--debug", "run", "c.toml"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.endswith("mindscope: error: bad data\n")
