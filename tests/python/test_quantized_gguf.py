"""Quantized weights end to end (issue 21): llama GGUF files written with the `gguf` package's
writer (gguf_llama.py), one per quant type, each loaded with ``weights="quantized"`` (blocks kept
as stored, activations rounded to 8 bits per block) and with ``weights="float32"`` (everything
dequantized), and the two runs compared.

The writer is checked first: the all-F32 file of ../shared/models/tiny/llama3 (Q/K permuted
the llama.cpp way, rope_freqs.weight, SentencePiece vocabulary) reproduces transformers' token
ids and logits (../shared/reference/tiny/llama3.npz).

- Block-32 types (q4_0, q4_1, q5_0, q5_1, q8_0) quantize tiny llama3's own weights (hidden 64,
  intermediate 160) with ``gguf.quants.quantize``.
- K-quants (q2_k .. q6_k) work on 256-value super-blocks, so every matrix row must be a multiple
  of 256; tiny llama3's hidden size of 64 cannot hold them. They use a *widened* llama instead:
  the same tokenizer and RoPE, hidden 256, intermediate 512, 4 heads x 64, 2 KV heads, 2 layers,
  random weights from a seeded numpy RNG scaled like tiny llama3's (its initializer_range 0.2 at
  fan-in 64, i.e. std 0.2 * sqrt(64 / fan_in)). gguf 0.19 can only *dequantize* k-quants in numpy,
  so the blocks are encoded in gguf_kquants.py (plain min/max scales, ggml's byte layout), and
  that encoder is checked here against ``gguf.quants.dequantize``, an independent reader.

In every case the float32 run's embedding matrix must equal ``gguf.quants.dequantize`` of the
stored tensor, so "quantized vs float32" compares mindscope's quantized kernels against weights
whose values an independent implementation agrees on.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

import mindscope as ms
from mindscope.errors import InvalidArgumentError, ModelFormatError

from conftest import shared_path
from gguf_kquants import QK_K, quantize_k
from gguf_llama import Llama, load_hf_llama, widened_llama, write_llama_gguf

TINY = "llama3"
BLOCK32_TYPES = ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0"]
K_TYPES = ["q2_k", "q3_k", "q4_k", "q5_k", "q6_k"]

# Prompts of different lengths (the batch test pads the short ones).
PROMPTS = [
    "The city of Paris is in France.",
    "Water boils at 100 degrees",
    "def add(a, b):\n    return a + b",
    "A quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat.",
]

# Bounds for quantized vs float32 mode, per type: (max |delta log p| over every position and
# vocabulary entry, max over layers of the relative difference of resid_post). Measured on these
# prompts (values in the comments: delta log p / resid_post), then about 3x for margin.
# Both modes multiply the same weight values (float32 mode dequantizes the blocks), so what
# differs is the 8-bit rounding of the activations, about the same for every type (the mean
# |delta log p| is 0.03 to 0.05); these random-weight models, whose log p span 15 nats, amplify
# it more than trained ones would.
BOUNDS = {
    "q4_0": (1.4, 0.10),  # 0.459 / 0.034
    "q4_1": (1.0, 0.10),  # 0.341 / 0.031
    "q5_0": (1.5, 0.10),  # 0.489 / 0.033
    "q5_1": (1.0, 0.10),  # 0.340 / 0.032
    "q8_0": (0.9, 0.08),  # 0.312 / 0.025
    "q2_k": (1.6, 0.12),  # 0.541 / 0.038
    "q3_k": (1.3, 0.12),  # 0.440 / 0.041
    "q4_k": (1.1, 0.12),  # 0.370 / 0.039
    "q5_k": (1.1, 0.12),  # 0.378 / 0.039
    "q6_k": (1.5, 0.12),  # 0.486 / 0.041
}


# --- fixtures --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny() -> Llama:
    return load_hf_llama(shared_path("models", "tiny", TINY))


@pytest.fixture(scope="module")
def wide(tiny) -> Llama:
    return widened_llama(tiny)


@pytest.fixture(scope="module")
def gguf_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("quantized_gguf")


@pytest.fixture(scope="module")
def written(tiny, wide, gguf_dir):
    """``written(type_name)`` -> (path, stored tensors), each file written once."""
    cache: dict[str, tuple[Path, dict[str, np.ndarray]]] = {}

    def get(name: str):
        if name not in cache:
            qtype = None if name == "f32" else QT[name.upper()]
            model = wide if name in K_TYPES else tiny
            path = gguf_dir / f"{name}.gguf"
            cache[name] = (path, write_llama_gguf(path, model, qtype))
        return cache[name]

    return get


@pytest.fixture(scope="module")
def runs(written):
    """``runs(type_name)`` -> dict with both loaded models, their logits and resid_post caches
    on PROMPTS (one batch), computed once per type."""
    cache: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in cache:
            path, stored = written(name)
            out = {"path": path, "stored": stored}
            for mode in ("float32", "quantized"):
                model = ms.load_model(path, weights=mode)
                logits, act = model.run_with_cache(PROMPTS, names="blocks.*.hook_resid_post")
                out[mode] = (model, logits, act)
            cache[name] = out
        return cache[name]

    return get


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


# --- the writer is faithful ------------------------------------------------------------------

def test_f32_gguf_of_tiny_llama3_matches_transformers(written):
    """The writer's all-F32 file (permuted Q/K, rope_freqs, SentencePiece vocabulary from
    tokenizer.json) runs as transformers runs the original folder."""
    prompts = json.loads(shared_path("reference", "tiny", "meta.json").read_text())["visible_prompts"]
    with np.load(shared_path("reference", "tiny", f"{TINY}.npz")) as z:
        ref = {k: z[k] for k in z.files}
    path, _ = written("f32")
    model = ms.load_model(path, weights="float32")
    assert model.weights == "float32"
    for i, prompt in enumerate(prompts):
        ids = model.to_tokens(prompt)
        assert ids == ref[f"ids{i}"].tolist(), f"token ids, prompt {i}"
        logits = model.run([ids])[0]
        np.testing.assert_allclose(logits, ref[f"logits{i}"], atol=1e-4, err_msg=f"logits, prompt {i}")


# Relative RMS error of our k-quant encoder, read back by gguf's dequantizer, on N(0, 1) data:
# measured (worst row) q2_k 0.34, q3_k 0.17, q4_k 0.079, q5_k 0.039, q6_k 0.020 -- halving with
# each bit, as it should (gguf's own Q4_1 quantizer: 0.076). Bounds ~1.5x; a wrong bit layout
# gives errors of order 1.
K_ENCODER_ERROR = {"q2_k": 0.5, "q3_k": 0.25, "q4_k": 0.12, "q5_k": 0.06, "q6_k": 0.03}


@pytest.mark.parametrize("name", K_TYPES)
def test_k_quant_blocks_read_back_by_gguf(name):
    """Our k-quant blocks are in ggml's layout: gguf's own dequantizer reads them back as the
    values they encode (a mistake in any bit field would scramble values)."""
    x = np.random.default_rng(5).standard_normal((8, 512)).astype(np.float32)
    x[3] *= 1e-3  # small rows use their scales' range
    x[5, :256] = np.abs(x[5, :256])  # all-positive block: min offset 0
    blocks = quantize_k(x, QT[name.upper()])
    back = gguf.quants.dequantize(blocks, QT[name.upper()])
    assert back.shape == x.shape
    err = np.sqrt(((back - x) ** 2).mean(1) / (x ** 2).mean(1))
    print(f"{name}: encoder relative RMS error per row max {err.max():.4f}")
    assert err.max() < K_ENCODER_ERROR[name], err


# --- each quant type end to end --------------------------------------------------------------

@pytest.mark.parametrize("name", BLOCK32_TYPES + K_TYPES)
def test_float32_mode_reads_the_blocks_as_gguf_does(runs, name):
    """float32 mode dequantizes each matrix to the values gguf's reference dequantizer gives
    (the embedding, read back whole; quantized mode gathers the same rows)."""
    r = runs(name)
    expected = gguf.quants.dequantize(r["stored"]["token_embd.weight"], QT[name.upper()])
    f32_model, q_model = r["float32"][0], r["quantized"][0]
    np.testing.assert_allclose(f32_model.embedding_matrix(), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(q_model.embedding_matrix(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", BLOCK32_TYPES + K_TYPES)
def test_quantized_mode_holds_the_blocks(runs, name):
    """Every matrix is held in the file's type, and the memory is the file's tensor bytes."""
    r = runs(name)
    f32_model, q_model = r["float32"][0], r["quantized"][0]
    n_matrices = 1 + 7 * q_model.n_layers  # the (tied) embedding and seven projections a layer
    assert q_model.weights == "quantized"
    assert q_model.matrix_types() == {name: n_matrices}
    assert f32_model.weights == "float32"
    assert f32_model.matrix_types() == {"f32": n_matrices}
    # What the file stores for the model (rope_freqs.weight is a table, not a weight).
    qtype = QT[name.upper()]
    weights = {k: x for k, x in r["stored"].items() if k != "rope_freqs.weight"}
    stored = sum(x.nbytes for x in weights.values())
    params = sum(math.prod(x.shape if x.dtype == np.float32
                           else gguf.quants.quant_shape_from_byte_shape(x.shape, qtype))
                 for x in weights.values())
    q_bytes, full = q_model.weight_bytes(), f32_model.weight_bytes()
    print(f"{name}: weight_bytes quantized {q_bytes} (file's tensors {stored}), float32 {full} "
          f"({params} parameters), ratio {q_bytes / full:.3f}")
    assert full == 4 * params
    assert abs(q_bytes - stored) <= 0.02 * stored
    # q8_0 is 8.5 bits a weight: at most 0.3 of float32's bytes (norms stay float32).
    assert q_bytes < 0.3 * full


@pytest.mark.parametrize("name", BLOCK32_TYPES + K_TYPES)
def test_quantized_mode_close_to_float32_mode(runs, name):
    """The quantized kernels (8-bit activations against the stored blocks) against float32 on
    the dequantized weights: log-probabilities and every layer's residual stream."""
    r = runs(name)
    _, logits_f, act_f = r["float32"]
    _, logits_q, act_q = r["quantized"]
    assert act_f.tokens == act_q.tokens
    lengths = act_f.lengths
    real = np.arange(logits_f.shape[1])[None, :] < lengths[:, None]  # [batch, pos]
    dlogp_all = np.abs(log_softmax(logits_q) - log_softmax(logits_f))[real]
    dlogp = dlogp_all.max()
    rel = []
    for layer in range(r["float32"][0].n_layers):
        name_ = f"blocks.{layer}.hook_resid_post"
        f, q = act_f[name_][real], act_q[name_][real]
        rel.append(float(np.linalg.norm(q - f) / np.linalg.norm(f)))
    print(f"{name}: max |dlogp| {dlogp:.4g} (mean {dlogp_all.mean():.3g}), resid_post relative difference per layer "
          + ", ".join(f"{x:.3g}" for x in rel))
    bound_logp, bound_resid = BOUNDS[name]
    assert dlogp < bound_logp
    assert max(rel) < bound_resid
    # And quantization is not a no-op: the two modes compute differently.
    assert dlogp > 0


