"""GGUF tensor data as MLX arrays, read through a read-only memory map.

Why not `mx.load`: it opens a .gguf read-write (O_RDWR|O_APPEND), so a file on a read-only
mount, in a system-wide install or owned by another user cannot be loaded at all. Here the
file is mapped with `numpy.memmap(mode="r")`; nothing ever asks for write access.

What each ggml type becomes:
- F32, F16, BF16: the same float type.
- Q4_0, Q4_1, Q8_0: MLX affine-quantized weights (packed uint32, scales, biases; group size
  32), rearranged bit for bit: the values are exactly llama.cpp's.
- Q4_K: also exactly, as MLX 4-bit with group size 32 (each 32-weight sub-block is
  d*sc * q - dmin*m, q in 0..15: an affine group).
- every other type the `gguf` package de-quantizes (Q2_K, Q3_K, Q5_K, Q6_K, Q5_0/Q5_1, IQ
  types, ...): de-quantized to float32 with `gguf.quants.dequantize` (llama.cpp's reference
  Python) and, unless float weights are asked for, re-quantized to MLX affine with
  `requant_bits` (4 bits for sources of at most 4.5 bits per weight, else 8), group size 32.

It does not rename tensors or reorder rows; `mlxsft.gguf.reader` does that.
"""

from __future__ import annotations

from math import prod

import numpy as np

GROUP_SIZE = 32  # every ggml block MLX keeps quantized has 32 weights per block
NATIVE_TYPES = {"Q4_0": 4, "Q4_1": 4, "Q8_0": 8}  # ggml types MLX holds without loss
FLOAT_TYPES = {"F32", "F16", "BF16"}


def bits_per_weight(type_name: str) -> float:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    block, nbytes = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]
    return nbytes * 8 / block


def requant_bits(type_name: str) -> int:
    """MLX bits for a ggml type MLX cannot keep: the fewer of 4 and 8 that does not lose
    much of the source's precision (Q2_K..Q4_K and 4-bit IQ types -> 4; Q5_*, Q6_K -> 8)."""
    return 4 if bits_per_weight(type_name) <= 4.5 else 8


def dequantizable(type_name: str) -> bool:
    """True when the `gguf` package can turn this ggml type into floats."""
    from gguf import GGMLQuantizationType
    from gguf.quants import _type_traits

    kind = getattr(GGMLQuantizationType, type_name, None)
    if kind is None:
        return False
    if type_name in FLOAT_TYPES:
        return True
    traits = _type_traits.get(kind)
    # Some types are registered but have no numpy de-quantizer (it raises when called).
    return traits is not None and "dequantize_blocks" in vars(traits)


def open_data(path):
    """The whole file as a read-only uint8 array (a memory map; no write access needed)."""
    return np.memmap(path, dtype=np.uint8, mode="r")


def raw_bytes(data, data_start: int, tensor) -> np.ndarray:
    start = data_start + tensor.offset
    return data[start:start + tensor.nbytes]


