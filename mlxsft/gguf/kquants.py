"""llama.cpp's K-quant encoders (Q4_K, Q5_K, Q6_K) in numpy.

The `gguf` package de-quantizes K-quants but cannot make them, and these are the types
people run (`Q4_K_M` mixes Q4_K and Q6_K tensors, `Q5_K_M` Q5_K and Q6_K). The bytes follow
ggml's block layouts (ggml-common.h: block_q4_K, block_q5_K, block_q6_K; 256 weights per
super-block) so `gguf.quants.dequantize` and llama.cpp read them. The search for each
sub-block's scale follows llama.cpp's reference quantizer in spirit (make_qkx2_quants for
the affine Q4_K/Q5_K, make_qx_quants for the symmetric Q6_K: try a grid of scales around
the min/max one, keep the least-squares best), without its importance-matrix weighting.

`quantize(x, type_name)` takes float32 rows whose length is a multiple of 256 and returns
uint8 rows, as `gguf.quants.quantize` does for the types it knows.
"""

from __future__ import annotations

import numpy as np

QK_K = 256
K_TYPES = ("Q4_K", "Q5_K", "Q6_K")


def _round(x):
    # llama.cpp's nearest_int rounds half away from zero, not to even.
    return np.trunc(x + np.copysign(np.float32(0.5), x))


def _affine_subblocks(x: np.ndarray, nmax: int, steps: int = 20):
    """(scale >= 0, min >= 0) per row of `x` so that x ~ scale * q - min, q in 0..nmax:
    the best of a grid of scales around (max - min) / nmax, each refit by least squares
    (llama.cpp's make_qkx2_quants with rmin=-1, rdelta=0.1, unit weights)."""
    lo = np.minimum(x.min(axis=-1, keepdims=True), 0)  # the min is stored as -min >= 0
    hi = x.max(axis=-1, keepdims=True)
    span = hi - lo
    flat = span[..., 0] == 0
    span = np.where(span == 0, 1, span)
    scale, minimum = span / nmax, lo
    best = ((np.clip(_round((x - lo) / scale), 0, nmax) * scale + lo - x) ** 2).sum(-1)
    n = x.shape[-1]
    for step in range(steps + 1):
        iscale = (-1 + 0.1 * step + nmax) / span
        q = np.clip(_round(iscale * (x - lo)), 0, nmax)
        # least squares for x ~ s * q + m over this assignment
        sq, sx, sqq, sqx = q.sum(-1), x.sum(-1), (q * q).sum(-1), (q * x).sum(-1)
        det = n * sqq - sq * sq
        ok = det > 0
        det = np.where(ok, det, 1)
        s = (n * sqx - sq * sx) / det
        m = (sqq * sx - sq * sqx) / det
        # the minimum must stay <= 0: refit the scale alone with m = 0 where it is not
        pos = m > 0
        s = np.where(pos, np.where(sqq > 0, sqx / np.where(sqq > 0, sqq, 1), 0), s)
        m = np.where(pos, 0, m)
        err = ((s[..., None] * q + m[..., None] - x) ** 2).sum(-1)
        better = ok & (err < best) & (s > 0)
        best = np.where(better, err, best)
        scale = np.where(better[..., None], s[..., None], scale)
        minimum = np.where(better[..., None], m[..., None], minimum)
    scale = np.where(flat[..., None], 0, scale)
    return scale[..., 0], -minimum[..., 0]


