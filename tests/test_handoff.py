"""Hand-off to Ollama and LM Studio: the Modelfile's stop tokens and template for real chat
formats, and `fuse --format ollama|lmstudio` writing exactly the files those runtimes read."""

import os

import pytest
from helpers.tiny import build_template_tokenizer, build_tokenizer

from mlxsft.export.handoff import go_template, lmstudio_path, modelfile, stop_tokens


@pytest.mark.parametrize("name, stops", [
    ("chatml", ["<|im_start|>", "<|im_end|>"]),
    ("llama3", ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]),
    ("gemma", ["<start_of_turn>", "<end_of_turn>", "<eos>"]),
    ("phi3", ["<|system|>", "<|end|>", "<|user|>", "<|assistant|>", "<|endoftext|>"]),
])
def test_modelfile_stop_tokens_are_the_templates_turn_markers(name, stops):
    """What Ollama's own library Modelfiles list for these families (BOS excluded)."""
    tok = build_template_tokenizer(name)
    assert stop_tokens(tok) == stops
    text = modelfile("tuned.gguf", tok)
    assert text == "FROM ./tuned.gguf\n" + "".join(f'PARAMETER stop "{s}"\n' for s in stops)


CUSTOM = ("{{ bos_token }}{% for m in messages %}"
          "{% if m['role'] == 'system' %}{{ '## Rules\n' + m['content'] + '\n\n' }}"
          "{% elif m['role'] == 'user' %}{{ '### Q: ' + m['content'] + '\n### A: ' }}"
          "{% else %}{{ m['content'] + '<stop>\n' }}{% endif %}{% endfor %}")


def render_go(template, system, messages):
    """Enough of Go's text/template for the templates go_template writes."""
    import re

    out = []
    head, body = template.split("{{- range .Messages }}")
    m = re.fullmatch(r'\{\{ if \.System \}\}(.*)\{\{ \.System \}\}(.*)\{\{ else \}\}(.*)'
                     r'\{\{ end \}\}', head, re.S)
    out.append((m[1] + system + m[2]) if system else m[3])
    user_end, assistant_end = re.fullmatch(
        r'\{\{ if eq \.Role "user" \}\}\{\{ \.Content \}\}(.*)\{\{ else if eq \.Role '
        r'"assistant" \}\}\{\{ \.Content \}\}(.*)\{\{ end \}\}\{\{ end \}\}', body, re.S).groups()
    for msg in messages:
        out.append(msg["content"] + (user_end if msg["role"] == "user" else assistant_end))
    return "".join(out)


def test_a_template_ollama_cannot_infer_gets_a_go_template_that_renders_alike():
    tok = build_tokenizer(["<s>", "<stop>"], CUSTOM, bos="<s>", eos="<stop>")
    text = modelfile("m.gguf", tok)
    assert 'TEMPLATE """' in text and text.endswith('PARAMETER stop "<stop>"\n')
    template = go_template(tok)
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
            {"role": "user", "content": "why?"}]
    for system in ("", "be brief"):
        messages = ([{"role": "system", "content": system}] if system else []) + chat
        expected = tok.apply_chat_template(messages, tokenize=False)
        assert "<s>" + render_go(template, system, chat) == expected  # llama.cpp adds BOS


def test_lmstudio_path_is_publisher_name_folder(tmp_path):
    assert lmstudio_path("me/tuned", tmp_path) == tmp_path / "me" / "tuned" / "tuned.gguf"
    assert lmstudio_path("tuned", tmp_path) == tmp_path / "mlxsft" / "tuned" / "tuned.gguf"
    assert lmstudio_path("x").parts[-5:-2] == (".lmstudio", "models", "mlxsft")


@pytest.fixture(scope="module")
def adapter(tiny_llama, tiny_data, tmp_path_factory):
    from test_fuse import train_adapter

    return train_adapter(tiny_llama, tiny_data, tmp_path_factory.mktemp("runs") / "run",
                         iters=4)


@pytest.mark.slow
def test_fuse_format_ollama_writes_gguf_and_modelfile(adapter, tmp_path, capsys):
    from gguf import GGUFReader

    from mlxsft.cli import main

    out = tmp_path / "Tuned"
    assert main(["fuse", "--adapter", str(adapter), "--out", str(out), "--format", "ollama",
                 "--quantize", "q8_0"]) == 0
    assert sorted(os.listdir(out)) == ["Modelfile", "Tuned.gguf"]
    assert (out / "Modelfile").read_text() == ('FROM ./Tuned.gguf\nPARAMETER stop "<|im_start|>"\n'
                                               'PARAMETER stop "<|im_end|>"\n')
    types = {t.tensor_type.name for t in GGUFReader(str(out / "Tuned.gguf")).tensors}
    assert types == {"Q8_0", "F32"}
    printed = capsys.readouterr().out
    assert f"ollama create tuned -f {out / 'Modelfile'}" in printed


@pytest.mark.slow
def test_fuse_format_lmstudio_places_the_gguf(adapter, tmp_path):
    from mlxsft.export.fuse import fuse

    result = fuse(adapter, "me/tuned", fmt="lmstudio", lmstudio_dir=tmp_path)
    assert result.out == tmp_path / "me" / "tuned" / "tuned.gguf"
    assert os.listdir(tmp_path / "me" / "tuned") == ["tuned.gguf"]
