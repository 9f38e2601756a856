"""Record shapes beyond OpenAI messages: ShareGPT, OpenAI content parts, tool calls with
record-level tools, column mapping (flags and YAML), and per-turn "train" overrides.
Each is checked by its exact tokens and loss mask against the same conversation written
as plain messages."""

import json

import pytest

from helpers.masks import supervised_text
from helpers.tiny import build_template_tokenizer, build_tokenizer
from mlxsft.data import DataError, DataOptions, RecordKeys, parse_record, read_records
from mlxsft.masking import Masker, MaskingError

MESSAGES = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "Thank you"},
            {"role": "assistant", "content": "You are welcome."}]


@pytest.fixture(scope="module")
def tok():
    return build_template_tokenizer("llama3")


def encode(tok, obj, mode="assistant", keys=None):
    return Masker(tok, mode).encode(parse_record(obj, "d.jsonl", 1, keys))


@pytest.mark.parametrize("mode", ["assistant", "last", "all"])
def test_sharegpt_masks_exactly_as_messages(tok, mode):
    speakers = {"system": "system", "user": "human", "assistant": "gpt"}
    sharegpt = {"conversations": [{"from": speakers[m["role"]], "value": m["content"]}
                                  for m in MESSAGES[1:]], "system": "Be brief."}
    want = encode(tok, {"messages": MESSAGES}, mode)
    got = encode(tok, sharegpt, mode)
    assert (got.tokens, got.loss_mask) == (want.tokens, want.loss_mask)
    assert got.format == "sharegpt"
    if mode == "assistant":
        assert supervised_text(tok, got) == "Paris.<|eot_id|>You are welcome.<|eot_id|>"


@pytest.mark.parametrize("mode", ["assistant", "last"])
def test_openai_content_parts_mask_exactly_as_strings(tok, mode):
    parts = [{**m, "content": [{"type": "text", "text": line} for line in m["content"].split(" ")]}
             for m in MESSAGES]
    joined = [{**m, "content": m["content"].replace(" ", "\n")} for m in MESSAGES]
    want = encode(tok, {"messages": joined}, mode)
    got = encode(tok, {"messages": parts}, mode)
    assert (got.tokens, got.loss_mask) == (want.tokens, want.loss_mask)
    assert supervised_text(tok, got).endswith("You\nare\nwelcome.<|eot_id|>")


def test_non_text_part_is_a_located_error():
    obj = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                        {"role": "assistant", "content": "a"}]}
    with pytest.raises(DataError, match=r"d.jsonl:1: field 'messages\[0\].content\[0\]' is a "
                       r"'image_url' part; only text parts"):
        parse_record(obj, "d.jsonl", 1)


def test_sharegpt_function_call_and_observation_become_tool_turns():
    obj = {"conversations": [
        {"from": "human", "value": "Weather in Paris?"},
        {"from": "function_call", "value": '{"name": "get_weather", "arguments": {"city": "Paris"}}'},
        {"from": "observation", "value": "22"},
        {"from": "gpt", "value": "It is 22 degrees."}],
        "tools": '[{"type": "function", "function": {"name": "get_weather"}}]'}
    record = parse_record(obj, "d.jsonl", 1)
    assert [m["role"] for m in record.messages] == ["user", "assistant", "tool", "assistant"]
    assert record.messages[1]["tool_calls"] == [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]
    assert record.tools == [{"type": "function", "function": {"name": "get_weather"}}]
    with pytest.raises(DataError, match=r"conversations\[0\].from 'humna' is not a ShareGPT "
                       r"speaker .*did you mean 'human'"):
        parse_record({"conversations": [{"from": "humna", "value": "q"}]}, "d.jsonl", 1)


