"""Streaming corpus statistics (mindscope.stats) against exact computations on a dump of the
same corpus: mean / covariance in float64, top-k by a full sort, histograms by np.histogram,
PCA by scikit-learn; merging in any order; saving; errors."""

from __future__ import annotations

import pickle
import random
import sys
import types

import numpy as np
import pytest

import mindscope as ms
from mindscope.model_spec import ModelSpec
from mindscope.stats import CorpusStats

RESID = "blocks.3.hook_resid_post"
MLP = "blocks.2.mlp.hook_post"
HOOKS = [MLP, RESID]
# 60 prompts of varied lengths (padding in every batch). Prompts 40.. repeat prompts 0..: the
# same prompt gives the same activations, so top-k has exact ties that only the tie-break
# (prompt id, then position) orders.
BASE = [f"Fact {i}: the {'sky' if i % 3 else 'sea'} is <b>{'blue' if i % 2 else 'grey & green'}</b>"
        + " and more" * (i % 5) for i in range(40)]
TEXTS = BASE + BASE[:20]
BATCH = 10
K = 7
RANGE = (-3.0, 3.0)
BINS = 24


@pytest.fixture(scope="module")
def dumped(model, tmp_path_factory):
    """The exact reference: every real token's row, float32, in the same batches as the stats."""
    d = model.dump(TEXTS, tmp_path_factory.mktemp("stats") / "d", names=HOOKS, positions="all", dtype="float32",
                   part_size=30, batch_size=BATCH, quiet=True)
    return {"prompt": d.prompt_id.astype(np.int64), "position": d.position.astype(np.int64),
            "token": d.token_id.astype(np.int64), **{h: np.asarray(d[h], dtype=np.float64) for h in HOOKS}}


@pytest.fixture(scope="module")
def directions(model):
    rng = np.random.default_rng(0)
    return {"truth": rng.normal(size=model.d_model), "other <dir>": rng.normal(size=model.d_model)}


@pytest.fixture(scope="module")
def full(model, directions):
    """corpus_stats over the corpus in blocks of 20 prompts (so the merge path is used)."""
    return ms.corpus_stats(model, TEXTS, names=HOOKS, stats=["mean", "cov", "hist", "topk"], k=K, bins=BINS,
                           range=RANGE, batch_size=BATCH, block_size=20, progress=False,
                           directions={"truth": directions["truth"]}, direction_range=(-40, 40))


def exact_topk(values: np.ndarray, prompt: np.ndarray, position: np.ndarray, k: int):
    """Per column: the k largest values, ties by prompt id then position (a full sort)."""
    order = np.lexsort((np.broadcast_to(position[:, None], values.shape),
                        np.broadcast_to(prompt[:, None], values.shape), -values), axis=0)[:k]
    return (np.take_along_axis(values, order, 0).T, prompt[order].T, position[order].T)


def window_of(dumped, prompt: int, position: int, before=8, after=4):
    rows = dumped["prompt"] == prompt
    toks, pos = dumped["token"][rows], dumped["position"][rows]
    return [int(toks[pos == p][0]) if p in pos else -1 for p in range(position - before, position + after + 1)]


def test_mean_and_covariance_match_float64_over_the_dump(full, dumped):
    for h in HOOKS:
        X = dumped[h]
        r = full[h]
        assert int(r["count"]) == X.shape[0]
        np.testing.assert_allclose(r["mean"], X.mean(axis=0), rtol=1e-5, atol=1e-5 * np.abs(X).max() * 1e-3)
        ref = np.cov(X, rowvar=False)
        scale = np.abs(ref).max()
        np.testing.assert_allclose(r["cov"], ref, rtol=1e-5, atol=1e-5 * scale * 1e-3)
        assert r["cov"].shape == (X.shape[1], X.shape[1])


