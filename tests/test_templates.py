"""Chat-template control: --chat-template (a file, chatml, another model's), template
kwargs baked into the template (so the adapter and fused models render the same way),
--thinking, and data check's check that turn k trains on what it is fed at inference."""

import json

import pytest

from helpers.data import write_jsonl
from helpers.masks import supervised_text
from mlxsft.data import parse_record
from mlxsft.errors import UserError
from mlxsft.masking import Masker
from mlxsft.templates import (CHATML, TemplateChoice, apply_thinking, bake_kwargs, parse_kwarg,
                              resolve_template)
from helpers.tiny import build_tokenizer

# Trimmed from Qwen3's template: reasoning is shown only for assistant turns after the last
# user message; enable_thinking=false writes an empty think block into the generation prompt.
QWEN3_LIKE = (
    "{%- set ns = namespace(last_user=-1) %}"
    "{%- for m in messages %}{% if m.role == 'user' %}{% set ns.last_user = loop.index0 %}{% endif %}{% endfor %}"
    "{%- for m in messages %}"
    "{%- if m.role == 'assistant' %}"
    "{%- set content = m.content %}{% set reasoning = '' %}"
    "{%- if '</think>' in content %}{% set reasoning = content.split('</think>')[0].split('<think>')[-1].strip() %}"
    "{% set content = content.split('</think>')[-1].lstrip() %}{% endif %}"
    "{{- '<|im_start|>assistant\n' }}"
    "{%- if loop.index0 > ns.last_user and reasoning %}{{ '<think>\n' + reasoning + '\n</think>\n\n' }}{% endif %}"
    "{{- content + '<|im_end|>\n' }}"
    "{%- else %}{{ '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}{% endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{ '<think>\n\n</think>\n\n' }}{% endif %}"
    "{%- endif %}")
SPECIALS = ["<|im_start|>", "<|im_end|>", "<think>", "</think>"]
THOUGHTFUL = [{"role": "user", "content": "What is 2+2?"},
              {"role": "assistant", "content": "<think>Two and two.</think>\n\n4."},
              {"role": "user", "content": "And 3+3?"},
              {"role": "assistant", "content": "<think>Three and three.</think>\n\n6."}]


@pytest.fixture(scope="module")
def qwen_tok():
    return build_tokenizer(SPECIALS, QWEN3_LIKE, eos="<|im_end|>")


def test_template_kwargs_are_baked_into_the_template(qwen_tok):
    messages = [{"role": "user", "content": "hi"}]
    plain = Masker(qwen_tok).render(messages, add_generation_prompt=True)
    masker = Masker(qwen_tok, template=TemplateChoice(kwargs={"enable_thinking": False}))
    assert plain.endswith("<|im_start|>assistant\n")
    assert masker.render(messages, add_generation_prompt=True) == plain + "<think>\n\n</think>\n\n"
    # The baked text alone does it, as a fused model's tokenizer_config.json carries it.
    assert masker.chat_template == bake_kwargs(QWEN3_LIKE, {"enable_thinking": False})
    assert masker.chat_template.startswith("{%- set enable_thinking = false -%}")
    assert qwen_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                        chat_template=masker.chat_template) == plain + "<think>\n\n</think>\n\n"


def test_parse_kwarg_types():
    assert parse_kwarg("enable_thinking=false") == ("enable_thinking", False)
    assert parse_kwarg("n=3") == ("n", 3)
    assert parse_kwarg("name=Ada Lovelace") == ("name", "Ada Lovelace")
    assert parse_kwarg('xs=["a", null]') == ("xs", ["a", None])
    assert bake_kwargs("T", {"xs": ["a", None], "k": "it's"}) == (
        '{%- set k = "it\'s" -%}{%- set xs = ["a", none] -%}T')
    with pytest.raises(UserError, match="--template-kwarg 3x=1: expected KEY=VALUE"):
        parse_kwarg("3x=1")


def test_thinking_modes_change_the_rendering_as_the_template_says(qwen_tok):
    record = parse_record({"messages": THOUGHTFUL}, "d.jsonl", 1)
    keep = Masker(qwen_tok).encode(record)
    # The template drops the first turn's reasoning (history) and keeps the last one's.
    assert supervised_text(qwen_tok, keep) == ("4.<|im_end|><think>\nThree and three.\n</think>\n\n"
                                          "6.<|im_end|>")
    strip = Masker(qwen_tok, template=TemplateChoice(thinking="strip-history")).encode(record)
    assert (strip.tokens, strip.loss_mask) == (keep.tokens, keep.loss_mask)
    off = Masker(qwen_tok, template=TemplateChoice(thinking="off"))
    item = off.encode(record)
    assert supervised_text(qwen_tok, item) == "4.<|im_end|>6.<|im_end|>"
    assert "enable_thinking = false" in off.chat_template  # and inference thinks no more
    assert apply_thinking(THOUGHTFUL, "strip-history")[1]["content"] == "4."
    assert apply_thinking(THOUGHTFUL, "strip-history")[3] == THOUGHTFUL[3]


