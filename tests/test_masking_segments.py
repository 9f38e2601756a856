"""The segment-by-segment fallback (for a tokenizer that merges text across a
prompt/response boundary) must reproduce the rendering exactly, or fail loudly."""

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from mlxsft.data import parse_record
from mlxsft.masking import Masker, MaskingError
from chat_templates import LAST_TURN_THINKS
from tiny import build_tokenizer, corpus

# "Assistant: " ends with a space that the tokenizer joins to the reply's first word.
SPACE_BEFORE_REPLY = (
    "{% for m in messages %}{% if m.role == 'user' %}{{ 'User: ' + m.content + '\n' }}"
    "{% else %}{{ 'Assistant: ' + m.content + eos_token + '\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}")


def sentencepiece_like(template):
    """Like a Llama 2 / Mistral tokenizer: every piece of text gets a leading '▁'."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.train_from_iterator(corpus(), trainers.BpeTrainer(
        vocab_size=400, special_tokens=["</s>"], show_progress=False,
        initial_alphabet=list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ:?.,!\n▁")))
    return PreTrainedTokenizerFast(tokenizer_object=tok, chat_template=template, eos_token="</s>")


def exact_or_error(tok, messages):
    """The masker's output is the rendering's own tokens, or the same text with the same
    special tokens (segments); anything else is a silent mis-tokenization."""
    record = parse_record({"messages": messages}, "data.jsonl", 1)
    try:
        item = Masker(tok).encode(record)
    except MaskingError as e:
        assert "data.jsonl:1" in str(e)
        return None
    natural = tok(tok.apply_chat_template(record.messages, tokenize=False),
                  add_special_tokens=False)["input_ids"]
    if item.tokens != natural:
        added = set(tok.added_tokens_decoder)
        assert tok.decode(item.tokens) == tok.decode(natural)
        assert [t for t in item.tokens if t in added] == [t for t in natural if t in added]
    return item


def test_sentencepiece_pieces_do_not_change_the_text():
    tok = sentencepiece_like(SPACE_BEFORE_REPLY)
    messages = [{"role": "user", "content": "Paris"}, {"role": "assistant", "content": "capital"}]
    assert "▁capital" in tok.convert_ids_to_tokens(tok("Assistant: capital")["input_ids"])
    exact_or_error(tok, messages)


def test_byte_level_segments_stay_exact():
    tok = build_tokenizer(["</s>"], SPACE_BEFORE_REPLY, eos="</s>")
    item = exact_or_error(tok, [{"role": "user", "content": "Paris"}, {"role": "assistant", "content": "capital"}])
    assert item is not None and item.method == "segments"


def test_a_special_token_is_never_cut_into_characters():
    # The last-turn rendering of the empty reply starts "<think>", the whole one "<|im_end|>".
    tok = build_tokenizer(["<|im_start|>", "<|im_end|>"], LAST_TURN_THINKS, eos="<|im_end|>")
    exact_or_error(tok, [{"role": "user", "content": "Go."}, {"role": "assistant", "content": ""},
                         {"role": "user", "content": "Again."}, {"role": "assistant", "content": "Done."}])