def _pack_scales_mins(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """8 six-bit scales and 8 six-bit mins in Q4_K/Q5_K's 12 bytes (get_scale_min_k4)."""
    sc, m = sc.astype(np.uint8), m.astype(np.uint8)
    out = np.empty((sc.shape[0], 12), np.uint8)
    out[:, 0:4] = (sc[:, 0:4] & 63) | ((sc[:, 4:8] >> 4) << 6)
    out[:, 4:8] = (m[:, 0:4] & 63) | ((m[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:8] & 15) | ((m[:, 4:8] & 15) << 4)
    return out


def _super_block_affine(blocks: np.ndarray, nmax: int):
    """Q4_K/Q5_K's common part: (d, dmin as float16 bytes, packed scales, q in 0..nmax)."""
    n = blocks.shape[0]
    sub = blocks.reshape(n, 8, 32)
    scale, neg_min = _affine_subblocks(sub, nmax)
    max_scale, max_min = scale.max(-1, keepdims=True), neg_min.max(-1, keepdims=True)
    d = (max_scale / 63).astype(np.float16)
    dmin = (max_min / 63).astype(np.float16)
    d32, dmin32 = d.astype(np.float32), dmin.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d32 > 0, np.clip(_round(scale / d32), 0, 63), 0)
        m = np.where(dmin32 > 0, np.clip(_round(neg_min / dmin32), 0, 63), 0)
        step, offset = (d32 * sc)[..., None], (dmin32 * m)[..., None]
        q = np.where(step > 0, _round((sub + offset) / step), 0)
    q = np.clip(q, 0, nmax).astype(np.uint8)
    return d.view(np.uint8), dmin.view(np.uint8), _pack_scales_mins(sc, m), q


def _nibbles(q: np.ndarray) -> np.ndarray:
    """(n, 8, 32) values < 16 as Q4_K's qs: byte 32c + l holds sub-block 2c (low nibble)
    and sub-block 2c + 1 (high nibble) at position l."""
    q = q.reshape(q.shape[0], 4, 2, 32)
    return (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(q.shape[0], 128)


def quantize_q4_k(blocks: np.ndarray) -> np.ndarray:
    d, dmin, scales, q = _super_block_affine(blocks, 15)
    return np.concatenate([d, dmin, scales, _nibbles(q)], axis=1)


def quantize_q5_k(blocks: np.ndarray) -> np.ndarray:
    d, dmin, scales, q = _super_block_affine(blocks, 31)
    high = (q >> 4) & 1  # (n, 8, 32): bit j of qh[l] is sub-block j's fifth bit at l
    qh = (high << np.arange(8, dtype=np.uint8)[None, :, None]).sum(1, dtype=np.uint8)
    return np.concatenate([d, dmin, scales, qh, _nibbles(q & 15)], axis=1)


def _symmetric_subblocks(x: np.ndarray, nmax: int = 32) -> np.ndarray:
    """Signed scale per row so that x ~ scale * q, q in -nmax..nmax-1: llama.cpp's
    make_qx_quants (the extreme value maps to -nmax; a grid of 19 scales, least squares)."""
    idx = np.abs(x).argmax(-1)[..., None]
    amax = np.take_along_axis(x, idx, -1)[..., 0]
    best_scale = np.zeros_like(amax)
    best_err = np.full_like(amax, np.inf)
    nonzero = amax != 0
    safe = np.where(nonzero, amax, 1)
    for step in range(-9, 10):
        iscale = -(nmax + 0.1 * step) / safe
        q = np.clip(_round(iscale[..., None] * x), -nmax, nmax - 1)
        qq = (q * q).sum(-1)
        s = np.where(qq > 0, (q * x).sum(-1) / np.where(qq > 0, qq, 1), 0)
        err = ((s[..., None] * q - x) ** 2).sum(-1)
        better = err < best_err
        best_err, best_scale = np.where(better, err, best_err), np.where(better, s, best_scale)
    return np.where(nonzero, best_scale, 0)


def quantize_q6_k(blocks: np.ndarray) -> np.ndarray:
    n = blocks.shape[0]
    sub = blocks.reshape(n, 16, 16)
    scale = _symmetric_subblocks(sub)
    idx = np.abs(scale).argmax(-1)[..., None]
    max_scale = np.take_along_axis(scale, idx, -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = np.where(max_scale != 0, -128 / max_scale, 0)
        d = np.where(iscale != 0, 1 / iscale, 0).astype(np.float16)
        sc = np.clip(_round(iscale * scale), -128, 127)
        step = (d.astype(np.float32) * sc)[..., None]
        q = np.where(step != 0, _round(sub / step), 0)
    q = (np.clip(q, -32, 31) + 32).astype(np.uint8).reshape(n, 2, 2, 2, 32)  # (h, s, k, l)
    low, high = q & 15, q >> 4
    ql = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(n, 128)  # byte 64h + 32k + l, nibble s
    high = high.reshape(n, 2, 4, 32)  # (h, t = 2s + k, l): bits 2t of byte 32h + l
    qh = (high << (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]).sum(
        2, dtype=np.uint8).reshape(n, 64)
    return np.concatenate([ql, qh, sc.astype(np.int8).view(np.uint8), d.view(np.uint8)],
                          axis=1)


_ENCODERS = {"Q4_K": quantize_q4_k, "Q5_K": quantize_q5_k, "Q6_K": quantize_q6_k}


def quantize(x: np.ndarray, type_name: str) -> np.ndarray:
    """Rows of float weights (last axis a multiple of 256) as K-quant bytes, one row of
    blocks per input row: shape (*x.shape[:-1], x.shape[-1] // 256 * block bytes)."""
    x = np.asarray(x, np.float32)
    if x.shape[-1] % QK_K:
        raise ValueError(f"{type_name} needs rows of a multiple of {QK_K} weights, "
                         f"not {x.shape[-1]}")
    blocks = x.reshape(-1, QK_K)
    out = _ENCODERS[type_name](blocks.astype(np.float32))
    return out.reshape(*x.shape[:-1], -1)
