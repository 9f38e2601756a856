"""Write a fine-tune's results where other tools read them: staged output, Hugging Face
model directories, and the adapter in PEFT's layout.

- `staged(out)`: everything is written into a temporary directory next to OUT and renamed
  to OUT only when complete, so OUT is either whole or absent.
- Model directories (`write_model_dir`): mlx-lm's `save_model`/`save_config` for the
  weights and config.json, the tokenizer with its chat template, generation_config.json
  from the base, and a short model card naming the base, adapter and data.
- PEFT (`export_peft`): mlx-lm stores lora_a as [in, r] and lora_b as [r, out] and adds
  scale * (x @ lora_a) @ lora_b; PEFT stores lora_A.weight [r, in] and lora_B.weight
  [out, r] and adds (lora_alpha / r) * lora_B(lora_A(x)). So the tensors are transposed
  and lora_alpha = scale * r, which reproduces the trained update exactly.

Fusing the adapter into the weights is `mlxsft.fuse`; GGUF is `mlxsft.export_gguf`.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from mlxsft.checkpoints import ADAPTER_WEIGHTS, load_safetensors, read_adapter_config
from mlxsft.errors import UserError

PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"


# -- staged output -----------------------------------------------------------------------
def check_out_free(out: Path) -> None:
    if out.exists() and (out.is_file() or any(out.iterdir())):
        raise UserError(f"--out {out}: already exists; choose a new path or remove it "
                        "(nothing was written)")


def check_out_writable(out: Path) -> None:
    """Refuse now, before any work, an OUT whose directory cannot be written (read-only
    file system, no permission, a file in the way)."""
    existing = next(p for p in (out.parent, *out.parent.parents, Path(".")) if p.exists())
    if not existing.is_dir():
        raise UserError(f"--out {out}: {existing} is a file, not a directory; choose another "
                        "path (nothing was written)")
    try:
        os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".mlxsft-probe."))
    except OSError as e:
        raise UserError(f"--out {out}: cannot write in {existing} ({e.strerror or e}); choose "
                        "a writable path (nothing was written)") from None


def check_free_space(out: Path, needed: int) -> None:
    """Refuse before writing when OUT's file system has clearly too little room."""
    existing = next(p for p in (out.parent, *out.parent.parents, Path(".")) if p.exists())
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise UserError(f"--out {out}: needs about {needed / 2**20:,.1f} MiB but {existing} has "
                        f"{free / 2**20:,.1f} MiB free; free some space or choose another path "
                        "(nothing was written)")


# Errors of the file system (not of our code) while writing OUT: reported in one line.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EIO}


def _write_failure(e: Exception, where: Path) -> str | None:
    """A one-line reason when `e` is the file system refusing a write, else None. Only
    OSError carries an errno; MLX ("[write] Unable to write ..."), tokenizers ("os error
    28") and NumPy's tofile report a full disk in their own words, so look at the disk."""
    if isinstance(e, OSError) and e.errno in _WRITE_ERRNOS:
        return e.strerror
    try:
        full = shutil.disk_usage(where).free < 2**20
    except OSError:
        full = False
    return "no space left on the device" if full else None