def test_data_check_verifies_training_against_inference(tmp_path, qwen_tok, capsys):
    from mlxsft.cli import main

    model = tmp_path / "qwenlike"
    qwen_tok.save_pretrained(str(model))
    (model / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": THOUGHTFUL}])
    assert main(["data", "check", str(data), "--model", str(model)]) == 0
    out = capsys.readouterr().out
    # Qwen3 strips history reasoning: turn 1 trains without the reasoning the data gives it.
    assert "! reasoning the template does not train: 1 (lines 1(messages[1]))" in out
    assert "turns trained after another context than at inference" in out.split("none found:")[1]
    # A template that keeps history reasoning, with --thinking strip-history: turn 3 is
    # trained after a history without reasoning, but fed one with it at inference.
    chatml = tmp_path / "chatml.jinja"
    chatml.write_text(CHATML)
    assert main(["data", "check", str(data), "--model", str(model), "--chat-template",
                 str(chatml), "--thinking", "strip-history"]) == 0
    out = capsys.readouterr().out
    assert "! turns trained after another context than at inference: 1 (lines 1(messages[3]))" in out


def test_chat_template_sources(tmp_path, tiny_llama):
    assert resolve_template("chatml") == CHATML
    f = tmp_path / "t.jinja"
    f.write_text("{{ messages[0].content }}")
    assert resolve_template(str(f)) == "{{ messages[0].content }}"
    from mlxsft.models import load_tokenizer

    assert resolve_template(str(tiny_llama)) == load_tokenizer(str(tiny_llama))._tokenizer.chat_template
    bad = tmp_path / "bad.jinja"
    bad.write_text("line one\n{% for m in messages %}")
    with pytest.raises(UserError, match=r"--chat-template .*bad.jinja:2: not a valid Jinja template"):
        resolve_template(str(bad))
    with pytest.raises(UserError, match="--chat-template missing.jinja: no such file"):
        resolve_template("missing.jinja")


@pytest.mark.slow
def test_template_and_kwargs_are_saved_with_the_adapter_and_used_by_chat_and_fuse(
        tiny_llama, tiny_data, tmp_path):
    from mlxsft.adapters import load_for_inference
    from mlxsft.cli import main
    from mlxsft.generate import chat_prompt_tokens
    from mlxsft.masking import hf_tokenizer
    from mlxsft.templates import chat_template_for_adapter

    template = tmp_path / "mine.jinja"
    template.write_text(
        "{% for m in messages %}{{ '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' + greeting }}{% endif %}")
    out = tmp_path / "run"
    assert main(["train", str(tiny_data), "--model", str(tiny_llama), "--out", str(out),
                 "--iters", "2", "--batch-size", "2", "--chat-template", str(template),
                 "--template-kwarg", "greeting=Sure:", "--steps-per-eval", "0"]) == 0
    config = json.loads((out / "adapter_config.json").read_text())
    baked = '{%- set greeting = "Sure:" -%}' + template.read_text()
    assert config["chat_template"] == baked == chat_template_for_adapter(config)
    assert config["template_kwargs"] == {"greeting": "Sure:"} and config["thinking"] == "keep"
    loaded = load_for_inference(None, out)
    tok = hf_tokenizer(loaded.tokenizer)
    assert tok.chat_template == baked
    ids = chat_prompt_tokens(loaded.tokenizer, [{"role": "user", "content": "add 1 2"}])
    assert tok.decode(ids) == "<|im_start|>user\nadd 1 2<|im_end|>\n<|im_start|>assistant\nSure:"
    fused = tmp_path / "fused"
    assert main(["fuse", "--adapter", str(out), "--out", str(fused), "--format", "hf"]) == 0
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(fused)).chat_template == baked


def test_kwargs_apply_to_mlxsft_default_template_when_the_tokenizer_has_none():
    from mlxsft.masking import DEFAULT_CHAT_TEMPLATE

    tok = build_tokenizer(["<|im_start|>", "<|im_end|>"])  # a base model: no chat template
    masker = Masker(tok, template=TemplateChoice(kwargs={"x": 1}))
    assert masker.chat_template == bake_kwargs(DEFAULT_CHAT_TEMPLATE, {"x": 1})
    assert masker.uses_default_template and masker.warnings
    assert masker.saved_template()["chat_template"] == masker.chat_template
