"""The command line as a user meets it: help on every command, data check output, and
one-line errors (no traceback) with exit code 2 for every bad input."""

import argparse
import json
import subprocess
import sys

import pytest
from helpers.data import write_jsonl
from helpers.tiny import build_tokenizer, save_model_dir

from mlxsft.cli import build_parser, main


def _commands(parser, prefix=()):
    """Every command and subcommand of the parser, so a new one is covered without a list."""
    yield list(prefix)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*prefix, name))


COMMANDS = list(_commands(build_parser()))


def test_the_command_list_is_complete():
    assert {" ".join(c) for c in COMMANDS} >= {
        "", "train", "data", "data check", "eval", "chat", "fuse", "export-adapter", "bench",
        "env", "tui"}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main(command + ["--help"])
    assert e.value.code == 0
    assert "usage: mlxsft" in capsys.readouterr().out


def test_help_loads_no_heavy_library():
    # The import rule (README, Contributing): --help must not wait for mlx, mlx_lm,
    # transformers, numpy or textual.
    code = ("import sys\nfrom mlxsft.cli import main\ntry:\n    main(['train', '--help'])\n"
            "except SystemExit:\n    pass\n"
            "heavy = {'mlx', 'mlx_lm', 'transformers', 'huggingface_hub', 'numpy', 'gguf', "
            "'textual'}\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & heavy))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_train_help_states_the_lora_scale_convention(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "alpha / rank" in out and "--grad-accum" in out and "--mask" in out


MULTI_TURN = {"messages": [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "Why?"},
    {"role": "assistant", "content": "Because it is."}]}


def test_data_check_summary_and_show(tiny_llama, tmp_path, capsys):
    path = write_jsonl(tmp_path / "d.jsonl", [MULTI_TURN, MULTI_TURN,
                                             {"prompt": "add 1 2", "completion": ""},
                                             {"text": "hello world"}])
    assert main(["data", "check", str(path), "--model", str(tiny_llama), "--show", "1",
                 "--no-color"]) == 0
    out = capsys.readouterr().out
    assert "records: 4 (chat 2, completion 1, text 1)" in out
    assert "! duplicates: 1 (lines 2=1)" in out
    assert "! empty responses: 1 (lines 3)" in out
    # What was checked and found clean is said too (a completion record that is empty
    # still gets its end-of-turn token supervised, so that check passes).
    assert "checked, none found: truncated, no supervised tokens, no end-of-turn token " \
        "supervised" in out
    assert "«Paris.<|im_end|>»" in out and "«Because it is.<|im_end|>»" in out
    assert "tokens per record: min" in out and "supervised tokens:" in out


def test_data_check_json_has_exact_masks(tiny_llama, tmp_path, capsys):
    from mlxsft.models import load_tokenizer

    path = write_jsonl(tmp_path / "d.jsonl", [MULTI_TURN])
    assert main(["data", "check", str(path), "--model", str(tiny_llama), "--json"]) == 0
    lines = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    record, summary = lines[0], lines[-1]
    assert record["line"] == 1 and len(record["tokens"]) == len(record["loss_mask"])
    tok = load_tokenizer(str(tiny_llama))
    supervised = [t for t, m in zip(record["tokens"], record["loss_mask"]) if m]
    assert tok.decode(supervised) == "Paris.<|im_end|>Because it is.<|im_end|>"
    assert summary["summary"][0]["records"] == 1


BAD_FILES = [
    (b'{"text": "ok"}\n{"messages": [\n', r"d.jsonl:2: invalid JSON"),
    (b'{"text": "caf\xe9"}\n', r"d.jsonl:1: not valid UTF-8"),
    (b'{"prompt": "p", "completoin": "c"}\n', r"d.jsonl:1: missing field 'completion' \(found 'completoin'"),
    (b'{"messages": [{"role": "usr", "content": "q"}, {"role": "assistant", "content": "a"}]}\n',
     r"d.jsonl:1: messages\[0\].role 'usr' is not one of"),
    (b'{"messages": [{"role": "user", "content": "q"}]}\n', r"d.jsonl:1: no assistant turn"),
    (b'{"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "a"}]}\n',
     r"d.jsonl:1: field 'messages\[0\].content' is a number"),
    (b"", r"d.jsonl: empty file"),
]


