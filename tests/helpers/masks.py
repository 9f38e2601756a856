"""Records to encode and what an encoding supervises, for the masking tests."""

from __future__ import annotations

from mlxsft.data import Record, parse_record
from mlxsft.masking import Masker, Tokenized


def u(text: str) -> dict:
    return {"role": "user", "content": text}


def a(text: str) -> dict:
    return {"role": "assistant", "content": text}


def chat(messages: list[dict], line: int = 1) -> Record:
    """A chat record of data.jsonl at `line`, taken as it is (no validation)."""
    return Record("data.jsonl", line, "chat", messages)


def parsed(messages: list[dict], line: int = 1) -> Record:
    """A chat record of data.jsonl at `line`, validated as `mlxsft` reads files."""
    return parse_record({"messages": messages}, "data.jsonl", line)


def supervised_ids(item: Tokenized) -> list[int]:
    """The tokens that carry loss, in order."""
    return [t for t, m in zip(item.tokens, item.loss_mask) if m]


def supervised_text(tok, item: Tokenized) -> str:
    """The decoded tokens that carry loss, run together."""
    return tok.decode(supervised_ids(item))


def masked_text(tok, item: Tokenized) -> str:
    return tok.decode([t for t, m in zip(item.tokens, item.loss_mask) if not m])


def supervised_runs(tok, item: Tokenized) -> list[str]:
    """Each maximal run of supervised tokens, decoded on its own."""
    runs, current = [], []
    for t, m in zip(item.tokens, item.loss_mask):
        if m:
            current.append(t)
        elif current:
            runs.append(tok.decode(current))
            current = []
    return runs + ([tok.decode(current)] if current else [])


def rendered_tokens(tok, record: Record) -> list[int]:
    """The template's own rendering of the record, tokenized whole: what the masker's
    tokens must be when no boundary needed the segments fallback."""
    text = tok.apply_chat_template(record.messages, tokenize=False)
    return tok(text, add_special_tokens=False)["input_ids"]


def encode_exact(tok, messages: list[dict], mode: str = "assistant") -> Tokenized:
    """Encode a chat and check its tokens are the rendering's own (no special token cut
    into characters, no re-tokenized boundary)."""
    record = parsed(messages)
    item = Masker(tok, mode).encode(record)
    assert item.tokens == rendered_tokens(tok, record)
    return item
