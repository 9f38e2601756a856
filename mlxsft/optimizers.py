"""The optimizer of a run, built from `mlx.optimizers`, and its state on disk.

`--optimizer adamw|adam|sgd|adafactor|lion|muon` with their main settings. Two ways of
giving parameter groups different treatment go through `MultiOptimizer`:
- LoRA+ (`--lora-plus-ratio R`, Hayou et al. 2024): B's learning rate is R times A's,
  since B starts at zero and learns slowly at A's rate;
- Muon orthogonalises 2-D weight updates only; norms, biases and embeddings (and any
  other non-matrix parameter) go to AdamW, as Muon's authors advise.

The optimizer's name and settings are saved with its state, so `--resume` restores the
same optimizer (and refuses a different one instead of silently resetting its moments).
This module builds the optimizer and reads/writes its state; the step that applies it
is the trainer's.
"""

from __future__ import annotations

from typing import Any, Callable

from mlxsft.errors import UserError

OPTIMIZERS = ("adamw", "adam", "sgd", "adafactor", "lion", "muon")


def _scaled(schedule, factor: float):
    if factor == 1.0:
        return schedule
    if callable(schedule):
        return lambda step: factor * schedule(step)
    return factor * schedule


def _single(name: str, learning_rate, config) -> Any:
    import mlx.optimizers as optim

    wd = config.weight_decay
    betas = [config.beta1, config.beta2]
    if name == "adamw":
        return optim.AdamW(learning_rate=learning_rate, betas=betas, weight_decay=wd)
    if name == "adam":
        return optim.Adam(learning_rate=learning_rate, betas=betas)
    if name == "sgd":
        return optim.SGD(learning_rate=learning_rate, momentum=config.momentum,
                         weight_decay=wd)
    if name == "lion":
        return optim.Lion(learning_rate=learning_rate, betas=betas, weight_decay=wd)
    if name == "adafactor":
        # A given learning rate (not Adafactor's relative step size), so the schedule,
        # warmup and LoRA+ mean the same as for the other optimizers.
        return optim.Adafactor(learning_rate=learning_rate, relative_step=False,
                               scale_parameter=False, weight_decay=wd)
    if name == "muon":
        return optim.Muon(learning_rate=learning_rate, momentum=config.momentum or 0.95,
                          weight_decay=wd)
    raise UserError(f"--optimizer {name}: not one of {', '.join(OPTIMIZERS)}")


def _is_lora_b(path: str, _weight) -> bool:
    return path.endswith("lora_b")


def _is_matrix(path: str, weight) -> bool:
    return weight.ndim == 2 and "embed" not in path and not path.endswith("lm_head.weight")


def build_optimizer(config, schedule: Callable) -> Any:
    """The optimizer for `config` (a TrainConfig) driven by the learning-rate `schedule`."""
    import mlx.optimizers as optim

    name = config.optimizer
    if config.lora_plus_ratio < 0:
        raise UserError(f"--lora-plus-ratio {config.lora_plus_ratio}: must be positive "
                        "(16 is the paper's default; 0 turns LoRA+ off)")
    if config.lora_plus_ratio and config.fine_tune == "full":
        raise UserError("--lora-plus-ratio needs LoRA or DoRA adapters; drop it with "
                        "--fine-tune full")

    def groups(learning_rate):
        if name != "muon":
            return _single(name, learning_rate, config)
        # Muon for weight matrices, AdamW for the rest (the last optimizer is the fallback).
        return optim.MultiOptimizer(
            [_single("muon", learning_rate, config), _single("adamw", learning_rate, config)],
            [_is_matrix])

    if config.lora_plus_ratio and config.lora_plus_ratio != 1.0:
        return optim.MultiOptimizer(
            [groups(_scaled(schedule, config.lora_plus_ratio)), groups(schedule)], [_is_lora_b])
    return groups(schedule)


def optimizer_record(config) -> dict:
    """What identifies the optimizer; saved in adapter_config.json beside its state."""
    return {"name": config.optimizer, "lora_plus_ratio": config.lora_plus_ratio}


def check_resumable(saved: dict | None, config, where: str) -> None:
    """Refuse to resume moments of one optimizer with another: they mean different things."""
    # Checkpoints saved before optimizers were selectable hold AdamW's state.
    saved = saved if isinstance(saved, dict) else {}
    have = {"name": saved.get("name", "adamw"), "lora_plus_ratio": saved.get("lora_plus_ratio", 0.0)}
    for key, value in optimizer_record(config).items():
        if have[key] != value:
            flag = "--optimizer" if key == "name" else "--lora-plus-ratio"
            raise UserError(f"--resume {where}: its optimizer state is for {flag} {have[key]}, "
                            f"not {value}; resume with {flag} {have[key]}")


def load_state(optimizer, state: dict) -> None:
    """Put a saved state tree back into `optimizer` in place: the compiled step holds the
    optimizer's own state dicts, so they must be updated, not replaced."""
    _merge(optimizer.state, state)


def _merge(target, source) -> None:
    if isinstance(target, dict):
        for key, value in source.items():
            if key in target and isinstance(target[key], (dict, list)):
                _merge(target[key], value)
            else:
                target[key] = value
    elif isinstance(target, list):
        for i, value in enumerate(source):
            if i < len(target) and isinstance(target[i], (dict, list)):
                _merge(target[i], value)
            elif i < len(target):
                target[i] = value
            else:
                target.append(value)
