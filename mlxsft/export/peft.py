"""The adapter in PEFT's layout (`mlxsft export-adapter`).

mlx-lm stores lora_a as [in, r] and lora_b as [r, out] and adds scale * (x @ lora_a) @
lora_b; PEFT stores lora_A.weight [r, in] and lora_B.weight [out, r] and adds
(lora_alpha / r) * lora_B(lora_A(x)). So the tensors are transposed and lora_alpha =
scale * r, which reproduces the trained update exactly.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx

from mlxsft.adapters import base_mismatch, check_finite
from mlxsft.provenance import local_base as local_base_of
from mlxsft.provenance import public_name
from mlxsft.checkpoints import ADAPTER_WEIGHTS, load_safetensors, read_adapter_config
from mlxsft.errors import UserError
from mlxsft.export.card import model_card
from mlxsft.export.hf import checkpoint_tensor_names, checkpoint_tensor_shapes, names_missing_from
from mlxsft.export.staging import check_out_free, check_out_writable, staged
from mlxsft.models import hub_id

PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"


_IN_LAYER = re.compile(r"(?:.+\.)?layers\.(\d+)\.(.+)")


def peft_tensors(adapter_weights: dict) -> dict:
    """mlx-lm adapter tensors -> PEFT's names and [r, in] / [out, r] layout (transposed).
    A DoRA magnitude `m` [out] is PEFT's `lora_magnitude_vector` (the same row norms)."""
    out, modules = {}, {}
    for name, value in adapter_weights.items():
        module, _, leaf = name.rpartition(".")
        if leaf not in ("lora_a", "lora_b", "m"):
            raise UserError(f"adapter tensor {name}: not a LoRA lora_a/lora_b or DoRA m weight; "
                            "only LoRA and DoRA adapters export to PEFT")
        modules.setdefault(module, set()).add(leaf)
        if leaf == "m":
            out[f"base_model.model.{module}.lora_magnitude_vector"] = value
            continue
        peft_leaf = "lora_A" if leaf == "lora_a" else "lora_B"
        out[f"base_model.model.{module}.{peft_leaf}.weight"] = value.T
    for module, leaves in modules.items():
        if not {"lora_a", "lora_b"} <= leaves:
            raise UserError(f"adapter module {module}: has {', '.join(sorted(leaves))} but "
                            "needs both lora_a and lora_b")
    return out


def peft_config(adapter_config: dict, modules: list[str], base_name: str | None) -> dict:
    """PEFT's adapter_config.json for these adapted modules (full paths in the model)."""
    params = adapter_config["lora_parameters"]
    rank, scale = params["rank"], params["scale"]
    # PEFT multiplies by lora_alpha / r: alpha = scale * r is the scale that was trained.
    alpha = scale * rank
    layers, targets = set(), set()
    for module in modules:
        if not (m := _IN_LAYER.fullmatch(module)):
            raise UserError(f"adapter module {module}: outside the transformer layers; "
                            "mlxsft exports adapters on layer projections only")
        layers.add(int(m[1]))
        targets.add(m[2])
    n_layers = adapter_config.get("num_hidden_layers")
    every_layer = n_layers is not None and sorted(layers) == list(range(n_layers))
    return {
        "base_model_name_or_path": base_name,
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
        "lora_dropout": params.get("dropout", 0.0),
        # Layer-relative paths ("self_attn.q_proj"): PEFT matches them as name suffixes.
        "target_modules": sorted(targets),
        # mlxsft adapts the last N layers; PEFT needs the indices to put LoRA only there.
        "layers_to_transform": None if every_layer else sorted(layers),
        "layers_pattern": None if every_layer else "layers",
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": adapter_config.get("fine_tune_type") == "dora",
        "modules_to_save": None,
        "init_lora_weights": True,
        "inference_mode": True,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": None,
    }


def _local_config(base: str | None) -> dict | None:
    """config.json of a local base model directory, else None (a hub id, a GGUF file)."""
    path = Path(base) / "config.json" if base else None
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def _check_base_fits(adapter_dir: Path, config: dict, base: Path, base_config: dict,
                     weights: dict) -> None:
    """The adapter against a local base: its config, then each LoRA matrix against the
    weight it adapts (headers only). One line naming both, before anything is written."""
    why = base_mismatch(config, base_config, f"the base {base}")
    if why:
        raise UserError(f"--adapter {adapter_dir}: {why}; pass the adapter's base with --base")
    trained_on = f"trained on {config.get('base_model', 'unknown')}"
    shapes = checkpoint_tensor_shapes(base) or {}
    quantized = bool(base_config.get("quantization"))  # packed input widths: skip those
    for name, value in sorted(weights.items()):
        module, _, leaf = name.rpartition(".")
        shape = shapes.get(f"{module}.weight")
        if shape is None or len(shape) != 2:
            continue  # a missing name is reported by the names check
        if leaf == "m":  # DoRA magnitude: one per output row
            fits = shape[0] == value.shape[0]
        elif leaf == "lora_b":
            fits = shape[0] == value.shape[1]
        else:
            fits = quantized or shape[1] == value.shape[0]
        if not fits:
            raise UserError(f"--adapter {adapter_dir}: {name} {tuple(value.shape)} does not fit "
                            f"{module}.weight {tuple(shape)} of the base {base} ({trained_on}); "
                            "pass the adapter's base with --base")


