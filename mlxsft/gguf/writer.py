"""Write a fused (full-precision) mlx-lm model as one GGUF file for llama.cpp.

Architectures: llama (and mistral, which llama.cpp runs as llama), qwen2, qwen3 - the ones
`mlxsft.gguf.reader` reads back. What is written follows llama.cpp's convert_hf_to_gguf.py:
hyper-parameters under `<arch>.*`; tensor names from the gguf package's own table
(`gguf.get_tensor_name_map`); llama's q/k rows permuted for llama.cpp's interleaved
RoPE; the byte-level BPE tokenizer (tokens, token types, merges, special ids, chat
template) with the `tokenizer.ggml.pre` name llama.cpp picks its pre-tokenizer by.
Tensor types: F32, F16, BF16, or a llama.cpp quantization scheme (`mlxsft.gguf.schemes`:
q4_k_m, q5_k_m, q6_k, q8_0, ... or `same` as the source GGUF); Q4_0..Q8_0 come from the gguf
package's reference quantizer, Q4_K/Q5_K/Q6_K from `mlxsft.gguf.kquants`.

It does not write SentencePiece vocabularies or RoPE scaling other than linear; each is
a `UserError` raised before anything is written.
"""

from __future__ import annotations

import json
from math import prod
from pathlib import Path
from types import SimpleNamespace

from mlxsft.errors import UserError

# model_type -> GGUF architecture; mlx-lm runs mistral with its llama model, llama.cpp too.
GGUF_ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}
# The GGUF tensor type written for an output float dtype, and for --quantize BITS (Q4_1 is
# affine, scale and minimum, as MLX's 4-bit). reader.FLOAT_TYPES is the set it can read.
GGUF_TYPE_OF_DTYPE = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
GGUF_TYPE_OF_BITS = {8: "Q8_0", 4: "Q4_1"}
# The tokenizer.ggml.pre names tried, one per distinct behaviour in mlxsft.gguf.tokenizer.
PRE_CANDIDATES = ("gpt-2", "smollm", "llama-bpe", "qwen2", "stablelm2", "dbrx", "default")
# llama.cpp's own check text for telling pre-tokenizers apart (convert_hf_to_gguf_update.py).
PROBE_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis "
    "concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 "
    "កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български "
    "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? "
    "'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
    " cafe\u0301")  # + a decomposed accent, which only NFC-normalizing tokenizers merge
_NORMAL, _UNUSED, _CONTROL, _USER_DEFINED = 1, 5, 3, 4
_TOKENIZER_WRITERS = {
    "tokenizer.ggml.model": "add_tokenizer_model", "tokenizer.ggml.pre": "add_tokenizer_pre",
    "tokenizer.ggml.tokens": "add_token_list", "tokenizer.ggml.token_type": "add_token_types",
    "tokenizer.ggml.merges": "add_token_merges", "tokenizer.ggml.scores": "add_token_scores",
    "tokenizer.ggml.bos_token_id": "add_bos_token_id",
    "tokenizer.ggml.eos_token_id": "add_eos_token_id",
    "tokenizer.ggml.unknown_token_id": "add_unk_token_id",
    "tokenizer.ggml.padding_token_id": "add_pad_token_id",
    "tokenizer.ggml.eot_token_id": "add_eot_token_id",
    "tokenizer.ggml.eom_token_id": "add_eom_token_id",
    "tokenizer.ggml.add_bos_token": "add_add_bos_token",
    "tokenizer.ggml.add_eos_token": "add_add_eos_token",
    "tokenizer.ggml.add_space_prefix": "add_add_space_prefix",
    "tokenizer.chat_template": "add_chat_template",
}


def gguf_architecture(config: dict) -> str:
    """The GGUF architecture for this config, or a UserError saying why there is none."""
    model_type = config.get("model_type")
    if model_type not in GGUF_ARCHITECTURES:
        raise UserError(f"--format gguf: model type {model_type!r} is not one mlxsft writes "
                        f"as GGUF ({', '.join(GGUF_ARCHITECTURES)}); fuse with --format hf and "
                        "convert with llama.cpp's convert_hf_to_gguf.py")
    scaling = config.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in ("default", "linear"):
        raise UserError(f"--format gguf: RoPE scaling {kind!r} is not written by mlxsft; fuse "
                        "with --format hf and convert with llama.cpp's convert_hf_to_gguf.py")
    if config.get("mlp_bias"):
        raise UserError("--format gguf: MLP biases (mlp_bias) are not written by mlxsft; fuse "
                        "with --format hf and convert with llama.cpp's convert_hf_to_gguf.py")
    return GGUF_ARCHITECTURES[model_type]


