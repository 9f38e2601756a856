"""`mlxsft eval --answers`: generated replies judged right / in shape / exact against the
held-out reference, and the examples' one-line hint outside the venv."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.data import write_jsonl
from mlxsft.answers import held_out_turns, judge, score_answers
from mlxsft.cli import main
from mlxsft.data import read_jsonl

REF = '{"name": "Hugo Obi", "city": "Ghent", "day": "Monday"}'
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("reply, verdict", [
    (REF, (True, True, True)),
    ('{"day": "Monday", "name": "Hugo Obi", "city": "Ghent"}', (True, True, True)),
    ('{"name": "Hugo Obi", "city": "Ghent", "day": "Sunday"}', (False, True, False)),
    ('{"name": "Hugo Obi", "city": " Ghent", "day": "Monday"}', (True, True, False)),
    ('{"name": "Hugo Obi", "city": "Ghent", "day": "Monday", "time": "9"}', (True, False, False)),
    ('Sure! {"name": "Hugo", \n```json\n' + REF + '\n```', (True, False, False)),
    ('{"type": "json", "data": ' + REF + '}', (False, False, False)),
    ('{"name": "Hugo Obi, Ghent, Monday", "city": "Ghent", "day": "x"}', (False, True, False)),
    ("Name: Hugo Obi\nCity: Ghent\nDay: Monday", (False, False, False)),
    ('["Hugo Obi", "Ghent", "Monday"]', (False, False, False)),
])
def test_json_check(reply, verdict):
    v = judge(reply, REF, "json")
    assert (v.right, v.shape, v.exact) == verdict


@pytest.mark.parametrize("reply, verdict", [
    ("Answer: 56.\nWhy: 7 x 8 = 56.", (True, True, True)),
    ("Answer:  56.\nWhy: 7 x 8 =\t56.", (True, True, True)),
    ("Answer: 54.\nWhy: 7 x 8 = 54.", (False, True, False)),
    ("Answer: 56.", (False, False, False)),
    ("The answer is 56 because 7 x 8 = 56.", (False, False, False)),
])
def test_exact_check(reply, verdict):
    v = judge(reply, "Answer: 56.\nWhy: 7 x 8 = 56.", "exact")
    assert (v.right, v.shape, v.exact) == verdict


def test_json_check_needs_a_json_reference():
    with pytest.raises(ValueError, match="not a JSON object"):
        judge("{}", "Paris", "json")


def test_held_out_turns_take_the_last_assistant_turn(tmp_path):
    path = write_jsonl(tmp_path / "v.jsonl", [
        {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q1"},
                      {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"},
                      {"role": "assistant", "content": "a2"}]},
        {"prompt": "p", "completion": "c"},
        {"text": "plain text has no reference"}])
    turns = held_out_turns(read_jsonl(path).records)
    assert [(len(m), m[-1]["content"], ref) for m, ref in turns] == [(4, "q2", "a2"), (1, "p", "c")]


def test_score_counts_each_verdict(tmp_path, monkeypatch):
    import mlxsft.generate as generate

    path = write_jsonl(tmp_path / "v.jsonl", [
        {"prompt": f"q{i}", "completion": json.dumps({"n": str(i)})} for i in range(4)])
    replies = {"q0": '{"n": "0"}', "q1": 'Sure: {"n": "1"}', "q2": '{"n": "9"}', "q3": "none"}
    budgets = []

    def fake_reply(loaded, messages, max_tokens):
        budgets.append(max_tokens)
        return replies[messages[-1]["content"]]

    monkeypatch.setattr(generate, "reply", fake_reply)

    class Tok:
        def __call__(self, text, add_special_tokens):
            return {"input_ids": text.split()}

    loaded = type("Loaded", (), {"tokenizer": Tok()})()
    monkeypatch.setattr("mlxsft.masking.hf_tokenizer", lambda t: t)
    score = score_answers(loaded, read_jsonl(path).records, "json", limit=4, extra_tokens=5)
    assert (score.answered, score.right, score.shape, score.exact) == (4, 2, 2, 1)
    assert budgets == [2 + 5] * 4  # '{"n":' and '"0"}': two "tokens" of the fake tokenizer
    assert [e["reply"] for e in score.examples] == list(replies.values())


def test_eval_answers_on_a_tiny_model(tiny_llama, tiny_data, capsys):
    assert main(["eval", str(tiny_data), "--model", str(tiny_llama), "--answers", "3",
                 "--json"]) == 0
    answers = json.loads(capsys.readouterr().out)["answers"]
    assert answers["match"] == "exact" and answers["answered"] == 3
    assert 0 <= answers["exact"] <= answers["right"] <= 3


# The data writers (make_*.py) need nothing of mlxsft's.
@pytest.mark.parametrize("script", sorted(p.name for p in EXAMPLES.glob("*.py")
                                          if p.name != "need_mlxsft.py"
                                          and not p.name.startswith("make_")))
def test_examples_say_how_to_reach_mlxsft_in_one_line(script):
    # -S: no site-packages, so mlxsft is not importable, as with a Python outside the venv.
    proc = subprocess.run([sys.executable, "-S", str(EXAMPLES / script), "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(f"{script}: error: cannot import mlxsft")
    assert "source .venv/bin/activate" in proc.stderr
