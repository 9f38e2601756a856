"""`mlxsft compare RUN`: every saved adapter and the base answer one probe set."""

import json

from helpers.data import write_jsonl
from mlxsft.cli import main


def test_compare_answers_with_base_and_each_adapter_once_and_scores_them(
        tiny_llama, tiny_data, tmp_path, capsys):
    from mlxsft.evaluate import evaluate_data

    run = tmp_path / "run"
    assert main(["train", str(tiny_data), "--model", str(tiny_llama), "--out", str(run),
                 "--iters", "4", "--batch-size", "8", "--learning-rate", "1e-3",
                 "--steps-per-save", "2", "--steps-per-eval", "2", "--samples", "0"]) == 0
    probes = write_jsonl(tmp_path / "probes.jsonl", [
        {"messages": [{"role": "user", "content": "add 2 3"},
                      {"role": "assistant", "content": "sum 5"}]},
        {"prompt": "add 4 4", "completion": "sum 8"},
        {"prompt": "add 1 1"},  # a bare prompt: answered, no reference
    ])
    capsys.readouterr()
    assert main(["compare", str(run), "--prompts", str(probes), "--max-tokens", "3",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    models = [s["model"] for s in out["scores"]]
    # base, then each distinct adapter by step: the final adapter shares checkpoint 4's
    # files, and the best one (step 4 too) holds the same weights, so one column for all.
    assert models == ["base", "step-000002 (step 2)", "final = best (step 4)"]
    assert [p["reference"] for p in out["prompts"]] == ["sum 5", "sum 8", None]
    for prompt in out["prompts"]:
        assert set(prompt["answers"]) == set(models)
        assert all(1 <= a["tokens"] <= 3 for a in prompt["answers"].values())
    # The loss column is the reference answers' loss, masked like `eval --mask last`.
    two = write_jsonl(tmp_path / "two.jsonl", [
        {"messages": [{"role": "user", "content": "add 2 3"},
                      {"role": "assistant", "content": "sum 5"}]},
        {"prompt": "add 4 4", "completion": "sum 8"}])
    base = evaluate_data(str(two), model=str(tiny_llama), mask="last")
    tuned = evaluate_data(str(two), adapter=str(run), mask="last")
    scores = {s["model"]: s for s in out["scores"]}
    assert abs(scores["base"]["loss"] - base.loss) < 1e-5
    assert abs(scores["final = best (step 4)"]["loss"] - tuned.loss) < 1e-5
    assert scores["final = best (step 4)"]["loss"] < scores["base"]["loss"]
    assert all(s["exact"] in (0.0, 0.5, 1.0) for s in out["scores"])

    capsys.readouterr()
    assert main(["compare", str(run), "--limit", "2", "--max-tokens", "2"]) == 0
    table = capsys.readouterr().out
    assert "[1] add" in table and "reference" in table and "model" in table
    assert table.count("final = best (step 4)") == 3  # an answer per prompt and a score row


def test_compare_errors_are_one_line(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mlxsft: error: ") and err.count("\n") == 1
