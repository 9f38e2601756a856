"""Typed run configuration: one dataclass is the source of the CLI flags, their --help,
the YAML keys of `--config run.yaml`, and the resolved `config.yaml` saved in a run.

Precedence: dataclass defaults < YAML file < command-line flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlxsft.errors import UserError
from mlxsft.masking import MASK_MODES
from mlxsft.models import DEFAULT_MODEL
from mlxsft.optimizers import OPTIMIZERS
from mlxsft.templates import THINKING_MODES


def _opt(default, help: str, choices=None, positional=False, repeatable=False):
    return field(default=default, metadata={"help": help, "choices": choices,
                                            "positional": positional, "repeatable": repeatable})


@dataclass
class TrainConfig:
    data: str | None = _opt(None, "training data: a .jsonl file, or a directory with "
                            "train.jsonl (and valid.jsonl, test.jsonl)", positional=True)
    valid: str | None = _opt(None, "validation .jsonl (default: valid.jsonl beside the data)")
    model: str = _opt(DEFAULT_MODEL, "base model: a Hugging Face directory, a hub id, a .gguf "
                      f"file, or the alias {DEFAULT_MODEL} (the embedded default)")
    out: str | None = _opt(None, "run directory for adapters, checkpoints and metrics "
                           "(default: runs/<date>-<time>)")
    fine_tune: str = _opt("lora", "lora (adapters on a frozen base), dora (LoRA with a learned "
                          "per-row magnitude) or full (all weights; small models only)",
                          choices=("lora", "dora", "full"))
    mask: str = _opt("assistant", "what carries loss: assistant (every assistant turn and its "
                     "end-of-turn token), last (the final assistant turn), all (every token)",
                     choices=MASK_MODES)
    max_seq_len: int = _opt(1024, "truncate longer records to this many tokens (counted and "
                            "reported)")
    batch_size: int = _opt(4, "records per micro-batch")
    grad_accum: int = _opt(1, "micro-batches per optimizer step; the loss is the mean over all "
                           "supervised tokens of the accumulated batch")
    iters: int | None = _opt(None, "optimizer steps to train (overrides --epochs)")
    epochs: float = _opt(1.0, "passes over the training data when --iters is not given")
    learning_rate: float = _opt(1e-4, "peak learning rate")
    optimizer: str = _opt("adamw", "optimizer from mlx.optimizers (muon: Muon for weight "
                          "matrices, AdamW for the rest)", choices=OPTIMIZERS)
    beta1: float = _opt(0.9, "first-moment decay (adamw, adam, lion)")
    beta2: float = _opt(0.999, "second-moment decay (adamw, adam, lion: 0.99 is usual for lion)")
    momentum: float = _opt(0.0, "momentum (sgd; muon uses 0.95 when 0)")
    lr_schedule: str = _opt("cosine", "learning-rate decay after warmup",
                            choices=("cosine", "linear", "constant"))
    warmup: float = _opt(0.05, "warmup: a fraction of the steps (<1) or a number of steps")
    weight_decay: float = _opt(0.0, "AdamW weight decay")
    grad_clip: float = _opt(1.0, "clip the global gradient norm to this (0: off)")
    lora_rank: int = _opt(8, "LoRA rank r")
    lora_alpha: float = _opt(16.0, "LoRA alpha; the update is scaled by alpha / rank, as in "
                             "PEFT (rank 8, alpha 16: scale 2)")
    lora_dropout: float = _opt(0.0, "dropout on the LoRA input")
    lora_scale: str = _opt("alpha", "LoRA scaling: alpha (alpha / rank) or rs (rsLoRA: "
                           "alpha / sqrt(rank), steadier at high ranks)", choices=("alpha", "rs"))
    lora_plus_ratio: float = _opt(0.0, "LoRA+: B's learning rate is this multiple of A's "
                                  "(16 in the paper; 0: off)")
    neftune_alpha: float = _opt(0.0, "NEFTune: noise of this size on the input embeddings "
                                "while training (5 in the paper; 0: off)")
    lora_layers: int = _opt(-1, "apply LoRA to the last N transformer layers (-1: all)")
    lora_targets: list[str] | None = _opt(None, "module names to adapt, e.g. self_attn.q_proj "
                                          "mlp.down_proj (default: every linear projection "
                                          "of attention and MLP)")
    quantize: int | None = _opt(None, "quantize the base to 4 or 8 bits on load (QLoRA)",
                                choices=(4, 8))
    keep_quantized: bool = _opt(False, "on Linux, keep a quantized base quantized while "
                                "training (slow scalar kernels) instead of de-quantizing it "
                                "to float32")
    grad_checkpoint: bool = _opt(False, "recompute activations in the backward pass to save "
                                 "memory")
    pack: bool = _opt(False, "pack several records into each max-seq-len row, each attending "
                      "only to itself (no padding; RoPE attention models)")
    seed: int = _opt(0, "random seed (data order, LoRA init, dropout)")
    steps_per_report: int = _opt(10, "report training loss every N steps")
    steps_per_eval: int = _opt(50, "validation loss every N steps (and at the end; 0: only "
                               "at the end)")
    eval_every: float | None = _opt(None, "validation every N steps (N >= 1) or every fraction "
                                    "of an epoch (0 < N < 1); overrides --steps-per-eval")
    patience: int = _opt(0, "early stopping: stop after N evaluations without a lower "
                         "validation loss, keeping the best adapter (0: off)")
    val_batches: int = _opt(-1, "validation batches per evaluation (-1: all)")
    steps_per_save: int = _opt(100, "save an adapter checkpoint every N steps (0: only at the "
                               "end)")
    report_to: list[str] | None = _opt(None, "also log to trackers: tensorboard (event files in "
                                       "RUN/tensorboard), wandb (respects WANDB_MODE=offline)")
    sample_prompts: str | None = _opt(None, "a .jsonl of prompts answered at every evaluation "
                                      "(default: the first --samples records of the "
                                      "validation data)")
    samples: int = _opt(3, "held-out prompts answered (greedy) at every evaluation (0: none)")
    sample_max_tokens: int = _opt(64, "longest sample answer, in tokens")
    skip_invalid: bool = _opt(False, "train on the valid records and count the invalid ones, "
                              "instead of stopping at the first")
    trust_remote_code: bool = _opt(False, "allow a model that runs its own Python code")
    # -- where the data comes from and how it renders (mlxsft.data, mlxsft.templates) --
    data_split: str | None = _opt(None, "for a hub dataset DATA: train on this split "
                                  "(train, validation, test); also DATA=org/name:split")
    data_config: str | None = _opt(None, "for a hub dataset DATA: the config (subset) to read")
    data_revision: str | None = _opt(None, "for a hub dataset DATA: a branch, tag or commit")
    prompt_key: str | None = _opt(None, "column holding the prompt (with --response-key), for "
                                  "tables in no known shape")
    response_key: str | None = _opt(None, "column holding the response to train on")
    messages_key: str | None = _opt(None, "column holding the conversation (a list of "
                                    "role/content or from/value messages)")
    chat_template: str | None = _opt(None, "render with this chat template instead of the "
                                     "tokenizer's: a .jinja file, chatml, or a model id or "
                                     "directory whose template to borrow (saved with the "
                                     "adapter)")
    template_kwarg: list[str] | None = _opt(None, "KEY=VALUE passed to the chat template, e.g. "
                                            "enable_thinking=false (repeatable; saved with the "
                                            "adapter)", repeatable=True)
    thinking: str = _opt("keep", "reasoning blocks (<think>...</think>) of assistant turns: "
                         "keep them, strip-history (drop them from all but the last turn, "
                         "as thinking models see history), off (drop them all)",
                         choices=THINKING_MODES)

    def resolved(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _base_type(tp):
    """The scalar type of an annotation like `int | None` or `list[str] | None`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])
    return tp


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


