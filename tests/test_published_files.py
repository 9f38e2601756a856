"""Files meant to be shared hold no local paths: the adapter's adapter_config.json, a
fused model (every format) with its card, and a PEFT export name the base and the data
and give their sha256, and none of them contains where the model, the data or the run
sat. The run still finds them: RUN/config.yaml (not published) keeps the local paths
for eval, chat and fuse without --model, and for fusing's check on the validation data."""

import json
import os
import shutil

import pytest

from mlxsft.cli import main


@pytest.fixture(scope="module")
def workspace(tiny_llama, tiny_data, tmp_path_factory):
    """A base, data and a run under one private directory, as on a user's machine."""
    home = tmp_path_factory.mktemp("home-of-someone")
    base, data, run = home / "models" / "my-base", home / "data", home / "runs" / "r1"
    shutil.copytree(tiny_llama, base)
    shutil.copytree(tiny_data, data)
    template = home / "templates" / "my.jinja"  # a template file: named, not located
    template.parent.mkdir()
    shutil.copy(base / "chat_template.jinja", template)
    assert main(["train", str(data), "--model", str(base), "--out", str(run), "--iters", "4",
                 "--batch-size", "4", "--steps-per-eval", "2", "--steps-per-save", "2",
                 "--chat-template", str(template)]) == 0
    return home, base, data, run


def files_under(path):
    return [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]


def assert_no_local_path(path, home):
    for file in files_under(path):
        blob = file.read_bytes()
        for private in {str(home), os.path.realpath(home), str(home.parent)}:
            assert private.encode() not in blob, f"{file} contains {private}"


def test_adapters_name_their_base_and_data_instead_of_paths(workspace):
    home, base, data, run = workspace
    for adapter_dir in (run, run / "best", run / "checkpoints" / "step-000002"):
        assert_no_local_path(adapter_dir / "adapter_config.json", home)
        config = json.loads((adapter_dir / "adapter_config.json").read_text())
        assert config["base_model"] == "my-base"
        assert config["chat_template_source"] == "my.jinja"
        assert [(d["split"], d["name"], d["records"]) for d in config["data"]] == [
            ("train", "train.jsonl", 64), ("valid", "valid.jsonl", 8)]
    # The run's own config keeps what later commands need, absolute.
    settings = (run / "config.yaml").read_text()
    assert f"model: {base}" in settings and f"data: {data}" in settings


@pytest.mark.parametrize("fmt", ["mlx", "hf", "gguf"])
def test_fused_models_and_cards_hold_no_local_path(workspace, fmt, capsys, monkeypatch):
    home, base, data, run = workspace
    out = home / f"fused-{fmt}" / ("model.gguf" if fmt == "gguf" else "model")
    # From another directory, without --model: the run's config.yaml finds the base and
    # the validation data.
    monkeypatch.chdir(home.parent)
    assert main(["fuse", "--adapter", str(run / "best"), "--out", str(out), "--format", fmt,
                 "--dtype", "float32", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["verification"]["source"] == "valid.jsonl"
    assert result["verification"]["records"] == 8
    assert_no_local_path(out, home)
    if fmt != "gguf":
        card = (out / "README.md").read_text()
        assert "`my-base`" in card and "`valid.jsonl`" in card and "`best`" in card


def test_the_peft_export_holds_no_local_path(workspace, capsys):
    home, base, data, run = workspace
    out = home / "peft"
    assert main(["export-adapter", "--adapter", str(run), "--out", str(out)]) == 0
    assert_no_local_path(out, home)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "my-base"


def test_eval_and_chat_find_the_base_through_the_run(workspace, capsys, monkeypatch):
    home, base, data, run = workspace
    monkeypatch.chdir(home.parent)
    capsys.readouterr()
    assert main(["eval", str(data), "--adapter", str(run / "checkpoints" / "step-000002"),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == "my-base"
    assert main(["chat", "--adapter", str(run), "--prompt", "hello", "--max-tokens", "3"]) == 0


def test_an_adapter_away_from_its_run_asks_for_its_base(workspace, tmp_path, capsys):
    home, base, data, run = workspace
    moved = tmp_path / "shared-adapter"
    moved.mkdir()
    for name in ("adapters.safetensors", "adapter_config.json"):
        shutil.copy(run / name, moved)
    capsys.readouterr()
    assert main(["eval", str(data), "--adapter", str(moved)]) == 2
    assert capsys.readouterr().err == (
        f"mlxsft: error: --adapter {moved}: its base 'my-base' was a local model, and the "
        "run's config.yaml that says where it is is not with the adapter; pass the base "
        "with --model PATH\n")
    assert main(["eval", str(data), "--adapter", str(moved), "--model", str(base)]) == 0
