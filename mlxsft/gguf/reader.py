"""Load a GGUF file (llama.cpp's format) as an mlx-lm model, its tokenizer and an HF-style config.

The header is read here, so that a truncated download, an architecture we cannot build or
a tensor type we cannot read is named before any weight is read. The tensors are read
through a read-only memory map by `mlxsft.gguf.tensors` (never `mx.load`, which needs write
access): Q4_0, Q4_1 and Q8_0 arrive as MLX affine-quantized weights (group size 32, the
same numbers llama.cpp computes with), F32/F16/BF16 as floats, and K-quants, Q5_0/Q5_1
and IQ types de-quantized with the `gguf` package and re-quantized to MLX affine 4 or 8
bits (or kept float on request), which the load notes say. They are renamed to mlx-lm's
names, llama's q/k rows are put back in Hugging Face order, and the model is an
`mlx_lm.models.<arch>.Model`. The tokenizer is rebuilt from the metadata with `tokenizers`
(byte-level BPE vocabularies; the pre-tokenizer follows llama.cpp's table).

It does not read SentencePiece vocabularies, types the `gguf` package cannot de-quantize,
or architectures other than those in `ARCHITECTURES`; each of those is a `UserError`
that says what to use instead. Writing GGUF is `mlxsft.gguf.writer`.
"""

from __future__ import annotations

import importlib
import mmap
import re
import struct
from collections import Counter
from dataclasses import dataclass
from math import prod
from pathlib import Path

from mlxsft.errors import UserError
from mlxsft.gguf.tensors import FLOAT_TYPES, GROUP_SIZE, NATIVE_TYPES  # noqa: F401
from mlxsft.gguf.tokenizer import PRE_TOKENIZERS, build_tokenizer, tokenizer_problem  # noqa: F401

GGUF_MAGIC = b"GGUF"

# ggml tensor types: id -> (name, elements per block, bytes per block).
GGML_TYPES = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
    26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17),
}
QUANTIZED_TYPES = NATIVE_TYPES  # the name earlier callers used

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?",
          10: "<u8", 11: "<i8", 12: "<f8"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    shape: tuple[int, ...]  # numpy order: rows first (ggml lists the fastest axis first)
    type_name: str
    offset: int  # from the start of the data section
    nbytes: int | None  # None for a ggml type this module does not know


@dataclass(frozen=True)
class GGUFHeader:
    path: Path
    version: int
    metadata: dict
    tensors: tuple[GGUFTensor, ...]
    data_start: int
    file_size: int


class _Truncated(Exception):
    pass