# The TrainConfig fields that say how data is read and rendered: `data check` and the
# curation commands take the same flags, with the same help, from here.
DATA_FIELDS = ("data_split", "data_config", "data_revision", "prompt_key", "response_key",
               "messages_key", "chat_template", "template_kwarg", "thinking")


def add_arguments(parser: argparse.ArgumentParser, cls=TrainConfig, only=None) -> None:
    """Add one flag per field (or per field named in `only`); defaults stay None so YAML
    values are not overridden."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if only is not None and f.name not in only:
            continue
        meta, tp = f.metadata, _base_type(hints[f.name])
        # `0 in (None, False)` is True: compare by identity so 0 and 0.0 are shown.
        default = (f"(default: {f.default})" if f.default is not None and f.default is not False
                   else "")
        help_text = f"{meta['help']} {default}".strip()
        if meta.get("positional"):
            parser.add_argument(f.name, nargs="?", default=None, help=help_text)
            continue
        flag = "--" + f.name.replace("_", "-")
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        elif typing.get_origin(tp) is list:
            parser.add_argument(flag, nargs="+", default=None, help=help_text,
                                action="extend" if meta.get("repeatable") else None)
        else:
            parser.add_argument(flag, type=tp, default=None, choices=meta.get("choices"),
                                help=help_text)


def load_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.exists():
        raise UserError(f"--config {path}: no such file")
    if not path.is_file():
        raise UserError(f"--config {path}: not a file; pass a YAML file of option: value")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise UserError(f"--config {path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at "
                        f"offset {e.start}); pass a YAML file saved as UTF-8") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of option: value")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def build_config(args: argparse.Namespace | dict, yaml_path: str | None = None,
                 cls=TrainConfig) -> Any:
    """Defaults < YAML < explicitly given CLI flags; values are checked against types."""
    import difflib

    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    if yaml_path:
        for key, value in load_yaml(yaml_path).items():
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise UserError(f"{yaml_path}: unknown option '{key}'{hint}")
            values[key] = value
    given = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    values.update({k: v for k, v in given.items() if k in names and v is not None})
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in values:
            values[f.name] = _coerce(f, _base_type(hints[f.name]), values[f.name], yaml_path)
    config = cls(**values)
    if cls is TrainConfig:
        validate(config)
    return config


TRACKERS = ("tensorboard", "wandb")

# (field, predicate, what it must be): checked after flags and YAML are merged, so a bad
# value fails here, in one line, before a model is loaded or a run directory is made.
_RULES = [
    ("batch_size", lambda v: v >= 1, "at least 1"),
    ("grad_accum", lambda v: v >= 1, "at least 1"),
    ("iters", lambda v: v is None or v >= 1, "at least 1 (leave it out to use --epochs)"),
    ("epochs", lambda v: math.isfinite(v) and v > 0, "a number above 0"),
    ("learning_rate", lambda v: math.isfinite(v) and v > 0, "a number above 0, e.g. 1e-4"),
    ("warmup", lambda v: math.isfinite(v) and v >= 0,
     "0 or more (a fraction of the steps below 1, else a number of steps)"),
    ("weight_decay", lambda v: math.isfinite(v) and v >= 0, "0 or more"),
    ("grad_clip", lambda v: math.isfinite(v) and v >= 0, "0 (off) or more"),
    ("lora_rank", lambda v: v >= 1, "at least 1"),
    ("lora_alpha", lambda v: math.isfinite(v) and v > 0, "above 0 (the update is scaled by "
     "alpha / rank)"),
    ("lora_dropout", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("lora_layers", lambda v: v == -1 or v >= 1, "-1 (all) or at least 1"),
    ("max_seq_len", lambda v: v >= 2, "at least 2"),
    ("steps_per_report", lambda v: v >= 1, "at least 1"),
    ("steps_per_eval", lambda v: v >= 0, "0 (only at the end) or more"),
    ("steps_per_save", lambda v: v >= 0, "0 (only at the end) or more"),
    ("val_batches", lambda v: v == -1 or v >= 1, "-1 (all) or at least 1"),
    ("beta1", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("beta2", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("momentum", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("lora_plus_ratio", lambda v: math.isfinite(v) and v >= 0, "0 (off) or more, e.g. 16"),
    ("neftune_alpha", lambda v: math.isfinite(v) and v >= 0, "0 (off) or more, e.g. 5"),
    ("eval_every", lambda v: v is None or (math.isfinite(v) and v > 0 and (v < 1 or v == int(v))),
     "a whole number of steps, or a fraction of an epoch between 0 and 1"),
    ("patience", lambda v: v >= 0, "0 (off) or more evaluations"),
    ("samples", lambda v: v >= 0, "0 (none) or more"),
    ("sample_max_tokens", lambda v: v >= 1, "at least 1"),
    ("report_to", lambda v: not v or all(t in TRACKERS for t in v),
     f"among {', '.join(TRACKERS)}"),
]


def validate(config: TrainConfig) -> None:
    """Raise a one-line `UserError` for the first out-of-range option."""
    for name, ok, what in _RULES:
        value = getattr(config, name)
        if not ok(value):
            raise UserError(f"--{name.replace('_', '-')} {value}: must be {what}")


def _coerce(f: dataclasses.Field, tp, value, source):
    where = source or "options"
    if value is None:
        return None
    try:
        if tp is bool:
            if not isinstance(value, bool):
                raise TypeError
        elif typing.get_origin(tp) is list:
            if isinstance(value, dict):  # YAML `template_kwarg: {enable_thinking: false}`
                import json

                value = [f"{k}={json.dumps(v)}" for k, v in value.items()]
            value = [str(v) for v in (value if isinstance(value, list) else [value])]
        elif tp is float:
            value = float(value)
        elif tp is int:
            if isinstance(value, bool) or float(value) != int(value):
                raise TypeError
            value = int(value)
        elif tp is str:
            value = str(value)
    except (TypeError, ValueError):
        raise UserError(f"{where}: '{f.name}' must be {getattr(tp, '__name__', tp)}, "
                        f"got {value!r}") from None
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise UserError(f"{where}: '{f.name}' must be one of "
                        f"{', '.join(map(str, choices))}, got {value!r}")
    return value
