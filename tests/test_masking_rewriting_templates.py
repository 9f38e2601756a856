"""Templates that render a turn differently depending on what follows it: some rewrite
earlier replies (cut their reasoning, as DeepSeek-R1 and Qwen3 do), some render the last
message differently (Qwen3's empty think block). Each reply is supervised as the whole
conversation renders it: found by prefix where the renderings agree, else by rendering
the conversation with that reply replaced by a marker; a reply the template does not
render at all fails loudly, and nothing is ever matched on a character-level common
prefix of two diverging renderings."""

import pytest
from helpers.chat_templates import LAST_TURN_THINKS, REWRITING
from helpers.masks import a, chat, encode_exact, supervised_runs, supervised_text, u
from helpers.tiny import build_template_tokenizer, build_tokenizer

from mlxsft.masking import Masker, MaskingError

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


def _chatml_think_prompt():
    return build_tokenizer(["<|im_start|>", "<|im_end|>"], CHATML_THINK_PROMPT, eos="<|im_end|>")


def _last_turn_thinks():
    return build_tokenizer(["<|im_start|>", "<|im_end|>"], LAST_TURN_THINKS, eos="<|im_end|>")


def _searched(tok, messages, mode="assistant"):
    """The supervised text of a record whose turns had to be found by the marker search."""
    item = encode_exact(tok, messages, mode)
    assert item.method == "search"
    return supervised_text(tok, item)


# -- templates that rewrite earlier replies ----------------------------------------------
def test_template_rewriting_history_is_masked_as_rendered():
    tok = build_template_tokenizer("chatml")
    tok.chat_template = REWRITING
    messages = [u("q1"), a("<think>x</think> a1"), u("q2"), a("a2")]
    # The earlier reply is supervised as the template renders it, reasoning cut.
    item = Masker(tok).encode(chat(messages))
    assert item.method == "search"
    assert supervised_text(tok, item) == "a1<|im_end|>a2<|im_end|>"
    # Only the last turn is needed in 'last' mode, and that one is exact.
    item = Masker(tok, "last").encode(chat(messages))
    assert supervised_text(tok, item) == "a2<|im_end|>"
    # A rewritten turn whose content still appears verbatim is found by search.
    plain = [u("q1"), a("a1"), u("q2"), a("<think>x</think> a2")]
    item = Masker(tok).encode(chat(plain))
    assert supervised_text(tok, item) == "a1<|im_end|><think>x</think> a2<|im_end|>"


@pytest.mark.parametrize("reply", ["assistant", "<|im_end|>", "\n\nyes"])
def test_reply_is_found_whatever_it_looks_like(reply):
    # "assistant" equals the role header before it; "<|im_end|>" equals the end of the
    # user turn before it; leading whitespace is part of the reply.
    assert _searched(_chatml_think_prompt(), [u("Say <|im_end|>"), a(reply), u("ok"), a("fine")]) \
        == reply + "<|im_end|>fine<|im_end|>"


def test_reply_equal_to_a_special_tokens_text_is_not_matched_inside_it():
    assert _searched(_r1(), [u("Who?"), a("Assistant")]) == "Assistant<eos>"


def test_reasoning_the_template_cuts_leaves_the_rendered_reply():
    messages = [u("2+2?"), a("<think>add</think>4"), u("3+3?"), a("<think>again</think>6")]
    assert _searched(_r1(), messages) == "4<eos>6<eos>"


def test_empty_reply_is_supervised_as_its_end_of_turn():
    assert _searched(_r1(), [u("Say nothing."), a(""), u("Now?"), a("Done.")]) == "<eos>Done.<eos>"


def test_a_turn_whose_content_is_not_rendered_fails_loudly_instead_of_going_unsupervised():
    call = {"role": "assistant", "content": None,
            "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]}
    messages = [u("Go."), call, {"role": "tool", "content": "1"}, a("Done.")]
    with pytest.raises(MaskingError, match=r"data.jsonl:1: .*messages\[1\] cannot be located"):
        _searched(_r1(), messages)
    # Only the last turn is needed in 'last' mode, and that one is exact.
    assert _searched(_r1(), messages, "last") == "Done.<eos>"


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
    assert _searched(tok, messages) == "4<|im_end|><think>\nagain\n</think>\n\n6<|im_end|>"


# -- templates that render the last message differently ----------------------------------
def test_empty_reply_before_a_later_turn_is_exact():
    tok = _last_turn_thinks()
    item = encode_exact(tok, [u("Say nothing."), a(""), u("Now say something."), a("Sure.")])
    assert supervised_runs(tok, item) == [
        "<|im_end|>", "<think>\n\n</think>\n\nSure.<|im_end|>"]


def test_tool_call_turn_before_the_answer_is_exact():
    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    tok = _last_turn_thinks()
    item = encode_exact(tok, [u("Weather in Paris?"),
                              {"role": "assistant", "content": None, "tool_calls": [call]},
                              {"role": "tool", "content": "22"}, a("It is 22 degrees.")])
    assert supervised_runs(tok, item) == ["<tool_call>get_weather</tool_call><|im_end|>",
                                          "<think>\n\n</think>\n\nIt is 22 degrees.<|im_end|>"]


def test_multi_turn_final_turn_keeps_the_template_think_block_like_a_single_turn():
    # Before, 3+ turn records fell back to search and dropped the block; 1-turn ones kept it.
    tok = _last_turn_thinks()
    item = encode_exact(tok, [u("Capital?"), a("Paris."), u("Why?"), a("It is.")])
    assert supervised_runs(tok, item) == ["Paris.<|im_end|>",
                                          "<think>\n\n</think>\n\nIt is.<|im_end|>"]