class _Reader:
    """Little-endian values from a buffer; running off its end means a truncated file."""

    def __init__(self, buf):
        self.buf, self.pos = buf, 0

    def unpack(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise _Truncated
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += size
        return value

    def string(self) -> str:
        n = self.unpack("<Q")
        if n > len(self.buf):  # longer than the whole file: a damaged length, not a short file
            raise ValueError(f"a string of {n} bytes at offset {self.pos - 8}")
        if self.pos + n > len(self.buf):
            raise _Truncated
        text = bytes(self.buf[self.pos:self.pos + n]).decode("utf-8")
        self.pos += n
        return text

    def value(self, kind: int):
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item_kind, count = self.unpack("<I"), self.unpack("<Q")
            if count > len(self.buf):
                raise ValueError(f"an array of {count} items at offset {self.pos - 12}")
            if item_kind in _NUMPY:
                import numpy as np

                dtype = np.dtype(_NUMPY[item_kind])
                if self.pos + count * dtype.itemsize > len(self.buf):
                    raise _Truncated
                items = np.frombuffer(self.buf, dtype, count, self.pos).tolist()
                self.pos += count * dtype.itemsize
                return items
            return [self.value(item_kind) for _ in range(count)]
        if kind not in _SCALARS:
            raise ValueError(f"unknown metadata value type {kind}")
        return self.unpack(_SCALARS[kind])


def is_gguf(path) -> bool:
    """True when `path` is a file that starts with the GGUF magic bytes (whatever its name)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def read_gguf_header(path) -> GGUFHeader:
    """The metadata and tensor table of a GGUF file, checked against the file's size."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such GGUF file")
    size = path.stat().st_size
    if not is_gguf(path):
        raise UserError(f"{path}: not a GGUF file (it does not start with the bytes 'GGUF'); "
                        "pass a .gguf file from llama.cpp or a Hugging Face model directory")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        reader = _Reader(memoryview(buf))
        try:
            header = _parse(reader, path, size)
        except _Truncated:
            raise UserError(f"{path}: truncated GGUF (the file ends inside its header, at "
                            f"{size} bytes); the download or copy is incomplete, fetch it "
                            "again") from None
        except ValueError as e:  # an unknown value type, a version we do not read, bad UTF-8
            raise UserError(f"{path}: corrupt GGUF header ({e})") from None
        finally:
            reader.buf.release()
    for tensor in header.tensors:
        end = header.data_start + tensor.offset + (tensor.nbytes or 0)
        if end > size:
            raise UserError(f"{path}: truncated GGUF (tensor {tensor.name} ends at byte {end}, "
                            f"the file has {size}); the download or copy is incomplete, fetch "
                            "it again")
    return header


def _parse(reader: _Reader, path: Path, size: int) -> GGUFHeader:
    """Everything before the tensor data, as the GGUF spec lays it out: version, metadata,
    tensor table. ggml lists dimensions fastest-varying first; we keep numpy order."""
    reader.pos = 4
    version = reader.unpack("<I")
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version}; only versions 2 and 3 are read")
    n_tensors, n_kv = reader.unpack("<Q"), reader.unpack("<Q")
    if n_tensors > size or n_kv > size:
        raise ValueError(f"{n_tensors} tensors and {n_kv} metadata entries in a {size}-byte file")
    metadata = {}
    for _ in range(n_kv):
        key = reader.string()
        metadata[key] = reader.value(reader.unpack("<I"))
    tensors = []
    for _ in range(n_tensors):
        name = reader.string()
        dims = [reader.unpack("<Q") for _ in range(reader.unpack("<I"))]
        type_id, offset = reader.unpack("<I"), reader.unpack("<Q")
        type_name, block, block_bytes = GGML_TYPES.get(type_id, (f"type {type_id}", None, None))
        nbytes = prod(dims) // block * block_bytes if block else None
        tensors.append(GGUFTensor(name, tuple(reversed(dims)), type_name, offset, nbytes))
    alignment = metadata.get("general.alignment", 32)
    data_start = -(-reader.pos // alignment) * alignment
    return GGUFHeader(path, version, metadata, tuple(tensors), data_start, size)


def gguf_summary(path) -> dict:
    """What a GGUF holds, for `mlxsft env` and error messages: no weight is read."""
    header = read_gguf_header(path)
    md = header.metadata
    return {
        "path": str(header.path),
        "architecture": md.get("general.architecture"),
        "name": md.get("general.name"),
        "tensor_types": dict(Counter(t.type_name for t in header.tensors).most_common()),
        "parameters": sum(prod(t.shape) for t in header.tensors),
        "tokenizer": md.get("tokenizer.ggml.model"),
        "problem": _problem(header),  # why load_gguf would refuse it, or None
    }


# -- the model ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Architecture:
    module: str  # mlx_lm.models.<module>
    # llama.cpp's converter reorders llama's q/k rows for its interleaved RoPE; models it
    # runs with NeoX-style RoPE (qwen2, qwen3, phi3, gemma) are stored as HF has them.
    permuted_qk: bool
    # Gemma's converter stores every RMSNorm weight + 1 (llama.cpp multiplies by the
    # weight; Gemma's norm multiplies by 1 + weight, as mlx-lm's does).
    norm_shift: float = 0.0
    names: tuple = ()  # GGUF block tensor -> mlx-lm module, where this family differs


_GEMMA2_NAMES = (("ffn_norm", "pre_feedforward_layernorm"),
                 ("post_attention_norm", "post_attention_layernorm"),
                 ("post_ffw_norm", "post_feedforward_layernorm"))
ARCHITECTURES = {
    "llama": Architecture("llama", True),  # Llama 1-3, SmolLM, Mistral 7B and their kin
    "mistral": Architecture("llama", True),  # what some converters call a Mistral 7B
    "qwen2": Architecture("qwen2", False),
    "qwen3": Architecture("qwen3", False),
    "phi3": Architecture("phi3", False, names=(("attn_qkv", "self_attn.qkv_proj"),
                                               ("ffn_up", "mlp.gate_up_proj"))),
    "gemma": Architecture("gemma", False, 1.0),
    "gemma2": Architecture("gemma2", False, 1.0, _GEMMA2_NAMES),
    "gemma3": Architecture("gemma3_text", False, 1.0, _GEMMA2_NAMES),
}

_TOP_LEVEL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm",
              "output": "lm_head"}
