"""A LoRA adapter as llama.cpp's adapter GGUF (`llama-cli --lora`, Ollama's `ADAPTER`).

The layout is the one llama.cpp's convert_lora_to_gguf.py writes: `general.type` "adapter",
`adapter.type` "lora", `adapter.lora.alpha`, the base's `general.architecture`, and for
every adapted linear `<gguf name>.lora_a` [r, in] and `<gguf name>.lora_b` [out, r] in
numpy order (PEFT's lora_A / lora_B). llama.cpp adds (alpha / r) * B A x, so alpha = the
trained scale * r reproduces mlx-lm's scale * (x A^T) B^T exactly. llama's q/k output rows
are permuted as the base GGUF's are (only B has output rows).

It writes float32 tensors only, and the architectures `mlxsft.gguf.writer` writes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mlxsft.errors import UserError


@dataclass
class AdapterExport:
    out: Path
    base: str
    tensors: int
    rank: int
    alpha: float


def _base_config(spec: str) -> dict:
    from mlxsft.models import resolve_model_path

    _, path, kind = resolve_model_path(spec)
    if kind == "gguf":
        from mlxsft.gguf.reader import _model_config, read_gguf_header

        return _model_config(read_gguf_header(path))
    try:
        return json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}/config.json: cannot read the base's config ({e}); pass "
                        "--base with the model the adapter was trained on") from None


def export_gguf_adapter(adapter: str | Path, out: str | Path,
                        base: str | None = None) -> AdapterExport:
    """Write OUT (one .gguf file) from the LoRA adapter in `adapter`."""
    import gguf
    import mlx.core as mx
    import numpy as np

    from mlxsft.adapters import adapter_base
    from mlxsft.checkpoints import ADAPTER_WEIGHTS, load_safetensors, read_adapter_config
    from mlxsft.export.staging import check_out_free, check_out_writable, staged
    from mlxsft.gguf.writer import gguf_architecture, llama_cpp_permute

    adapter_dir, out = Path(adapter), Path(out)
    config = read_adapter_config(adapter_dir)
    if config.get("fine_tune_type", "lora") != "lora" or "lora_parameters" not in config:
        raise UserError(f"--adapter {adapter_dir}: not a LoRA adapter; a GGUF adapter needs "
                        "LoRA (use `mlxsft fuse --format gguf` for full fine-tunes)")
    check_out_free(out)
    check_out_writable(out)
    spec = base or adapter_base(adapter_dir)[0]
    base_config = _base_config(spec)
    arch = gguf_architecture(base_config)
    rank, scale = config["lora_parameters"]["rank"], config["lora_parameters"]["scale"]
    weights = load_safetensors(adapter_dir / ADAPTER_WEIGHTS, f"--adapter {adapter_dir}")
    n_layers = base_config["num_hidden_layers"]
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], n_layers)
    heads = base_config["num_attention_heads"]
    permuted = {"q_proj": heads, "k_proj": base_config.get("num_key_value_heads") or heads}
    tensors = {}
    for module in sorted({k.rsplit(".", 1)[0] for k in weights}):
        gguf_name = names.get_name(f"{module}.weight", try_suffixes=(".weight",))
        if gguf_name is None or f"{module}.lora_b" not in weights:
            raise UserError(f"--adapter {adapter_dir}: module {module} has no place in "
                            f"llama.cpp's {arch} model")
        a = np.array(weights[f"{module}.lora_a"].astype(mx.float32)).T  # [r, in]
        b = np.array(weights[f"{module}.lora_b"].astype(mx.float32)).T  # [out, r]
        leaf = module.rsplit(".", 1)[-1]
        if arch == "llama" and leaf in permuted and ".self_attn." in f".{module}.":
            b = llama_cpp_permute(b, permuted[leaf])
        stem = gguf_name.removesuffix(".weight")
        tensors[f"{stem}.weight.lora_a"] = np.ascontiguousarray(a)
        tensors[f"{stem}.weight.lora_b"] = np.ascontiguousarray(b)
    alpha = float(scale * rank)
    with staged(out, single_file=True) as target:
        writer = gguf.GGUFWriter(str(target), arch)
        writer.add_string("general.type", "adapter")
        writer.add_string("adapter.type", "lora")
        writer.add_float32("adapter.lora.alpha", alpha)
        for name, value in tensors.items():
            writer.add_tensor(name, value)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return AdapterExport(out, str(spec), len(tensors), rank, alpha)
