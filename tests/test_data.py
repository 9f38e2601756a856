"""Reading JSONL data: every format, every bad-input message, --skip-invalid."""

import json

import pytest

from mlxsft.data import DataError, load_splits, read_jsonl


def write(tmp_path, lines, name="data.jsonl"):
    path = tmp_path / name
    path.write_bytes(b"".join((l if isinstance(l, bytes) else l.encode()) + b"\n" for l in lines))
    return path


def test_formats_are_detected_per_record_and_normalized(tmp_path):
    path = write(tmp_path, [
        json.dumps({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                                 {"role": "assistant", "content": "a"}, {"role": "user", "content": "u2"},
                                 {"role": "assistant", "content": "a2"}], "tools": []}),
        json.dumps({"prompt": "p", "completion": "c"}),
        json.dumps({"instruction": "i", "input": "x", "output": "o"}),
        json.dumps({"instruction": "i", "output": "o"}),
        json.dumps({"instruction": "i", "input": "", "output": "o"}),
        "",
        json.dumps({"text": "t"}),
    ])
    f = read_jsonl(path)
    assert [r.format for r in f.records] == ["chat", "completion", "alpaca", "alpaca", "alpaca", "text"]
    assert [r.line for r in f.records] == [1, 2, 3, 4, 5, 7]
    assert f.records[1].messages == [{"role": "user", "content": "p"}, {"role": "assistant", "content": "c"}]
    assert f.records[2].messages[0] == {"role": "user", "content": "i\n\nx"}
    assert f.records[3].messages[0] == {"role": "user", "content": "i"}
    assert f.records[4].messages[0] == {"role": "user", "content": "i"}
    assert f.records[5].text == "t" and f.records[5].messages == []
    assert dict(f.formats) == {"chat": 1, "completion": 1, "alpaca": 3, "text": 1}


BAD = [
    (b'{"messages": [', "data.jsonl:1: invalid JSON"),
    (b'{"text": "caf\xe9"}', "data.jsonl:1: not valid UTF-8 (byte 0xe9 at column 14)"),
    (b'[1, 2]', "data.jsonl:1: the line is a list, expected a JSON object"),
    (b'{"mesages": []}', "did you mean 'messages'?"),
    (b'{"prompt": "p"}', "data.jsonl:1: missing field 'completion'"),
    (b'{"prompt": "p", "completoin": "c"}', "missing field 'completion' (found 'completoin'; rename it to 'completion')"),
    (b'{"messages": [{"role": "user", "content": "q"}, {"role": "assitant", "content": "a"}]}',
     "messages[1].role 'assitant' is not one of system, user, assistant, tool; did you mean 'assistant'?"),
    (b'{"messages": [{"role": "user", "content": "q"}]}', "no assistant turn in 'messages'"),
    (b'{"messages": [{"role": "user", "content": ["q"]}, {"role": "assistant", "content": "a"}]}',
     "field 'messages[0].content[0]' is a string, expected a content part"),
    (b'{"messages": [{"role": "user", "contnet": "q"}, {"role": "assistant", "content": "a"}]}',
     "missing field 'messages[0].content' (found 'messages[0].contnet'"),
    (b'{"messages": []}', "field 'messages' must be a non-empty list"),
    (b'{"instruction": "i", "output": 3}', "field 'output' is a number, expected a string"),
]


@pytest.mark.parametrize("line,message", BAD)
def test_bad_records_name_file_line_and_field(tmp_path, line, message):
    path = write(tmp_path, [line])
    with pytest.raises(DataError) as e:
        read_jsonl(path)
    text = str(e.value)
    assert message in text, text
    assert text.startswith(str(path)) and "\n" not in text


def test_error_points_at_the_right_line(tmp_path):
    path = write(tmp_path, ['{"text": "a"}', '{"text": "b"}', '{"text": 1}'])
    with pytest.raises(DataError, match=r"data.jsonl:3: field 'text' is a number"):
        read_jsonl(path)


def test_empty_file_and_blank_file(tmp_path):
    for content in (b"", b"\n\n  \n"):
        path = tmp_path / "empty.jsonl"
        path.write_bytes(content)
        with pytest.raises(DataError, match=r"empty.jsonl: empty file \(no records\)"):
            read_jsonl(path)


def test_skip_invalid_keeps_valid_records_and_counts_skipped(tmp_path):
    path = write(tmp_path, ['{"text": "a"}', "{oops", '{"prompt": "p"}', '{"text": "b"}'])
    f = read_jsonl(path, skip_invalid=True)
    assert [r.line for r in f.records] == [1, 4]
    assert [e.line for e in f.skipped] == [2, 3]
    with pytest.raises(DataError, match="no valid records"):
        read_jsonl(write(tmp_path, ["{oops"], "bad.jsonl"), skip_invalid=True)


def test_directory_splits(tmp_path):
    write(tmp_path, ['{"text": "a"}'], "train.jsonl")
    write(tmp_path, ['{"text": "v"}'], "valid.jsonl")
    splits = load_splits(tmp_path)
    assert sorted(splits) == ["train", "valid"]
    assert splits["valid"].records[0].text == "v"
    empty = tmp_path / "other"
    empty.mkdir()
    with pytest.raises(DataError, match="no train.jsonl"):
        load_splits(empty)
    with pytest.raises(DataError, match="no such file"):
        load_splits(tmp_path / "missing.jsonl")


def test_tool_call_only_assistant_turn_is_accepted(tmp_path):
    call = {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {}}}]}
    path = write(tmp_path, [json.dumps({"messages": [{"role": "user", "content": "q"}, call,
                                                      {"role": "tool", "content": "42"},
                                                      {"role": "assistant", "content": "42"}]})])
    record = read_jsonl(path).records[0]
    assert record.messages[1]["content"] == ""
