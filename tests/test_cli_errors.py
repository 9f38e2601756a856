"""Bad options, output paths and damaged files: one `mlxsft: error:` line on stderr,
exit code 2, no traceback, and nothing left behind (found by a CLI audit)."""

import shutil

import pytest
from helpers.tiny import save_model_dir

from mlxsft.cli import main

BAD_TRAIN_OPTIONS = [
    ["--batch-size", "-1"],  # used to loop forever
    ["--batch-size", "0"], ["--grad-accum", "0"], ["--iters", "0"], ["--iters", "-5"],
    ["--epochs", "0"], ["--learning-rate", "-1"], ["--learning-rate", "nan"],
    ["--max-seq-len", "1"], ["--lora-alpha", "0"], ["--lora-dropout", "1.5"],
    ["--warmup", "-1"], ["--weight-decay", "-1"], ["--steps-per-report", "0"],
    ["--steps-per-eval", "-1"], ["--steps-per-save", "-1"], ["--val-batches", "0"],
    ["--learning-rate", "abc"], ["--lora-layers", "99"],
]


def _one_error_line(capsys):
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlxsft: error: "), err
    return lines[0]


@pytest.mark.parametrize("option", BAD_TRAIN_OPTIONS, ids=" ".join)
def test_bad_train_option_is_one_line_and_leaves_no_run_dir(option, tiny_llama, tiny_data,
                                                             tmp_path, capsys):
    out = tmp_path / "run"
    code = None
    try:
        code = main(["train", str(tiny_data), "--model", str(tiny_llama), "--out", str(out),
                     *option])
    except SystemExit as e:  # argparse
        code = e.code
    assert code == 2
    assert option[0] in _one_error_line(capsys)
    assert not out.exists()
    # The corrected command may reuse the same --out.


@pytest.mark.parametrize("command", [["eval", "DATA", "--batch-size", "0"],
                                     ["chat", "--max-tokens", "-1"],
                                     ["bench", "--steps", "0"],
                                     ["data", "check", "DATA", "--max-seq-len", "-5"]])
def test_bad_option_of_other_commands(command, tiny_data, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(tiny_data) if c == "DATA" else c for c in command])
    assert e.value.code == 2
    _one_error_line(capsys)


def test_out_that_is_a_file_or_cannot_be_made(tiny_llama, tiny_data, tmp_path, capsys):
    a_file = tmp_path / "f"
    a_file.write_text("keep me")
    for out in (a_file, a_file / "run", "/proc/mlxsft-run"):
        assert main(["train", str(tiny_data), "--model", str(tiny_llama), "--iters", "1",
                     "--out", str(out)]) == 2
        assert "--out" in _one_error_line(capsys)
    assert a_file.read_text() == "keep me"


@pytest.fixture
def run_dir(tiny_llama, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", str(tiny_data), "--model", str(tiny_llama), "--iters", "2",
                 "--out", str(out)]) == 0
    return out


def test_damaged_adapter_files(run_dir, tiny_data, tmp_path, capsys):
    capsys.readouterr()
    damaged = tmp_path / "damaged"
    shutil.copytree(run_dir, damaged)
    weights = damaged / "adapters.safetensors"
    weights.write_bytes(weights.read_bytes()[:300])
    for command in (["eval", str(tiny_data), "--adapter", str(damaged)],
                    ["chat", "--adapter", str(damaged), "--prompt", "hi"],
                    ["export-adapter", "--adapter", str(damaged), "--out", str(tmp_path / "p")]):
        assert main(command) == 2
        assert "truncated or corrupt" in _one_error_line(capsys)
    (damaged / "adapter_config.json").write_text("[1, 2]")
    assert main(["eval", str(tiny_data), "--adapter", str(damaged)]) == 2
    assert "expected a JSON object" in _one_error_line(capsys)


def test_resume_checks_model_and_optimizer(run_dir, tiny_data, tmp_path, capsys):

    capsys.readouterr()
    other = save_model_dir(tmp_path / "narrow", hidden_size=32, intermediate_size=64)
    assert main(["train", "--resume", str(run_dir), "--iters", "4", "--model", str(other)]) == 2
    assert "hidden_size" in _one_error_line(capsys)
    (run_dir / "optimizer.safetensors").write_bytes(b"\0" * 100)
    before = (run_dir / "config.yaml").read_text()
    assert main(["train", "--resume", str(run_dir), "--iters", "4"]) == 2
    assert "truncated or corrupt" in _one_error_line(capsys)
    assert (run_dir / "config.yaml").read_text() == before


def test_truncated_safetensors_model(tiny_llama, tiny_data, tmp_path, capsys):
    model = tmp_path / "m"
    shutil.copytree(tiny_llama, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:50000])
    assert main(["train", str(tiny_data), "--model", str(model), "--iters", "1",
                 "--out", str(tmp_path / "r")]) == 2
    assert "could not read its weights" in _one_error_line(capsys)
    assert not (tmp_path / "r").exists()


def test_config_that_is_not_utf8_text(tiny_data, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_bytes(b"\xff\xfe garbage")
    assert main(["train", str(tiny_data), "--config", str(config)]) == 2
    assert "UTF-8" in _one_error_line(capsys)
    assert main(["train", str(tiny_data), "--config", str(tmp_path)]) == 2
    assert "not a file" in _one_error_line(capsys)


@pytest.mark.parametrize("args", [["--run", "NOPE"], ["NOPE.jsonl"], ["DATA", "--config", "NOPE.yaml"]])
def test_tui_refuses_a_mistyped_path_before_opening(args, tiny_data, tmp_path, capsys):
    argv = ["tui", *[str(tiny_data) if a == "DATA" else str(tmp_path / a) if "NOPE" in a else a
                     for a in args]]
    assert main(argv) == 2
    assert "NOPE" in _one_error_line(capsys)


def test_model_without_tokenizer_files(tiny_llama, tiny_data, tmp_path, capsys):
    model = tmp_path / "m"
    shutil.copytree(tiny_llama, model)
    for name in ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json"):
        (model / name).unlink(missing_ok=True)
    assert main(["eval", str(tiny_data), "--model", str(model)]) == 2
    assert "no tokenizer files" in _one_error_line(capsys)
