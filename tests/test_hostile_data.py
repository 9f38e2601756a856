"""Input that Python's JSON reader or the tokenizer cannot take is a located error that
--skip-invalid skips, never a traceback; a property test drives generated records of
every shape through reading, masking and `data check --json` and finds nothing else."""

import json
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlxsft.data import DataError, read_records
from mlxsft.masking import Masker, MaskingError, encode_records
from helpers.tiny import build_template_tokenizer

HOSTILE = [
    ('{"text": "\\ud800"}', "a string holds a lone surrogate (\\ud800)"),
    ('{"text": "a", "x": ' + "[" * 1000 + "]" * 1000 + "}", "nested too deeply to read"),
    ('{"text": "a", "x": ' + "[" * 70 + "]" * 70 + "}", "nested more than 64 levels deep"),
    ('{"text": "a", "x": ' + "9" * 5000 + "}", "Exceeds the limit (4300 digits)"),
    ('{"messages": [{"role": "user", "content": "\\udfff"}, {"role": "assistant", "content": "a"}]}',
     "lone surrogate (\\udfff)"),
]


@pytest.mark.parametrize("line,message", HOSTILE)
def test_hostile_line_is_located_and_skippable(tmp_path, line, message):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "fine"}\n' + line + "\n")
    with pytest.raises(DataError) as e:
        read_records(path)
    assert str(e.value).startswith(f"{path}:2: ") and message in str(e.value)
    data = read_records(path, skip_invalid=True)
    assert [r.line for r in data.records] == [1] and [s.line for s in data.skipped] == [2]


def test_cut_off_line_error_names_the_column_where_it_was_cut(tmp_path):
    line = '{"messages": [{"role": "user", "content": "hello there how are you"}, {"role": "as'
    path = tmp_path / "d.jsonl"
    path.write_text(line + "\n")
    column = line.rindex('"as') + 1  # where the cut-off string starts (84), not "column 1"
    with pytest.raises(DataError, match=rf"d.jsonl:1: invalid JSON \(Unterminated string "
                       rf"starting at column {column}\)"):
        read_records(path)
    path.write_text('{"text": "abc"\n')
    with pytest.raises(DataError, match=r"invalid JSON \(Expecting ',' delimiter at column 15\)"):
        read_records(path)


def test_data_check_exits_like_train_on_records_train_refuses(tmp_path, tiny_llama, capsys):
    from mlxsft.cli import main

    # Gemma-style alternation is not enforced by ChatML; a template that raises on a role
    # order makes a record unmaskable: train stops there, so data check must not say 0.
    template = tmp_path / "strict.jinja"
    template.write_text("{% for m in messages %}{% if m.role == 'system' %}"
                        "{{ raise_exception('no system role') }}{% endif %}"
                        "{{ '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}"
                        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                        "{% endif %}")
    path = tmp_path / "d.jsonl"
    ok = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    bad = {"messages": [{"role": "system", "content": "s"}] + ok["messages"]}
    path.write_text(json.dumps(ok) + "\n" + json.dumps(bad) + "\n")
    args = ["data", "check", str(path), "--model", str(tiny_llama), "--chat-template", str(template)]
    assert main(args) == 1
    assert "train would stop at " + f"{path}:2: the chat template failed" in capsys.readouterr().err
    assert main(args + ["--skip-invalid"]) == 0


def test_show_escapes_terminal_control_sequences(tmp_path, tiny_llama, capsys):
    from mlxsft.cli import main

    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"messages": [
        {"role": "user", "content": "q\u001b]0;pwned\u0007"},
        {"role": "assistant", "content": "a\u001b[2J\u009b31m\u202eb"}]}) + "\n")
    assert main(["data", "check", str(path), "--model", str(tiny_llama), "--show", "1",
                 "--color"]) == 0
    out = capsys.readouterr().out
    body = out[out.index("--- "):]
    assert "\\x1b]0;pwned\\x07" in body and "a\\x1b[2J\\x9b31m\\u202eb" in body
    # Only our own colour codes remain as escape characters.
    assert body.replace("\x1b[1;32m", "").replace("\x1b[2m", "").replace("\x1b[0m", "").count("\x1b") == 0


# -- property test ----------------------------------------------------------------------
text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12) | \
    st.sampled_from(["", " ", "<|im_end|>", "<think>x</think>", "\\ud800", "\u202e"])
json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=3) |
                          st.dictionaries(text, inner, max_size=3), max_leaves=8)
