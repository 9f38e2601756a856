"""Token boundaries: when a tokenizer merges text across a prompt/response boundary, the
sides are tokenized separately (the segments fallback), which must give back the
rendering's text and special tokens exactly; when it cannot, the record is refused with
a message. A special token is never cut into characters."""

import pytest
from helpers.chat_templates import LAST_TURN_THINKS
from helpers.masks import a, chat, parsed, rendered_tokens, supervised_text, u
from helpers.tiny import build_tokenizer, corpus
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from mlxsft.masking import Masker, MaskingError

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


def test_tokenizer_merging_across_the_boundary_falls_back_to_segments():
    # A byte-level BPE joins the space to the answer's first word (" capital" is one
    # token), so no token boundary falls where the response starts.
    tok = build_tokenizer(["</s>"], SPACE_BEFORE_REPLY, eos="</s>")
    full = "User: Paris\nAssistant: capital</s>\n"
    assert "Ġcapital" in tok.convert_ids_to_tokens(tok(full)["input_ids"])
    item = Masker(tok).encode(chat([u("Paris"), a("capital")]))
    assert item.method == "segments"
    assert supervised_text(tok, item) == "capital</s>"
    assert tok.decode(item.tokens) == full
    # The segments differ from the whole rendering's tokens only where the text allows:
    # the same text and the same special tokens.
    natural = rendered_tokens(tok, parsed([u("Paris"), a("capital")]))
    added = set(tok.added_tokens_decoder)
    assert [t for t in item.tokens if t in added] == [t for t in natural if t in added]


def test_segments_that_would_change_the_text_are_refused():
    # A SentencePiece-like tokenizer puts '▁' before every separately tokenized piece, so
    # tokenizing the sides apart would add a space before the reply: no exact mask exists.
    tok = sentencepiece_like(SPACE_BEFORE_REPLY)
    assert "▁capital" in tok.convert_ids_to_tokens(tok("Assistant: capital")["input_ids"])
    with pytest.raises(MaskingError, match=r"^data.jsonl:1: the tokenizer merges text across a "
                       r"prompt/response boundary and tokenizing the two sides separately does "
                       r"not give back the same text"):
        Masker(tok).encode(parsed([u("Paris"), a("capital")]))


def test_a_special_token_is_never_cut_into_characters():
    # The last-turn rendering of the empty reply starts "<think>", the whole one "<|im_end|>":
    # the turn must still be located on whole tokens of the whole rendering.
    tok = build_tokenizer(["<|im_start|>", "<|im_end|>"], LAST_TURN_THINKS, eos="<|im_end|>")
    record = parsed([u("Go."), a(""), u("Again."), a("Done.")])
    item = Masker(tok).encode(record)
    assert item.tokens == rendered_tokens(tok, record)
    assert supervised_text(tok, item) == "<|im_end|><think>\n\n</think>\n\nDone.<|im_end|>"