@contextmanager
def staged(out: str | Path, single_file: bool = False) -> Iterator[Path]:
    """Yield where to write (a temporary directory next to `out`, or a file inside it when
    `single_file`); rename it to `out` when the block completes, delete it when it fails."""
    out = Path(out)
    check_out_free(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    except OSError as e:
        raise UserError(f"--out {out}: cannot write there ({e.strerror or e}); choose a "
                        "writable path (nothing was written)") from None
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; OUT should look like any directory
    target = tmp / out.name if single_file else tmp
    try:
        try:
            yield target
        except UserError:
            raise
        except Exception as e:
            if (reason := _write_failure(e, tmp)) is None:
                raise
            raise UserError(f"--out {out}: writing failed ({reason}); nothing was written "
                            "(free some space or choose another path)") from None
        check_out_free(out)  # something may have appeared there while we worked
        if out.is_dir():
            out.rmdir()  # an empty directory the user made for us
        os.replace(target, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- Hugging Face model directories --------------------------------------------------------
def checkpoint_tensor_shapes(model_dir: str | Path) -> dict[str, list[int]] | None:
    """{tensor name: shape} of a directory's *.safetensors (headers only), or None."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return None
    from safetensors import SafetensorError, safe_open

    shapes: dict[str, list[int]] = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        try:
            with safe_open(path, framework="numpy") as f:  # reads the header only
                shapes.update({k: list(f.get_slice(k).get_shape()) for k in f.keys()})
        except (SafetensorError, OSError) as e:
            raise UserError(f"{path}: unreadable ({' '.join(str(e).split())}); it is "
                            "truncated or corrupt, copy the model again") from None
    return shapes or None


def checkpoint_tensor_names(model_dir: str | Path) -> set[str] | None:
    """Tensor names in a directory's *.safetensors (headers only), or None if it has none."""
    shapes = checkpoint_tensor_shapes(model_dir)
    return set(shapes) if shapes else None


def names_missing_from(names, checkpoint_names: set[str] | None) -> list[str]:
    """The names (of weights we write) that the base checkpoint does not use."""
    if checkpoint_names is None:
        return []
    return sorted(n for n in names if n not in checkpoint_names)


def hf_config(config: dict, dtype_name: str) -> dict:
    """The base's config for full-precision weights: no stale quantization, the dtype
    written, and `architectures` (a GGUF base's config has none) for transformers."""
    out = {k: v for k, v in config.items() if k not in ("quantization", "quantization_config")}
    out["torch_dtype"] = dtype_name
    if "architectures" not in out:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        if (cls := MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(out.get("model_type"))):
            out["architectures"] = [cls]
    return out


def write_model_dir(directory: Path, model, tokenizer, config: dict, base_path: Path) -> None:
    """Weights (sharded safetensors + index), config.json, tokenizer and chat template."""
    from mlx_lm.utils import save_config, save_model

    save_model(directory, model)
    save_config(dict(config), directory / "config.json")
    tokenizer.save_pretrained(str(directory))
    generation_config = Path(base_path) / "generation_config.json"
    if generation_config.is_file():
        shutil.copy(generation_config, directory)


def hub_id(base: str | None) -> str | None:
    """The hub id a base name stands for (an alias or an org/name id), else None."""
    from mlxsft.models import ALIASES

    if not base:
        return None
    if base.lower() in ALIASES:
        return ALIASES[base.lower()]
    looks_local = base.startswith((".", "/", "~")) or base.endswith(".gguf") or Path(base).exists()
    return base if base.count("/") == 1 and not looks_local else None


def describe_data(adapter_config: dict) -> list[str]:
    lines = []
    for entry in adapter_config.get("data") or []:
        lines.append(f"- {entry.get('split')}: `{entry.get('path')}` ({entry.get('records')} "
                     f"records, sha256 `{entry.get('sha256')}`)")
    return lines or ["- (not recorded)"]


def describe_lora(adapter_config: dict) -> str:
    params = adapter_config.get("lora_parameters")
    if adapter_config.get("fine_tune_type", "lora") != "lora" or not params:
        return f"{adapter_config.get('fine_tune_type', 'unknown')} fine-tune"
    alpha = adapter_config.get("lora_alpha", params["scale"] * params["rank"])
    return (f"LoRA rank {params['rank']}, alpha {alpha:g} (scale alpha / rank = "
            f"{params['scale']:g}) on {', '.join(params.get('keys', []))} in the last "
            f"{adapter_config.get('num_layers', '?')} layers")


def model_card(title: str, base: str, adapter_dir: Path, adapter_config: dict, what: str,
               body: list[str], library: str) -> str:
    """A short README.md: YAML front matter for the hub, then base, adapter, data, `body`."""
    front = ["---", f"library_name: {library}", "pipeline_tag: text-generation",
             "tags: [mlxsft, lora, sft]"]
    if (hub := hub_id(base)):
        front.append(f"base_model: {hub}")
    front.append("---")
    lines = front + [
        f"# {title}", "",
        f"{what} `{base}` with mlxsft: {describe_lora(adapter_config)}, trained with the "
        f"`{adapter_config.get('mask', 'assistant')}` loss mask (adapter: `{adapter_dir}`, "
        f"step {adapter_config.get('step', '?')}).", "",
        "## Training data", "", *describe_data(adapter_config), "", *body]
    return "\n".join(lines).rstrip() + "\n"


# -- PEFT ---------------------------------------------------------------------------------
_IN_LAYER = re.compile(r"(?:.+\.)?layers\.(\d+)\.(.+)")


def peft_tensors(adapter_weights: dict) -> dict:
    """mlx-lm adapter tensors -> PEFT's names and [r, in] / [out, r] layout (transposed)."""
    out, modules = {}, {}
    for name, value in adapter_weights.items():
        module, _, leaf = name.rpartition(".")
        if leaf not in ("lora_a", "lora_b"):
            raise UserError(f"adapter tensor {name}: not a LoRA lora_a/lora_b weight; only "
                            "LoRA adapters export to PEFT")
        modules.setdefault(module, set()).add(leaf)
        peft_leaf = "lora_A" if leaf == "lora_a" else "lora_B"
        out[f"base_model.model.{module}.{peft_leaf}.weight"] = value.T
    for module, leaves in modules.items():
        if leaves != {"lora_a", "lora_b"}:
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
        "use_dora": False,
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
    trained_on = f"trained on {config.get('base_model', 'unknown')}"
    for key in ("model_type", "hidden_size", "num_hidden_layers"):
        want, have = config.get(key), base_config.get(key)
        if want is not None and have is not None and want != have:
            raise UserError(f"--adapter {adapter_dir}: {trained_on} ({key} {want}), but the "
                            f"base {base} has {key} {have}; pass the adapter's base with --base")
    shapes = checkpoint_tensor_shapes(base) or {}
    quantized = bool(base_config.get("quantization"))  # packed input widths: skip those
    for name, value in sorted(weights.items()):
        module, _, leaf = name.rpartition(".")
        shape = shapes.get(f"{module}.weight")
        if shape is None or len(shape) != 2:
            continue  # a missing name is reported by the names check
        fits = (shape[0] == value.shape[1]) if leaf == "lora_b" else \
            (quantized or shape[1] == value.shape[0])
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
    import mlx.core as mx

    adapter_dir = Path(adapter)
    config = read_adapter_config(adapter_dir)
    kind = config.get("fine_tune_type", "lora")
    if kind != "lora" or "lora_parameters" not in config:
        raise UserError(f"--adapter {adapter_dir}: a {kind} fine-tune, not LoRA; PEFT export "
                        "needs a LoRA adapter (use `mlxsft fuse` for full fine-tunes)")
    check_out_free(Path(out))
    check_out_writable(Path(out))
    weights = load_safetensors(adapter_dir / ADAPTER_WEIGHTS, f"--adapter {adapter_dir}")
    tensors = peft_tensors(weights)
    modules = sorted({n.rsplit(".", 1)[0] for n in weights})
    rank = config["lora_parameters"]["rank"]
    for name, value in weights.items():
        if value.shape[1 if name.endswith("lora_a") else 0] != rank:
            raise UserError(f"--adapter {adapter_dir}: {name} has shape {tuple(value.shape)}, "
                            f"not rank {rank} as adapter_config.json says")
    notes = []
    recorded = config.get("base_model")
    base_name = base or hub_id(recorded) or config.get("base_model_path") or recorded
    local_base = base or config.get("base_model_path")
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
    card = model_card(f"PEFT LoRA adapter for {base_name}", base_name, adapter_dir, config,
                      "A LoRA adapter for", [
                          "## Use", "", "```python", "from peft import PeftModel",
                          "from transformers import AutoModelForCausalLM", "",
                          f"base = AutoModelForCausalLM.from_pretrained({base_name!r})",
                          f"model = PeftModel.from_pretrained(base, {str(Path(out))!r})",
                          "```"], "peft")
    with staged(out) as tmp:
        mx.save_safetensors(str(tmp / PEFT_WEIGHTS), tensors, metadata={"format": "pt"})
        (tmp / PEFT_CONFIG).write_text(json.dumps(peft, indent=2) + "\n")
        (tmp / "README.md").write_text(card)
    return PeftExport(Path(out), base_name, len(modules), rank, peft["lora_alpha"], notes)
