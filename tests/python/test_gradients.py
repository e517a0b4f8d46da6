"""Gradients of a metric with respect to activations, and the methods built on them, against
transformers + torch autograd on SmolLM2 (../shared/reference/gradients/), finite differences
on a tiny model (steered runs), and the bad inputs that must be refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

import mindscope as ms
from mindscope.errors import InvalidArgumentError

from conftest import shared_path

# The bound: max abs error / max abs value per array.
REL = 1e-3


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - want).max() / np.abs(want).max())


@pytest.fixture(scope="module")
def ref():
    folder = shared_path("reference", "gradients")
    meta = json.loads((folder / "smollm2.json").read_text())
    with np.load(folder / "smollm2.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return meta, arrays


@pytest.mark.parametrize("i", [0, 1, 2])
def test_site_gradients_match_torch_autograd(model, ref, i):
    meta, r = ref
    single = meta["singles"][i]
    ids = [int(t) for t in r[f"s{i}_ids"]]
    assert model.to_tokens(single["prompt"]) == ids
    L = model.n_layers
    names = [f"blocks.{l}.hook_{k}" for k in ("resid_pre", "attn_out", "mlp_out") for l in range(L)]
    out = model.gradients([ids], ("logprob", single["target"]), names=names)
    assert abs(out.metric[0] - r[f"s{i}_metric"]) <= 1e-4 * max(1.0, abs(float(r[f"s{i}_metric"])))
    for k in ("resid_pre", "attn_out", "mlp_out"):
        got = np.stack([out.grads[f"blocks.{l}.hook_{k}"][0] for l in range(L)])
        want = r[f"s{i}_grad_{k}"]
        assert got.shape == want.shape
        assert rel_err(got, want) <= REL, (k, rel_err(got, want))


@pytest.mark.parametrize("i", [0, 1, 2])
def test_saliency_input_x_grad_matches_reference(model, ref, i):
    meta, r = ref
    single = meta["singles"][i]
    s = ms.saliency(model, single["prompt"], single["target"])
    assert s.tokens == model.to_str_tokens(single["prompt"])
    assert rel_err(s.input_x_grad, r[f"s{i}_input_x_grad"]) <= REL
    # The embedding is blocks.0.hook_resid_pre on SmolLM2: its gradient norm per token.
    want_norm = np.linalg.norm(r[f"s{i}_grad_resid_pre"][0].astype(np.float64), axis=-1)
    assert rel_err(s.grad_norm, want_norm) <= REL
    assert abs(s.value - r[f"s{i}_metric"]) <= 1e-4 * max(1.0, abs(float(r[f"s{i}_metric"])))


@pytest.mark.parametrize("i", [0, 1, 2])
def test_integrated_gradients_match_reference(model, ref, i):
    meta, r = ref
    single = meta["singles"][i]
    ig = ms.integrated_gradients(model, single["prompt"], single["target"], baseline="zeros", n_steps=32)
    assert rel_err(ig.attributions, r[f"s{i}_ig"]) <= REL, rel_err(ig.attributions, r[f"s{i}_ig"])
    m_x, m_b = r[f"s{i}_ig_endpoints"]
    assert abs(ig.metric_input - m_x) <= 1e-3 * max(1.0, abs(m_x))
    assert abs(ig.metric_baseline - m_b) <= 1e-3 * max(1.0, abs(m_b))
    # The completeness gap, as Captum reports it.
    assert ig.delta == pytest.approx(ig.attributions.sum() - (ig.metric_input - ig.metric_baseline))
    assert ig.attributions_full.shape == (len(ig.tokens), model.d_model)


def test_attribution_patching_matches_reference(model, ref):
    meta, r = ref
    pair = meta["pairs"][0]
    assert model.to_tokens(pair["clean"]) == [int(t) for t in r["p0_clean_ids"]]
    metric = ("logit_diff", pair["a"], pair["b"])
    atp = ms.attribution_patching(model, pair["clean"], pair["corrupt"], metric)
    assert isinstance(atp, ms.SiteScores) and atp.method == "attribution_patching"
    L, T = r["p0_atp_resid_pre"].shape
    assert rel_err(atp.scores["resid_pre"], r["p0_atp_resid_pre"]) <= REL
    assert atp.baseline["clean"] == pytest.approx(float(r["p0_ld_clean"]), abs=2e-3)
    assert atp.baseline["corrupt"] == pytest.approx(float(r["p0_ld_corrupt"]), abs=2e-3)
    for site in ("attn_out", "mlp_out"):
        assert atp.scores[site].shape == (L, T)
    assert atp.scores["head"].shape == (L, model.cfg["n_heads"])
    # attn_out = o_proj(z) is linear without bias in SmolLM2: per layer, the heads' AtP summed
    # equals the attention output's AtP summed over positions.
    np.testing.assert_allclose(atp.scores["head"].sum(1), atp.scores["attn_out"].sum(1),
                               atol=1e-3 * np.abs(atp.scores["attn_out"]).max())
    # AtP approximates activation patching (the reference's ground truth).
    effect = r["p0_patch_resid_pre"] - r["p0_ld_corrupt"]
    assert np.corrcoef(atp.scores["resid_pre"].ravel(), effect.ravel())[0, 1] > 0.8


def test_batched_prompts_of_different_lengths_match_single_runs(model):
    prompts = ["The capital of France is", "A cat sat on the mat and then"]
    both = model.gradients(prompts, ("logprob", " the"), names="blocks.3.hook_mlp_out")
    for b, p in enumerate(prompts):
        one = model.gradients([p], ("logprob", " the"), names="blocks.3.hook_mlp_out")
        g = one.grads["blocks.3.hook_mlp_out"][0]
        t = g.shape[0]
        # float32 sums in another order (a padded batch): the reference bound.
        assert rel_err(both.grads["blocks.3.hook_mlp_out"][b, :t], g) <= REL
        assert np.all(both.grads["blocks.3.hook_mlp_out"][b, t:] == 0)
        assert both.metric[b] == pytest.approx(one.metric[0], abs=1e-4)


@pytest.fixture(scope="module")
def tiny():
    return ms.load_model(shared_path("models", "tiny", "llama3"))


def test_gradient_through_a_steered_run_equals_finite_difference(tiny):
    ids = [5, 17, 300, 42, 9, 120]
    d = tiny.d_model
    rng = np.random.default_rng(0)
    steer = ms.Intervention("blocks.0.hook_resid_post", "add", rng.normal(size=d).astype(np.float32), scale=3.0)
    metric = ("logprob", 7)
    site = "blocks.1.hook_resid_pre"
    out = tiny.gradients([ids], metric, names=site, interventions=[steer], return_activations=True)
    plain = tiny.gradients([ids], metric, names=site)
    assert abs(out.metric[0] - plain.metric[0]) > 1e-3  # the steering matters
    g = out.grads[site][0, 2].astype(np.float64)
    u = g / np.linalg.norm(g)
    step = 1e-2 * float(np.abs(out.activations[site][0, 2]).mean())

    def metric_at(s: float) -> float:
        probe = ms.Intervention(site, "add", u.astype(np.float32), scale=s, positions=[2])
        logits = tiny.run([ids], return_logits="last", interventions=[steer, probe])[0].astype(np.float64)
        return float(logits[7] - logits.max() - np.log(np.exp(logits - logits.max()).sum()))

    fd = (metric_at(step) - metric_at(-step)) / (2 * step)
    assert fd == pytest.approx(np.linalg.norm(g), rel=2e-2)


def test_bad_inputs_are_refused_with_what_was_wrong(model):
    with pytest.raises(InvalidArgumentError, match="not one"):
        model.gradients(["The capital of France is"], ("logprob", " Paris France"))
    with pytest.raises(InvalidArgumentError, match="beyond the prompt"):
        model.gradients(["The capital of France is"], ("logprob", " Paris"), position=5)
    with pytest.raises(InvalidArgumentError, match="same number of tokens"):
        ms.attribution_patching(model, "When Mary and John went", "When Mary went", ("logit_diff", " Mary", " John"))
    with pytest.raises(InvalidArgumentError, match="unknown metric kind"):
        model.gradients(["The capital"], ("probability", " Paris"))
    with pytest.raises(InvalidArgumentError, match="no gradient"):
        model.gradients(["The capital"], ("logprob", " Paris"),
                        interventions=[("blocks.2.hook_resid_pre", lambda a, n: a)])
    with pytest.raises(InvalidArgumentError, match="weights"):
        model.gradients(["The capital"], ("logits_dot", np.ones(5)))
    with pytest.raises(InvalidArgumentError, match="baseline"):
        ms.integrated_gradients(model, "The capital", " Paris", baseline=np.zeros((1, 3)))
    with pytest.raises(InvalidArgumentError, match="n_steps"):
        ms.integrated_gradients(model, "The capital", " Paris", n_steps=0)


@pytest.mark.parametrize("site", ["hook_embed", "blocks.2.hook_resid_pre", "blocks.5.hook_mlp_out"])
def test_gemma3_gradient_equals_finite_difference(gemma, site):
    """Gemma 3: scaled embeddings, sandwich norms, q/k norms, sliding-window layers."""
    ids = gemma.to_tokens("The capital of France is")
    metric = ("logprob", " Paris")
    out = gemma.gradients([ids], metric, names=site, return_activations=True)
    t = len(ids) - 2
    g = out.grads[site][0, t].astype(np.float64)
    u = g / np.linalg.norm(g)
    step = 1e-2 * float(np.abs(out.activations[site][0, t]).mean())
    target = gemma.token_id(" Paris")

    def metric_at(s: float) -> float:
        probe = ms.Intervention(site, "add", u.astype(np.float32), scale=s, positions=[t])
        logits = gemma.run([ids], return_logits="last", interventions=[probe])[0].astype(np.float64)
        return float(logits[target] - logits.max() - np.log(np.exp(logits - logits.max()).sum()))

    assert metric_at(0.0) == pytest.approx(float(out.metric[0]), abs=1e-3)
    fd = (metric_at(step) - metric_at(-step)) / (2 * step)
    assert fd == pytest.approx(np.linalg.norm(g), rel=2e-2)