def round_activations(x: np.ndarray, block: int, ties_even: bool) -> np.ndarray:
    """``x`` ``[rows, n]`` rounded to 8 bits as a quantized matmul rounds its activations: per
    ``block`` values ``d = max|x| / 127``, ``q = round(x / d)`` (int8; halves to even in
    mindscope's kernels, away from zero in candle's), the value ``q * d``. Float32 arithmetic,
    ``d`` kept in float32."""
    xb = x.astype(np.float32).reshape(x.shape[0], -1, block)
    d = np.abs(xb).max(-1, keepdims=True) / np.float32(127)
    inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d > 0)
    v = xb * inv
    q = np.rint(v) if ties_even else np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))
    return (q * d).reshape(x.shape)


# The activation rounding of each type: mindscope's kernels (src/kernels/qdot) round blocks of
# 32 for every type they decode; q2_k and q3_k go through candle-core's k_quants, which rounds
# blocks of 256 (Q8_K).
CANDLE_TYPES = ("q2_k", "q3_k")

# How far a projection may be from round_activations' model, relative to max |y|. Measured on
# these prompts: at most 6e-7 (float32 scales and sums in both). Not rounding the activations
# at all is 3.7e-3 to 7.9e-3 away, rounding blocks of 256 instead of 32 about 1.6e-2.
EMULATION_TOLERANCE = 2e-5


