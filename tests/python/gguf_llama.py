"""Llama GGUF files as llama.cpp's converter writes them, built with the `gguf` package's
writer from a Hugging Face llama (or random weights): ``llama.*`` hyper-parameters, Q/K rows
permuted per head for llama.cpp's interleaved RoPE, Llama 3 frequency factors as
``rope_freqs.weight``, a SentencePiece vocabulary as ``tokenizer.ggml.*``, matrices in one
quant type. For test_quantized_gguf.py."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT

from gguf_kquants import K_QUANTS, quantize_k


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a .safetensors file as float32 (F32, F16 or BF16 stored)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        data = raw[8 + n + start:8 + n + end]
        if info["dtype"] == "BF16":
            x = (np.frombuffer(data, np.uint16).astype(np.uint32) << 16).view(np.float32)
        elif info["dtype"] == "F16":
            x = np.frombuffer(data, np.float16).astype(np.float32)
        elif info["dtype"] == "F32":
            x = np.frombuffer(data, np.float32)
        else:
            raise AssertionError(f"{name}: dtype {info['dtype']} not handled by this test")
        out[name] = x.reshape(info["shape"]).copy()
    return out


def sentencepiece_vocab(tokenizer_json: dict) -> tuple[list[str], list[float], list[int]]:
    """tokens, scores and token types of a SentencePiece-style BPE ``tokenizer.json``, as GGUF's
    ``llama`` tokenizer model stores them. A GGUF SentencePiece vocabulary has no merge list:
    the merge order is carried by the scores (the pair whose merged piece scores highest merges
    first), so a piece made by merge number r scores -r."""
    model = tokenizer_json["model"]
    assert model["type"] == "BPE" and model["byte_fallback"], "a SentencePiece BPE is expected"
    vocab = model["vocab"]
    tokens = [""] * len(vocab)
    for piece, i in vocab.items():
        tokens[i] = piece
    merged_rank = {}
    for rank, merge in enumerate(model["merges"]):
        left, right = merge if isinstance(merge, list) else merge.split(" ", 1)
        merged_rank.setdefault(left + right, rank)
    special = {t["content"] for t in tokenizer_json["added_tokens"] if t["special"]}
    unk = model["unk_token"]
    scores, types = [], []
    for piece in tokens:
        scores.append(-float(merged_rank.get(piece, len(model["merges"]) if len(piece) > 1 else 0)))
        if piece == unk:
            types.append(gguf.TokenType.UNKNOWN)
        elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            types.append(gguf.TokenType.BYTE)
        elif piece in special:
            types.append(gguf.TokenType.CONTROL)
        else:
            types.append(gguf.TokenType.NORMAL)
    return tokens, scores, [int(t) for t in types]


def llama3_rope_factors(rope: dict, d_head: int) -> np.ndarray:
    """Llama 3's RoPE scaling as per-frequency divisors (``rope_freqs.weight``, what llama.cpp
    stores): 1 for short wavelengths, ``factor`` for long ones, interpolated between."""
    inv_freq = 1.0 / rope["rope_theta"] ** (np.arange(0, d_head, 2, dtype=np.float64) / d_head)
    wavelen = 2 * math.pi / inv_freq
    old = rope["original_max_position_embeddings"]
    low, high, factor = rope["low_freq_factor"], rope["high_freq_factor"], rope["factor"]
    smooth = np.clip((old / wavelen - low) / (high - low), 0.0, 1.0)
    # smooth = 1 below the high-frequency wavelength (divisor 1), 0 above the low one (factor).
    return (1.0 / ((1.0 - smooth) / factor + smooth)).astype(np.float32)


def permute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Hugging Face's rotate-half row order -> llama.cpp's interleaved one: within each head,
    row i of the first half and row i of the second half become rows 2i and 2i + 1."""
    rows = w.shape[0]
    half = rows // n_heads // 2
    return w.reshape(n_heads, 2, half, -1).transpose(0, 2, 1, 3).reshape(rows, -1)


class Llama:
    """A llama's hyper-parameters, Hugging Face-named float32 weights and tokenizer."""

    def __init__(self, config: dict, weights: dict[str, np.ndarray], tokenizer_json: dict):
        self.config = config
        self.weights = weights
        self.tokenizer_json = tokenizer_json

    @property
    def d_head(self) -> int:
        c = self.config
        return c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]


def load_hf_llama(folder: Path) -> Llama:
    """A Hugging Face llama folder (config.json, model.safetensors, tokenizer.json)."""
    config = json.loads((folder / "config.json").read_text())
    return Llama(config, read_safetensors(folder / "model.safetensors"),
                 json.loads((folder / "tokenizer.json").read_text()))


