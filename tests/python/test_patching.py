"""Activation patching: the reference pair on SmolLM2 against transformers (the exhaustive
resid_pre patching in ../shared/reference/gradients/), the packed fast path against one full
forward per patch (an Action::Replace intervention) for every site on the tiny families, the
plots, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

import mindscope as ms
from mindscope.errors import InvalidArgumentError

from conftest import shared_path

SITES = ("resid_pre", "attn_out", "mlp_out", "head")


@pytest.fixture(scope="module")
def reference():
    folder = shared_path("reference", "gradients")
    meta = json.loads((folder / "smollm2.json").read_text())
    with np.load(folder / "smollm2.npz") as z:
        arrays = {k: z[k] for k in z.files if k.startswith("p0_")}
    return meta["pairs"][0], arrays


def test_reference_pair_matches_transformers(model, reference):
    pair, ref = reference
    scores = ms.activation_patching(model, pair["clean"], pair["corrupt"], ("logit_diff", pair["a"], pair["b"]),
                                    sites="resid_pre")
    assert model.to_tokens(pair["clean"]) == ref["p0_clean_ids"].tolist()
    assert model.to_tokens(pair["corrupt"]) == ref["p0_corrupt_ids"].tolist()
    assert abs(scores.baseline["clean"] - float(ref["p0_ld_clean"])) < 1e-3
    assert abs(scores.baseline["corrupt"] - float(ref["p0_ld_corrupt"])) < 1e-3
    got, want = scores.scores["resid_pre"], ref["p0_patch_resid_pre"]
    assert got.shape == want.shape == (30, len(ref["p0_clean_ids"]))
    err = np.abs(got - want).max()
    assert err < 1e-3, f"max |patched LD - transformers| = {err:.2e}"
    # Not a trivial match: patching restores much of the clean LD somewhere, nothing elsewhere.
    effect = want - float(ref["p0_ld_corrupt"])
    assert np.abs(effect).max() > 1.0 and (np.abs(effect) < 1e-4).sum() > 100
    assert scores.tokens == model.to_str_tokens(pair["clean"])
    assert scores.method == "activation_patching"


@pytest.fixture(scope="module")
def tiny_models():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = ms.load_model(shared_path("models", "tiny", name))
        return cache[name]

    return get


# sequential (llama3), parallel residual (pythia), learned positions (gpt2), a sliding window
# of 6 (mistral), q/k norms (qwen3).
@pytest.mark.parametrize("family", ["llama3", "pythia", "gpt2", "mistral", "qwen3"])
def test_fast_path_equals_one_forward_per_patch(tiny_models, family):
    m = tiny_models(family)
    vocab = m.cfg["vocab_size"] if "vocab_size" in m.cfg else m.embedding_matrix().shape[0]
    rng = np.random.default_rng(0)
    corrupt = rng.integers(3, min(vocab, 200), size=11).tolist()
    clean = list(corrupt)
    clean[3], clean[7] = (clean[3] + 1) % vocab, (clean[7] + 5) % vocab
    metrics = [
        (("logit_diff", 5, 9), None),
        (("logprob", 11), 8),  # a metric position before the end: later positions are not run
        (("logits_dot", rng.normal(size=vocab).astype(np.float32)), None),
    ]
    for metric, position in metrics:
        fast = ms.activation_patching(m, clean, corrupt, metric, sites=SITES, position=position)
        # Many small packs (one per core) give the same numbers as one.
        packs = ms.activation_patching(m, clean, corrupt, metric, sites=SITES, position=position, rows_per_batch=5)
        for site in SITES:
            scale = max(1.0, float(np.abs(fast.scores[site]).max()))
            np.testing.assert_allclose(packs.scores[site], fast.scores[site], rtol=0, atol=1e-5 * scale)
        naive = ms.activation_patching(m, clean, corrupt, metric, sites=SITES, position=position, naive=True)
        assert fast.baseline == pytest.approx(naive.baseline, abs=1e-5)
        n_layers, heads = fast.scores["head"].shape
        for site in SITES:
            a, b = fast.scores[site], naive.scores[site]
            assert a.shape == b.shape == ((n_layers, heads) if site == "head" else (n_layers, len(clean)))
            scale = max(1.0, float(np.abs(b).max()))
            assert np.abs(a - b).max() < 1e-4 * scale, (family, metric[0], site, np.abs(a - b).max())
            # The patches matter somewhere (the comparison is not of constants).
            assert np.abs(b - naive.baseline["corrupt"]).max() > 1e-3 * scale, (family, site)
        # Before the first changed token and after the metric position nothing changes.
        resid = fast.scores["resid_pre"]
        assert np.all(resid[:, :3] == fast.baseline["corrupt"])
        if position is not None:
            assert np.all(resid[:, position + 1:] == fast.baseline["corrupt"])


def test_sites_subset_and_identical_prompts(tiny_models):
    m = tiny_models("llama3")
    ids = [5, 6, 7, 8, 9]
    s = ms.activation_patching(m, ids, ids, ("logprob", 4), sites=["head", "mlp_out"])
    assert list(s.scores) == ["head", "mlp_out"]
    for v in s.scores.values():
        assert np.all(v == s.baseline["corrupt"])
    assert s.baseline["clean"] == s.baseline["corrupt"]


def test_bad_input_is_refused_with_what_was_wrong(model, tiny_models):
    m = tiny_models("llama3")
    a, b = [5, 6, 7, 8, 9], [5, 6, 17, 8, 9]
    with pytest.raises(InvalidArgumentError, match=r"position 5 is beyond the prompt, which has 5 tokens"):
        ms.activation_patching(m, a, b, ("logprob", 4), position=5)
    with pytest.raises(InvalidArgumentError, match=r"same number of tokens.*clean has 5.*corrupt has 6"):
        ms.activation_patching(m, a, b + [3], ("logprob", 4))
    with pytest.raises(InvalidArgumentError, match=r"same number of tokens.*clean has \d+.*corrupt has \d+"):
        ms.activation_patching(model, "When Mary and John went", "When Mary went", ("logprob", " the"))
    with pytest.raises(InvalidArgumentError, match=r"'neurons' is not known; allowed: 'resid_pre'"):
        ms.activation_patching(m, a, b, ("logprob", 4), sites=["resid_pre", "neurons"])
    with pytest.raises(InvalidArgumentError, match="no patching sites"):
        ms.activation_patching(m, a, b, ("logprob", 4), sites=[])
    with pytest.raises(InvalidArgumentError, match="vocabulary"):
        ms.activation_patching(m, a, b, ("logit_diff", 4, 10**6))
    with pytest.raises(InvalidArgumentError, match="unknown metric kind 'entropy'"):
        ms.activation_patching(m, a, b, ("entropy",))
    with pytest.raises(InvalidArgumentError, match="rows_per_batch must be at least 1"):
        ms.activation_patching(m, a, b, ("logprob", 4), rows_per_batch=0)


def png_size(path) -> tuple[int, int]:
    data = open(path, "rb").read(24)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_site_scores_plot(tmp_path, tiny_models):
    m = tiny_models("llama3")
    s = ms.activation_patching(m, [5, 6, 7, 8, 9], [5, 6, 17, 8, 9], ("logprob", 4))
    path = s.plot(tmp_path / "all.png")
    assert png_size(path) == (1400, 2 * 420)
    one = s.plot(tmp_path / "head.png", site="head")
    assert png_size(one)[0] == 700
    with pytest.raises(InvalidArgumentError, match="no scores for site"):
        s.plot(tmp_path / "x.png", site="neurons")
    tok = ms.plotting.plot_token_scores(tmp_path / "tok.png", ["a", "b", "c"],
                                        {"saliency": [0.1, -0.2, 0.3], "IG": [1, 2, 3]}, title="t")
    assert png_size(tok)[1] == 260 + 2 * 45
    with pytest.raises(InvalidArgumentError, match="2 scores for 3 tokens"):
        ms.plotting.plot_token_scores(tmp_path / "bad.png", ["a", "b", "c"], [1.0, 2.0])
