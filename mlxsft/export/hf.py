"""Hugging Face model directories: the base checkpoint's tensor names and shapes, the
config.json of a fused model, and writing a model directory with mlx-lm's `save_model` /
`save_config`, the tokenizer with its chat template and generation_config.json.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mlx_lm.utils import save_config, save_model
from safetensors import SafetensorError, safe_open
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from mlxsft.errors import UserError


def checkpoint_tensor_shapes(model_dir: str | Path) -> dict[str, list[int]] | None:
    """{tensor name: shape} of a directory's *.safetensors (headers only), or None."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return None

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
        if (cls := MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(out.get("model_type"))):
            out["architectures"] = [cls]
    return out


def write_model_dir(directory: Path, model, tokenizer, config: dict, base_path: Path) -> None:
    """Weights (sharded safetensors + index), config.json, tokenizer and chat template."""
    save_model(directory, model)
    save_config(dict(config), directory / "config.json")
    tokenizer.save_pretrained(str(directory))
    make_tokenizer_portable(directory)
    generation_config = Path(base_path) / "generation_config.json"
    if generation_config.is_file():
        shutil.copy(generation_config, directory)


# transformers 5 saves fast tokenizers as `TokenizersBackend`, a class 4.x does not have
# ("Tokenizer class TokenizersBackend does not exist"). Both load tokenizer.json through
# `PreTrainedTokenizerFast` (in 5.x an alias of the same backend), so that is what we name.
PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"
VERSION_5_ONLY_CLASSES = ("TokenizersBackend",)


def make_tokenizer_portable(directory: Path) -> None:
    """Rewrite a saved tokenizer_config.json so transformers 4.x and 5.x both load it:
    a class both have, and the chat template inline too (4.x before 4.47 reads only that;
    later versions prefer chat_template.jinja, which holds the same text)."""
    config_path = Path(directory) / "tokenizer_config.json"
    if not (Path(directory) / "tokenizer.json").is_file() or not config_path.is_file():
        return  # a slow (sentencepiece-only) tokenizer: its own class is portable
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("tokenizer_class") in VERSION_5_ONLY_CLASSES:
        config["tokenizer_class"] = PORTABLE_TOKENIZER_CLASS
    template_path = Path(directory) / "chat_template.jinja"
    if "chat_template" not in config and template_path.is_file():
        config["chat_template"] = template_path.read_text(encoding="utf-8")
    tmp = config_path.with_name(config_path.name + ".tmp")
    tmp.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(config_path)


