"""Fuzzing of the model-file loaders: seeded, mutated GGUF files, safetensors headers and
`config.json` files, each loaded with `mindscope.load_model` in a worker process that runs
under a memory limit and a per-case timeout.

A case passes when the load returns normally: either a model, or one of the typed errors a
broken file should raise (`ALLOWED_ERRORS`). Anything else is a finding: a signal or abort
(an allocation the memory limit refused), a hang, a `PanicException`, an `InternalError`, a
`ComputeError` (a loader should say what is wrong with the file, not that a tensor operation
failed), or an untyped Python exception. A model that loads must also run a padded batch of
two prompts to finite outputs (a file the loader lets through must be usable). Some cases
must fail (NaN weights, an out-of-vocabulary padding id, a billion layers), whatever the
rest of the file says.

Every case is rebuilt from `(seed, index)` alone, so a finding is reproduced by its number:

    python tests/python/fuzz_loaders.py --cases 5000 --seed 1         # the long run
    python tests/python/fuzz_loaders.py --seed 1 --only 1234 -v       # one case again

`tests/python/test_fuzz_loaders.py` runs a few hundred of these (and the targeted cases) in CI.
Files are small: synthetic GGUFs written here (about 100 KB each, a few tensor types) and
copies of the tiny Hugging Face folders under `../shared/models/tiny` with only the mutated
file rewritten (the rest are symbolic links).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("MINDSCOPE_SHARED", REPO.parent / "shared"))
TINY = SHARED / "models" / "tiny"

# Typed errors a broken file may raise. ComputeError and InternalError are findings.
ALLOWED_ERRORS = (
    "ModelFormatError",
    "UnsupportedArchitectureError",
    "StorageError",
    "ResourceError",
    "InvalidArgumentError",
)
MEMORY_LIMIT = 3 << 30
CASE_TIMEOUT = 30.0

# ----------------------------------------------------------------------------------------------
# GGUF writing, with the byte offset of every count and length recorded for targeted overwrites.

U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
SCALAR_FMT = {
    U8: "<B",
    I8: "<b",
    U16: "<H",
    I16: "<h",
    U32: "<I",
    I32: "<i",
    F32: "<f",
    BOOL: "<B",
    U64: "<Q",
    I64: "<q",
    F64: "<d",
}
GGML_F32, GGML_F16, GGML_Q8_0 = 0, 1, 8


@dataclass
class GgufSpec:
    """Metadata `(key, type, value)` (arrays: `(ARR, (item_type, items))`) and tensors
    `(name, row-major shape, ggml type, float32 data)`."""

    kv: list = field(default_factory=list)
    tensors: list = field(default_factory=list)
    alignment: int = 32

    def set(self, key, kind, value):
        for i, (k, _, _) in enumerate(self.kv):
            if k == key:
                self.kv[i] = (key, kind, value)
                return
        self.kv.append((key, kind, value))

    def drop(self, key):
        self.kv = [e for e in self.kv if e[0] != key]


class _Writer:
    def __init__(self):
        self.buf = bytearray()
        self.fields = []  # (label, offset, struct format)

    def put(self, fmt, value, label=None):
        if label is not None:
            self.fields.append((label, len(self.buf), fmt))
        self.buf += struct.pack(fmt, value)

    def string(self, s, label):
        b = s.encode() if isinstance(s, str) else s
        self.put("<Q", len(b), label + ".len")
        self.buf += b

    def value(self, kind, v, label):
        if kind == STR:
            self.string(v, label)
        elif kind == ARR:
            item, items = v
            self.put("<I", item, label + ".item_type")
            self.put("<Q", len(items), label + ".count")
            for j, x in enumerate(items[:4]):
                self.value(item, x, f"{label}[{j}]")
            for x in items[4:]:
                self.value(item, x, None if item != STR else f"{label}[+]")
        else:
            fmt = SCALAR_FMT[kind]
            self.put(fmt, _fit(fmt, v), label)


def _fit(fmt, v):
    """`v` as the struct format can store it (wrapped like a C cast)."""
    if fmt[-1] in "fd":
        return float(v)
    bits = struct.calcsize(fmt) * 8
    v = int(v) & ((1 << bits) - 1)
    if fmt[-1].islower() and v >= 1 << (bits - 1):
        v -= 1 << bits
    return v


def tensor_bytes(kind, data):
    if isinstance(data, bytes):  # already encoded (a poisoned tensor, an earlier mutation)
        return data
    data = np.asarray(data, dtype=np.float32).ravel()
    if kind == GGML_F32:
        return data.astype("<f4").tobytes()
    if kind == GGML_F16:
        return data.astype("<f2").tobytes()
    # Q8_0: blocks of 32 values, an f16 scale then 32 int8.
    blocks = data.reshape(-1, 32)
    d = np.abs(blocks).max(axis=1) / 127
    q = np.round(blocks / np.where(d == 0, 1, d)[:, None]).astype(np.int8)
    out = np.empty((len(blocks), 34), np.uint8)
    out[:, :2] = d.astype("<f2").view(np.uint8).reshape(-1, 2)
    out[:, 2:] = q.view(np.uint8)
    return out.tobytes()


def write_gguf(spec: GgufSpec, version=3):
    """The file's bytes, the recorded fields and where the header ends."""
    w = _Writer()
    w.buf += b"GGUF"
    w.put("<I", version, "version")
    w.put("<Q", len(spec.tensors), "tensor_count")
    w.put("<Q", len(spec.kv), "kv_count")
    for key, kind, v in spec.kv:
        w.string(key, f"kv:{key}.key")
        w.put("<I", kind, f"kv:{key}.type")
        w.value(kind, v, f"kv:{key}")
    blobs, offset = [], 0
    for name, shape, kind, data in spec.tensors:
        blob = data if isinstance(data, bytes) else tensor_bytes(kind, data)
        offset = -(-offset // spec.alignment) * spec.alignment
        w.string(name, f"t:{name}.name")
        w.put("<I", len(shape), f"t:{name}.n_dims")
        for j, d in enumerate(reversed(shape)):
            w.put("<Q", d, f"t:{name}.dim{j}")
        w.put("<I", kind, f"t:{name}.type")
        w.put("<Q", offset, f"t:{name}.offset")
        blobs.append((offset, blob))
        offset += len(blob)
    header_end = len(w.buf)
    data_start = -(-header_end // spec.alignment) * spec.alignment
    out = w.buf + bytes(data_start - header_end)
    for off, blob in blobs:
        out += bytes(data_start + off - len(out)) + blob
    return bytes(out), w.fields, header_end


# ----------------------------------------------------------------------------------------------
# Synthetic models: small enough to write per case, complete enough to load.

D, HEADS, KV_HEADS, D_HEAD, D_MLP, LAYERS = 32, 4, 2, 8, 64, 2


def _byte_chars():
    """GPT-2's byte-to-unicode table (byte-level BPE vocabularies are written in it)."""
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def _rand(rng, *shape):
    return np.asarray(rng.standard_normal(shape) * 0.1, np.float32)


def llama_gguf(np_rng) -> GgufSpec:
    """A 2-layer llama GGUF with a byte-level BPE tokenizer (the SmolLM2 layout)."""
    tokens = _byte_chars() + ["Ġt", "he", "Ġthe", "<|endoftext|>", "<|im_start|>"]
    merges = ["Ġ t", "h e", "Ġt he"]
    types = [1] * (len(tokens) - 2) + [3, 3]
    v = len(tokens)
    s = GgufSpec()
    s.kv = [
        ("general.architecture", STR, "llama"),
        ("general.name", STR, "fuzz-llama"),
        ("general.alignment", U32, 32),
        ("llama.block_count", U32, LAYERS),
        ("llama.context_length", U32, 64),
        ("llama.embedding_length", U32, D),
        ("llama.feed_forward_length", U32, D_MLP),
        ("llama.attention.head_count", U32, HEADS),
        ("llama.attention.head_count_kv", U32, KV_HEADS),
        ("llama.attention.layer_norm_rms_epsilon", F32, 1e-5),
        ("llama.rope.freq_base", F32, 10000.0),
        ("llama.vocab_size", U32, v),
        ("tokenizer.ggml.model", STR, "gpt2"),
        ("tokenizer.ggml.tokens", ARR, (STR, tokens)),
        ("tokenizer.ggml.token_type", ARR, (I32, types)),
        ("tokenizer.ggml.merges", ARR, (STR, merges)),
        ("tokenizer.ggml.bos_token_id", U32, v - 2),
        ("tokenizer.ggml.eos_token_id", U32, v - 2),
        ("tokenizer.ggml.padding_token_id", U32, v - 2),
    ]
    t = [
        ("token_embd.weight", [v, D], GGML_F32, _rand(np_rng, v, D)),
        ("output_norm.weight", [D], GGML_F32, np.ones(D, np.float32)),
    ]
    for i in range(LAYERS):
        b = f"blk.{i}."
        t += [
            (b + "attn_norm.weight", [D], GGML_F32, np.ones(D, np.float32)),
            (b + "attn_q.weight", [HEADS * D_HEAD, D], GGML_Q8_0, _rand(np_rng, D, D)),
            (b + "attn_k.weight", [KV_HEADS * D_HEAD, D], GGML_F16, _rand(np_rng, 16, D)),
            (b + "attn_v.weight", [KV_HEADS * D_HEAD, D], GGML_F32, _rand(np_rng, 16, D)),
            (b + "attn_output.weight", [D, HEADS * D_HEAD], GGML_F32, _rand(np_rng, D, D)),
            (b + "ffn_norm.weight", [D], GGML_F32, np.ones(D, np.float32)),
            (b + "ffn_gate.weight", [D_MLP, D], GGML_Q8_0, _rand(np_rng, D_MLP, D)),
            (b + "ffn_up.weight", [D_MLP, D], GGML_F16, _rand(np_rng, D_MLP, D)),
            (b + "ffn_down.weight", [D, D_MLP], GGML_F32, _rand(np_rng, D, D_MLP)),
        ]
    s.tensors = t
    return s


def gemma3_gguf(np_rng) -> GgufSpec:
    """A 2-layer gemma3 GGUF with a SentencePiece (`llama`) tokenizer, one sliding layer."""
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [3, 3, 3, 2] + [6] * 256
    words = ["▁", "t", "h", "e", "a", "▁t", "he", "▁the", "▁a"]
    tokens += words
    types += [1] * len(words)
    scores = [0.0] * (len(tokens) - len(words)) + [-float(i) for i in range(len(words))]
    v = len(tokens)
    s = GgufSpec()
    s.kv = [
        ("general.architecture", STR, "gemma3"),
        ("general.name", STR, "fuzz-gemma3"),
        ("gemma3.block_count", U32, LAYERS),
        ("gemma3.context_length", U32, 64),
        ("gemma3.embedding_length", U32, D),
        ("gemma3.feed_forward_length", U32, D_MLP),
        ("gemma3.attention.head_count", U32, HEADS),
        ("gemma3.attention.head_count_kv", U32, KV_HEADS),
        ("gemma3.attention.key_length", U32, D_HEAD),
        ("gemma3.attention.value_length", U32, D_HEAD),
        ("gemma3.attention.layer_norm_rms_epsilon", F32, 1e-6),
        ("gemma3.attention.sliding_window", U32, 16),
        ("gemma3.attention.sliding_window_pattern", U32, 2),
        ("gemma3.rope.freq_base", F32, 1e6),
        ("tokenizer.ggml.model", STR, "llama"),
        ("tokenizer.ggml.tokens", ARR, (STR, tokens)),
        ("tokenizer.ggml.scores", ARR, (F32, scores)),
        ("tokenizer.ggml.token_type", ARR, (I32, types)),
        ("tokenizer.ggml.bos_token_id", U32, 2),
        ("tokenizer.ggml.eos_token_id", U32, 1),
        ("tokenizer.ggml.padding_token_id", U32, 0),
        ("tokenizer.ggml.unknown_token_id", U32, 3),
        ("tokenizer.ggml.add_bos_token", BOOL, True),
    ]
    t = [
        ("token_embd.weight", [v, D], GGML_F32, _rand(np_rng, v, D)),
        ("output_norm.weight", [D], GGML_F32, np.ones(D, np.float32)),
    ]
    for i in range(LAYERS):
        b = f"blk.{i}."
        t += [
            (b + "attn_norm.weight", [D], GGML_F32, np.ones(D, np.float32)),
            (b + "attn_q.weight", [HEADS * D_HEAD, D], GGML_Q8_0, _rand(np_rng, D, D)),
            (b + "attn_k.weight", [KV_HEADS * D_HEAD, D], GGML_F16, _rand(np_rng, 16, D)),
            (b + "attn_v.weight", [KV_HEADS * D_HEAD, D], GGML_F32, _rand(np_rng, 16, D)),
            (b + "attn_output.weight", [D, HEADS * D_HEAD], GGML_F32, _rand(np_rng, D, D)),
            (b + "attn_q_norm.weight", [D_HEAD], GGML_F32, np.ones(D_HEAD, np.float32)),
            (b + "attn_k_norm.weight", [D_HEAD], GGML_F32, np.ones(D_HEAD, np.float32)),
            (b + "post_attention_norm.weight", [D], GGML_F32, np.ones(D, np.float32)),
            (b + "ffn_norm.weight", [D], GGML_F32, np.ones(D, np.float32)),
            (b + "post_ffw_norm.weight", [D], GGML_F32, np.ones(D, np.float32)),
            (b + "ffn_gate.weight", [D_MLP, D], GGML_Q8_0, _rand(np_rng, D_MLP, D)),
            (b + "ffn_up.weight", [D_MLP, D], GGML_F16, _rand(np_rng, D_MLP, D)),
            (b + "ffn_down.weight", [D, D_MLP], GGML_F32, _rand(np_rng, D, D_MLP)),
        ]
    s.tensors = t
    return s


# ----------------------------------------------------------------------------------------------
# Safetensors and Hugging Face folders.


def read_safetensors(path):
    raw = Path(path).read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def safetensors_bytes(header, data, header_len=None):
    h = json.dumps(header, separators=(",", ":")).encode() if not isinstance(header, bytes) else header
    h += b" " * (-len(h) % 8)
    n = len(h) if header_len is None else header_len
    return struct.pack("<Q", _fit("<Q", n)) + h + data


def make_folder(dst: Path, src: Path, replace: dict):
    """`dst` with every file of `src` linked, except those in `replace` (name -> bytes or
    None to leave it out)."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.name in replace:
            continue
        os.symlink(f.resolve(), dst / f.name)
    for name, content in replace.items():
        if content is not None:
            (dst / name).write_bytes(content)


def gemma3_folder(dst: Path, config_changes=None):
    """A 3-layer gemma3_text folder built from the tiny llama's weights and tokenizer, with the
    tensors Gemma 3 has and Llama has not (q/k norms, sandwich norms) added."""
    header, data = read_safetensors(TINY / "llama3" / "model.safetensors")
    data = bytearray(data)
    cfg = json.loads((TINY / "llama3" / "config.json").read_text())
    d, dh = cfg["hidden_size"], cfg["head_dim"]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for name, size in [
            ("self_attn.q_norm.weight", dh),
            ("self_attn.k_norm.weight", dh),
            ("pre_feedforward_layernorm.weight", d),
            ("post_feedforward_layernorm.weight", d),
        ]:
            header[p + name] = {
                "dtype": "BF16",
                "shape": [size],
                "data_offsets": [len(data), len(data) + 2 * size],
            }
            data += bytes(2 * size)
    config = {
        "model_type": "gemma3_text",
        "hidden_size": d,
        "num_attention_heads": cfg["num_attention_heads"],
        "num_key_value_heads": cfg["num_key_value_heads"],
        "head_dim": dh,
        "intermediate_size": cfg["intermediate_size"],
        "num_hidden_layers": cfg["num_hidden_layers"],
        "vocab_size": cfg["vocab_size"],
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-6,
        "sliding_window": 16,
        "sliding_window_pattern": 2,
        "rope_theta": 1e6,
        "rope_local_base_freq": 1e4,
        "query_pre_attn_scalar": dh,
        "hidden_activation": "gelu_pytorch_tanh",
        "tie_word_embeddings": True,
    }
    config.update(config_changes or {})
    make_folder(
        dst,
        TINY / "llama3",
        {
            "config.json": json.dumps(config).encode(),
            "model.safetensors": safetensors_bytes(header, bytes(data)),
        },
    )


# ----------------------------------------------------------------------------------------------
# Mutations.

HUGE = [2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1]
SPECIAL_INTS = [0, 1, 2, 3, 7, 31, 33, 255, 65535] + HUGE
CONFIG_VALUES = [
    10**12,
    2**32 - 1,
    2**63,
    2**64 - 1,
    2**64,
    10**30,
    0,
    1,
    3,
    -1,
    -(10**12),
    1.5,
    -0.0,
    1e308,
    "8",
    "",
    None,
    True,
    False,
    [],
    [1, 2],
    [10**12],
    {},
    {"rope_type": "llama3", "factor": 0},
    {"rope_type": "linear", "factor": -1.0},
]
CONFIG_KEYS = [
    "num_hidden_layers",
    "hidden_size",
    "vocab_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "max_position_embeddings",
    "rope_theta",
    "rope_parameters",
    "rope_scaling",
    "sliding_window",
    "sliding_window_pattern",
    "layer_types",
    "tie_word_embeddings",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "model_type",
    "text_config",
    "partial_rotary_factor",
    "rotary_pct",
    "n_layer",
    "n_embd",
    "n_head",
    "n_inner",
    "n_positions",
    "use_sliding_window",
    "max_window_layers",
    "rms_norm_eps",
    "layer_norm_epsilon",
    "hidden_act",
    "quantization_config",
]
HF_MODELS = ["llama3", "qwen3", "gpt2", "pythia", "phi3", "mistral", "llama3-legacy-config"]
NAN_BITS = {"F32": [b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f", b"\x00\x00\x80\xff"],
            "F16": [b"\x00\x7e", b"\x00\x7c"], "BF16": [b"\xc0\x7f", b"\x80\xff"]}


@dataclass
class Case:
    """One load: what was done, where the model is, and what must happen."""

    id: str
    desc: str
    path: Path
    must_fail: bool = False
    expect_class: str | None = None
    expect_in: str | None = None
    must_load: bool = False


def _gguf_field_case(rng, spec, out, desc):
    raw, fields, header_end = write_gguf(spec)
    raw = bytearray(raw)
    label, off, fmt = rng.choice(fields)
    value = rng.choice(SPECIAL_INTS + [rng.getrandbits(struct.calcsize(fmt) * 8)])
    raw[off : off + struct.calcsize(fmt)] = struct.pack(fmt, _fit(fmt, value))
    out.write_bytes(raw)
    return f"{desc}: field {label} = {value}"


def _gguf_bytes_case(rng, spec, out, desc):
    raw, _, header_end = write_gguf(spec)
    raw = bytearray(raw)
    kind = rng.choice(["bitflip", "overwrite", "truncate", "truncate_data"])
    if kind == "bitflip":
        flips = [rng.randrange(header_end * 8) for _ in range(rng.randint(1, 8))]
        for b in flips:
            raw[b // 8] ^= 1 << (b % 8)
        what = f"bit flips at {flips}"
    elif kind == "overwrite":
        at = rng.randrange(header_end)
        n = rng.randint(1, 8)
        fill = rng.choice([b"\xff", b"\x00", bytes([rng.randrange(256)])]) * n
        raw[at : at + n] = fill
        what = f"{n} bytes at {at} = {fill[:1].hex()}"
    elif kind == "truncate":
        at = rng.randrange(header_end)
        raw = raw[:at]
        what = f"truncated at {at} (header ends at {header_end})"
    else:
        at = rng.randrange(header_end, len(raw))
        raw = raw[:at]
        what = f"truncated at {at} of {len(raw)}"
    out.write_bytes(raw)
    return f"{desc}: {what}"


def _random_value(rng):
    kind = rng.choice([U8, I8, U32, I32, U64, I64, F32, F64, BOOL, STR, ARR, ARR])
    if kind == STR:
        return kind, rng.choice(["", "llama", "gemma3", "gpt2", "x" * 300, "none"])
    if kind == ARR:
        item = rng.choice([U32, I32, STR, F32, U8, ARR])
        if item == ARR:
            return kind, (ARR, [(U32, [1, 2])])
        n = rng.choice([0, 1, 3, 300])
        vals = ["a"] * n if item == STR else [rng.choice([0, 1, 3, 6, 2**31 - 1]) for _ in range(n)]
        return kind, (item, vals)
    if kind in (F32, F64):
        return kind, rng.choice([0.0, -1.0, 1e-6, float("nan"), float("inf"), 1e30])
    if kind == BOOL:
        return kind, rng.choice([0, 1, 2, 255])
    return kind, rng.choice(SPECIAL_INTS + [-1])


def _gguf_meta_case(rng, spec, out, desc):
    arch = spec.kv[0][2]
    keys = [k for k, _, _ in spec.kv] + [
        f"{arch}.attention.key_length",
        f"{arch}.attention.value_length",
        f"{arch}.rope.dimension_count",
        f"{arch}.rope.scaling.type",
        f"{arch}.expert_count",
        f"{arch}.attn_logit_softcapping",
        "split.count",
        "general.alignment",
    ]
    key = rng.choice(keys)
    op = rng.choice(["set", "set", "set", "drop", "dup"])
    if op == "drop":
        spec.drop(key)
        what = f"dropped {key}"
    elif op == "dup":
        entry = next((e for e in spec.kv if e[0] == key), None) or (key, U32, 1)
        spec.kv.append(entry)
        what = f"{key} twice"
    else:
        if rng.random() < 0.5:
            kind, value = U32 if rng.random() < 0.5 else U64, rng.choice(SPECIAL_INTS)
        else:
            kind, value = _random_value(rng)
        spec.set(key, kind, value)
        shown = value if kind != ARR else f"array of {len(value[1])} type {value[0]}"
        what = f"{key} = {shown!r} (type {kind})"
    out.write_bytes(write_gguf(spec)[0])
    return f"{desc}: {what}"


def _gguf_tensor_case(rng, spec, out, desc):
    i = rng.randrange(len(spec.tensors))
    name, shape, kind, data = spec.tensors[i]
    op = rng.choice(["dims", "ndims", "type", "drop", "extra", "rename", "dup"])
    if op == "dims":
        shape = list(shape)
        j = rng.randrange(len(shape))
        shape[j] = rng.choice(SPECIAL_INTS)
        spec.tensors[i] = (name, shape, kind, tensor_bytes(kind, data))
        what = f"{name} shape {shape}"
    elif op == "ndims":
        shape = rng.choice([[], [1] + list(shape), [2, 2, 2, 2, 2], [1, 1, 1] + list(shape)])
        spec.tensors[i] = (name, shape, kind, tensor_bytes(kind, data))
        what = f"{name} shape {shape}"
    elif op == "type":
        new = rng.choice([GGML_F32, GGML_F16, GGML_Q8_0, 2, 4, 5, 12, 14, 30, 31, 99, 2**31])
        spec.tensors[i] = (name, shape, new, tensor_bytes(kind, data))
        what = f"{name} ggml type {new}"
    elif op == "drop":
        del spec.tensors[i]
        what = f"dropped {name}"
    elif op == "extra":
        spec.tensors.append(("blk.99.attn_q.weight", [4], GGML_F32, np.ones(4, np.float32)))
        what = "extra tensor blk.99.attn_q.weight"
    elif op == "rename":
        spec.tensors[i] = (rng.choice(["", "x" * 500, "blk.0"]), shape, kind, data)
        what = f"{name} renamed"
    else:
        spec.tensors.append(spec.tensors[i])
        what = f"{name} twice"
    out.write_bytes(write_gguf(spec)[0])
    return f"{desc}: {what}"


def _nan_tensor(rng, spec, out, desc):
    """Write a NaN or inf into one F32/F16 tensor (or a Q8_0 block's scale)."""
    i = rng.randrange(len(spec.tensors))
    name, shape, kind, data = spec.tensors[i]
    blob = bytearray(tensor_bytes(kind, data))
    if kind == GGML_F32:
        at, bad = rng.randrange(len(blob) // 4) * 4, rng.choice(NAN_BITS["F32"])
    elif kind == GGML_F16:
        at, bad = rng.randrange(len(blob) // 2) * 2, rng.choice(NAN_BITS["F16"])
    else:
        at, bad = rng.randrange(len(blob) // 34) * 34, rng.choice(NAN_BITS["F16"])
    blob[at : at + len(bad)] = bad
    spec.tensors[i] = (name, shape, kind, bytes(blob))
    out.write_bytes(write_gguf(spec)[0])
    return name, f"{desc}: {bad.hex()} written into {name} at byte {at}"


def _hf_config_case(rng, src, dst, desc):
    cfg = json.loads((src / "config.json").read_text())
    changes = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        key = rng.choice(list(cfg) + CONFIG_KEYS)
        if rng.random() < 0.2:
            cfg.pop(key, None)
            changes.append(f"drop {key}")
        else:
            cfg[key] = rng.choice(CONFIG_VALUES)
            changes.append(f"{key} = {cfg[key]!r}")
    make_folder(dst, src, {"config.json": json.dumps(cfg).encode()})
    return f"{desc}: config {', '.join(changes)}"


def _weights_file(src):
    files = sorted(src.glob("*.safetensors"))
    return files[0] if len(files) == 1 else files[len(files) // 2]


def _hf_safetensors_case(rng, src, dst, desc):
    wf = _weights_file(src)
    header, data = read_safetensors(wf)
    names = [k for k in header if k != "__metadata__"]
    name = rng.choice(names)
    op = rng.choice(["len", "dtype", "shape", "offsets", "drop", "json", "bytes", "truncate"])
    header_len = None
    if op == "len":
        header_len = rng.choice([0, 1, 7, 8, 100 << 20, (100 << 20) + 1] + HUGE)
        what = f"header length {header_len}"
        body = safetensors_bytes(header, data, header_len)
    elif op == "dtype":
        header[name]["dtype"] = rng.choice(["I8", "U8", "F8_E4M3", "BOOL", "F64", "F16", "BF16",
                                            "F32", "I64", "Q4", 7, None, ""])
        what = f"{name} dtype {header[name]['dtype']!r}"
    elif op == "shape":
        shape = list(header[name]["shape"])
        header[name]["shape"] = rng.choice(
            [[2**63], [2**64 - 1], [-1], [], [0], shape + [1], "x", [1.5], [2**32, 2**32],
             [2**62, 4], shape[::-1], [10**12] + shape[1:]]
        )
        what = f"{name} shape {header[name]['shape']!r}"
    elif op == "offsets":
        s, e = header[name]["data_offsets"]
        header[name]["data_offsets"] = rng.choice(
            [[e, s], [0, 2**64 - 1], [s, e + 2], [s], [-1, e - s - 1], "x", [s + 1, e + 1],
             [2**64 - 2, 2**64 - 2 + e - s], [s, 2**63]]
        )
        what = f"{name} data_offsets {header[name]['data_offsets']!r}"
    elif op == "drop":
        del header[name]
        what = f"dropped {name}"
    elif op == "json":
        header = rng.choice([b"[]", b'"x"', b"1", b"{", b"{}" + b"x", json.dumps(header).encode()[:-1],
                             b'{"__metadata__": 1}', b'{"a": {"dtype": "F32"}}'])
        what = f"header {header[:40]!r}"
    if op in ("bytes", "truncate"):
        body = bytearray(safetensors_bytes(header, data))
        n = struct.unpack("<Q", body[:8])[0]
        if op == "bytes":
            at = rng.randrange(8 + n)
            body[at] ^= 1 << rng.randrange(8)
            what = f"bit flip at byte {at}"
        else:
            at = rng.randrange(len(body))
            body = body[:at]
            what = f"truncated at {at}"
        body = bytes(body)
    elif op != "len":
        body = safetensors_bytes(header, data)
    make_folder(dst, src, {wf.name: body})
    return f"{desc}: {wf.name} {what}"


def _hf_nan_case(rng, src, dst, desc):
    wf = _weights_file(src)
    header, data = read_safetensors(wf)
    name = rng.choice([k for k in header if k != "__metadata__"])
    e = header[name]
    bad = rng.choice(NAN_BITS[e["dtype"]])
    s, end = e["data_offsets"]
    at = s + rng.randrange((end - s) // len(bad)) * len(bad)
    data = data[:at] + bad + data[at + len(bad) :]
    make_folder(dst, src, {wf.name: safetensors_bytes(header, data)})
    return name, f"{desc}: {bad.hex()} written into {name} at data byte {at}"


def _hf_tokenizer_case(rng, src, dst, desc):
    """A tokenizer.json that is broken, or whose ids reach beyond the model's vocabulary (it
    loads, and must then fail on first use with a typed error, not an index panic)."""
    raw = (src / "tokenizer.json").read_bytes()
    tok = json.loads(raw)
    vocab = tok["model"]["vocab"]
    op = rng.choice(["truncate", "bitflip", "added_id", "vocab_id", "model_type", "pad_token"])
    if op == "truncate":
        at = rng.randrange(len(raw))
        body, what = raw[:at], f"truncated at {at}"
    elif op == "bitflip":
        b = bytearray(raw)
        at = rng.randrange(len(b))
        b[at] ^= 1 << rng.randrange(8)
        body, what = bytes(b), f"bit flip at byte {at}"
    else:
        big = rng.choice([len(vocab), len(vocab) + 5, 2**31 - 1, 2**32 - 1, 2**32, -1])
        if op == "added_id":
            tok["added_tokens"].append({"id": big, "content": "<fz>", "single_word": False,
                                        "lstrip": False, "rstrip": False, "normalized": False,
                                        "special": True})
            what = f"added token '<fz>' with id {big}"
        elif op == "vocab_id":
            key = rng.choice(list(vocab))
            vocab[key] = big
            what = f"vocab[{key!r}] = {big}"
        elif op == "model_type":
            tok["model"]["type"] = rng.choice(["WordPiece", "Unigram", "nope", 5])
            what = f"model type {tok['model']['type']!r}"
        else:
            tok["added_tokens"].append({"id": big, "content": "<pad>", "single_word": False,
                                        "lstrip": False, "rstrip": False, "normalized": False,
                                        "special": True})
            what = f"'<pad>' added with id {big}"
        body = json.dumps(tok).encode()
    make_folder(dst, src, {"tokenizer.json": body})
    return f"{desc}: tokenizer.json {what}"


def _hf_index_case(rng, src, dst, desc):
    index = json.loads((src / "model.safetensors.index.json").read_text())
    wm = index["weight_map"]
    key = rng.choice(list(wm))
    op = rng.choice(["value", "drop_map", "missing_shard", "garbage"])
    if op == "value":
        wm[key] = rng.choice(["../config.json", "/etc/passwd", 5, None, "nope.safetensors", ".."])
        what = f"weight_map[{key}] = {wm[key]!r}"
    elif op == "drop_map":
        index = {"weight_map": rng.choice([None, [], "x"])}
        what = f"weight_map {index['weight_map']!r}"
    elif op == "missing_shard":
        replace = {"model.safetensors.index.json": None, wm[key]: None}
        make_folder(dst, src, replace)
        (dst / "model.safetensors.index.json").write_text(json.dumps(index))
        return f"{desc}: shard {wm[key]} missing"
    else:
        make_folder(dst, src, {"model.safetensors.index.json": b"{\"weight_map\": {"})
        return f"{desc}: index truncated"
    make_folder(dst, src, {"model.safetensors.index.json": json.dumps(index).encode()})
    return f"{desc}: index {what}"


def random_case(seed: int, index: int, root: Path) -> Case:
    """Case `index` of the run `seed`: the same file every time."""
    rng = random.Random(f"{seed}:{index}")
    np_rng = np.random.default_rng([seed, index])
    out = root / f"case{index}"
    cid = str(index)
    kind = rng.choices(
        ["gguf_field", "gguf_bytes", "gguf_meta", "gguf_tensor", "gguf_multi", "gguf_nan",
         "hf_config", "hf_st", "hf_nan", "hf_index", "hf_tokenizer", "base"],
        weights=[12, 12, 14, 8, 8, 3, 18, 12, 3, 2, 6, 1],
    )[0]
    if kind.startswith("gguf") or kind == "base":
        arch = rng.choice(["llama", "gemma3"])
        spec = (llama_gguf if arch == "llama" else gemma3_gguf)(np_rng)
        path = out.with_suffix(".gguf")
        desc = f"{arch} GGUF"
        if kind == "base":
            path.write_bytes(write_gguf(spec)[0])
            return Case(cid, f"{desc}, unmodified (must load)", path, must_load=True)
        if kind == "gguf_nan":
            name, d = _nan_tensor(rng, spec, path, desc)
            return Case(cid, d, path, True, "ModelFormatError", name)
        if kind == "gguf_multi":
            # Several metadata and tensor changes at once, then perhaps a raw field overwrite.
            steps = []
            for _ in range(rng.randint(2, 4)):
                step = rng.choice([_gguf_meta_case, _gguf_tensor_case])
                steps.append(step(rng, spec, path, "").lstrip(": "))
            if rng.random() < 0.5:
                steps.append(_gguf_field_case(rng, spec, path, "").lstrip(": "))
            return Case(cid, f"{desc}: " + "; ".join(steps), path)
        mutate = {"gguf_field": _gguf_field_case, "gguf_bytes": _gguf_bytes_case,
                  "gguf_meta": _gguf_meta_case, "gguf_tensor": _gguf_tensor_case}[kind]
        return Case(cid, mutate(rng, spec, path, desc), path)
    if kind == "hf_index":
        return Case(cid, _hf_index_case(rng, TINY / "mistral", out, "mistral"), out)
    model = rng.choice(HF_MODELS + ["gemma3"])
    if model == "gemma3":
        gemma3_folder(root / f"src{index}")
        src = root / f"src{index}"
    else:
        src = TINY / model
    if kind == "hf_nan":
        name, d = _hf_nan_case(rng, src, out, model)
        return Case(cid, d, out, True, "ModelFormatError", name)
    mutate = {"hf_config": _hf_config_case, "hf_st": _hf_safetensors_case,
              "hf_tokenizer": _hf_tokenizer_case}[kind]
    return Case(cid, mutate(rng, src, out, model), out)


# ----------------------------------------------------------------------------------------------
# Targeted cases: each known way a loader has failed, with what it must do now.


def _gguf_with(root, name, arch, change):
    spec = (llama_gguf if arch == "llama" else gemma3_gguf)(np.random.default_rng(0))
    change(spec)
    path = root / f"{name}.gguf"
    path.write_bytes(write_gguf(spec)[0])
    return path


def _hf_with(root, name, model, config_changes):
    cfg = json.loads((TINY / model / "config.json").read_text())
    cfg.update(config_changes)
    make_folder(root / name, TINY / model, {"config.json": json.dumps(cfg).encode()})
    return root / name


def _set_header_field(path, label_prefix, value, spec_fn):
    """Rewrite one recorded count/length of a synthetic GGUF in place."""
    spec = spec_fn(np.random.default_rng(0))
    raw, fields, _ = write_gguf(spec)
    raw = bytearray(raw)
    label, off, fmt = next(f for f in fields if f[0].startswith(label_prefix))
    raw[off : off + struct.calcsize(fmt)] = struct.pack(fmt, _fit(fmt, value))
    path.write_bytes(raw)
    return path


def targeted_cases(root: Path) -> list[Case]:
    """Cases named after what they test; `must_fail` ones name the error they must raise."""
    cases = []

    def add(cid, desc, build, must_fail=True, cls="ModelFormatError", text=None):
        cases.append((cid, desc, build, must_fail, cls, text))

    def ok(cid, desc, build):
        cases.append((cid, desc, build, "load", None, None))

    MAX = 2**32 - 1
    ok("gguf_llama_ok", "the synthetic llama GGUF loads",
       lambda: _gguf_with(root, "ok_llama", "llama", lambda s: None))
    ok("gguf_gemma3_ok", "the synthetic gemma3 GGUF loads",
       lambda: _gguf_with(root, "ok_gemma3", "gemma3", lambda s: None))
    ok("hf_gemma3_ok", "the synthetic gemma3 folder loads",
       lambda: (gemma3_folder(root / "ok_gemma3_hf"), root / "ok_gemma3_hf")[1])
    ok("hf_pad_negative", "llama config pad_token_id = -1 (old configs' 'none') loads",
       lambda: _hf_with(root, "pad_hf_neg", "llama3", {"pad_token_id": -1}))
    for arch in ["llama", "gemma3"]:
        add(f"gguf_{arch}_block_count_max", f"{arch}.block_count = 2**32-1",
            lambda a=arch: _gguf_with(root, f"bc_{a}", a,
                                      lambda s: s.set(f"{a}.block_count", U32, MAX)),
            text="block_count")
        add(f"gguf_{arch}_block_count_u64", f"{arch}.block_count = 2**64-1 (u64)",
            lambda a=arch: _gguf_with(root, f"bc64_{a}", a,
                                      lambda s: s.set(f"{a}.block_count", U64, 2**64 - 1)),
            text="block_count")
    add("gguf_alignment_zero", "general.alignment = 0",
        lambda: _gguf_with(root, "align0", "llama", lambda s: s.set("general.alignment", U32, 0)),
        text="alignment")
    add("gguf_sliding_pattern_zero", "gemma3.attention.sliding_window_pattern = 0",
        lambda: _gguf_with(root, "swp0", "gemma3",
                           lambda s: s.set("gemma3.attention.sliding_window_pattern", U32, 0)),
        text="sliding_window_pattern")
    for label, value in [("tensor_count", 2**64 - 1), ("kv_count", 2**64 - 1),
                         ("kv:tokenizer.ggml.tokens.count", 2**64 - 1),
                         ("kv:tokenizer.ggml.tokens[0].len", 2**64 - 1),
                         ("kv:general.name.len", MAX), ("t:token_embd.weight.n_dims", MAX),
                         ("t:token_embd.weight.dim0", 2**64 - 1),
                         ("t:token_embd.weight.dim1", MAX)]:
        add(f"gguf_header_{label}", f"{label} = {value}",
            lambda lb=label, v=value: _set_header_field(root / f"hdr_{lb}.gguf", lb, v, llama_gguf))
    add("packaged_block_count_max", "the packaged SmolLM2 GGUF with llama.block_count = 2**32-1",
        lambda: _packaged_gguf_with(root, "pkg_bc", "llama.block_count", "<I", MAX),
        text="block_count")
    add("packaged_tokens_count_max", "the packaged SmolLM2 GGUF with 2**64-1 tokens",
        lambda: _packaged_gguf_with(root, "pkg_tok", "tokenizer.ggml.tokens", "<Q", 2**64 - 1,
                                    at_count=True), text="array count")
    add("gguf_embedding_length_max", "llama.embedding_length = 2**64-1",
        lambda: _gguf_with(root, "emb", "llama",
                           lambda s: s.set("llama.embedding_length", U64, 2**64 - 1)))
    add("gguf_pad_beyond_vocab", "tokenizer.ggml.padding_token_id = vocab size",
        lambda: _gguf_with(root, "pad", "llama",
                           lambda s: s.set("tokenizer.ggml.padding_token_id", U32, len(
                               s.kv[13][2][1]))), text="pad")
    add("gguf_pad_u64_wraps", "tokenizer.ggml.padding_token_id = 2**32 + 1 (u64)",
        lambda: _gguf_with(root, "pad64", "llama",
                           lambda s: s.set("tokenizer.ggml.padding_token_id", U64, 2**32 + 1)),
        text="pad")
    add("gguf_nan_weight", "a NaN in blk.1.attn_v.weight",
        lambda: _gguf_with(root, "nan", "llama", lambda s: _poison(s, "blk.1.attn_v.weight")),
        text="blk.1.attn_v.weight")
    add("gguf_inf_q8", "an inf scale in the Q8_0 blk.0.ffn_gate.weight",
        lambda: _gguf_with(root, "infq8", "llama", lambda s: _poison(s, "blk.0.ffn_gate.weight")),
        text="blk.0.ffn_gate.weight")
    add("hf_layers_1e12", "llama config num_hidden_layers = 10**12",
        lambda: _hf_with(root, "layers", "llama3", {"num_hidden_layers": 10**12}),
        text="num_hidden_layers")
    for model, key in [("gpt2", "n_layer"), ("pythia", "num_hidden_layers"),
                       ("phi3", "num_hidden_layers"), ("mistral", "num_hidden_layers"),
                       ("qwen3", "num_hidden_layers")]:
        add(f"hf_{model}_layers_1e12", f"{model} config {key} = 10**12",
            lambda m=model, k=key: _hf_with(root, f"layers_{m}", m, {k: 10**12}), text=key)
    add("hf_gemma3_layers_1e12", "gemma3 config num_hidden_layers = 10**12",
        lambda: (gemma3_folder(root / "g_layers", {"num_hidden_layers": 10**12}),
                 root / "g_layers")[1], text="num_hidden_layers")
    add("hf_gemma3_pattern_zero", "gemma3 config sliding_window_pattern = 0",
        lambda: (gemma3_folder(root / "g_swp0", {"sliding_window_pattern": 0}),
                 root / "g_swp0")[1], text="sliding_window_pattern")
    add("hf_pad_beyond_vocab", "llama config pad_token_id = vocab_size",
        lambda: _hf_with(root, "pad_hf", "llama3", {"pad_token_id": 800}), text="pad")
    add("hf_pad_huge", "llama config pad_token_id = 2**40",
        lambda: _hf_with(root, "pad_hf_huge", "llama3", {"pad_token_id": 2**40}),
        text="pad_token_id")
    add("hf_nan_weight", "a NaN in model.layers.1.mlp.up_proj.weight (BF16)",
        lambda: _hf_poisoned(root, "llama3", "model.layers.1.mlp.up_proj.weight"),
        text="model.layers.1.mlp.up_proj.weight")
    add("hf_inf_weight_f32", "an inf in gpt2's transformer.h.0.attn.c_attn.weight (F32)",
        lambda: _hf_poisoned(root, "gpt2", "transformer.h.0.attn.c_attn.weight"),
        text="transformer.h.0.attn.c_attn.weight")
    add("hf_overlapping_offsets", "phi3 safetensors: the first tensor's data_offsets shifted by "
        "one element into the next tensor", lambda: _hf_shifted(root, "phi3"), text="overlap")
    add("sparse_4gib_not_gguf", "a 4 GiB sparse file that is not GGUF",
        lambda: _sparse(root / "sparse.bin", b"\x7fELF"), text="not a GGUF")
    add("sparse_4gib_gguf_header", "a 4 GiB sparse file with a GGUF magic and a zero version",
        lambda: _sparse(root / "sparse.gguf", b"GGUF"), text="version")
    add("sparse_4gib_safetensors", "a folder whose 4 GiB sparse model.safetensors has a "
        "zero header", lambda: _sparse_folder(root / "sparse_hf"), text="header")
    out = []
    for cid, desc, build, must_fail, cls, text in cases:
        load = must_fail == "load"
        out.append(Case(cid, desc, build, must_fail is True, cls, text, must_load=load))
    return out


def _kv_offset(raw, key):
    """Where the value of metadata `key` starts in a GGUF header, and its type."""
    pos = 8
    _, n_kv = struct.unpack_from("<QQ", raw, pos)
    pos += 16
    for _ in range(n_kv):
        (n,) = struct.unpack_from("<Q", raw, pos)
        k = raw[pos + 8 : pos + 8 + n].decode()
        (kind,) = struct.unpack_from("<I", raw, pos + 8 + n)
        pos += 12 + n
        if k == key:
            return pos, kind
        pos = _skip_value(raw, pos, kind)
    raise KeyError(key)


def _skip_value(raw, pos, kind):
    if kind == STR:
        return pos + 8 + struct.unpack_from("<Q", raw, pos)[0]
    if kind != ARR:
        return pos + struct.calcsize(SCALAR_FMT[kind])
    item, n = struct.unpack_from("<IQ", raw, pos)
    pos += 12
    if item in SCALAR_FMT:
        return pos + n * struct.calcsize(SCALAR_FMT[item])
    for _ in range(n):
        pos = _skip_value(raw, pos, item)
    return pos


def _packaged_gguf_with(root, name, key, fmt, value, at_count=False):
    """A sparse copy of the packaged SmolLM2 GGUF (same length, only the header region
    written) with one value of its metadata (or an array's count) overwritten."""
    import mindscope

    src = Path(mindscope.list_models()["smollm2-135m"])
    with open(src, "rb") as f:
        raw = bytearray(f.read(8 << 20))
    pos, kind = _kv_offset(raw, key)
    if at_count:
        pos += 4  # an array's count follows its item type
    raw[pos : pos + struct.calcsize(fmt)] = struct.pack(fmt, value)
    dst = root / f"{name}.gguf"
    with open(dst, "wb") as f:
        f.write(raw)
        f.truncate(src.stat().st_size)
    return dst


def _poison(spec, name):
    i = next(i for i, t in enumerate(spec.tensors) if t[0] == name)
    n, shape, kind, data = spec.tensors[i]
    blob = bytearray(tensor_bytes(kind, data))
    bad = NAN_BITS["F32"][0] if kind == GGML_F32 else NAN_BITS["F16"][1]
    # Q8_0: poison a block's f16 scale (the first 2 of its 34 bytes).
    step = 34 if kind == GGML_Q8_0 else len(bad)
    at = len(blob) // 2 // step * step
    blob[at : at + len(bad)] = bad
    spec.tensors[i] = (n, shape, kind, bytes(blob))


def _hf_poisoned(root, model, name):
    src = TINY / model
    header, data = read_safetensors(src / "model.safetensors")
    e = header[name]
    bad = NAN_BITS[e["dtype"]][0]
    s, end = e["data_offsets"]
    at = s + (end - s) // 2 // len(bad) * len(bad)
    data = data[:at] + bad + data[at + len(bad) :]
    make_folder(root / f"poison_{model}", src, {"model.safetensors": safetensors_bytes(header, data)})
    return root / f"poison_{model}"


def _hf_shifted(root, model):
    src = TINY / model
    header, data = read_safetensors(src / "model.safetensors")
    first = min((k for k in header if k != "__metadata__"),
                key=lambda k: header[k]["data_offsets"][0])
    header[first]["data_offsets"] = [o + 2 for o in header[first]["data_offsets"]]
    make_folder(root / f"shifted_{model}", src, {"model.safetensors": safetensors_bytes(header, data)})
    return root / f"shifted_{model}"


def _sparse(path, magic):
    with open(path, "wb") as f:
        f.write(magic + bytes(28))
        f.truncate(4 << 30)
    return path


def _sparse_folder(folder):
    make_folder(folder, TINY / "llama3", {"model.safetensors": None})
    _sparse(folder / "model.safetensors", bytes(8))
    return folder


# ----------------------------------------------------------------------------------------------
# The worker: loads cases one by one under the memory limit, reporting each on stdout.


def _limit_memory(limit):
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _verdict(case: Case, status: str, cls: str, msg: str) -> str:
    if status == "broken":
        return f"FINDING: {msg[:200]}"
    if status == "loaded":
        return "FINDING: loaded, but must fail" if case.must_fail else "pass"
    if case.must_load:
        return f"FINDING: must load, raised {cls}"
    if status != "typed" or cls not in ALLOWED_ERRORS:
        return f"FINDING: {cls}"
    if case.expect_class and cls != case.expect_class:
        return f"FINDING: {cls}, expected {case.expect_class}"
    if case.expect_in and case.expect_in not in msg:
        return f"FINDING: the message does not name '{case.expect_in}'"
    return "pass"


SMOKE_TEXTS = ["the he", "a <|im_start|> t <pad> <fz>"]


def _smoke(model):
    """First use of a model that loaded: a padded batch through the forward (or the encoder's
    embedding). A typed refusal (a prompt too long for a mutated context length, ...) is fine;
    a failed tensor operation (an id beyond the embedding) or a NaN output is a finding: the
    loader let through a model that cannot run."""
    from mindscope.errors import ComputeError, InternalError, InvalidArgumentError, MindscopeError

    try:
        try:
            out = model.run(SMOKE_TEXTS, return_logits="last")
        except InvalidArgumentError as e:
            if "encoder" not in str(e):
                raise
            out = model.embed(SMOKE_TEXTS)
    except (ComputeError, InternalError) as e:
        return f"loaded, then failed on first use: {type(e).__name__}: {e}"
    except MindscopeError:
        return None
    except BaseException as e:  # noqa: BLE001 - PanicException derives from BaseException
        return f"loaded, then failed on first use: {type(e).__name__}: {e}"
    if not np.isfinite(out).all():
        return "loaded, then produced non-finite outputs"
    return None


def worker(seed: int, ids: list[str], root: Path, limit: int):
    _limit_memory(limit)
    import mindscope
    from mindscope.errors import MindscopeError

    targeted = None
    for cid in ids:
        print("START", cid, flush=True)
        t0 = time.monotonic()
        if cid.isdigit():
            case = random_case(seed, int(cid), root)
        else:
            if targeted is None:
                targeted = {c.id: c for c in targeted_cases(root)}
            case = targeted[cid]
            case.path = case.path()
        try:
            model = mindscope.load_model(str(case.path))
            status, cls, msg = "loaded", "", ""
            problem = _smoke(model)
            if problem:
                status, cls, msg = "broken", "", problem
            del model
        except MindscopeError as e:
            status, cls, msg = "typed", type(e).__name__, str(e)
        except BaseException as e:  # noqa: BLE001 - PanicException derives from BaseException
            status, cls, msg = "untyped", type(e).__name__, str(e)
        verdict = _verdict(case, status, cls, msg)
        took = time.monotonic() - t0
        record = {"id": cid, "desc": case.desc, "verdict": verdict, "status": status,
                  "class": cls, "message": msg[:300], "seconds": round(took, 3)}
        print("DONE", json.dumps(record), flush=True)
        p = case.path
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        shutil.rmtree(root / f"src{cid}", ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# The driver: runs workers over a list of case ids, restarting after a crash or a hang.


def run_cases(seed: int, ids: list[str], limit=MEMORY_LIMIT, timeout=CASE_TIMEOUT,
              verbose=False) -> list[dict]:
    """Run the cases; one record per case (a crash or hang becomes that case's record)."""
    results = []
    pending = list(ids)
    with tempfile.TemporaryDirectory(prefix="mindscope-fuzz-") as tmp:
        while pending:
            done, crashed = _run_worker(seed, pending, Path(tmp), limit, timeout, verbose)
            results += done
            finished = {r["id"] for r in done}
            pending = [c for c in pending if c not in finished]
            if crashed is not None:
                results.append(crashed)
                pending = [c for c in pending if c != crashed["id"]]
    return results


def _run_worker(seed, ids, root, limit, timeout, verbose):
    cmd = [sys.executable, __file__, "--worker", "--seed", str(seed), "--root", str(root),
           "--limit", str(limit)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdin.write("\n".join(ids))
    proc.stdin.close()
    lines: queue.Queue = queue.Queue()
    stderr: list[str] = []
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout] + [lines.put(None)],
                     daemon=True).start()
    threading.Thread(target=lambda: stderr.extend(proc.stderr), daemon=True).start()
    done, current, started = [], None, time.monotonic()
    while True:
        try:
            line = lines.get(timeout=max(0.1, timeout - (time.monotonic() - started)))
        except queue.Empty:
            proc.kill()
            proc.wait()
            return done, _crash_record(seed, current, f"hang: no result after {timeout} s", "")
        if line is None:
            break
        if line.startswith("START "):
            current, started = line.split()[1], time.monotonic()
        elif line.startswith("DONE "):
            rec = json.loads(line[5:])
            done.append(rec)
            if verbose or rec["verdict"] != "pass":
                print(f"[{rec['id']}] {rec['verdict']} ({rec['class'] or 'loaded'}) {rec['desc']}"
                      f" -> {rec['message'][:160]}", flush=True)
            current = None
    code = proc.wait()
    if current is None and code == 0:
        return done, None
    why = f"worker exited with {'signal ' + str(-code) if code < 0 else 'status ' + str(code)}"
    if current is None:
        raise RuntimeError(f"{why} between cases:\n{''.join(stderr)[-3000:]}")
    return done, _crash_record(seed, current, why, "".join(stderr)[-2000:])


def _crash_record(seed, cid, why, stderr):
    with tempfile.TemporaryDirectory() as tmp:
        if cid.isdigit():
            desc = random_case(seed, int(cid), Path(tmp)).desc
        else:
            desc = next(c.desc for c in targeted_cases(Path(tmp)) if c.id == cid)
    rec = {"id": cid, "desc": desc, "verdict": f"FINDING: {why}", "status": "crash",
           "class": "", "message": stderr, "seconds": None}
    print(f"[{cid}] {rec['verdict']} {desc}\n{stderr}", flush=True)
    return rec


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=500, help="random cases to run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--start", type=int, default=0, help="first case index")
    ap.add_argument("--only", type=str, help="comma-separated case ids (numbers or names)")
    ap.add_argument("--targeted", action="store_true", help="also run the targeted cases")
    ap.add_argument("--limit", type=int, default=MEMORY_LIMIT, help="RLIMIT_AS in bytes")
    ap.add_argument("--timeout", type=float, default=CASE_TIMEOUT, help="seconds per case")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.seed, sys.stdin.read().split(), args.root, args.limit)
        return 0
    if args.only:
        ids = args.only.split(",")
    else:
        ids = [str(i) for i in range(args.start, args.start + args.cases)]
        if args.targeted:
            with tempfile.TemporaryDirectory() as tmp:
                ids = [c.id for c in targeted_cases(Path(tmp))] + ids
    t0 = time.monotonic()
    results = run_cases(args.seed, ids, args.limit, args.timeout, args.verbose)
    findings = [r for r in results if r["verdict"] != "pass"]
    loaded = sum(r["status"] == "loaded" for r in results)
    typed = sum(r["status"] == "typed" for r in results)
    print(f"{len(results)} cases (seed {args.seed}) in {time.monotonic() - t0:.0f} s: "
          f"{loaded} loaded, {typed} refused with a typed error, {len(findings)} findings")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
