"""A template that renders the conversation's last message differently (as Qwen3 adds an
empty <think> block to it): empty replies and tool-call turns before later turns must be
masked exactly, never by a character-level common prefix of two diverging renderings."""

from mlxsft.data import parse_record
from mlxsft.masking import Masker
from chat_templates import LAST_TURN_THINKS
from tiny import build_tokenizer


def _tok():
    return build_tokenizer(["<|im_start|>", "<|im_end|>"], LAST_TURN_THINKS, eos="<|im_end|>")


def _supervised(tok, item):
    runs, cur = [], []
    for t, m in zip(item.tokens, item.loss_mask):
        if m:
            cur.append(t)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    return runs + ([tok.decode(cur)] if cur else [])


def _check(messages, expected):
    tok = _tok()
    record = parse_record({"messages": messages}, "data.jsonl", 1)
    item = Masker(tok).encode(record)
    full = tok.apply_chat_template(record.messages, tokenize=False)
    # The tokens are the rendering's own tokens: no special token cut into characters.
    assert item.tokens == tok(full, add_special_tokens=False)["input_ids"]
    assert _supervised(tok, item) == expected


def test_empty_reply_before_a_later_turn_is_exact():
    _check([{"role": "user", "content": "Say nothing."}, {"role": "assistant", "content": ""},
            {"role": "user", "content": "Now say something."}, {"role": "assistant", "content": "Sure."}],
           ["<|im_end|>", "<think>\n\n</think>\n\nSure.<|im_end|>"])


def test_tool_call_turn_before_the_answer_is_exact():
    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    _check([{"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "content": "22"},
            {"role": "assistant", "content": "It is 22 degrees."}],
           ["<tool_call>get_weather</tool_call><|im_end|>",
            "<think>\n\n</think>\n\nIt is 22 degrees.<|im_end|>"])


def test_multi_turn_final_turn_keeps_the_template_think_block_like_a_single_turn():
    # Before, 3+ turn records fell back to search and dropped the block; 1-turn ones kept it.
    _check([{"role": "user", "content": "Capital?"}, {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "Why?"}, {"role": "assistant", "content": "It is."}],
           ["Paris.<|im_end|>", "<think>\n\n</think>\n\nIt is.<|im_end|>"])
