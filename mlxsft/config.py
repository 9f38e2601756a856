"""Typed options for every command: one dataclass per command is the source of its flags,
their --help, and (for `train`) the YAML keys of `--config run.yaml` and the resolved
`config.yaml` saved in a run.

An option that several commands share (`--model`, `--adapter`, `--mask`, `--json`, the LoRA
and precision options that `bench` takes from `train`...) is declared once, by one function
below, so its help text and its check exist in one place. Each option belongs to a group
(model, data, LoRA, optimizer, ...) that `--help` prints as a section, as litgpt groups its
`TrainArgs`/`EvalArgs`; the dataclasses stay flat so `config.yaml` keeps one key per option.

Precedence: dataclass defaults < YAML file (train) < command-line flags. A value out of
range fails in one line, at parse time for flags and in `validate` for YAML and the TUI.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from mlxsft.answers import MATCHES
from mlxsft.errors import UserError
from mlxsft.masking import MASK_MODES
from mlxsft.models import DEFAULT_MODEL
from mlxsft.optimizers import OPTIMIZERS
from mlxsft.templates import THINKING_MODES

# Section titles of --help, in the order they are printed.
GROUPS = ("data", "data source", "model", "LoRA", "optimizer", "evaluation and saving", "generation",
          "output", "benchmark", "run")

Check = tuple[Callable[[Any], bool], str]  # (predicate, what the value must be)


def option(default, help: str, group: str, *, choices=None, positional=False,
           check: Check | None = None, required=False, metavar=None, repeat=False):
    """A dataclass field that is also a command-line option.

    `check` is a (predicate, "what it must be") pair applied to flags as they are parsed
    and to YAML values in `validate`. A list option is given as one list (`--lora-targets
    a b`); `repeat=True` makes it one value per flag (`--prompt A --prompt B`), and
    `repeat="extend"` lets the list flag be given again (`--template-kwarg a=1 --template-kwarg
    b=2`).
    """
    assert group in GROUPS, group
    return field(default=default, metadata={
        "help": help, "group": group, "choices": choices, "positional": positional,
        "check": check, "required": required, "metavar": metavar, "repeat": repeat})


def _at_least(low: int) -> Check:
    return (lambda v: v >= low, f"at least {low}")


_POSITIVE = (lambda v: math.isfinite(v) and v > 0, "a number above 0")

# -- options shared by several commands: declared once, here ---------------------------
_MODEL_KINDS = "a Hugging Face directory, a hub id, a .gguf file, or the alias"


def model_option(from_adapter: bool = False, default: str | None = DEFAULT_MODEL):
    """--model: the base. Commands that take an adapter default to the adapter's base."""
    if from_adapter:
        return option(None, f"base model: {_MODEL_KINDS} {DEFAULT_MODEL} (default: the "
                      f"adapter's base, else {DEFAULT_MODEL})", "model")
    return option(default, f"base model: {_MODEL_KINDS} {DEFAULT_MODEL} (the embedded "
                  "default)", "model")


def trust_remote_code_option():
    return option(False, "allow a model that runs its own Python code", "model")


def adapter_option(required: bool = False):
    return option(None, "adapter directory (a run directory, its best/ or a checkpoint)",
                  "model", required=required)


def quantize_option():
    return option(None, "quantize the base to 4 or 8 bits on load (QLoRA)", "model",
                  choices=(4, 8))


def keep_quantized_option():
    return option(False, "on Linux, keep a quantized base quantized while training (slow "
                  "scalar kernels) instead of de-quantizing it to float32", "model")


def fine_tune_option():
    return option("lora", "lora (adapters on a frozen base), dora (LoRA with a learned "
                  "per-row magnitude) or full (all weights; small models only)", "LoRA",
                  choices=("lora", "dora", "full"))


def lora_rank_option():
    return option(8, "LoRA rank r", "LoRA", check=_at_least(1))


def grad_checkpoint_option():
    return option(False, "recompute activations in the backward pass to save memory",
                  "optimizer")


def mask_option():
    return option("assistant", "what carries loss: assistant (every assistant turn and its "
                  "end-of-turn token), last (the final assistant turn), all (every token)",
                  "data", choices=MASK_MODES)