@pytest.mark.parametrize("name", BLOCK32_TYPES + K_TYPES)
def test_quantized_projection_is_int8_activations_times_blocks(runs, name):
    """Each quantized projection whose input is hooked (o_proj: ``attn.hook_z`` ->
    ``hook_attn_out``; down_proj: ``mlp.hook_post`` -> ``hook_mlp_out``), against numpy on gguf's
    dequantized weights: (1) within the worst case of rounding the input to 8 bits per block,
    sum_j |W_ij| d_j / 2 -- any round-to-nearest int8 scheme satisfies it, a mis-decoded block
    does not; (2) close to the kernels' activation rounding (``round_activations``), which is
    what they are meant to compute."""
    r = runs(name)
    model, _, _ = r["quantized"]
    block = QK_K if name in CANDLE_TYPES else 32
    _, cache = model.run_with_cache(PROMPTS, names=lambda n: n.endswith(
        ("attn.hook_z", "hook_attn_out", "mlp.hook_post", "hook_mlp_out")), return_logits=False)
    real = np.arange(cache["blocks.0.hook_attn_out"].shape[1])[None, :] < cache.lengths[:, None]
    worst_ratio, emulation_err, unrounded_err = 0.0, 0.0, np.inf
    for layer in range(model.n_layers):
        for matrix, x_hook, y_hook in [("attn_output", "attn.hook_z", "hook_attn_out"),
                                       ("ffn_down", "mlp.hook_post", "hook_mlp_out")]:
            w = gguf.quants.dequantize(r["stored"][f"blk.{layer}.{matrix}.weight"], QT[name.upper()])
            w = w.astype(np.float64)
            x = cache[f"blocks.{layer}.{x_hook}"][real].reshape(int(real.sum()), -1)
            y = cache[f"blocks.{layer}.{y_hook}"][real]
            exact = x.astype(np.float64) @ w.T
            d = np.abs(x.reshape(x.shape[0], -1, block)).max(-1) / 127  # [rows, blocks]
            w_abs = np.abs(w).reshape(w.shape[0], -1, block).sum(-1)  # [out, blocks]
            bound = (d @ w_abs.T) / 2 * 1.01 + 1e-5 * np.abs(exact).max()  # 1 %: float16 scales
            worst_ratio = max(worst_ratio, float((np.abs(y - exact) / bound).max()))
            emulated = round_activations(x, block, name not in CANDLE_TYPES).astype(np.float64) @ w.T
            scale = np.abs(emulated).max()
            emulation_err = max(emulation_err, float(np.abs(y - emulated).max() / scale))
            unrounded_err = min(unrounded_err, float(np.abs(y - exact).max() / scale))
    print(f"{name}: |error| / rounding bound at most {worst_ratio:.3f}; from the modelled activation "
          f"rounding {emulation_err:.2e} of max |y| (from no rounding: {unrounded_err:.2e})")
    assert worst_ratio <= 1.0
    assert emulation_err < EMULATION_TOLERANCE


