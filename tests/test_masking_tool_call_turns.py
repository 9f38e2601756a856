"""Mistral (v0.3, Nemo) writes a tool-call turn as "[TOOL_CALLS][...]</s>": the turn starts
with a special token. The whole call through </s> is the reply, not just [TOOL_CALLS]."""

import pytest

from mlxsft.data import parse_record
from mlxsft.masking import Masker
from tiny import build_tokenizer

# Trimmed from mistralai/Mistral-Nemo-Instruct-2407's template.
NEMO = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message.role == 'user' %}{{ '[INST]' + message.content + '[/INST]' }}"
    "{% elif message.tool_calls is defined and message.tool_calls is not none %}"
    "{{ '[TOOL_CALLS][' }}{% for c in message.tool_calls %}{{ (c.function|tojson)[:-1] + ', \"id\": \"' + c.id + '\"}' }}"
    "{% if not loop.last %}{{ ', ' }}{% endif %}{% endfor %}{{ ']' + eos_token }}"
    "{% elif message.role == 'assistant' %}{{ message.content + eos_token }}"
    "{% elif message.role == 'tool' %}{{ '[TOOL_RESULTS]{\"content\": ' + message.content + ', \"call_id\": \"' + message.tool_call_id + '\"}[/TOOL_RESULTS]' }}"
    "{% endif %}{% endfor %}"
)
SPECIALS = ["<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]"]


@pytest.mark.parametrize("mode", ["assistant", "last"])
def test_tool_call_turn_is_supervised_through_its_end_of_turn(mode):
    tok = build_tokenizer(SPECIALS, NEMO, bos="<s>", eos="</s>")
    call = {"id": "call12345", "type": "function",
            "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    messages = [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": None, "tool_calls": [call]}]
    if mode == "assistant":
        messages += [{"role": "tool", "tool_call_id": "call12345", "content": "22"},
                     {"role": "assistant", "content": "It is 22 degrees."}]
    record = parse_record({"messages": messages}, "data.jsonl", 1)
    item = Masker(tok, mode).encode(record)
    supervised = tok.decode([t for t, m in zip(item.tokens, item.loss_mask) if m])
    tool_call = ('[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, '
                 '"id": "call12345"}]</s>')
    assert supervised == (tool_call + "It is 22 degrees.</s>" if mode == "assistant" else tool_call)