def test_openai_tool_calls_with_record_tools_are_rendered_and_supervised():
    # A template that renders tool calls (as Qwen's does) with the record-level tools.
    template = (
        "{% if tools %}{{ '<|im_start|>system\nTools: ' + (tools | map(attribute='function.name') | join(',')) + '<|im_end|>\n' }}{% endif %}"
        "{% for m in messages %}{{ '<|im_start|>' + m.role + '\n' + m.content }}"
        "{% for c in m.tool_calls or [] %}{{ '<tool_call>' + c.function.name + '</tool_call>' }}{% endfor %}"
        "{{ '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

    tok = build_tokenizer(["<|im_start|>", "<|im_end|>"], template, eos="<|im_end|>")
    obj = {"messages": [{"role": "user", "content": "Weather in Paris?"},
                        {"role": "assistant", "content": None, "tool_calls": [
                            {"type": "function", "function": {"name": "get_weather",
                                                              "arguments": '{"city": "Paris"}'}}]},
                        {"role": "tool", "content": "22"},
                        {"role": "assistant", "content": "22 degrees."}],
           "tools": [{"type": "function", "function": {"name": "get_weather"}}]}
    item = encode(tok, obj)
    assert tok.decode(item.tokens).startswith("<|im_start|>system\nTools: get_weather<|im_end|>")
    assert supervised_text(tok, item) == ("<tool_call>get_weather</tool_call><|im_end|>"
                                          "22 degrees.<|im_end|>")


def test_column_mapping_prompt_response_and_messages(tok, tmp_path):
    keys = RecordKeys(prompt_key="question", response_key="answer")
    got = encode(tok, {"question": "What is the capital of France?", "answer": "Paris."}, keys=keys)
    want = encode(tok, {"messages": MESSAGES[1:3]})
    assert (got.tokens, got.loss_mask) == (want.tokens, want.loss_mask)
    keys = RecordKeys(messages_key="dialog")
    got = encode(tok, {"dialog": MESSAGES, "id": 7}, keys=keys)
    want = encode(tok, {"messages": MESSAGES})
    assert (got.tokens, got.loss_mask) == (want.tokens, want.loss_mask)
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"q": "x", "a": "y"}) + "\n")
    with pytest.raises(DataError, match=r"t.jsonl:1: missing field 'question'"):
        read_records(path, keys=RecordKeys("question", "a"))
    with pytest.raises(DataError, match="--prompt-key and --response-key go together"):
        read_records(path, keys=RecordKeys(prompt_key="q"))


def test_column_mapping_from_yaml_reaches_the_reader(tmp_path):
    from mlxsft.config import build_config
    from mlxsft.prepare import read_data

    data = tmp_path / "t.jsonl"
    data.write_text(json.dumps({"q": "What?", "a": "That."}) + "\n")
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text(f"data: {data}\nprompt_key: q\nresponse-key: a\n"
                         "template_kwarg: {enable_thinking: false}\n")
    config = build_config({}, str(yaml_file))
    assert (config.prompt_key, config.response_key) == ("q", "a")
    assert config.template_kwarg == ["enable_thinking=false"]
    record = read_data(config)["train"].records[0]
    assert record.format == "columns"
    assert record.messages == [{"role": "user", "content": "What?"},
                               {"role": "assistant", "content": "That."}]
    assert DataOptions.of(config).keys == RecordKeys("q", "a", None)


def test_train_false_turn_is_masked_and_train_true_overrides_last(tok):
    off = [dict(m) for m in MESSAGES]
    off[2]["train"] = False
    item = encode(tok, {"messages": off})
    assert supervised_text(tok, item) == "You are welcome.<|eot_id|>"
    on = [dict(m) for m in MESSAGES]
    on[2]["train"] = True
    item = encode(tok, {"messages": on}, "last")
    assert supervised_text(tok, item) == "Paris.<|eot_id|>You are welcome.<|eot_id|>"
    # --mask all: everything but the train: false turn.
    every = encode(tok, {"messages": MESSAGES}, "all")
    item = encode(tok, {"messages": off}, "all")
    assert item.tokens == every.tokens
    masked = tok.decode([t for t, m in zip(item.tokens, item.loss_mask) if not m][1:])
    assert masked == "Paris.<|eot_id|>"
    with pytest.raises(DataError, match=r"messages\[0\].train' is set on a user turn"):
        parse_record({"messages": [MESSAGES[1] | {"train": True}, MESSAGES[2]]}, "d.jsonl", 1)


def test_data_check_shows_train_overrides(tmp_path, tiny_llama, capsys):
    from mlxsft.cli import main

    off = [dict(m) for m in MESSAGES]
    off[2]["train"] = False
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"messages": off}) + "\n" + json.dumps({"messages": MESSAGES}) + "\n")
    assert main(["data", "check", str(path), "--model", str(tiny_llama)]) == 0
    out = capsys.readouterr().out
    assert "train overrides: 1 turns (1(messages[2]=false))" in out
    assert main(["data", "check", str(path), "--model", str(tiny_llama), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["summary"][0]
    assert summary["train_overrides"] == 1


def test_assistant_first_conversation_is_masked():
    tok = build_template_tokenizer("llama3")
    obj = {"messages": [{"role": "assistant", "content": "Hello! Ask me anything."},
                        {"role": "user", "content": "Why?"},
                        {"role": "assistant", "content": "Because."}]}
    item = encode(tok, obj)
    assert supervised_text(tok, item) == "Hello! Ask me anything.<|eot_id|>Because.<|eot_id|>"
    with pytest.raises(MaskingError, match="d.jsonl:1"):
        # Gemma's template refuses a conversation that does not start with the user.
        encode(build_template_tokenizer("gemma"), obj)