_IN_BLOCK = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}


def mlx_name(gguf_name: str, arch: str | None = None) -> str | None:
    """The mlx-lm parameter name for a GGUF tensor (or an MLX `.scales`/`.biases` part)."""
    base, _, suffix = gguf_name.rpartition(".")
    if m := re.fullmatch(r"blk\.(\d+)\.(\w+)", base):
        family = dict(ARCHITECTURES[arch].names) if arch in ARCHITECTURES else {}
        part = family.get(m[2], _IN_BLOCK.get(m[2]))
        return f"model.layers.{m[1]}.{part}.{suffix}" if part else None
    top = _TOP_LEVEL.get(base)
    return f"{top}.{suffix}" if top else None


def _problem(header: GGUFHeader) -> str | None:
    """Why this file cannot be loaded as a model, or None."""
    arch = header.metadata.get("general.architecture")
    if arch not in ARCHITECTURES:
        return (f"architecture {arch!r} is not supported (supported: "
                f"{', '.join(ARCHITECTURES)}); use the Hugging Face model instead")
    from mlxsft.gguf.tensors import dequantizable

    for t in header.tensors:
        if t.nbytes is None or not dequantizable(t.type_name):
            return (f"tensor {t.name} is {t.type_name}, which mlxsft cannot read (the gguf "
                    "package has no de-quantizer for it); re-export the GGUF as Q4_K_M, "
                    "Q8_0 or F16, or use the Hugging Face model")
        if mlx_name(t.name, arch) is None:
            why = (" (llama 3.1-style RoPE scaling)" if t.name.startswith("rope_freqs") else "")
            return (f"tensor {t.name}{why} has no place in mlx-lm's {arch} model; use the "
                    "Hugging Face model instead")
    return tokenizer_problem(header.metadata)


def _model_config(header: GGUFHeader) -> dict:
    md, arch = header.metadata, header.metadata["general.architecture"]
    shapes = {t.name: t.shape for t in header.tensors}

    def get(key, default=None):
        value = md.get(f"{arch}.{key}", default)
        if isinstance(value, list):
            raise UserError(f"{header.path}: {arch}.{key} differs per layer; mlx-lm's {arch} "
                            "model needs one value, use the Hugging Face model instead")
        if value is None:
            raise UserError(f"{header.path}: metadata {arch}.{key} is missing")
        return value

    def f32(x):  # the float32 metadata as the decimal the converter read (1e-05, not 9.99e-06)
        import numpy as np

        return float(str(np.float32(x)))

    hidden, heads = get("embedding_length"), get("attention.head_count")
    config = {
        "model_type": ARCHITECTURES[arch].module,
        "hidden_size": hidden,
        "num_hidden_layers": get("block_count"),
        "intermediate_size": get("feed_forward_length"),
        "num_attention_heads": heads,
        "num_key_value_heads": get("attention.head_count_kv", heads),
        "rms_norm_eps": f32(get("attention.layer_norm_rms_epsilon")),
        "vocab_size": shapes["token_embd.weight"][0] if "token_embd.weight" in shapes
        else get("vocab_size"),
        "rope_theta": f32(get("rope.freq_base", 10000.0)),
        "max_position_embeddings": get("context_length", 4096),
        "tie_word_embeddings": "output.weight" not in shapes,
    }
    head_dim = md.get(f"{arch}.attention.key_length")
    if head_dim or arch in ("qwen3", "gemma", "gemma2", "gemma3"):
        config["head_dim"] = head_dim or hidden // heads
    config.update(_family_config(arch, md, config))
    if arch == "llama" and "blk.0.attn_q.bias" in shapes:
        config["attention_bias"] = True
    scaling = md.get(f"{arch}.rope.scaling.type", "none")
    if scaling == "linear":
        config["rope_scaling"] = {"type": "linear",
                                  "factor": f32(get("rope.scaling.factor"))}
    elif scaling != "none":
        raise UserError(f"{header.path}: RoPE scaling {scaling!r} is not supported; use the "
                        "Hugging Face model instead")
    for key in ("bos_token_id", "eos_token_id"):
        if f"tokenizer.ggml.{key}" in md:
            config[key] = md[f"tokenizer.ggml.{key}"]
    # Chat models end a turn with EOT (Llama 3's <|eot_id|>) rather than EOS: stop on both.
    stops = [md[f"tokenizer.ggml.{k}"] for k in ("eos_token_id", "eot_token_id", "eom_token_id")
             if f"tokenizer.ggml.{k}" in md]
    if len(set(stops)) > 1:
        config["eos_token_id"] = list(dict.fromkeys(stops))
    return config