def max_seq_len_option():
    return option(1024, "truncate longer records to this many tokens (counted and reported)",
                  "data", check=_at_least(2))


def skip_invalid_option():
    return option(False, "use the valid records and count the invalid ones, instead "
                  "of stopping at the first", "data")


def json_option(what: str = "one JSON object"):
    return option(False, f"print {what}", "output")


@dataclass
class DataSourceOptions:
    """Where the data comes from and how it renders (mlxsft.data, mlxsft.templates): the
    options `train`, `data check` and the curation commands share."""

    data_split: str | None = option(None, "for a hub dataset DATA: train on this split "
                                    "(train, validation, test); also DATA=org/name:split",
                                    "data source")
    data_config: str | None = option(None, "for a hub dataset DATA: the config (subset) to "
                                     "read", "data source")
    data_revision: str | None = option(None, "for a hub dataset DATA: a branch, tag or commit",
                                       "data source")
    prompt_key: str | None = option(None, "column holding the prompt (with --response-key), "
                                    "for tables in no known shape", "data source")
    response_key: str | None = option(None, "column holding the response to train on",
                                      "data source")
    messages_key: str | None = option(None, "column holding the conversation (a list of "
                                      "role/content or from/value messages)", "data source")
    chat_template: str | None = option(None, "render with this chat template instead of the "
                                       "tokenizer's: a .jinja file, chatml, or a model id or "
                                       "directory whose template to borrow (saved with the "
                                       "adapter)", "data source")
    template_kwarg: list[str] | None = option(None, "KEY=VALUE passed to the chat template, "
                                              "e.g. enable_thinking=false (repeatable; saved "
                                              "with the adapter)", "data source",
                                              repeat="extend")
    thinking: str = option("keep", "reasoning blocks (<think>...</think>) of assistant turns: "
                           "keep them, strip-history (drop them from all but the last turn, "
                           "as thinking models see history), off (drop them all)",
                           "data source", choices=THINKING_MODES)


# The fields above, for commands that take only some of them (mlxsft.datacli).
DATA_FIELDS = tuple(f.name for f in dataclasses.fields(DataSourceOptions))


TRACKERS = ("tensorboard", "wandb")


