"""Loss masks on the chat formats of real model families: exactly the replies and their
end-of-turn tokens are supervised, in every mask mode; records that cannot be masked
fail with their file:line; truncation and records left with nothing to learn are counted.
(Templates that rewrite turns: test_masking_rewriting_templates.py; tokenizers that merge
across a boundary: test_masking_boundaries.py; how the end-of-turn token is written:
test_masking_end_of_turn.py.)"""

import functools

import pytest
from helpers.chat_templates import TEMPLATES
from helpers.masks import chat, masked_text, supervised_text
from helpers.tiny import build_template_tokenizer, build_tokenizer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlxsft.data import Record
from mlxsft.masking import DEFAULT_CHAT_TEMPLATE, Masker, MaskingError, encode_records

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "Why?"},
    {"role": "assistant", "content": "Because it is, 42 times."},
]
# Gemma and Mistral templates refuse a system turn.
NO_SYSTEM = {"gemma", "mistral"}


@functools.lru_cache(maxsize=None)
def tokenizer(name):
    return build_template_tokenizer(name)


@pytest.mark.parametrize("name", sorted(TEMPLATES))
@pytest.mark.parametrize("mode", ["assistant", "last"])
def test_supervised_tokens_are_exactly_the_responses_and_end_of_turn(name, mode):
    tok = tokenizer(name)
    eot = TEMPLATES[name][4]
    messages = CONVERSATION[1:] if name in NO_SYSTEM else CONVERSATION
    item = Masker(tok, mode).encode(chat(messages))
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    if mode == "last":
        answers = answers[-1:]
    assert supervised_text(tok, item) == "".join(a + eot for a in answers)
    assert item.method == "prefix"
    # The whole sequence is the template's own rendering, token for token.
    full = tok.apply_chat_template(messages, tokenize=False)
    assert item.tokens == tok(full, add_special_tokens=False)["input_ids"]
    # Everything else, prompts and role headers included, is masked.
    prompt = masked_text(tok, item)
    assert "What is the capital of France?" in prompt and "Why?" in prompt
    if mode == "last":
        assert "Paris." in prompt


def test_exact_mask_for_chatml_multi_turn():
    tok = tokenizer("chatml")
    messages = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "yes"},
                {"role": "user", "content": "sum"}, {"role": "assistant", "content": "no"}]
    item = Masker(tok).encode(chat(messages))
    # Build the expected mask independently, piece by piece.
    im_start, im_end = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]
    system = enc("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n")
    expected_tokens, expected_mask = list(system), [0] * len(system)
    for m in messages:
        head = [im_start] + enc(m["role"] + "\n")
        body = enc(m["content"]) + [im_end]
        tail = enc("\n")
        flag = 1 if m["role"] == "assistant" else 0
        expected_tokens += head + body + tail
        expected_mask += [0] * len(head) + [flag] * len(body) + [0] * len(tail)
    assert item.tokens == expected_tokens
    assert item.loss_mask == expected_mask


def test_all_mode_supervises_every_token_but_the_first():
    tok = tokenizer("chatml")
    item = Masker(tok, "all").encode(chat(CONVERSATION))
    assert item.loss_mask == [0] + [1] * (len(item.tokens) - 1)


def test_plain_text_is_all_supervised_and_ends_with_eos():
    tok = tokenizer("llama3")
    item = Masker(tok).encode(Record("d", 1, "text", text="hello world"))
    assert item.tokens[-1] == tok.eos_token_id
    assert item.loss_mask == [0] + [1] * (len(item.tokens) - 1)
    assert tok.decode(item.tokens) == "hello world<|eot_id|>"


def test_template_error_names_the_record():
    tok = tokenizer("gemma")
    with pytest.raises(MaskingError, match=r"data.jsonl:7: the chat template failed on this record "
                       r"\(TemplateError: System role not supported\)"):
        Masker(tok).encode(chat(CONVERSATION, line=7))


def test_no_chat_template_uses_the_documented_default_with_a_warning():
    tok = build_tokenizer(["<eos>"], None, eos="<eos>")
    masker = Masker(tok)
    assert masker.chat_template == DEFAULT_CHAT_TEMPLATE
    assert any("no chat template" in w for w in masker.warnings)
    item = masker.encode(chat(CONVERSATION))
    assert supervised_text(tok, item) == "Paris.<|im_end|>Because it is, 42 times.<|im_end|>"


def test_truncation_and_zero_supervised_records_are_counted_and_excluded():
    tok = tokenizer("chatml")
    long_prompt = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "yes"}]
    short = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes"}]
    fits = len(Masker(tok).encode(chat(short)).tokens)
    masker = Masker(tok, max_seq_len=fits)
    result = encode_records(masker, [chat(long_prompt, 1), chat(short, 2)])
    assert [i.line for i in result.items] == [2]
    assert [i.line for i in result.zero_supervised] == [1]
    assert result.truncated == 1
    cut = result.zero_supervised[0]
    assert len(cut.tokens) == fits and cut.untruncated_length > fits and cut.truncated


def test_unknown_mask_mode():
    with pytest.raises(Exception, match="--mask 'some' is not one of assistant, last, all"):
        Masker(tokenizer("chatml"), "some")


TEXT = st.text(alphabet="abcdefghij klmnop,.?!\n0123456789éü", max_size=40)


@st.composite
def conversations(draw):
    messages = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(TEXT)})
    for _ in range(draw(st.integers(1, 4))):
        messages.append({"role": "user", "content": draw(TEXT)})
        messages.append({"role": "assistant", "content": draw(TEXT)})
    return messages


@pytest.mark.parametrize("name", ["chatml", "llama3", "phi3"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=conversations(), mode=st.sampled_from(["assistant", "last"]))
def test_property_supervised_text_is_each_response_plus_end_of_turn(name, messages, mode):
    tok = tokenizer(name)
    eot = TEMPLATES[name][4]
    strip = name == "llama3"  # the Llama 3 template trims each message
    item = Masker(tok, mode).encode(chat(messages))
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    if mode == "last":
        answers = answers[-1:]
    expected = "".join((a.strip() if strip else a) + eot for a in answers)
    assert supervised_text(tok, item) == expected
    assert len(item.tokens) == len(item.loss_mask) and item.loss_mask[0] == 0