# -- tokenizer ----------------------------------------------------------------------------
def tokenizer_metadata(loaded, sample_texts=()) -> dict:
    """GGUF tokenizer metadata for a LoadedModel: a GGUF base's own, copied; else built
    from its Hugging Face tokenizer and checked by re-tokenizing sample texts."""
    from mlxsft.masking import hf_tokenizer

    if loaded.kind == "gguf":
        from mlxsft.gguf.reader import read_gguf_header

        md = read_gguf_header(loaded.path).metadata
        return {k: v for k, v in md.items() if k in _TOKENIZER_WRITERS}
    return hf_tokenizer_metadata(hf_tokenizer(loaded.tokenizer), loaded.config["vocab_size"],
                                 sample_texts)


def hf_tokenizer_metadata(tok, vocab_size: int, sample_texts=()) -> dict:
    """As convert_hf_to_gguf.py writes a byte-level BPE vocabulary: one token per id up to
    the embedding's rows (missing ids as [PADi], type unused), special added tokens as
    control, other added tokens as user-defined."""
    spec = json.loads(tok.backend_tokenizer.to_str())
    decoder = (spec.get("decoder") or {}).get("type")
    if spec["model"].get("type") != "BPE" or decoder != "ByteLevel":
        raise UserError(f"--format gguf: the tokenizer is {spec['model'].get('type')} with a "
                        f"{decoder} decoder; mlxsft writes byte-level BPE vocabularies only. "
                        "Fuse with --format hf and convert with llama.cpp's "
                        "convert_hf_to_gguf.py")
    by_id = {i: t for t, i in tok.get_vocab().items()}
    added = {t.content: t.special
             for t in tok.backend_tokenizer.get_added_tokens_decoder().values()}
    tokens, types = [], []
    for i in range(vocab_size):
        token = by_id.get(i)
        tokens.append(token if token is not None else f"[PAD{i}]")
        types.append(_UNUSED if token is None else _NORMAL if token not in added
                     else _CONTROL if added[token] else _USER_DEFINED)
    md = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": tokens,
          "tokenizer.ggml.token_type": types,
          "tokenizer.ggml.merges": [m if isinstance(m, str) else " ".join(m)
                                    for m in spec["model"].get("merges", [])]}
    for key, token_id in (("bos_token_id", tok.bos_token_id), ("eos_token_id", tok.eos_token_id),
                          ("unknown_token_id", tok.unk_token_id),
                          ("padding_token_id", tok.pad_token_id)):
        if token_id is not None:
            md[f"tokenizer.ggml.{key}"] = token_id
    if tok.bos_token_id is not None:
        # Whether encoding adds BOS is the tokenizer's post-processor's choice; ask it.
        md["tokenizer.ggml.add_bos_token"] = tok("a")["input_ids"][:1] == [tok.bos_token_id]
    if isinstance(tok.chat_template, str):
        md["tokenizer.chat_template"] = tok.chat_template
    md["tokenizer.ggml.pre"] = detect_pre_tokenizer(tok, md, [PROBE_TEXT, *sample_texts])
    return md


def detect_pre_tokenizer(tok, md: dict, texts) -> str:
    """The first `tokenizer.ggml.pre` name whose rebuilt tokenizer (the one mlxsft's GGUF
    reader, and llama.cpp, would use) tokenizes every text exactly as `tok` does."""
    from mlxsft.gguf.tokenizer import build_tokenizer

    def ids(t, text, special):
        return t(text, add_special_tokens=special)["input_ids"]

    for pre in PRE_CANDIDATES:
        header = SimpleNamespace(path=Path("export"), metadata={**md, "tokenizer.ggml.pre": pre})
        candidate = build_tokenizer(header)
        if all(ids(candidate, x, s) == ids(tok, x, s) for x in texts for s in (False, True)):
            return pre
    raise UserError("--format gguf: the tokenizer splits text unlike every llama.cpp "
                    f"pre-tokenizer mlxsft knows ({', '.join(PRE_CANDIDATES)}); fuse with "
                    "--format hf and convert with llama.cpp's convert_hf_to_gguf.py")