def widened_llama(tiny: Llama, seed: int = 21) -> Llama:
    """Tiny llama3's tokenizer and RoPE with rows wide enough for k-quants (a multiple of 256):
    random weights, std 0.2 * sqrt(64 / fan_in) like the tiny model's 0.2 at fan-in 64."""
    d, f, heads, kv, d_head, layers = 256, 512, 4, 2, 64, 2
    config = dict(tiny.config, hidden_size=d, intermediate_size=f, num_attention_heads=heads,
                  num_key_value_heads=kv, head_dim=d_head, num_hidden_layers=layers)
    rng = np.random.default_rng(seed)
    std = 0.2 * math.sqrt(tiny.config["hidden_size"])

    def matrix(out: int, inp: int) -> np.ndarray:
        return (rng.standard_normal((out, inp)) * std / math.sqrt(inp)).astype(np.float32)

    w = {"model.embed_tokens.weight": matrix(config["vocab_size"], d),
         "model.norm.weight": np.ones(d, np.float32)}
    for i in range(layers):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = np.ones(d, np.float32)
        w[p + "post_attention_layernorm.weight"] = np.ones(d, np.float32)
        w[p + "self_attn.q_proj.weight"] = matrix(heads * d_head, d)
        w[p + "self_attn.k_proj.weight"] = matrix(kv * d_head, d)
        w[p + "self_attn.v_proj.weight"] = matrix(kv * d_head, d)
        w[p + "self_attn.o_proj.weight"] = matrix(d, heads * d_head)
        w[p + "mlp.gate_proj.weight"] = matrix(f, d)
        w[p + "mlp.up_proj.weight"] = matrix(f, d)
        w[p + "mlp.down_proj.weight"] = matrix(d, f)
    return Llama(config, w, tiny.tokenizer_json)


def quantize(x: np.ndarray, qtype: QT) -> np.ndarray:
    """``x`` in ``qtype``'s blocks: gguf's numpy quantizer where it has one, else ours."""
    if qtype in K_QUANTS:
        return quantize_k(x, qtype)
    return gguf.quants.quantize(x, qtype)


# --- the GGUF writer -------------------------------------------------------------------------

GGUF_PARTS = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_tensors(model: Llama) -> dict[str, np.ndarray]:
    """The model's weights under llama.cpp's names, Q/K rows permuted as llama.cpp stores them.
    A tied LM head is left out (llama.cpp reuses token_embd.weight)."""
    c = model.config
    out = {}
    for name, w in model.weights.items():
        if name == "model.embed_tokens.weight":
            out["token_embd.weight"] = w
        elif name == "model.norm.weight":
            out["output_norm.weight"] = w
        elif name == "lm_head.weight":
            out["output.weight"] = w
        else:
            layer, part = name.removeprefix("model.layers.").split(".", 1)
            if part == "self_attn.q_proj.weight":
                w = permute_qk(w, c["num_attention_heads"])
            elif part == "self_attn.k_proj.weight":
                w = permute_qk(w, c.get("num_key_value_heads", c["num_attention_heads"]))
            out[f"blk.{layer}.{GGUF_PARTS[part]}"] = w
    return out


# general.file_type as llama-quantize labels such files (the k-quant "S" mixes are the nearest
# labels for files with every matrix in one type).
FILE_TYPES = {
    None: gguf.LlamaFileType.ALL_F32,
    QT.Q4_0: gguf.LlamaFileType.MOSTLY_Q4_0,
    QT.Q4_1: gguf.LlamaFileType.MOSTLY_Q4_1,
    QT.Q5_0: gguf.LlamaFileType.MOSTLY_Q5_0,
    QT.Q5_1: gguf.LlamaFileType.MOSTLY_Q5_1,
    QT.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0,
    QT.Q2_K: gguf.LlamaFileType.MOSTLY_Q2_K,
    QT.Q3_K: gguf.LlamaFileType.MOSTLY_Q3_K_S,
    QT.Q4_K: gguf.LlamaFileType.MOSTLY_Q4_K_S,
    QT.Q5_K: gguf.LlamaFileType.MOSTLY_Q5_K_S,
    QT.Q6_K: gguf.LlamaFileType.MOSTLY_Q6_K,
}


def write_llama_gguf(path: Path, model: Llama, qtype: QT | None,
                     nan_scale: tuple[str, int] | None = None) -> dict[str, np.ndarray]:
    """A llama GGUF of ``model``: matrices in ``qtype`` (None: F32), vectors F32.
    ``nan_scale``: ``(matrix, byte offset)``: the float16 scale at that offset of the matrix's
    first block is set to NaN. Returns the stored tensors (block bytes for quantized ones)."""
    c = model.config
    rope = c["rope_parameters"]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("mindscope test llama")
    w.add_file_type(FILE_TYPES[qtype])
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(c["hidden_size"])
    w.add_block_count(c["num_hidden_layers"])
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_head_count(c["num_attention_heads"])
    w.add_head_count_kv(c["num_key_value_heads"])
    w.add_key_length(model.d_head)
    w.add_value_length(model.d_head)
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    w.add_rope_freq_base(rope["rope_theta"])
    w.add_rope_dimension_count(model.d_head)
    w.add_vocab_size(c["vocab_size"])
    tokens, scores, types = sentencepiece_vocab(model.tokenizer_json)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(c["bos_token_id"])
    w.add_eos_token_id(c["eos_token_id"])
    w.add_unk_token_id(tokens.index(model.tokenizer_json["model"]["unk_token"]))
    w.add_add_bos_token(True)
    w.add_add_space_prefix(True)
    stored = {}
    for name, x in gguf_tensors(model).items():
        if qtype is not None and x.ndim == 2:
            blocks = quantize(x, qtype)
            if nan_scale is not None and name == nan_scale[0]:
                at = nan_scale[1]
                blocks[0, at:at + 2] = np.array([np.nan], np.float16).view(np.uint8)
            w.add_tensor(name, blocks, raw_dtype=qtype)
            stored[name] = blocks
        else:
            w.add_tensor(name, x.astype(np.float32))
            stored[name] = x.astype(np.float32)
    stored["rope_freqs.weight"] = llama3_rope_factors(rope, model.d_head)
    w.add_tensor("rope_freqs.weight", stored["rope_freqs.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return stored
