"""When a template rewrites earlier turns, each reply is located by rendering the
conversation with that reply replaced by a marker. The reply must be found however it
looks (a role name, a special token's text, leading whitespace, empty), and a reply the
template does not render at all must fail loudly rather than go unsupervised."""

import pytest

from mlxsft.data import parse_record
from mlxsft.masking import Masker, MaskingError
from tiny import build_tokenizer

# Trimmed from DeepSeek-R1-Distill's template: reasoning is cut from every reply and the
# generation prompt opens a think block the replies never show, so it never has prefixes.
R1_LIKE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m.role == 'user' %}{{ '<|User|>' + m.content }}"
    "{% elif m.role == 'assistant' and m.tool_calls %}{{ '<|Assistant|>[CALL]' + m.tool_calls[0].function.name + eos_token }}"
    "{% elif m.role == 'assistant' %}{% set c = m.content %}"
    "{% if '</think>' in c %}{% set c = c.split('</think>')[-1] %}{% endif %}"
    "{{ '<|Assistant|>' + c + eos_token }}{% elif m.role == 'tool' %}{{ '<|Tool|>' + m.content }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|Assistant|><think>\\n' }}{% endif %}"
)
# ChatML whose generation prompt opens a think block the replies never show.
CHATML_THINK_PROMPT = (
    "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n<think>\\n' }}{% endif %}"
)


def _r1():
    return build_tokenizer(["<bos>", "<eos>", "<|User|>", "<|Assistant|>", "<|Tool|>"], R1_LIKE,
                           bos="<bos>", eos="<eos>")


def _chatml():
    return build_tokenizer(["<|im_start|>", "<|im_end|>"], CHATML_THINK_PROMPT, eos="<|im_end|>")


def _supervised(tok, messages, mode="assistant"):
    record = parse_record({"messages": messages}, "data.jsonl", 1)
    item = Masker(tok, mode).encode(record)
    full = tok.apply_chat_template(record.messages, tokenize=False)
    assert item.tokens == tok(full, add_special_tokens=False)["input_ids"]
    assert item.method == "search"
    return tok.decode([t for t, m in zip(item.tokens, item.loss_mask) if m])


def u(text):
    return {"role": "user", "content": text}


def a(text):
    return {"role": "assistant", "content": text}


@pytest.mark.parametrize("reply", ["assistant", "<|im_end|>", "\n\nyes"])
def test_reply_is_found_whatever_it_looks_like(reply):
    # "assistant" equals the role header before it; "<|im_end|>" equals the end of the
    # user turn before it; leading whitespace is part of the reply.
    assert _supervised(_chatml(), [u("Say <|im_end|>"), a(reply), u("ok"), a("fine")]) == \
        reply + "<|im_end|>fine<|im_end|>"


def test_reply_equal_to_a_special_tokens_text_is_not_matched_inside_it():
    assert _supervised(_r1(), [u("Who?"), a("Assistant")]) == "Assistant<eos>"


def test_reasoning_the_template_cuts_leaves_the_rendered_reply():
    messages = [u("2+2?"), a("<think>add</think>4"), u("3+3?"), a("<think>again</think>6")]
    assert _supervised(_r1(), messages) == "4<eos>6<eos>"


def test_empty_reply_is_supervised_as_its_end_of_turn():
    assert _supervised(_r1(), [u("Say nothing."), a(""), u("Now?"), a("Done.")]) == "<eos>Done.<eos>"


def test_a_turn_whose_content_is_not_rendered_fails_loudly_instead_of_going_unsupervised():
    call = {"role": "assistant", "content": None,
            "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]}
    messages = [u("Go."), call, {"role": "tool", "content": "1"}, a("Done.")]
    with pytest.raises(MaskingError, match=r"data.jsonl:1: .*messages\[1\] cannot be located"):
        _supervised(_r1(), messages)
    # Only the last turn is needed in 'last' mode, and that one is exact.
    assert _supervised(_r1(), messages, "last") == "Done.<eos>"


def test_turns_the_prefix_method_finds_keep_it_and_only_the_others_are_searched():
    # As Qwen3: reasoning is cut from replies before the last question, and the last reply
    # gets its reasoning in a think block (an empty one without). The last reply is found
    # by prefix; the marker, having no reasoning, could not match it. The earlier one,
    # rewritten, is found by the marker.
    template = (
        "{% for m in messages %}{% if m.role == 'assistant' %}{{ '<|im_start|>assistant\\n' }}"
        "{% set parts = m.content.split('</think>') %}"
        "{% set reasoning = parts[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') if parts|length > 1 else '' %}"
        "{% if loop.last %}{{ '<think>\\n' + reasoning + '\\n</think>\\n\\n' }}{% endif %}"
        "{{ parts[-1].lstrip('\\n') + '<|im_end|>\\n' }}"
        "{% else %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    tok = build_tokenizer(["<|im_start|>", "<|im_end|>"], template, eos="<|im_end|>")
    messages = [u("2+2?"), a("<think>\nadd\n</think>\n\n4"), u("3+3?"), a("<think>\nagain\n</think>\n\n6")]
    assert _supervised(tok, messages) == "4<|im_end|><think>\nagain\n</think>\n\n6<|im_end|>"
