"""The token that closes a reply is supervised, however the template writes it: it is the
token that teaches the model to stop. Phi-3's <|end|> swallows the newline after it
(rstrip); Mistral's tool-call turn opens with a special token and ends at </s>."""

import pytest
from helpers.masks import a, parsed, supervised_ids, supervised_text, u
from helpers.tiny import build_tokenizer
from tokenizers import AddedToken

from mlxsft.masking import Masker

# microsoft/Phi-3.5-mini-instruct's chat template.
PHI35 = (
    "{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}"
    "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}"
    "{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
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
NEMO_SPECIALS = ["<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[TOOL_RESULTS]",
                 "[/TOOL_RESULTS]"]


def _phi_tokenizer():
    tok = build_tokenizer(["<|endoftext|>"], PHI35, eos="<|endoftext|>")
    # As in Phi-3's tokenizer_config.json: special, rstrip=True.
    tok.add_special_tokens({"additional_special_tokens": [
        AddedToken(t, rstrip=True, special=True, normalized=False)
        for t in ("<|assistant|>", "<|end|>", "<|system|>", "<|user|>")]})
    return tok


def test_end_of_turn_token_with_rstrip_is_supervised():
    tok = _phi_tokenizer()
    record = parsed([{"role": "system", "content": "Be brief."}, u("Capital?"), a("Paris."),
                     u("Why?"), a("It is.")])
    end = tok.convert_tokens_to_ids("<|end|>")
    for mode, answers in (("assistant", ["Paris.", "It is."]), ("last", ["It is."])):
        item = Masker(tok, mode).encode(record)
        assert supervised_text(tok, item) == "".join(answer + "<|end|>" for answer in answers)
        assert supervised_ids(item)[-1] == end


@pytest.mark.parametrize("mode", ["assistant", "last"])
def test_tool_call_turn_is_supervised_through_its_end_of_turn(mode):
    tok = build_tokenizer(NEMO_SPECIALS, NEMO, bos="<s>", eos="</s>")
    call = {"id": "call12345", "type": "function",
            "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    messages = [u("Weather in Paris?"), {"role": "assistant", "content": None, "tool_calls": [call]}]
    if mode == "assistant":
        messages += [{"role": "tool", "tool_call_id": "call12345", "content": "22"},
                     a("It is 22 degrees.")]
    item = Masker(tok, mode).encode(parsed(messages))
    tool_call = ('[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, '
                 '"id": "call12345"}]</s>')
    assert supervised_text(tok, item) == (
        tool_call + "It is 22 degrees.</s>" if mode == "assistant" else tool_call)