@pytest.mark.parametrize("name", BLOCK32_TYPES + K_TYPES)
def test_quantized_mode_batch_does_not_change_a_prompt(runs, name):
    """A prompt's logits do not depend on the other prompts of its batch (the 8-bit rounding of
    activations is per row and block, not per batch)."""
    r = runs(name)
    model, logits_batch, act = r["quantized"]
    # A large batch too: 48 prompts (many rows per matmul) in one chunk.
    words = PROMPTS[3].split()
    filler = [" ".join(words[k % 7:k % 7 + 3 + k % 11]) for k in range(44)]
    logits_large = model.run(filler[:20] + PROMPTS + filler[20:], batch_size=64)
    for i, prompt in enumerate(PROMPTS):
        alone = model.run([prompt])[0]
        n = act.lengths[i]
        scale = np.abs(alone[:n]).max()
        np.testing.assert_allclose(logits_batch[i, :n], alone[:n], rtol=0, atol=1e-5 * scale,
                                   err_msg=f"{name}: prompt {i} alone vs in a batch of 4")
        np.testing.assert_allclose(logits_large[20 + i, :n], alone[:n], rtol=0, atol=1e-5 * scale,
                                   err_msg=f"{name}: prompt {i} alone vs in a batch of 48")


# --- refused ---------------------------------------------------------------------------------

def test_quantized_mode_refuses_a_float_folder():
    with pytest.raises(InvalidArgumentError, match="quantized"):
        ms.load_model(shared_path("models", "tiny", TINY), weights="quantized")


def test_unknown_weights_mode_is_refused(written):
    path, _ = written("f32")
    with pytest.raises(InvalidArgumentError, match="float32"):
        ms.load_model(path, weights="int4")


def test_quantized_mode_refuses_a_file_without_quantized_matrices(written):
    path, _ = written("f32")
    with pytest.raises(InvalidArgumentError, match="quantized"):
        ms.load_model(path, weights="quantized")
    # The default picks float32 for it.
    assert ms.load_model(path).weights == "float32"


# Where a block's float16 scale sits: Q8_0's d first; Q4_K's d first; Q6_K's d last (byte 208).
NAN_SCALES = [("q8_0", 0), ("q4_k", 0), ("q6_k", 208)]


@pytest.mark.parametrize("mode", ["quantized", "float32", None])
@pytest.mark.parametrize("name,offset", NAN_SCALES)
def test_nan_block_scale_is_refused_at_load(tiny, wide, gguf_dir, name, offset, mode):
    """A block whose scale is NaN would turn a whole row of outputs into NaN: refused, naming
    the tensor, whichever way the weights are held."""
    path = gguf_dir / f"{name}_nan_scale.gguf"
    if not path.exists():
        write_llama_gguf(path, wide if name in K_TYPES else tiny, QT[name.upper()],
                         nan_scale=("blk.1.ffn_up.weight", offset))
    with pytest.raises(ModelFormatError, match="blk.1.ffn_up.weight"):
        ms.load_model(path, weights=mode)
