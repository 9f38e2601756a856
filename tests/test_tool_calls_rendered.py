"""A template that ignores `tool_calls` (the default model's ChatML does) would train a
tool-calling turn as an empty reply. Masking refuses such a supervised turn with a located
error, data check reports it and exits as train would, and a template that renders the
calls trains them."""

import json

import pytest

from mlxsft.data import parse_record
from mlxsft.masking import Masker, MaskingError, encode_records
from mlxsft.templates import TemplateChoice
from helpers.tiny import build_template_tokenizer

CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
CONVERSATION = [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": None, "tool_calls": [CALL]},
                {"role": "tool", "content": "22"},
                {"role": "assistant", "content": "It is 22 degrees."}]
RENDERS_CALLS = (
    "{% for m in messages %}{{ '<|im_start|>' + m.role + '\n' + m.content }}"
    "{% for c in m.tool_calls or [] %}{{ '<tool_call>' + c.function.name + '</tool_call>' }}{% endfor %}"
    "{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def test_supervised_tool_call_turn_the_template_drops_is_refused():
    tok = build_template_tokenizer("chatml")
    record = parse_record({"messages": CONVERSATION}, "d.jsonl", 3)
    with pytest.raises(MaskingError, match=r"d.jsonl:3: messages\[1\] calls tools \(get_weather\) "
                       r"but the chat template does not render tool_calls, so the turn would "
                       r"train as an empty reply"):
        Masker(tok).encode(record)
    # Not supervised (--mask last, or "train": false): nothing is trained on it.
    item = Masker(tok, "last").encode(record)
    assert tok.decode([t for t, m in zip(item.tokens, item.loss_mask) if m]) == "It is 22 degrees.<|im_end|>"
    marked = [dict(m) for m in CONVERSATION]
    marked[1]["train"] = False
    assert Masker(tok).encode(parse_record({"messages": marked}, "d.jsonl", 3)).supervised_tokens
    assert len(encode_records(Masker(tok), [record], skip_invalid=True).failed) == 1


def test_a_template_that_renders_calls_trains_them():
    tok = build_template_tokenizer("chatml")
    masker = Masker(tok, template=TemplateChoice(RENDERS_CALLS, "calls.jinja"))
    item = masker.encode(parse_record({"messages": CONVERSATION}, "d.jsonl", 1))
    assert tok.decode([t for t, m in zip(item.tokens, item.loss_mask) if m]) == (
        "<tool_call>get_weather</tool_call><|im_end|>It is 22 degrees.<|im_end|>")


def test_data_check_reports_dropped_tool_calls_and_exits_as_train(tmp_path, tiny_llama, capsys):
    from mlxsft.cli import main

    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"messages": CONVERSATION}) + "\n")
    assert main(["data", "check", str(path), "--model", str(tiny_llama), "--mask", "last"]) == 0
    out = capsys.readouterr().out
    assert "! tool calls the template does not render: 1 (lines 1(messages[1]))" in out
    assert main(["data", "check", str(path), "--model", str(tiny_llama)]) == 1
    assert "train would stop at" in capsys.readouterr().err
    template = tmp_path / "calls.jinja"
    template.write_text(RENDERS_CALLS)
    assert main(["data", "check", str(path), "--model", str(tiny_llama),
                 "--chat-template", str(template)]) == 0
    assert "tool calls the template does not render" in capsys.readouterr().out.split(
        "checked, none found:")[1]
