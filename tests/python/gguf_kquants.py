"""Weight matrices in ggml's k-quant blocks (Q2_K to Q6_K), written in numpy: gguf 0.19 (the
`gguf` package) dequantizes them but has no quantizer for them. Used to build k-quant GGUF files
for the tests; the layout is checked against ``gguf.quants.dequantize``
(test_quantized_gguf.py). Scales are plain min/max per sub-block, not llama.cpp's error search:
the values are coarser than llama-quantize's, the format is the same."""

from __future__ import annotations

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT

QK_K = 256  # values per super-block
K_QUANTS = (QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K)


def _f16(x: np.ndarray) -> np.ndarray:
    """Rounded to float16 as stored, back as float32."""
    return x.astype(np.float16).astype(np.float32)


def _div(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return np.divide(x, scale, out=np.zeros(np.broadcast(x, scale).shape, np.float32), where=scale != 0)


def _scale_min_quants(xb: np.ndarray, levels: int, scale_levels: int):
    """Asymmetric sub-blocks ``y = d * sc * q - dmin * m`` (q in 0..levels, sc and m in
    0..scale_levels): xb ``[blocks, subs, n]`` -> (q, sc, m, d, dmin)."""
    mins = np.maximum(-xb.min(-1), 0.0)  # stored as a positive offset subtracted
    scales = (xb.max(-1) + mins) / levels
    d = _f16(scales.max(-1) / scale_levels)
    dmin = _f16(mins.max(-1) / scale_levels)
    sc = np.clip(np.rint(_div(scales, d[:, None])), 0, scale_levels)
    m = np.clip(np.rint(_div(mins, dmin[:, None])), 0, scale_levels)
    eff_scale = (d[:, None] * sc)[..., None]
    eff_min = (dmin[:, None] * m)[..., None]
    q = np.clip(np.rint(_div(xb + eff_min, eff_scale)), 0, levels)
    return q.astype(np.uint8), sc.astype(np.uint8), m.astype(np.uint8), d, dmin


def _pack_bits(q: np.ndarray, bits: int, group: int) -> np.ndarray:
    """``q`` ``[blocks, k * group]`` (values < 2**bits) -> ``[blocks, group]`` bytes where value
    ``s * group + l`` sits at bits ``s * bits`` of byte ``l`` (ggml's planar packing)."""
    n = q.shape[1] // group
    parts = q.reshape(q.shape[0], n, group).astype(np.uint16) & ((1 << bits) - 1)
    shifts = (np.arange(n, dtype=np.uint16) * bits)[None, :, None]
    return (parts << shifts).sum(1).astype(np.uint8)


def _pack_k_scales(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Eight 6-bit scales and eight 6-bit mins in Q4_K/Q5_K's 12 bytes: bytes 0-3 hold scales
    0-3, bytes 4-7 mins 0-3 (their top two bits the high bits of scales/mins 4-7), bytes 8-11
    the low nibbles of scales 4-7 and mins 4-7."""
    out = np.zeros((sc.shape[0], 12), np.uint8)
    out[:, 0:4] = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    out[:, 4:8] = m[:, :4] | ((m[:, 4:] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:] & 0xF) | ((m[:, 4:] & 0xF) << 4)
    return out


def _half_bytes(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).view(np.uint8).reshape(-1, 2)


def quantize_k(x: np.ndarray, qtype: QT) -> np.ndarray:
    """``x`` ``[rows, cols]`` (cols a multiple of 256) in a k-quant: ``[rows, bytes per row]``
    uint8 in ggml's block layout."""
    rows, cols = x.shape
    xb = x.reshape(-1, QK_K).astype(np.float32)
    nb = xb.shape[0]
    if qtype == QT.Q2_K:  # 16 x 16 values, 2 bits, 4-bit scale and min
        q, sc, m, d, dmin = _scale_min_quants(xb.reshape(nb, 16, 16), 3, 15)
        q = q.reshape(nb, QK_K)
        qs = np.concatenate([_pack_bits(q[:, h * 128:(h + 1) * 128], 2, 32) for h in range(2)], 1)
        blocks = [sc | (m << 4), qs, _half_bytes(d), _half_bytes(dmin)]
    elif qtype == QT.Q3_K:  # 16 x 16 values, signed 3 bits, signed 6-bit scales
        sub = xb.reshape(nb, 16, 16)
        # The largest |x| of a sub-block maps to -4, the end of the range that reaches 4.
        peak = np.take_along_axis(sub, np.abs(sub).argmax(-1)[..., None], -1)[..., 0]
        scales = -peak / 4
        d = _f16(np.abs(scales).max(-1) / 31)
        sc = np.clip(np.rint(_div(scales, d[:, None])), -32, 31)
        q = np.clip(np.rint(_div(sub, (d[:, None] * sc)[..., None])), -4, 3).reshape(nb, QK_K)
        qu = (q + 4).astype(np.uint8)  # 0..7: low two bits in qs, the third in hmask
        qs = np.concatenate([_pack_bits(qu[:, h * 128:(h + 1) * 128] & 3, 2, 32) for h in range(2)], 1)
        hmask = _pack_bits(qu >> 2, 1, 32)
        s = (sc + 32).astype(np.uint8)  # 6 bits: low nibbles in bytes 0-7, high pairs in 8-11
        scale_bytes = np.concatenate([(s[:, :8] & 0xF) | ((s[:, 8:] & 0xF) << 4),
                                      _pack_bits(s >> 4, 2, 4)], 1)
        blocks = [hmask, qs, scale_bytes, _half_bytes(d)]
    elif qtype in (QT.Q4_K, QT.Q5_K):  # 8 x 32 values, 4 or 5 bits, 6-bit scales and mins
        bits = 4 if qtype == QT.Q4_K else 5
        q, sc, m, d, dmin = _scale_min_quants(xb.reshape(nb, 8, 32), (1 << bits) - 1, 63)
        q = q.reshape(nb, QK_K)
        qs = np.concatenate([_pack_bits(q[:, h * 64:(h + 1) * 64] & 0xF, 4, 32) for h in range(4)], 1)
        blocks = [_half_bytes(d), _half_bytes(dmin), _pack_k_scales(sc, m)]
        if bits == 5:
            blocks.append(_pack_bits(q >> 4, 1, 32))
        blocks.append(qs)
    elif qtype == QT.Q6_K:  # 16 x 16 values, signed 6 bits, int8 scales
        sub = xb.reshape(nb, 16, 16)
        scales = np.abs(sub).max(-1) / 31
        d = _f16(scales.max(-1) / 127)
        sc = np.clip(np.rint(_div(scales, d[:, None])), 0, 127)
        q = np.clip(np.rint(_div(sub, (d[:, None] * sc)[..., None])), -32, 31).reshape(nb, QK_K)
        qu = (q + 32).astype(np.uint8)
        ql = np.concatenate([_pack_bits(qu[:, h * 128:(h + 1) * 128] & 0xF, 4, 64) for h in range(2)], 1)
        qh = np.concatenate([_pack_bits(qu[:, h * 128:(h + 1) * 128] >> 4, 2, 32) for h in range(2)], 1)
        blocks = [ql, qh, sc.astype(np.int8).view(np.uint8), _half_bytes(d)]
    else:
        raise AssertionError(f"{qtype.name} is not a k-quant")
    out = np.concatenate(blocks, 1)
    block_bytes = gguf.GGML_QUANT_SIZES[qtype][1]
    assert out.shape == (nb, block_bytes), (qtype.name, out.shape)
    return out.reshape(rows, cols // QK_K * block_bytes)