def float32_values(raw: np.ndarray, type_name: str, shape) -> np.ndarray:
    """llama.cpp's values of a tensor as float32 (numpy order shape)."""
    if type_name == "F32":
        return np.frombuffer(raw, np.float32).reshape(shape)
    if type_name == "F16":
        return np.frombuffer(raw, np.float16).astype(np.float32).reshape(shape)
    if type_name == "BF16":
        return (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(
            np.float32).reshape(shape)
    from gguf import GGMLQuantizationType, quants

    rows = np.asarray(raw).reshape(prod(shape[:-1]), -1)
    return quants.dequantize(rows, GGMLQuantizationType[type_name]).reshape(shape)


def _native_affine(raw: np.ndarray, type_name: str, shape):
    """Q4_0 / Q4_1 / Q8_0 blocks as MLX's (packed uint32, float16 scales, float16 biases)."""
    n_blocks = prod(shape) // 32
    blocks = np.asarray(raw).reshape(n_blocks, -1)
    group_shape = (*shape[:-1], shape[-1] // 32)
    d = blocks[:, :2].copy().view(np.float16).reshape(group_shape)
    if type_name == "Q8_0":
        # value = d * q with q in int8; MLX: scale * u + bias with u = q + 128 in uint8.
        u = (blocks[:, 2:] ^ np.uint8(0x80)).copy()
        packed = u.view(np.uint32).reshape(*shape[:-1], shape[-1] // 4)
        return packed, d, (d * np.float16(-128)).astype(np.float16)
    if type_name == "Q4_0":
        qs, bias = blocks[:, 2:], (d * np.float16(-8)).astype(np.float16)
    else:  # Q4_1: value = d * q + m
        qs, bias = blocks[:, 4:], blocks[:, 2:4].copy().view(np.float16).reshape(group_shape)
    # ggml: byte j holds weight j (low nibble) and weight j + 16 (high nibble).
    # MLX: byte j holds weight 2j (low nibble) and weight 2j + 1 (high nibble).
    q = np.concatenate([qs & np.uint8(0x0F), qs >> np.uint8(4)], axis=1)
    mlx_bytes = (q[:, 0::2] | (q[:, 1::2] << np.uint8(4))).astype(np.uint8)
    packed = np.ascontiguousarray(mlx_bytes).view(np.uint32).reshape(*shape[:-1], shape[-1] // 8)
    return packed, d, bias


def _q4_k_affine(raw: np.ndarray, shape):
    """Q4_K super-blocks as MLX 4-bit groups of 32: the same values, no re-quantization."""
    from gguf.quants import Q4_K

    blocks = np.asarray(raw).reshape(-1, 144)
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)
    dmin = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
    sc, m = Q4_K.get_scale_min(blocks[:, 4:16].copy())
    qs = blocks[:, 16:].reshape(-1, 4, 1, 32) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)
    q = (qs & np.uint8(15)).reshape(-1, 256)  # weight order: sub-block 2c, 2c + 1 of chunk c
    packed = (q[:, 0::2] | (q[:, 1::2] << np.uint8(4))).astype(np.uint8)
    group_shape = (*shape[:-1], shape[-1] // 32)
    scales = (d * sc.astype(np.float32)).reshape(group_shape)
    biases = (-dmin * m.astype(np.float32)).reshape(group_shape)
    return (np.ascontiguousarray(packed).view(np.uint32).reshape(*shape[:-1], shape[-1] // 8),
            scales, biases)


def tensor_arrays(raw: np.ndarray, type_name: str, shape, *, dequantize: bool) -> dict:
    """{"weight": ...} or {"weight", "scales", "biases"} MLX arrays for one tensor."""
    import mlx.core as mx

    if type_name in ("F32", "F16"):
        dtype = np.float32 if type_name == "F32" else np.float16
        return {"weight": mx.array(np.frombuffer(raw, dtype).reshape(shape))}
    if type_name == "BF16":
        bits = np.frombuffer(raw, np.uint16).reshape(shape)
        return {"weight": mx.array(bits).view(mx.bfloat16)}
    if (type_name in NATIVE_TYPES or type_name == "Q4_K") and len(shape) > 1:
        if type_name == "Q4_K":
            packed, scales, biases = _q4_k_affine(raw, shape)
        else:
            packed, scales, biases = _native_affine(raw, type_name, shape)
        weight, scales, biases = mx.array(packed), mx.array(scales), mx.array(biases)
        bits = NATIVE_TYPES.get(type_name, 4)
        if not dequantize:
            # float16 scales, as Q4_0/Q4_1/Q8_0 store them: one float dtype for the model.
            return {"weight": weight, "scales": scales.astype(mx.float16),
                    "biases": biases.astype(mx.float16)}
        return {"weight": mx.dequantize(weight, scales.astype(mx.float32),
                                        biases.astype(mx.float32), group_size=GROUP_SIZE,
                                        bits=bits)}
    values = mx.array(float32_values(raw, type_name, shape))
    if dequantize or len(shape) < 2 or shape[-1] % GROUP_SIZE:
        return {"weight": values}
    weight, scales, biases = mx.quantize(values, group_size=GROUP_SIZE,
                                         bits=requant_bits(type_name))
    # float16 scales, as the natively read types have: one float dtype for the model.
    return {"weight": weight, "scales": scales.astype(mx.float16),
            "biases": biases.astype(mx.float16)}
