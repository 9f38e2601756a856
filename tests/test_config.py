"""Every command's options come from one dataclass in mlxsft.config, and an option that
several commands share is declared once: same help, same default, same check."""

import argparse
import dataclasses

import pytest

from mlxsft.cli import build_parser
from mlxsft.config import BenchConfig, ChatConfig, EvalConfig, TrainConfig, build_config
from mlxsft.errors import UserError


def _options(argv: list[str]) -> dict[str, argparse.Action]:
    parser = build_parser()
    for name in argv:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return {flag: action for action in parser._actions for flag in action.option_strings}


COMMANDS = [["train"], ["data", "check"], ["eval"], ["chat"], ["fuse"], ["export-adapter"],
            ["bench"], ["env"], ["tui"]]


def test_a_shared_option_has_one_help_text_everywhere():
    seen: dict[str, dict[str, str]] = {}
    for command in COMMANDS:
        for flag, action in _options(command).items():
            if flag.startswith("--") and flag not in ("--help", "--json", "--no-json"):
                seen.setdefault(flag, {})[" ".join(command)] = action.help
    shared = {flag: helps for flag, helps in seen.items() if len(helps) > 1}
    # What bench takes from train, and what eval/data check/chat take from each other.
    assert {"--lora-rank", "--fine-tune", "--quantize", "--keep-quantized", "--grad-checkpoint",
            "--mask", "--max-seq-len", "--skip-invalid", "--adapter"} <= set(shared)
    for flag in ("--lora-rank", "--fine-tune", "--keep-quantized", "--grad-checkpoint", "--mask",
                 "--max-seq-len", "--skip-invalid", "--adapter", "--trust-remote-code"):
        assert len(set(shared[flag].values())) == 1, (flag, shared[flag])
    # --model differs only in its default: the adapter's base where there is an adapter.
    assert shared["--model"]["eval"] == shared["--model"]["chat"] == shared["--model"]["fuse"]
    assert shared["--model"]["train"] == shared["--model"]["bench"] == \
        shared["--model"]["data check"]


def test_bench_defaults_are_trains():
    train, bench = TrainConfig(), BenchConfig()
    for name in ("model", "fine_tune", "lora_rank", "quantize", "keep_quantized",
                 "grad_checkpoint"):
        assert getattr(bench, name) == getattr(train, name), name


@pytest.mark.parametrize("cls,values,message", [
    (ChatConfig, {"max_tokens": 0}, "--max-tokens 0: must be at least 1"),
    (ChatConfig, {"temperature": -1}, "--temperature -1.0: must be 0 or more"),
    (EvalConfig, {"data": "d", "batch_size": 0}, "--batch-size 0: must be at least 1"),
    (BenchConfig, {"seq_len": 1}, "--seq-len 1: must be at least 2"),
    (TrainConfig, {"lora_dropout": 1.5}, "--lora-dropout 1.5: must be in [0, 1)"),
])
def test_values_not_from_flags_get_the_same_checks(cls, values, message):
    # The TUI's form and YAML files reach build_config without argparse.
    with pytest.raises(UserError) as e:
        build_config(values, cls=cls)
    assert str(e.value) == message


def test_every_field_is_a_flag_with_its_help():
    from mlxsft import config

    for cls, command in ((TrainConfig, ["train"]), (BenchConfig, ["bench"]),
                         (ChatConfig, ["chat"]), (config.FuseConfig, ["fuse"])):
        options = _options(command)
        for f in dataclasses.fields(cls):
            if f.metadata["positional"]:
                continue
            action = options["--" + f.name.replace("_", "-")]
            assert action.help.startswith(f.metadata["help"]), f.name
