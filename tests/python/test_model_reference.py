"""The Rust forward pass must reproduce Hugging Face transformers on the same GGUF.

Reference: ../shared/reference/smollm2 (transformers 5.23, f32, eager attention).
Tolerances (from the project's issue): logits max |diff| <= 1e-3 at every position; attention
patterns within 1e-4; residual stream within 1e-4 relative. For the residual stream we check the
relative error of each activation vector (||ours - ref|| / ||ref|| per layer and position):
SmolLM2's residual stream carries "massive activations" (|x| up to ~25,000 in one dimension),
so f32 rounding in a different matmul order moves small coordinates of late layers by up to
~8e-4 of their value on the chat prompt, while every vector stays within 2e-5 relative.
"""

from __future__ import annotations

import numpy as np
import pytest


def test_token_ids_equal_reference(model, smollm2_reference):
    for text, ref in smollm2_reference:
        assert model.to_tokens(text) == ref["input_ids"].tolist(), text


@pytest.fixture(scope="module")
def batched(model, smollm2_reference):
    """All three prompts in one right-padded batch, every position, every layer."""
    texts = [t for t, _ in smollm2_reference]
    logits, cache = model.run_with_cache(
        texts, names=["blocks.*.hook_resid_post", "blocks.*.attn.hook_pattern"], positions="all"
    )
    return logits, cache


@pytest.fixture(scope="module")
def single(model, smollm2_reference):
    return [
        model.run_with_cache(t, names=["blocks.*.hook_resid_post", "blocks.*.attn.hook_pattern"], positions="all")
        for t, _ in smollm2_reference
    ]


@pytest.mark.parametrize("mode", ["single", "batched"])
def test_logits_match(mode, single, batched, smollm2_reference):
    for i, (_, ref) in enumerate(smollm2_reference):
        n = len(ref["input_ids"])
        logits = single[i][0][0] if mode == "single" else batched[0][i, :n]
        diff = np.abs(logits - ref["logits"]).max()
        assert diff <= 1e-3, f"prompt {i}: max |dlogit| = {diff}"


@pytest.mark.parametrize("mode", ["single", "batched"])
def test_resid_post_matches(mode, single, batched, smollm2_reference):
    for i, (_, ref) in enumerate(smollm2_reference):
        n = len(ref["input_ids"])
        cache = single[i][1] if mode == "single" else batched[1]
        row = 0 if mode == "single" else i
        ours = cache.stack("hook_resid_post")[:, row, :n]
        want = ref["resid_post"]
        assert ours.shape == want.shape
        vec_rel = np.linalg.norm(ours - want, axis=-1) / np.linalg.norm(want, axis=-1)
        assert vec_rel.max() <= 1e-4, f"prompt {i}: worst vector relative error {vec_rel.max()}"
        elem = np.abs(ours - want) / np.maximum(1.0, np.abs(want))
        # The first 18 layers meet the element-wise 1e-4 bound outright.
        assert elem[:18].max() <= 1e-4, f"prompt {i}: {elem[:18].max()}"
        # Later layers amplify float32 rounding on the chat prompt (prompt 2) to the 1e-3
        # level in any float32 implementation. Measured on an Intel Xeon (AVX-512) against a
        # float64 run of transformers on the same weights: transformers' own float32 runs
        # (eager/sdpa, 1/2 threads, alone or batched) are 5.7e-4 to 9.9e-4 away from it, and
        # transformers' sdpa run in one batch is 1.02e-3 away from this very reference; ours
        # 8.4e-4 to 1.1e-3. Hence 2e-3 here; the per-vector bound above stays at 1e-4.
        assert elem.max() <= 2e-3, f"prompt {i}: worst element relative error {elem.max()}"


@pytest.mark.parametrize("mode", ["single", "batched"])
def test_attention_patterns_match(mode, single, batched, smollm2_reference):
    for i, (_, ref) in enumerate(smollm2_reference):
        n = len(ref["input_ids"])
        cache = single[i][1] if mode == "single" else batched[1]
        row = 0 if mode == "single" else i
        ours = cache.stack("attn.hook_pattern")[:, row, :, :n, :n]
        diff = np.abs(ours - ref["attentions"]).max()
        assert diff <= 1e-4, f"prompt {i}: max |dpattern| = {diff}"