def test_padding_is_never_counted(full, model):
    lengths = [len(model.to_tokens(t)) for t in TEXTS]
    assert len(set(lengths)) > 3  # the batches really are padded
    assert int(full[RESID]["count"]) == sum(lengths)


def test_topk_identical_to_a_full_sort_with_token_windows(full, dumped):
    ties = 0
    for h in HOOKS:
        value, prompt, position = exact_topk(dumped[h], dumped["prompt"], dumped["position"], K)
        r = full[h]
        np.testing.assert_array_equal(r["topk_value"], value)
        np.testing.assert_array_equal(r["topk_prompt"], prompt)
        np.testing.assert_array_equal(r["topk_position"], position)
        ties += int(np.sum(value[:, 1:] == value[:, :-1]))
        for unit in (0, 17, r["topk_value"].shape[0] - 1):
            for j in range(K):
                assert r["topk_tokens"][unit, j].tolist() == window_of(dumped, prompt[unit, j], position[unit, j])
    assert ties > 0  # the repeated prompts made ties, so the tie-break was exercised


def test_histograms_equal_np_histogram_per_neuron(full, dumped):
    edges = np.linspace(*RANGE, BINS + 1)
    for h in HOOKS:
        X, r = dumped[h], full[h]
        np.testing.assert_array_equal(r["bin_edges"], edges)
        for unit in range(X.shape[1]):
            np.testing.assert_array_equal(r["hist"][unit], np.histogram(X[:, unit], bins=edges)[0])
        np.testing.assert_array_equal(r["hist_underflow"], (X < RANGE[0]).sum(axis=0))
        np.testing.assert_array_equal(r["hist_overflow"], (X > RANGE[1]).sum(axis=0))
        assert (r["hist"].sum(axis=1) + r["hist_underflow"] + r["hist_overflow"] == X.shape[0]).all()


def test_directions_histogram_and_topk(full, dumped, directions):
    X = dumped[RESID]
    proj = X @ directions["truth"][:, None]  # [rows, 1]
    r = full[RESID]
    assert r["direction_names"].tolist() == ["truth"]
    edges = np.linspace(-40, 40, BINS + 1)
    np.testing.assert_array_equal(r["direction_hist"][0], np.histogram(proj[:, 0], bins=edges)[0])
    value, prompt, position = exact_topk(proj, dumped["prompt"], dumped["position"], K)
    np.testing.assert_allclose(r["direction_topk_value"], value, rtol=1e-12)
    np.testing.assert_array_equal(r["direction_topk_prompt"], prompt)
    np.testing.assert_array_equal(r["direction_topk_position"], position)
    # A d_model direction does not apply to mlp.hook_post (width d_mlp): no direction statistics there.
    assert not any(key.startswith("direction") for key in full[MLP])
    with pytest.raises(ms.InvalidArgumentError, match="no direction statistics"):
        full.topk_table(MLP, "truth")


def test_directions_only(model, directions):
    s = ms.corpus_stats(model, TEXTS[:12], names=RESID, stats=["hist", "topk"], range=(-50, 50), k=3,
                        neurons=False, directions=directions, batch_size=BATCH, progress=False)
    r = s[RESID]
    assert "hist" not in r and "topk_value" not in r
    assert r["direction_hist"].shape == (2, 100) and r["direction_topk_value"].shape == (2, 3)
    assert r["direction_names"].tolist() == ["truth", "other <dir>"]
    assert "&lt;dir&gt;" in s.topk_table(RESID, "other <dir>")._repr_html_()
    with pytest.raises(ms.InvalidArgumentError, match="neurons=False"):
        s.topk_table(RESID, 0)


@pytest.fixture(scope="module")
def batch_states(model, directions):
    """One state per batch of 10 prompts, from the same captures (merges compare exactly)."""
    states = []
    for lo in range(0, len(TEXTS), BATCH):
        _, cache = model.run_with_cache(TEXTS[lo:lo + BATCH], names=HOOKS, positions="all", return_logits=False)
        s = CorpusStats(["mean", "cov", "hist", "topk"], k=K, bins=BINS, range=RANGE, directions=directions,
                        direction_range=(-40, 40), model_name=model.name, weights=model.weights)
        states.append(s.update(cache, cache.tokens, lo))
    return states