@pytest.mark.parametrize("content,message", BAD_FILES)
@pytest.mark.parametrize("command", ["data-check", "train"])
def test_bad_data_is_one_line_exit_2_no_traceback(tiny_llama, tmp_path, content, message, command):
    path = tmp_path / "d.jsonl"
    path.write_bytes(content)
    argv = (["data", "check", str(path)] if command == "data-check" else
            ["train", str(path), "--out", str(tmp_path / "run")]) + ["--model", str(tiny_llama)]
    proc = subprocess.run([sys.executable, "-m", "mlxsft", *argv], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlxsft: error: ")
    import re

    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "run").exists()


def test_skip_invalid_trains_on_the_valid_records(tiny_llama, tmp_path, capsys):
    good = {"messages": [{"role": "user", "content": "add 1 2"}, {"role": "assistant", "content": "sum 3"}]}
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(good) + "\n{broken\n" + json.dumps(good) + "\n")
    code = main(["train", str(path), "--model", str(tiny_llama), "--out", str(tmp_path / "run"),
                 "--iters", "2", "--skip-invalid"])
    assert code == 0
    assert "skipped 1 invalid records (first: " in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["--model", "/no/such/model"], "--model /no/such/model: no such file or directory"),
    (["--model", "no-such-model.gguf"], "no such file or directory"),
])
def test_missing_model_is_one_line(tmp_path, argv, message, capsys):
    path = write_jsonl(tmp_path / "d.jsonl", [MULTI_TURN])
    assert main(["data", "check", str(path), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_pickle_only_model_is_refused(tmp_path, capsys):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "pytorch_model.bin").write_bytes(b"\x80\x04")
    path = write_jsonl(tmp_path / "d.jsonl", [MULTI_TURN])
    assert main(["train", str(path), "--model", str(model), "--out", str(tmp_path / "r")]) == 2
    assert "only PyTorch pickle weights (pytorch_model.bin)" in capsys.readouterr().err


def test_hub_id_offline_says_how_to_get_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    path = write_jsonl(tmp_path / "d.jsonl", [MULTI_TURN])
    assert main(["data", "check", str(path), "--model", "some-org/some-model"]) == 2
    err = capsys.readouterr().err
    assert "--model some-org/some-model: not in the Hugging Face cache" in err
    assert "hf download some-org/some-model" in err


@pytest.mark.slow
def test_eval_base_vs_tuned(tiny_llama, tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(tiny_data), "--model", str(tiny_llama), "--out", str(out),
                 "--iters", "30", "--batch-size", "8", "--learning-rate", "1e-3",
                 "--steps-per-eval", "0"]) == 0
    capsys.readouterr()
    assert main(["eval", str(tiny_data), "--model", str(tiny_llama), "--json"]) == 0
    base = json.loads(capsys.readouterr().out)
    assert main(["eval", str(tiny_data), "--adapter", str(out), "--json"]) == 0
    tuned = json.loads(capsys.readouterr().out)
    assert base["data"].endswith("valid.jsonl") and base["supervised_tokens"] == tuned["supervised_tokens"]
    assert tuned["loss"] < base["loss"] - 1.0


def test_adapter_that_does_not_fit_its_base(tiny_llama, tiny_data, tmp_path, capsys):

    out = tmp_path / "run"
    assert main(["train", str(tiny_data), "--model", str(tiny_llama), "--out", str(out),
                 "--iters", "1", "--steps-per-eval", "0"]) == 0
    wider = save_model_dir(tmp_path / "wide", hidden_size=96, intermediate_size=192)
    capsys.readouterr()
    assert main(["eval", str(tiny_data), "--model", str(wider), "--adapter", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--adapter {out}: trained on {tiny_llama} (hidden_size 64)" in err
    assert "has hidden_size 96" in err


def test_data_check_reports_content_the_template_drops(tmp_path, capsys):
    # Like Mistral v0.3's template, which leaves out the system prompt of some records.

    template = ("{% for m in messages %}{% if m.role != 'system' %}<|im_start|>{{ m.role }}\n"
                "{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    tokenizer = build_tokenizer(["<|im_start|>", "<|im_end|>"], template, eos="<|im_end|>")
    model = save_model_dir(tmp_path / "m", tokenizer=tokenizer)
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
        MULTI_TURN])
    assert main(["data", "check", str(path), "--model", str(model), "--no-color"]) == 0
    assert ("! content the template does not render: 1 (lines 2(messages[0])); the model "
            "never sees it" in capsys.readouterr().out)