# -- one dataclass per command ---------------------------------------------------------
@dataclass
class _TrainOptions:
    """`train`'s own options; TrainConfig puts the data source ones after them."""

    data: str | None = option(None, "training data: a .jsonl file, or a directory with "
                              "train.jsonl (and valid.jsonl, test.jsonl)", "data",
                              positional=True)
    valid: str | None = option(None, "validation .jsonl (default: valid.jsonl beside the "
                               "data)", "data")
    model: str = model_option()
    out: str | None = option(None, "run directory for adapters, checkpoints and metrics "
                             "(default: runs/<date>-<time>)", "evaluation and saving")
    fine_tune: str = fine_tune_option()
    mask: str = mask_option()
    max_seq_len: int = max_seq_len_option()
    batch_size: int = option(4, "records per micro-batch", "optimizer", check=_at_least(1))
    grad_accum: int = option(1, "micro-batches per optimizer step; the loss is the mean over "
                             "all supervised tokens of the accumulated batch", "optimizer",
                             check=_at_least(1))
    iters: int | None = option(None, "optimizer steps to train (overrides --epochs)",
                               "optimizer", check=(lambda v: v is None or v >= 1,
                                                   "at least 1 (leave it out to use --epochs)"))
    epochs: float = option(1.0, "passes over the training data when --iters is not given",
                           "optimizer", check=_POSITIVE)
    learning_rate: float = option(1e-4, "peak learning rate", "optimizer",
                                  check=(_POSITIVE[0], "a number above 0, e.g. 1e-4"))
    optimizer: str = option("adamw", "optimizer from mlx.optimizers (muon: Muon for weight "
                            "matrices, AdamW for the rest)", "optimizer", choices=OPTIMIZERS)
    beta1: float = option(0.9, "first-moment decay (adamw, adam, lion)", "optimizer",
                          check=(lambda v: 0 <= v < 1, "in [0, 1)"))
    beta2: float = option(0.999, "second-moment decay (adamw, adam, lion: 0.99 is usual for "
                          "lion)", "optimizer", check=(lambda v: 0 <= v < 1, "in [0, 1)"))
    momentum: float = option(0.0, "momentum (sgd; muon uses 0.95 when 0)", "optimizer",
                             check=(lambda v: 0 <= v < 1, "in [0, 1)"))
    # constant: in a short run a decay to 10% halves the mean rate, and the tuned model
    # ends further from where it could be (README, "Tuning quality").
    lr_schedule: str = option("constant", "after warmup: constant (stay at the peak), or "
                              "linear / cosine decay to a tenth of the peak at the last step",
                              "optimizer", choices=("constant", "linear", "cosine"))
    warmup: float = option(0.05, "warmup: a fraction of the steps (<1) or a number of steps",
                           "optimizer", check=(lambda v: math.isfinite(v) and v >= 0,
                                               "0 or more (a fraction of the steps below 1, "
                                               "else a number of steps)"))
    weight_decay: float = option(0.0, "AdamW weight decay", "optimizer",
                                 check=(lambda v: math.isfinite(v) and v >= 0, "0 or more"))
    grad_clip: float = option(1.0, "clip the global gradient norm to this (0: off)",
                              "optimizer", check=(lambda v: math.isfinite(v) and v >= 0,
                                                  "0 (off) or more"))
    lora_rank: int = lora_rank_option()
    lora_alpha: float = option(16.0, "LoRA alpha; the update is scaled by alpha / rank, as in "
                               "PEFT (rank 8, alpha 16: scale 2)", "LoRA",
                               check=(_POSITIVE[0], "above 0 (the update is scaled by "
                                      "alpha / rank)"))
    lora_dropout: float = option(0.0, "dropout on the LoRA input", "LoRA",
                                 check=(lambda v: 0 <= v < 1, "in [0, 1)"))
    lora_scale: str = option("alpha", "LoRA scaling: alpha (alpha / rank) or rs (rsLoRA: "
                             "alpha / sqrt(rank), steadier at high ranks)", "LoRA",
                             choices=("alpha", "rs"))
    lora_plus_ratio: float = option(0.0, "LoRA+: B's learning rate is this multiple of A's "
                                    "(16 in the paper; 0: off)", "LoRA",
                                    check=(lambda v: math.isfinite(v) and v >= 0,
                                           "0 (off) or more, e.g. 16"))
    neftune_alpha: float = option(0.0, "NEFTune: noise of this size on the input embeddings "
                                  "while training (5 in the paper; 0: off)", "LoRA",
                                  check=(lambda v: math.isfinite(v) and v >= 0,
                                         "0 (off) or more, e.g. 5"))
    lora_layers: int = option(-1, "apply LoRA to the last N transformer layers (-1: all)",
                              "LoRA", check=(lambda v: v == -1 or v >= 1,
                                             "-1 (all) or at least 1"))
    lora_targets: list[str] | None = option(None, "module names to adapt, e.g. "
                                            "self_attn.q_proj mlp.down_proj (default: every "
                                            "linear projection of attention and MLP)", "LoRA")
    quantize: int | None = quantize_option()
    keep_quantized: bool = keep_quantized_option()
    grad_checkpoint: bool = grad_checkpoint_option()
    pack: bool = option(False, "pack several records into each max-seq-len row, each attending "
                        "only to itself (no padding; RoPE attention models)", "optimizer")
    group_by_length: bool = option(False, "batch records of similar length together: less "
                                   "padding, faster steps, but batches of one length can tune "
                                   "worse in a short run (default: shuffled batches)",
                                   "optimizer")
    seed: int = option(0, "random seed (data order, LoRA init, dropout)", "optimizer")
    steps_per_report: int = option(10, "report training loss every N steps",
                                   "evaluation and saving", check=_at_least(1))
    steps_per_eval: int = option(50, "validation loss every N steps (and at the end; 0: only "
                                 "at the end)", "evaluation and saving",
                                 check=(lambda v: v >= 0, "0 (only at the end) or more"))
    eval_every: float | None = option(
        None, "validation every N steps (N >= 1) or every fraction of an epoch (0 < N < 1); "
        "overrides --steps-per-eval", "evaluation and saving",
        check=(lambda v: math.isfinite(v) and v > 0 and (v < 1 or v == int(v)),
               "a whole number of steps, or a fraction of an epoch between 0 and 1"))
    patience: int = option(0, "early stopping: stop after N evaluations without a lower "
                           "validation loss, keeping the best adapter (0: off)",
                           "evaluation and saving", check=_at_least(0))
    samples: int = option(3, "held-out prompts answered (greedy) at every evaluation (0: none)",
                          "evaluation and saving", check=_at_least(0))
    sample_prompts: str | None = option(None, "a .jsonl of prompts answered at every "
                                        "evaluation (default: the first --samples records of "
                                        "the validation data)", "evaluation and saving")
    sample_max_tokens: int = option(64, "longest sample answer, in tokens",
                                    "evaluation and saving", check=_at_least(1))
    report_to: list[str] | None = option(
        None, "also log to trackers: tensorboard (event files in RUN/tensorboard), wandb "
        "(respects WANDB_MODE=offline)", "evaluation and saving",
        check=(lambda v: all(t in TRACKERS for t in v), "among tensorboard, wandb"))
    val_batches: int = option(-1, "validation batches per evaluation (-1: all)",
                              "evaluation and saving", check=(lambda v: v == -1 or v >= 1,
                                                              "-1 (all) or at least 1"))
    steps_per_save: int = option(100, "save an adapter checkpoint every N steps (0: only at "
                                 "the end)", "evaluation and saving",
                                 check=(lambda v: v >= 0, "0 (only at the end) or more"))
    skip_invalid: bool = skip_invalid_option()
    trust_remote_code: bool = trust_remote_code_option()
    peer_timeout: float = option(
        600.0, "under mlx.launch: seconds a rank waits for the others in one step, "
        "evaluation or agreement before it stops the run with an error (raise it for "
        "steps slower than that)", "run", check=_POSITIVE)