def assert_same(a: CorpusStats, b: CorpusStats, exact_moments: bool = False):
    assert a.hooks == b.hooks and a.prompt_ranges == b.prompt_ranges
    for h in a.hooks:
        ra, rb = a[h], b[h]
        assert ra.keys() == rb.keys()
        for key in ra:
            if key in ("mean", "cov") and not exact_moments:
                np.testing.assert_allclose(ra[key], rb[key], rtol=1e-10, atol=1e-12 * np.abs(rb[key]).max())
            else:
                np.testing.assert_array_equal(ra[key], rb[key], err_msg=f"{h} {key}")


def test_merge_is_order_independent(batch_states):
    forward = CorpusStats.merged(batch_states)
    backward = CorpusStats.merged(batch_states[::-1])
    rng = random.Random(1)
    tree = list(batch_states)
    while len(tree) > 1:  # random pairwise merges, as workers finishing in any order
        i, j = sorted(rng.sample(range(len(tree)), 2))
        b = tree.pop(j)
        tree[i] = CorpusStats.merged([b, tree[i]])
    assert forward.prompt_ranges == [(0, len(TEXTS))] and forward.n_prompts == len(TEXTS)
    assert_same(forward, backward)
    assert_same(forward, tree[0])
    assert forward.token_texts == {}  # update() alone stores ids; texts come from fill_token_texts


def test_merge_does_not_modify_its_inputs(batch_states):
    before = batch_states[0].to_bytes()
    CorpusStats.merged(batch_states[:3])
    assert batch_states[0].to_bytes() == before


def test_merged_state_equals_the_corpus_stats_run(batch_states, full):
    merged = CorpusStats.merged(batch_states)
    for h in HOOKS:
        for key in ("count", "hist", "topk_value", "topk_prompt", "topk_position", "topk_tokens"):
            np.testing.assert_array_equal(merged[h][key], full[h][key])


def test_merging_overlapping_or_incompatible_states_is_refused(batch_states, model):
    a = CorpusStats.merged(batch_states[:2])
    with pytest.raises(ms.InvalidArgumentError, match="count them twice"):
        a.merge(batch_states[1])
    assert a.prompt_ranges == [(0, 20)]  # unchanged by the refused merge
    other = CorpusStats(["mean"], model_name=model.name)
    with pytest.raises(ms.InvalidArgumentError, match="different options"):
        a.merge(other)
    gpt2 = CorpusStats._from_options(a.options, "gpt2")
    gpt2.update({h: np.zeros((1, 3, a[h]["mean"].size), np.float32) for h in HOOKS}, [[1, 2, 3]], 500)
    with pytest.raises(ms.InvalidArgumentError, match="different models"):
        a.merge(gpt2)


def test_states_of_different_weights_modes_refuse_to_merge(batch_states):
    """Quantized and float32 activations differ by a few percent: their states do not mix."""
    a = CorpusStats.merged(batch_states[:1])
    assert a.weights in ("quantized", "float32")
    other_mode = "float32" if a.weights == "quantized" else "quantized"
    b = CorpusStats.from_bytes(batch_states[1].to_bytes())
    assert b.weights == batch_states[1].weights  # kept by a save and load
    b.weights = other_mode
    with pytest.raises(ms.InvalidArgumentError, match="weights"):
        a.merge(b)
    assert a.prompt_ranges == batch_states[0].prompt_ranges  # unchanged by the refused merge
    with pytest.raises(ms.InvalidArgumentError, match="weights must be"):
        CorpusStats(["mean"], weights="int4")


