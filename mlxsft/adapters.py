"""Load a base model with a trained adapter for evaluation, chat and fusing.

Checks that the adapter fits the base before touching weights, and turns mlx-lm's
mismatch errors into one line naming the adapter, the base it was trained on, and
the model given.
"""

from __future__ import annotations

from pathlib import Path

from mlxsft.checkpoints import ADAPTER_WEIGHTS, load_safetensors, read_adapter_config
from mlxsft.errors import UserError
from mlxsft.templates import use_adapter_template


def attach_adapter(loaded, adapter_dir: str | Path) -> dict:
    """Insert the adapter's LoRA layers into loaded.model and load its weights."""
    from mlx_lm.tuner.utils import load_adapters

    adapter_dir = Path(adapter_dir)
    config = read_adapter_config(adapter_dir)
    base = config.get("base_model", "unknown")
    trained_on = f"trained on {base}"
    for key in ("model_type", "hidden_size", "num_hidden_layers"):
        want, have = config.get(key), loaded.config.get(key)
        if want is not None and have is not None and want != have:
            raise UserError(f"--adapter {adapter_dir}: {trained_on} ({key} {want}), but "
                            f"--model {loaded.source} has {key} {have}; pass the adapter's "
                            "base model")
    # A damaged file is not a mismatch: say so before mlx-lm reads it.
    load_safetensors(adapter_dir / ADAPTER_WEIGHTS, f"--adapter {adapter_dir}")
    try:
        load_adapters(loaded.model, str(adapter_dir))
    except (ValueError, KeyError, AttributeError) as e:
        first = str(e).splitlines()
        detail = first[1].strip() if len(first) > 1 else (first[0] if first else type(e).__name__)
        raise UserError(f"--adapter {adapter_dir}: does not fit --model {loaded.source} "
                        f"({trained_on}): {detail}") from None
    loaded.model.eval()
    # The chat template (and template kwargs) it was trained with, so chat, eval, the TUI
    # and fuse (which saves this tokenizer) render as training did.
    use_adapter_template(loaded.tokenizer, config)
    return config


def adapter_base(adapter: str | Path) -> tuple[str | None, str | None]:
    """(model spec to load, name the user gave) of the base an adapter was trained on."""
    recorded = read_adapter_config(adapter)
    # A local base is recorded by absolute path, so this works from any directory.
    path, name = recorded.get("base_model_path"), recorded.get("base_model")
    return (path if path and Path(path).exists() else name), name


def load_for_inference(model: str | None, adapter: str | Path | None = None,
                       keep_quantized: bool = False):
    """The base model (the adapter's recorded base when --model is not given), in the
    compute precision of this machine, with the adapter attached when given."""
    from mlxsft.models import load_model, to_compute_precision

    name = None
    if model is None and adapter is not None:
        model, name = adapter_base(adapter)
    loaded = load_model(model)
    if name:
        loaded.source = name  # what the user called it when training (e.g. smollm2-135m)
    to_compute_precision(loaded, keep_quantized)
    if adapter is not None:
        attach_adapter(loaded, adapter)
    return loaded
