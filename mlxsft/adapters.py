"""Load a base model with a trained adapter for evaluation, chat and fusing.

Checks that the adapter fits the base before touching weights, and turns mlx-lm's
mismatch errors into one line naming the adapter, the base it was trained on, and
the model given.
"""

from __future__ import annotations

from pathlib import Path

from mlx_lm.tuner.utils import load_adapters

from mlxsft.checkpoints import ADAPTER_WEIGHTS, load_safetensors, read_adapter_config
from mlxsft.errors import UserError
from mlxsft.models import hub_id, load_model, to_compute_precision
from mlxsft.templates import use_adapter_template

# What an adapter records of its base (adapter_config.json) that a base must match.
FIT_KEYS = ("model_type", "hidden_size", "num_hidden_layers")


def base_mismatch(adapter_config: dict, base_config: dict, base_label: str,
                  trained_on: str | None = None) -> str | None:
    """Why an adapter cannot fit a base, by their configs (None when nothing disagrees):
    'trained on X (hidden_size 64), but <base_label> has hidden_size 32'. X is
    `trained_on`, else the base the adapter records."""
    trained_on = trained_on or adapter_config.get("base_model", "unknown")
    for key in FIT_KEYS:
        want, have = adapter_config.get(key), base_config.get(key)
        if want is not None and have is not None and want != have:
            return f"trained on {trained_on} ({key} {want}), but {base_label} has {key} {have}"
    return None


def attach_adapter(loaded, adapter_dir: str | Path) -> dict:
    """Insert the adapter's LoRA layers into loaded.model and load its weights."""
    adapter_dir = Path(adapter_dir)
    config = read_adapter_config(adapter_dir)
    from mlxsft.provenance import local_base

    # Said here, not published: the local path when the adapter's run knows it.
    base = local_base(adapter_dir, config) or config.get("base_model", "unknown")
    trained_on = f"trained on {base}"
    why = base_mismatch(config, loaded.config, f"--model {loaded.source}", base)
    if why:
        raise UserError(f"--adapter {adapter_dir}: {why}; pass the adapter's base model")
    # A damaged file is not a mismatch: say so before mlx-lm reads it.
    check_finite(load_safetensors(adapter_dir / ADAPTER_WEIGHTS, f"--adapter {adapter_dir}"),
                 adapter_dir / ADAPTER_WEIGHTS)
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


def check_finite(weights: dict, path: str | Path) -> None:
    """Refuse adapter weights with NaN or infinite values (a run that diverged): every
    answer, loss and fused weight made from them would be NaN too."""
    import mlx.core as mx

    for name, tensor in weights.items():
        if mx.issubdtype(tensor.dtype, mx.floating):
            bad = int((~mx.isfinite(tensor)).sum().item())
            if bad:
                raise UserError(f"{path}: {name} has {bad} NaN or infinite value"
                                f"{'s' if bad != 1 else ''}: the run diverged; use an earlier "
                                "checkpoint or train again with a lower --learning-rate")


def adapter_base(adapter: str | Path) -> tuple[str | None, str | None]:
    """(model spec to load, name the user gave) of the base an adapter was trained on."""
    from mlxsft.provenance import local_base

    recorded = read_adapter_config(adapter)
    # The adapter names its base; where it sits here is in its run's config.yaml (absolute,
    # so this works from any directory).
    name = recorded.get("base_model")
    here = local_base(adapter, recorded)
    if here is None and name and not _loadable_by_name(name):
        raise UserError(f"--adapter {adapter}: its base {name!r} was a local model, and the "
                        f"run's config.yaml that says where it is is not with the adapter; "
                        "pass the base with --model PATH")
    return (here or name), name


def _loadable_by_name(name: str) -> bool:
    """An alias, a hub id or a path that exists here: what `load_model` can take as is."""
    return hub_id(name) is not None or Path(name).exists()


def load_for_inference(model: str | None, adapter: str | Path | None = None,
                       keep_quantized: bool = False):
    """The base model (the adapter's recorded base when --model is not given), in the
    compute precision of this machine, with the adapter attached when given."""
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