# -- tensors ------------------------------------------------------------------------------
def llama_cpp_permute(w, n_heads: int):
    """convert_hf_to_gguf.py's LlamaModel.permute: within each head, interleave the rows
    of the two rotary halves (row i of each half side by side) for llama.cpp's RoPE."""
    return (w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def _tensor_bytes(x, type_name: str):
    import numpy as np
    from gguf import GGMLQuantizationType, quants

    from mlxsft.gguf import kquants

    if type_name == "F32":
        return x.astype(np.float32)
    if type_name == "F16":
        return x.astype(np.float16)
    if type_name in kquants.K_TYPES:
        return kquants.quantize(x, type_name)
    return quants.quantize(x, GGMLQuantizationType[type_name])


def write_gguf(path: Path, model, config: dict, tokenizer_md: dict, float_type: str = "F16",
               quant_type: str | None = None, name: str = "",
               source_types: dict[str, str] | None = None,
               source_file_type: int | None = None, notes: list[str] | None = None,
               extra_md: dict | None = None) -> dict[str, str]:
    """Write `model` (float weights) to `path`; returns {GGUF tensor name: type}.

    `quant_type` is a scheme of `mlxsft.gguf.schemes` ("q4_k_m", "same", ...; "Q8_0" and
    "Q4_1" as well) or None for floats; "same" takes each tensor's type from
    `source_types`. Departures from the scheme are appended to `notes`."""
    from mlxsft.gguf.schemes import TypePlan

    import gguf
    import mlx.core as mx
    import numpy as np
    from mlx.utils import tree_flatten

    arch = gguf_architecture(config)
    weights = dict(tree_flatten(model.parameters()))
    if any(k.endswith(".scales") for k in weights):
        raise ValueError("write_gguf needs float weights; de-quantize the model first")
    n_layers = config["num_hidden_layers"]
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], n_layers)
    heads = config["num_attention_heads"]
    permuted_heads = {"q_proj": heads, "k_proj": config.get("num_key_value_heads") or heads}

    plan_types = TypePlan(quant_type.lower() if quant_type else None, float_type, n_layers,
                          "lm_head.weight" in weights, source_types)
    writer = gguf.GGUFWriter(None, arch)
    _write_hyperparameters(writer, config, name)
    for key, value in tokenizer_md.items():
        getattr(writer, _TOKENIZER_WRITERS[key])(value)
    for key, value in (extra_md or {}).items():
        writer.add_key_value(key, value, _metadata_type(value))
    file_type = plan_types.file_type(source_file_type)
    if file_type is not None:
        writer.add_file_type(file_type if isinstance(file_type, int)
                             else int(gguf.LlamaFileType[file_type]))
    if quant_type:
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    plan = []
    for mlx_name, value in weights.items():
        gguf_name = name_map.get_name(mlx_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise UserError(f"--format gguf: weight {mlx_name} has no GGUF name in llama.cpp's "
                            f"{arch} table; fuse with --format hf instead")
        shape = tuple(value.shape)
        kind = plan_types.type_for(gguf_name, shape)
        if kind in ("F32", "F16"):
            dtype = np.float32 if kind == "F32" else np.float16
            writer.add_tensor_info(gguf_name, shape, np.dtype(dtype),
                                   prod(shape) * np.dtype(dtype).itemsize)
        else:
            qtype = gguf.GGMLQuantizationType[kind]
            byte_shape = gguf.quant_shape_to_byte_shape(shape, qtype)
            writer.add_tensor_info(gguf_name, byte_shape, np.dtype(np.uint8), prod(byte_shape),
                                   raw_dtype=qtype)
        plan.append((mlx_name, gguf_name, kind))

    writer.write_header_to_file(path=Path(path))
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    # One tensor in memory at a time: the writer streams each to the file in table order.
    for mlx_name, _, kind in plan:
        x = np.array(weights[mlx_name].astype(mx.float32))
        module = mlx_name.rsplit(".", 2)[-2]
        if arch == "llama" and module in permuted_heads and mlx_name.split(".")[-3] == "self_attn":
            x = llama_cpp_permute(x, permuted_heads[module])
        writer.write_tensor_data(_tensor_bytes(x, kind))
    writer.close()
    if notes is not None:
        notes.extend(plan_types.notes)
    return {gguf_name: kind for _, gguf_name, kind in plan}


def _metadata_type(value):
    import gguf

    if isinstance(value, bool):
        return gguf.GGUFValueType.BOOL
    if isinstance(value, int):
        return gguf.GGUFValueType.UINT32
    if isinstance(value, float):
        return gguf.GGUFValueType.FLOAT32
    if isinstance(value, list):
        return gguf.GGUFValueType.ARRAY
    return gguf.GGUFValueType.STRING


def _write_hyperparameters(writer, config: dict, name: str) -> None:
    import gguf

    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    if name:
        writer.add_name(name)
    writer.add_context_length(config.get("max_position_embeddings", 4096))
    writer.add_embedding_length(hidden)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads") or heads)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(config.get("rope_theta", 10000.0))
    writer.add_rope_dimension_count(head_dim)
    if config.get("head_dim"):
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_vocab_size(config["vocab_size"])
    scaling = config.get("rope_scaling") or {}
    if scaling.get("rope_type", scaling.get("type")) == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(scaling["factor"])
