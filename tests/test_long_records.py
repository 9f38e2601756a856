"""A record far longer than --max-seq-len is cut to CHARS_PER_TOKEN_BOUND characters per
token before tokenizing, and gives exactly the tokens and mask the whole text would."""

import pytest

from mlxsft import masking
from mlxsft.data import parse_record
from mlxsft.masking import CHARS_PER_TOKEN_BOUND, Masker
from helpers.tiny import build_template_tokenizer

STORY = "The farmer said: hello world, what a good day! Then 42 people came to see why. "


@pytest.fixture(scope="module")
def tok():
    return build_template_tokenizer("llama3")


def uncapped(monkeypatch, masker, record):
    with monkeypatch.context() as m:
        m.setattr(masking, "CHARS_PER_TOKEN_BOUND", 10**9)
        return masker.encode(record)


@pytest.mark.parametrize("mode", ["assistant", "last", "all"])
def test_long_chat_record_is_cut_before_tokenizing_with_the_same_result(tok, monkeypatch, mode):
    record = parse_record({"messages": [
        {"role": "user", "content": "Tell me a story."},
        {"role": "assistant", "content": STORY * 20},
        {"role": "user", "content": "More."},
        {"role": "assistant", "content": STORY * 400}]}, "d.jsonl", 1)
    masker = Masker(tok, mode, 48)
    item = masker.encode(record)
    whole = uncapped(monkeypatch, masker, record)
    assert item.capped and not whole.capped and item.truncated and whole.truncated
    assert (item.tokens, item.loss_mask) == (whole.tokens, whole.loss_mask)
    assert len(item.tokens) == 48 and whole.untruncated_length > 10 * item.untruncated_length


def test_long_text_record_and_text_too_dense_to_cut(tok, monkeypatch):
    masker = Masker(tok, "assistant", 32)
    record = parse_record({"text": STORY * 100}, "d.jsonl", 1)
    item = masker.encode(record)
    assert item.capped and item.tokens == uncapped(monkeypatch, masker, record).tokens
    # 19 characters per token: the cut text would give too few tokens, so all of it is used.
    dense = parse_record({"text": "<|start_header_id|>" * 200}, "d.jsonl", 2)
    assert len("<|start_header_id|>") > CHARS_PER_TOKEN_BOUND
    item = masker.encode(dense)
    assert not item.capped and item.truncated and item.untruncated_length >= 200