@pytest.mark.parametrize("positions", ["last", "per_prompt", "indices"])
@pytest.mark.parametrize("last_block", [29, 12])
def test_probe_captures_match_reference(model, smollm2_reference, positions, last_block):
    """A capture at chosen positions without logits (what probes ask for): the last block run
    computes its attention output and MLP at the captured rows only, which must not change
    a number. Batched, every layer up to `last_block`, the same bounds as above."""
    import mindscope as ms

    texts = [t for t, _ in smollm2_reference]
    lengths = [len(ref["input_ids"]) for _, ref in smollm2_reference]
    picked = {
        "last": [[n - 1] for n in lengths],
        "per_prompt": [[1], [0], [n - 2 for n in lengths][2:]],
        "indices": [[0, 2]] * len(texts),
    }[positions]
    spec = {
        "last": "last",
        "per_prompt": ms.PerPrompt([p[0] for p in picked]),
        "indices": [0, 2],
    }[positions]
    logits, cache = model.run_with_cache(
        texts,
        names=[f"blocks.{i}.hook_resid_post" for i in range(last_block + 1)],
        positions=spec,
        return_logits=False,
    )
    assert logits is None
    for i, (_, ref) in enumerate(smollm2_reference):
        want = ref["resid_post"][: last_block + 1, picked[i]]
        ours = cache.stack("hook_resid_post")[:, i].reshape(want.shape)
        vec_rel = np.linalg.norm(ours - want, axis=-1) / np.linalg.norm(want, axis=-1)
        assert vec_rel.max() <= 1e-4, f"prompt {i}: worst vector relative error {vec_rel.max()}"
        elem = np.abs(ours - want) / np.maximum(1.0, np.abs(want))
        assert elem[:18].max() <= 1e-4, f"prompt {i}: {elem[:18].max()}"
        assert elem.max() <= 2e-3, f"prompt {i}: worst element relative error {elem.max()}"


def test_padded_positions_are_zero(batched, smollm2_reference):
    _, cache = batched
    n0 = len(smollm2_reference[0][1]["input_ids"])
    resid = cache["blocks.3.hook_resid_post"]
    assert np.all(resid[0, n0:] == 0)
    assert np.all(resid[0, :n0] != 0)


def test_last_position_logprobs(model, smollm2_reference):
    text, ref = smollm2_reference[0]
    logits = model.run(text, return_logits="last")[0]
    logprobs = logits - np.logaddexp.reduce(logits.astype(np.float64))
    assert np.abs(logprobs - ref["logprobs_last"]).max() <= 1e-3
    assert model.to_str_tokens([int(np.argmax(logits))]) == [" Paris"]


def test_last_logits_of_a_padded_batch_match_reference(model, smollm2_reference):
    """Only last-token logits wanted: the last block runs at those rows only."""
    texts = [t for t, _ in smollm2_reference]
    logits = model.run(texts, return_logits="last")
    assert logits.shape == (len(texts), 49152)
    for i, (_, ref) in enumerate(smollm2_reference):
        diff = np.abs(logits[i] - ref["logits"][-1]).max()
        assert diff <= 1e-3, f"prompt {i}: max |dlogit| = {diff}"


def test_greedy_continuation_follows_reference_logits(model, smollm2_reference):
    text, ref = smollm2_reference[0]
    gen = model.generate(text, max_new_tokens=5, temperature=0.0, return_details=True)
    # The first greedy token is the reference's argmax at the last position.
    assert gen.token_ids[0] == int(np.argmax(ref["logits"][-1])) == int(ref["next_token_top5"][0])
    # Each next token is the argmax of a full forward over prompt + generated tokens
    # (KV-cached generation equals uncached forward passes).
    ids = model.to_tokens(text)
    for tok in gen.token_ids:
        logits = model.run([ids], return_logits="last")[0]
        assert int(np.argmax(logits)) == tok
        ids.append(tok)
    assert gen.text.startswith(" Paris")