def _family_config(arch: str, md: dict, config: dict) -> dict:
    """The hyper-parameters one family's mlx-lm model needs beyond the common ones, as
    llama.cpp sets them for that architecture (llama-model.cpp)."""
    head_dim = config.get("head_dim")
    if arch == "phi3":
        rotary = md.get("phi3.rope.dimension_count")
        hd = config["hidden_size"] // config["num_attention_heads"]
        return {"partial_rotary_factor": rotary / hd} if rotary and rotary != hd else {}
    if arch == "gemma2":
        # llama.cpp scales queries by 1/sqrt(head_dim), except Gemma 2 27B (46 layers):
        # 1/sqrt(hidden / heads), as its query_pre_attn_scalar says.
        big = config["num_hidden_layers"] == 46
        return {"attn_logit_softcapping": md.get("gemma2.attn_logit_softcapping", 50.0),
                "final_logit_softcapping": md.get("gemma2.final_logit_softcapping", 30.0),
                "query_pre_attn_scalar": (config["hidden_size"] // config["num_attention_heads"]
                                          if big else head_dim)}
    if arch == "gemma3":
        return {"query_pre_attn_scalar": head_dim, "sliding_window_pattern": 6,
                "sliding_window": md.get("gemma3.attention.sliding_window", 512),
                "rope_local_base_freq": 10000.0}  # llama.cpp's fixed local RoPE base
    return {}


