"""Phi-3/3.5 tokenizers declare their role and end-of-turn tokens with rstrip=True, so the
token <|end|> also covers the newline the template writes after it. It must still be
supervised: it is the token that teaches the model to stop."""

from tokenizers import AddedToken

from mlxsft.data import parse_record
from mlxsft.masking import Masker
from tiny import build_tokenizer

# microsoft/Phi-3.5-mini-instruct's chat template.
PHI35 = (
    "{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}"
    "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}"
    "{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)


def _phi_tokenizer():
    tok = build_tokenizer(["<|endoftext|>"], PHI35, eos="<|endoftext|>")
    # As in Phi-3's tokenizer_config.json: special, rstrip=True.
    tok.add_special_tokens({"additional_special_tokens": [
        AddedToken(t, rstrip=True, special=True, normalized=False)
        for t in ("<|assistant|>", "<|end|>", "<|system|>", "<|user|>")]})
    return tok


def test_end_of_turn_token_with_rstrip_is_supervised():
    tok = _phi_tokenizer()
    record = parse_record({"messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital?"},
        {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "Why?"},
        {"role": "assistant", "content": "It is."}]}, "data.jsonl", 1)
    end = tok.convert_tokens_to_ids("<|end|>")
    for mode, answers in (("assistant", ["Paris.", "It is."]), ("last", ["It is."])):
        item = Masker(tok, mode).encode(record)
        supervised = [t for t, m in zip(item.tokens, item.loss_mask) if m]
        assert tok.decode(supervised) == "".join(a + "<|end|>" for a in answers)
        assert supervised[-1] == end