def test_last_positions_match_run_with_cache(model):
    _, cache = model.run_with_cache(TEXTS, names=RESID, positions="last", return_logits=False)
    X = cache[RESID].astype(np.float64)
    s = ms.corpus_stats(model, TEXTS, names=RESID, stats=["mean", "cov", "topk"], positions="last", k=3,
                        batch_size=BATCH, block_size=25, progress=False)
    r = s[RESID]
    assert int(r["count"]) == len(TEXTS)
    np.testing.assert_allclose(r["mean"], X.mean(0), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(r["cov"], np.cov(X, rowvar=False), rtol=1e-5, atol=1e-9)
    value, prompt, position = exact_topk(X, np.arange(len(TEXTS)), cache.lengths - 1, 3)
    np.testing.assert_array_equal(r["topk_value"], value)
    np.testing.assert_array_equal(r["topk_prompt"], prompt)
    np.testing.assert_array_equal(r["topk_position"], position)


def test_model_by_name_and_mapping_behaviour(model, full):
    by_name = ms.corpus_stats("smollm2-135m", TEXTS[:3], names=RESID, stats="mean", progress=False,
                              weights="float32")  # the fixture's mode (the GGUF's default is quantized)
    by_model = ms.corpus_stats(model, TEXTS[:3], names=RESID, stats="mean", progress=False)
    np.testing.assert_array_equal(by_name[RESID]["mean"], by_model[RESID]["mean"])
    assert by_name.weights == by_model.weights == "float32"  # each state records its weights mode
    quantized = ms.corpus_stats("smollm2-135m", TEXTS[3:5], names=RESID, stats="mean", progress=False)
    assert quantized.weights == "quantized"  # the GGUF's default
    with pytest.raises(ms.InvalidArgumentError, match="quantized and float32|float32 and quantized"):
        quantized.merge(by_model)
    assert RESID in full and "blocks.9.hook_resid_post" not in full and list(full) == HOOKS and len(full) == 2
    assert full == full and full != by_model
    with pytest.raises(KeyError, match="no statistics"):
        full["blocks.9.hook_resid_post"]


def test_pca_from_covariance_matches_scikit_learn_and_mindscope(full, dumped):
    from sklearn.decomposition import PCA as SkPCA

    X = dumped[RESID]
    pca = full.pca(RESID, 5)
    sk = SkPCA(5, svd_solver="full").fit(X)
    np.testing.assert_allclose(pca.explained_variance_, sk.explained_variance_, rtol=1e-6)
    np.testing.assert_allclose(pca.explained_variance_ratio_, sk.explained_variance_ratio_, rtol=1e-6)
    signs = np.sign(np.sum(pca.components_ * sk.components_, axis=1))
    np.testing.assert_allclose(pca.components_, sk.components_ * signs[:, None], atol=1e-6)
    own = ms.analysis.PCA(5).fit(X)
    np.testing.assert_allclose(pca.components_, own.components_, atol=1e-6)  # same sign convention
    np.testing.assert_allclose(pca.transform(X[:4]), own.transform(X[:4]), rtol=1e-6, atol=1e-6)


def test_save_load_and_pickle_round_trip(full, tmp_path, model):
    path = tmp_path / "s.npz"
    full.save(path)
    loaded = CorpusStats.load(path)
    assert_same(loaded, full, exact_moments=True)
    assert loaded.model_name == model.name and loaded.options.same_as(full.options)
    assert loaded.topk_table(RESID, 5) == full.topk_table(RESID, 5)  # token texts travel with the state
    assert "<" not in "".join(r["token"] for r in loaded.topk_table(MLP, 0))  # every id has its text
    assert_same(pickle.loads(pickle.dumps(full)), full, exact_moments=True)
    # A loaded state keeps merging: prompts 60.. are new.
    extra = ms.corpus_stats(model, TEXTS[:10], names=HOOKS, stats=["mean", "cov", "hist", "topk"], k=K, bins=BINS,
                            range=RANGE, batch_size=BATCH, progress=False, direction_range=(-40, 40),
                            directions={"truth": full.options.directions[:, 0]})
    with pytest.raises(ms.InvalidArgumentError, match="count them twice"):
        loaded.merge(extra)  # its prompt ids are 0..9 again


def test_malformed_state_files_give_typed_errors(full, tmp_path):
    with pytest.raises(ms.StorageError):
        CorpusStats.load(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(ms.DataError, match="junk.npz"):
        CorpusStats.load(tmp_path / "junk.npz")
    good = dict(np.load(_saved(full, tmp_path)))
    for name, change in [("missing entry", lambda a: a.pop("h0.m2")),
                         ("wrong shape", lambda a: a.__setitem__("h1.mean", a["h1.mean"][:5])),
                         ("extra entry", lambda a: a.__setitem__("h9.mean", np.zeros(3))),
                         ("bad meta", lambda a: a.__setitem__("meta", np.array("{not json"))),
                         ("wrong format", lambda a: a.__setitem__("meta", np.array('{"format": "x"}')))]:
        arrays = dict(good)
        change(arrays)
        np.savez(tmp_path / "bad.npz", **arrays)
        with pytest.raises(ms.DataError):
            CorpusStats.load(tmp_path / "bad.npz")
        assert name


def _saved(state: CorpusStats, folder) -> str:
    path = folder / "good.npz"
    state.save(path)
    return str(path)


def test_topk_table_records_and_escaped_html(full, dumped):
    table = full.topk_table(RESID, 11)
    r = full[RESID]
    assert len(table) == K and [t["rank"] for t in table] == list(range(1, K + 1))
    assert [t["value"] for t in table] == r["topk_value"][11].tolist()
    assert [t["prompt_id"] for t in table] == r["topk_prompt"][11].tolist()
    html = table._repr_html_()
    assert html.startswith("<table") and html.count("<tr>") == K + 1 and html.count("<mark") == K
    direction = full.topk_table(RESID, "truth")._repr_html_()
    every = "".join(full.topk_table(h, u)._repr_html_() for h in HOOKS for u in range(0, 500, 25))
    assert "&lt;b&gt;" in every + direction and "<b>" not in every + direction  # prompt text is escaped
    assert "CorpusStats" in full._repr_html_() and "<table>" in full._repr_html_()
    assert "[[" in repr(table)
    with pytest.raises(ms.InvalidArgumentError, match="no direction"):
        full.topk_table(RESID, "lies")
    with pytest.raises(ms.InvalidArgumentError, match="out of range"):
        full.topk_table(RESID, 576)


def test_html_escapes_special_characters():
    from mindscope.stats import TopKTable

    t = TopKTable([{"rank": 1, "value": 2.0, "prompt_id": 3, "position": 4, "token": "<script>",
                    "before": "a & b", "after": "\"c\""}], title="<x>")
    out = t._repr_html_()
    assert "<script>" not in out and "&lt;script&gt;" in out and "a &amp; b" in out and "&lt;x&gt;" in out


@pytest.mark.parametrize("kwargs, match", [
    ({"stats": ["mean", "median"]}, "among mean, cov, hist, topk"),
    ({"stats": []}, "among mean, cov, hist, topk"),
    ({"stats": ["hist"]}, "needs range"),
    ({"stats": ["hist"], "range": (1, 1)}, "low < high"),
    ({"stats": ["hist"], "range": "wide"}, "pair"),
    ({"stats": ["topk"], "k": 0}, "k must be"),
    ({"stats": ["hist"], "range": (0, 1), "bins": 0}, "bins must be"),
    ({"positions": "first"}, "positions must be"),
    ({"engine": "spark"}, "engine must be"),
    ({"batch_size": 0}, "batch_size"),
    ({"workers": 2}, 'apply to engine="ray"'),
    ({"stats": ["mean"], "directions": {"d": np.ones(576)}}, "directions are used by"),
    ({"stats": ["topk"], "neurons": False}, "need directions"),
    ({"stats": ["topk"], "directions": {"d": np.ones(576), "e": np.ones(5)}}, "different lengths"),
    ({"stats": ["topk"], "window": (-1, 2)}, "at least 0"),
])
def test_bad_arguments_are_typed_errors(model, kwargs, match):
    with pytest.raises(ms.InvalidArgumentError, match=match):
        ms.corpus_stats(model, TEXTS[:2], names=RESID, progress=False, **kwargs)


def test_run_time_errors(model):
    with pytest.raises(ms.UnknownHookError):
        ms.corpus_stats(model, TEXTS[:2], names="blocks.3.hook_nothing", progress=False)
    with pytest.raises(ms.ShapeError, match="directions have 10 entries but no hook"):
        ms.corpus_stats(model, TEXTS[:2], names=RESID, stats=["topk"], directions={"d": np.ones(10)}, progress=False)
    with pytest.raises(ms.InvalidArgumentError, match="attention patterns"):
        ms.corpus_stats(model, TEXTS[:2], names="blocks.0.attn.hook_pattern", stats=["mean"], progress=False)
    with pytest.raises(ms.DataError, match="empty"):
        ms.corpus_stats(model, [], names=RESID, progress=False)
    with pytest.raises(ms.InvalidArgumentError, match="refused above width 8192"):
        CorpusStats(["cov"]).update({"wide": np.zeros((1, 1, 8193), np.float32)}, [[1]], 0)
    bad = np.zeros((1, 2, 4), np.float32)
    bad[0, 1, 2] = np.nan
    with pytest.raises(ms.DataError, match="prompt 7, position 1"):
        CorpusStats(["mean"]).update({"h": bad}, [[1, 2]], 7)
    with pytest.raises(ms.InvalidArgumentError, match="pca\\(\\) needs"):
        CorpusStats(["mean"]).update({"h": np.ones((1, 2, 4), np.float32)}, [[1, 2]], 0).pca("h")


def test_ray_engine_without_the_extra_is_a_clear_error(model, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails
    with pytest.raises(ms.InvalidArgumentError, match='pip install "mindscope\\[ray\\]"'):
        ms.corpus_stats("smollm2-135m", TEXTS[:2], names=RESID, engine="ray", progress=False)


def test_ray_engine_merges_blocks_in_completion_order(model, monkeypatch, full, directions):
    """A stand-in for mindscope.distributed.map_blocks: runs each block on the model loaded from
    the spec, ships the result through pickle (as ray does) and yields blocks out of order."""
    calls = {}

    def map_blocks(model_spec, blocks, texts, fn, *, engine, ray_address, workers, threads, progress):
        calls.update(spec=model_spec, engine=engine, workers=workers, blocks=list(blocks))
        worker_model = model_spec.load()
        order = list(range(len(blocks)))
        random.Random(3).shuffle(order)
        for i in order:
            lo, hi = blocks[i]
            yield i, pickle.loads(pickle.dumps(fn(worker_model, texts[lo:hi], lo)))

    monkeypatch.setitem(sys.modules, "mindscope.distributed", types.SimpleNamespace(map_blocks=map_blocks))
    s = ms.corpus_stats(model, TEXTS, names=HOOKS, stats=["mean", "cov", "hist", "topk"], k=K, bins=BINS,
                        range=RANGE, batch_size=BATCH, block_size=20, progress=False, engine="ray", workers=3,
                        directions={"truth": directions["truth"]}, direction_range=(-40, 40))
    # The float32 model is reloaded in float32 (not the GGUF's default, quantized).
    assert calls == {"spec": ModelSpec("smollm2-135m", "float32"), "engine": "ray", "workers": 3,
                     "blocks": [(0, 20), (20, 40), (40, 60)]}
    assert_same(s, full)
    assert s.topk_table(RESID, 3) == full.topk_table(RESID, 3)