def _unpermute_rows(w, n_heads: int):
    """Undo llama.cpp's `permute` (convert_hf_to_gguf.py), which within each head moves
    row i of the first half and row i of the second half next to each other (rows 2i,
    2i+1) for its interleaved RoPE. Rows are output features, so a quantized weight's
    packed rows, scales and biases all move alike."""
    rows = w.shape[0]
    return (w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def _read_weights(header: GGUFHeader, config: dict, dequantize: bool,
                  notes: list[str]) -> dict:
    import mlx.core as mx

    from mlxsft.gguf.tensors import open_data, raw_bytes, requant_bits, tensor_arrays

    arch = header.metadata["general.architecture"]
    permuted, shift = ARCHITECTURES[arch].permuted_qk, ARCHITECTURES[arch].norm_shift
    heads = {"self_attn.q_proj": config["num_attention_heads"],
             "self_attn.k_proj": config["num_key_value_heads"]}
    try:
        data = open_data(header.path)
    except OSError as e:
        raise UserError(f"{header.path}: cannot read it ({e.strerror})") from None
    weights, requantized = {}, Counter()
    for tensor in header.tensors:
        name = mlx_name(tensor.name, arch)
        if name is None:  # _problem() has already refused unknown tensors
            raise UserError(f"{header.path}: unexpected tensor {tensor.name}")
        module = name.rsplit(".", 1)[0].split(".", 3)[-1]
        parts = tensor_arrays(raw_bytes(data, header.data_start, tensor), tensor.type_name,
                              tensor.shape, dequantize=dequantize)
        if "scales" in parts and tensor.type_name not in NATIVE_TYPES | {"Q4_K": 4}:
            requantized[(tensor.type_name, requant_bits(tensor.type_name))] += 1
        elif dequantize and tensor.type_name not in FLOAT_TYPES:
            requantized[(tensor.type_name, None)] += 1
        prefix = name.rsplit(".", 1)[0]
        if shift and tensor.name.endswith("norm.weight"):
            parts["weight"] = parts["weight"].astype(mx.float32) - shift
        for part, value in parts.items():
            if permuted and module in heads:
                value = _unpermute_rows(value, heads[module])
            weights[name if part == "weight" else f"{prefix}.{part}"] = value
    del data  # the map closes when the last view goes
    if requantized:
        notes.append("; ".join(
            f"{n} {kind} tensor{'s' * (n > 1)} " + (f"re-quantized to MLX {bits}-bit affine "
                                                    "(group size 32)" if bits else
                                                    "de-quantized to float")
            for (kind, bits), n in sorted(requantized.items())) + " (MLX cannot compute with "
            "those ggml types directly)")
    return weights


def _quantized_layers(weights: dict) -> dict[str, dict]:
    """{module path: {group_size, bits}} for every weight MLX read as quantized."""
    layers = {}
    for name, scales in weights.items():
        if name.endswith(".scales"):
            path = name[: -len(".scales")]
            in_features = scales.shape[-1] * GROUP_SIZE
            bits = weights[path + ".weight"].shape[-1] * 32 // in_features
            layers[path] = {"group_size": GROUP_SIZE, "bits": bits}
    return layers


def load_gguf(path, *, dequantize: bool = False, notes: list[str] | None = None):
    """(mlx-lm model, `PreTrainedTokenizerFast`, HF-style config) from a GGUF file.

    Q4_0/Q4_1/Q8_0 weights stay quantized (`nn.QuantizedLinear`/`QuantizedEmbedding`,
    group size 32, the bits of each layer; `config["quantization"]` says so in mlx-lm's
    form) and floats keep the dtype of the token embedding's scales (float16) or weight.
    Types MLX cannot keep are re-quantized (see `mlxsft.gguf.tensors`), said in `notes`.
    `dequantize=True` gives float32 weights of the same values instead.
    """
    import mlx.core as mx
    import mlx.nn as nn

    header = read_gguf_header(path)
    if (problem := _problem(header)) is not None:
        raise UserError(f"{header.path}: {problem}")
    config = _model_config(header)
    tokenizer = _build_tokenizer(header)
    weights = _read_weights(header, config, dequantize, notes if notes is not None else [])
    layers = _quantized_layers(weights)
    if dequantize:
        dtype = mx.float32
    else:
        # One float dtype for the whole model (GGUF keeps norms in F32 next to F16 scales):
        # mixed dtypes would promote activations to float32 halfway through each block.
        # On the Linux CPU, half-precision and its quantized matmul are ~35x slower than
        # float32: callers there cast to float32 (models.to_compute_precision does).
        embedding = weights.get("model.embed_tokens.scales",
                                weights.get("model.embed_tokens.weight"))
        dtype = embedding.dtype if embedding is not None else mx.float16
        if layers:
            common = Counter(q["bits"] for q in layers.values()).most_common(1)[0][0]
            config["quantization"] = {"group_size": GROUP_SIZE, "bits": common, **{
                p: q for p, q in layers.items() if q["bits"] != common}}
    weights = {k: v.astype(dtype) if mx.issubdtype(v.dtype, mx.floating) else v
               for k, v in weights.items()}
    for tensor in header.tensors:  # float16 ends at 65504; BF16 goes much further
        value = weights.get(mlx_name(tensor.name, header.metadata["general.architecture"]))
        if tensor.type_name == "BF16" and value is not None and \
                not mx.isfinite(value).all().item():
            raise UserError(f"{header.path}: BF16 tensor {tensor.name} has values beyond "
                            f"{dtype}'s range; re-export the GGUF as F32 or Q8_0")

    module = importlib.import_module(f"mlx_lm.models.{config['model_type']}")
    model = module.Model(module.ModelArgs.from_dict(config))
    if layers:  # the model's random init is lazy: quantizing it costs nothing
        nn.quantize(model, class_predicate=lambda p, _m: layers.get(p, False))
    if hasattr(model, "sanitize"):
        weights = model.sanitize(weights)
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as e:
        raise UserError(f"{header.path}: its tensors do not fit mlx-lm's "
                        f"{config['model_type']} model ({str(e).splitlines()[0]})") from None
    mx.eval(model.parameters())
    model.eval()
    return model, tokenizer, config


def load_gguf_tokenizer(path):
    """The `PreTrainedTokenizerFast` a GGUF file describes (no weight is read)."""
    return _build_tokenizer(read_gguf_header(path))


def _build_tokenizer(header: GGUFHeader):
    try:
        return build_tokenizer(header)
    except UserError:
        raise
    except Exception as e:  # tokenizers raises a bare Exception for an inconsistent vocabulary
        raise UserError(f"{header.path}: its tokenizer metadata is damaged "
                        f"({' '.join(str(e).split())[:200]}); fetch the file again") from None