@dataclass
class PeftExport:
    out: Path
    base_model_name_or_path: str | None
    modules: int
    rank: int
    lora_alpha: float
    notes: list[str] = field(default_factory=list)


def export_peft(adapter: str | Path, out: str | Path, base: str | None = None) -> PeftExport:
    """Write OUT/adapter_model.safetensors + adapter_config.json (+ README.md) for PEFT."""
    adapter_dir = Path(adapter)
    config = read_adapter_config(adapter_dir)
    kind = config.get("fine_tune_type", "lora")
    if kind not in ("lora", "dora") or "lora_parameters" not in config:
        raise UserError(f"--adapter {adapter_dir}: a {kind} fine-tune, not LoRA; PEFT export "
                        "needs a LoRA or DoRA adapter (use `mlxsft fuse` for full fine-tunes)")
    check_out_free(Path(out))
    check_out_writable(Path(out))
    weights = load_safetensors(adapter_dir / ADAPTER_WEIGHTS, f"--adapter {adapter_dir}")
    check_finite(weights, adapter_dir / ADAPTER_WEIGHTS)
    tensors = peft_tensors(weights)
    modules = sorted({n.rsplit(".", 1)[0] for n in weights})
    rank = config["lora_parameters"]["rank"]
    for name, value in weights.items():
        if name.endswith(".m"):
            continue  # DoRA's magnitude: one value per output row, not rank-shaped
        if value.shape[1 if name.endswith("lora_a") else 0] != rank:
            raise UserError(f"--adapter {adapter_dir}: {name} has shape {tuple(value.shape)}, "
                            f"not rank {rank} as adapter_config.json says")
    notes = []
    recorded = config.get("base_model")
    # Published: a hub id or the base's name, never where it sits on this machine.
    base_name = public_name(base) if base else (hub_id(recorded) or recorded)
    local_base = base or local_base_of(adapter_dir, config)
    base_config = _local_config(local_base)
    if local_base and base_config is not None:
        _check_base_fits(adapter_dir, config, Path(local_base), base_config, weights)
    if base is None and config.get("base_model_kind") == "gguf" and not hub_id(recorded):
        notes.append(f"the adapter's base is a GGUF file ({recorded}), which PEFT cannot load; "
                     "pass --base with the Hugging Face model it came from")
    elif base_config is not None and base_config.get("quantization"):
        notes.append(f"the base {local_base} is MLX-quantized, which transformers cannot load; "
                     "pass --base with the full-precision Hugging Face model it came from")
    elif config.get("base_quantization"):
        bits = config["base_quantization"].get("bits")
        notes.append(f"the adapter was trained on a {bits}-bit quantized base; on the "
                     f"full-precision {base_name} its outputs differ slightly from training")
    # The module paths are mlx-lm's; check them against the base's checkpoint when we have it.
    missing = names_missing_from([f"{m}.weight" for m in modules],
                                 checkpoint_tensor_names(local_base) if local_base else None)
    if missing:
        raise UserError(f"--adapter {adapter_dir}: the base checkpoint {local_base} has no "
                        f"weight {missing[0]}; mlx-lm names this module differently from "
                        "Hugging Face, so PEFT could not place the adapter")
    peft = peft_config(config, modules, base_name)
    method = "DoRA" if peft["use_dora"] else "LoRA"
    card = model_card(f"PEFT {method} adapter for {base_name}", base_name, adapter_dir, config,
                      f"A {method} adapter for", [
                          "## Use", "", "```python", "from peft import PeftModel",
                          "from transformers import AutoModelForCausalLM", "",
                          f"base = AutoModelForCausalLM.from_pretrained({base_name!r})",
                          f"model = PeftModel.from_pretrained(base, {Path(out).name!r})",
                          "```"], "peft")
    with staged(out) as tmp:
        mx.save_safetensors(str(tmp / PEFT_WEIGHTS), tensors, metadata={"format": "pt"})
        (tmp / PEFT_CONFIG).write_text(json.dumps(peft, indent=2) + "\n")
        (tmp / "README.md").write_text(card)
    return PeftExport(Path(out), base_name, len(modules), rank, peft["lora_alpha"], notes)