role = st.sampled_from(["system", "user", "assistant", "tool", "gpt", "human", "bogus"])
message = st.fixed_dictionaries(
    {"role": role, "content": text | st.none() | st.lists(
        st.fixed_dictionaries({"type": st.sampled_from(["text", "image"]), "text": text}), max_size=2)},
    optional={"train": st.booleans() | st.integers(0, 2), "tool_calls": st.lists(
        st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries(
            {"name": text, "arguments": st.dictionaries(text, json_leaf, max_size=2)})}), max_size=1)})
sharegpt = st.fixed_dictionaries({"from": role | st.sampled_from(["function_call", "observation"]),
                                  "value": text | json_value})
record = st.one_of(
    st.fixed_dictionaries({"messages": st.lists(message, max_size=4)}, optional={"tools": json_value}),
    st.fixed_dictionaries({"conversations": st.lists(sharegpt, max_size=4)},
                          optional={"system": text | json_leaf}),
    st.fixed_dictionaries({"prompt": text | json_leaf, "completion": text | json_leaf}),
    st.fixed_dictionaries({"instruction": text, "output": text | json_leaf}, optional={"input": json_leaf}),
    st.fixed_dictionaries({"text": text | json_leaf}),
    st.dictionaries(text, json_value, max_size=3),
    json_value,
)
line = st.one_of(record.map(lambda r: json.dumps(r)),
                 st.text(string.printable, max_size=30),
                 st.sampled_from(['{"text": "\\ud800"}', '{"a": ' + "[" * 999 + "]" * 999 + "}",
                                  '{"n": ' + "1" * 4400 + "}", '{"text": "cut']))


@pytest.fixture(scope="module")
def fuzz_tokenizer():
    return build_template_tokenizer("chatml")


def data_check_json(path, tokenizer, mode, monkeypatch_context):
    """`mlxsft data check PATH --json` in this process, with the tokenizer given:
    (exit code, stdout lines, stderr)."""
    import contextlib
    import io

    from mlxsft import models
    from mlxsft.cli import main

    out, err = io.StringIO(), io.StringIO()
    with monkeypatch_context() as m, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        m.setattr(models, "load_tokenizer", lambda *a, **k: tokenizer)
        code = main(["data", "check", str(path), "--json", "--mask", mode, "--max-seq-len", "64"])
    return code, out.getvalue().splitlines(), err.getvalue()


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(lines=st.lists(line, min_size=1, max_size=6), mode=st.sampled_from(["assistant", "last", "all"]))
def test_generated_records_give_only_located_errors(tmp_path_factory, fuzz_tokenizer, lines,
                                                    mode):
    from mlxsft.data import DataFile
    from mlxsft.datacheck import check_split, record_json

    path = tmp_path_factory.mktemp("fuzz") / "d.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    # The command: JSON lines and exit 0/1 (train would stop), or one located error line.
    code, out, err = data_check_json(path, fuzz_tokenizer, mode, pytest.MonkeyPatch.context)
    if code == 2:
        assert err.startswith(f"mlxsft: error: {path}") and err.count("\n") == 1, err
        assert not out
    else:
        assert code in (0, 1) and "Traceback" not in err
        assert all(isinstance(json.loads(o), dict) for o in out) and "summary" in json.loads(out[-1])
    try:
        data = read_records(path, skip_invalid=True)
    except DataError as e:  # the whole file had nothing valid: still located
        assert str(e).startswith(str(path)) and "\n" not in str(e)
        return
    for error in data.skipped:
        assert str(error).startswith(f"{path}:{error.line}: ") and "\n" not in str(error)
    for mode in ("assistant", "last", "all"):
        masker = Masker(fuzz_tokenizer, mode, 64)
        encoded = encode_records(masker, data.records, skip_invalid=True)
        for error in encoded.failed:
            assert isinstance(error, MaskingError) and str(error).startswith(f"{path}:")
        for item in encoded.items + encoded.zero_supervised:
            assert len(item.tokens) == len(item.loss_mask) <= 64
        report = check_split("train", DataFile(data.path, data.records, data.skipped), masker)
        json.dumps(report.summary())
        for item in report.items:
            json.dumps(record_json(item))


def test_data_check_exits_1_when_train_would_find_nothing_to_train_on(tmp_path, tiny_llama, capsys):
    from mlxsft.cli import main

    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "a long question " * 20},
                                             {"role": "assistant", "content": "a"}]}) + "\n")
    assert main(["data", "check", str(path), "--model", str(tiny_llama), "--max-seq-len", "8"]) == 1
    assert f"train would stop: {path} has no supervised tokens" in capsys.readouterr().err