# What a run's config.yaml records beside the options (not options: ignored on reading).
RECORDED = ("world_size", "global_batch_size")


@dataclass
class TrainConfig(DataSourceOptions, _TrainOptions):
    """`mlxsft train` (and the TUI's run): its flags, its YAML keys and its saved
    config.yaml, in this order (dataclasses put a later base's fields first)."""

    def resolved(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class DataCheckConfig(DataSourceOptions):
    data: str = option(None, "a .jsonl/.json/.parquet file, a directory with train.jsonl / "
                       "valid.jsonl, or a Hugging Face dataset id (org/name, org/name:split)",
                       "data", positional=True, required=True)
    model: str = model_option()
    trust_remote_code: bool = trust_remote_code_option()
    mask: str = mask_option()
    max_seq_len: int = max_seq_len_option()
    skip_invalid: bool = skip_invalid_option()
    show: int = option(0, "print N records with masked (dim) and supervised (bold green) "
                       "tokens", "output", check=_at_least(0), metavar="N")
    json: bool = json_option("one JSON object per record (line, tokens, loss_mask) and a "
                             "summary")
    color: bool | None = option(None, "colour for --show (default: when writing to a "
                                "terminal)", "output")
    against: str | None = option(None, "also report training records that (nearly) repeat a "
                                 "record of this held-out file (leakage)", "data",
                                 metavar="HELD_OUT")


@dataclass
class EvalConfig:
    data: str = option(None, "a .jsonl file, or a data directory (its valid.jsonl)", "data",
                       positional=True, required=True)
    model: str | None = model_option(from_adapter=True)
    adapter: str | None = adapter_option()
    mask: str = mask_option()
    max_seq_len: int = max_seq_len_option()
    skip_invalid: bool = skip_invalid_option()
    batch_size: int = option(4, "records per forward pass", "data", check=_at_least(1))
    answers: int = option(0, "also generate replies (greedy) to the first N held-out records "
                          "and count how many are right and in the reference's shape",
                          "generation", check=_at_least(0), metavar="N")
    match: str = option("exact", "how --answers judges a reply: exact (the reference text; "
                        "shape: its labelled lines) or json (the reply's first JSON object has "
                        "the reference's values; shape: the reply is one JSON object with its "
                        "keys)", "generation", choices=MATCHES)
    show: int = option(0, "print the first K judged replies of --answers", "generation",
                       check=_at_least(0), metavar="K")
    json: bool = json_option()


@dataclass
class ChatConfig:
    model: str | None = model_option(from_adapter=True)
    adapter: str | None = adapter_option()
    compare: bool = option(False, "answer with base and tuned", "generation")
    prompt: list[str] | None = option(None, "answer this prompt and exit (repeatable)",
                                      "generation", metavar="TEXT", repeat=True)
    prompts: str | None = option(None, "a file of prompts, one per line (or JSON lines with "
                                 "a 'prompt' field)", "generation", metavar="FILE")
    system: str | None = option(None, "a system message for every conversation", "generation")
    max_tokens: int = option(256, "longest answer in tokens", "generation", check=_at_least(1))
    temperature: float = option(0.0, "sampling temperature; 0 is greedy", "generation",
                                check=(lambda v: v >= 0, "0 or more"))
    json: bool = json_option("one JSON object per prompt (with --prompt) holding each "
                             "model's answer")


@dataclass
class FuseConfig:
    adapter: str = adapter_option(required=True)
    out: str = option(None, "the model directory (or .gguf file) to write", "output",
                      required=True)
    model: str | None = model_option(from_adapter=True)
    format: str = option("mlx", "mlx: directory for mlx-lm (may be quantized); hf: "
                         "full-precision directory for transformers and mlx-lm; gguf: one "
                         "llama.cpp file (llama, mistral, qwen2, qwen3); ollama: a directory "
                         "with the GGUF and a Modelfile (stop tokens, template); lmstudio: the "
                         "GGUF in LM Studio's models folder", "output",
                         choices=("mlx", "hf", "gguf", "ollama", "lmstudio"))
    lmstudio_dir: str | None = option(None, "LM Studio's models folder for --format lmstudio "
                                      "(default: ~/.lmstudio/models)", "output", metavar="DIR")
    dtype: str | None = option(None, "float type written (default: the base's; float16 for a "
                               "quantized base)", "output",
                               choices=("float16", "bfloat16", "float32"))
    quantize: str | None = option(None, "re-quantize: 4 or 8 bits (MLX affine, the base's "
                                  "group size or 64; GGUF Q4_1 / Q8_0), or for GGUF a llama.cpp "
                                  "scheme: q4_k_m, q5_k_m, q6_k, q8_0, q4_k_s, q5_k_s, q4_0, "
                                  "q4_1, q5_0, q5_1, or same (each tensor as the source GGUF "
                                  "had it); the loss change is reported", "output",
                                  metavar="BITS|SCHEME")
    json: bool = json_option()


@dataclass
class ExportAdapterConfig:
    adapter: str = adapter_option(required=True)
    format: str = option("peft", "peft: PEFT's layout for transformers; gguf: llama.cpp's LoRA "
                         "adapter GGUF (llama-cli --lora, Ollama ADAPTER)", "output",
                         choices=("peft", "gguf"))
    out: str = option(None, "the directory to write", "output", required=True)
    base: str | None = option(None, "base_model_name_or_path to record (default: the "
                              "adapter's base; give the Hugging Face id when it was a GGUF "
                              "file)", "model")


@dataclass
class BenchConfig:
    """`mlxsft bench`: the step of `train` with these options (the rest at train's defaults)."""

    model: str = model_option()
    batch_size: int = option(4, "records per step", "benchmark", check=_at_least(1))
    seq_len: int = option(256, "tokens per record", "benchmark", check=_at_least(2))
    steps: int = option(10, "timed steps", "benchmark", check=_at_least(1))
    warmup: int = option(2, "untimed steps first, for compilation", "benchmark",
                         check=_at_least(0))
    fine_tune: str = fine_tune_option()
    lora_rank: int = lora_rank_option()
    quantize: int | None = quantize_option()
    keep_quantized: bool = keep_quantized_option()
    grad_checkpoint: bool = grad_checkpoint_option()
    data: str | None = option(None, "cut batches from this data instead of synthetic tokens",
                              "data")
    json: bool = json_option()


@dataclass
class PushConfig:
    source: str = option(None, "what to upload: a run or adapter directory (mlx-lm's and "
                         "PEFT's layouts), a fused model directory, or a .gguf file", "run",
                         positional=True, required=True, metavar="RUN|DIR|FILE")
    repo: str = option(None, "the hub repository (created when missing)", "output",
                       required=True, metavar="USER/NAME")
    private: bool = option(False, "create the repository private", "output")


@dataclass
class CompareConfig:
    run: str = option(None, "a run directory (the --out of mlxsft train)", "run",
                      positional=True, required=True)
    prompts: str | None = option(None, "a .jsonl of prompts with reference answers (default: "
                                 "the run's validation data)", "data", metavar="FILE")
    include: list[str] | None = option(None, "also a fused model directory or .gguf file",
                                       "model", metavar="PATH")
    limit: int = option(8, "prompts to answer", "generation", check=_at_least(1))
    max_tokens: int = option(64, "longest answer, in tokens", "generation", check=_at_least(1))
    json: bool = json_option()


@dataclass
class EnvConfig:
    json: bool = json_option()


@dataclass
class TuiConfig:
    data: str | None = option(None, "training data (.jsonl or a dir)", "data", positional=True)
    # None, not the default model: the run panel then shows the YAML's model or its own.
    model: str | None = model_option(default=None)
    config: str | None = option(None, "YAML file of run options", "run")
    run: str | None = option(None, "open this run directory", "run", metavar="DIR")


# -- the machinery: flags from fields, configs from flags and YAML ---------------------
def _base_type(tp):
    """The scalar type of an annotation like `int | None` or `list[str] | None`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])
    return tp


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _checked(tp, check: Check | None):
    """An argparse `type` that converts and applies the field's check at parse time."""
    if check is None:
        return tp
    ok, what = check

    def parse(text: str):
        try:
            value = tp(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"invalid {tp.__name__} value: {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text}: must be {what}")
        return value
    parse.__name__ = tp.__name__  # argparse names the type in its own messages
    return parse


def add_arguments(parser: argparse.ArgumentParser, cls=TrainConfig, only=None) -> None:
    """Add one flag per field (or per field named in `only`), in a --help section per
    group; defaults stay None so YAML values are not overridden (the dataclass fills in
    the rest)."""
    hints = _hints(cls)
    sections: dict[str, argparse._ArgumentGroup] = {}
    fields = [f for f in dataclasses.fields(cls) if only is None or f.name in only]
    for name in GROUPS:  # sections in GROUPS order, whatever the field order
        if any(f.metadata["group"] == name for f in fields):
            sections[name] = parser.add_argument_group(f"{name} options")
    for f in fields:
        meta, tp = f.metadata, _base_type(hints[f.name])
        group = sections[meta["group"]]
        # `0 in (None, False)` is True: compare by identity so 0 and 0.0 are shown.
        default = (f"(default: {f.default})" if f.default is not None and f.default is not False
                   else "")
        help_text = f"{meta['help']} {default}".strip().replace("%", "%%")
        if meta["positional"]:
            group.add_argument(f.name, nargs=None if meta["required"] else "?", default=None,
                               help=help_text)
            continue
        flag = "--" + f.name.replace("_", "-")
        kwargs: dict[str, Any] = {"default": None, "help": help_text}
        if meta["metavar"]:
            kwargs["metavar"] = meta["metavar"]
        if meta["required"]:
            kwargs["required"] = True
        if tp is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif typing.get_origin(tp) is list:
            if meta["repeat"] is True:
                group.add_argument(flag, action="append", **kwargs)
            else:
                group.add_argument(flag, nargs="+", **kwargs,
                                   action="extend" if meta["repeat"] == "extend" else None)
        else:
            group.add_argument(flag, type=_checked(tp, meta["check"]), choices=meta["choices"],
                               **kwargs)


def load_yaml(path: str | Path) -> dict[str, Any]:
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
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    if yaml_path:
        for key, value in load_yaml(yaml_path).items():
            if key in RECORDED and cls is TrainConfig:
                continue
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
    validate(config)
    return config


def validate(config) -> None:
    """Raise a one-line `UserError` for the first out-of-range option. Flags were checked
    as they were parsed; this catches YAML values and the TUI's form, before a model is
    loaded or a run directory is made."""
    for f in dataclasses.fields(config):
        check = f.metadata.get("check")
        value = getattr(config, f.name)
        if check and value is not None and not check[0](value):
            raise UserError(f"--{f.name.replace('_', '-')} {value}: must be {check[1]}")


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
