"""Cheap record-level lints for `mlxsft data check`, on the records' text (no tokenizer):
responses that copy their prompt, responses cut off mid-sentence, encoding oddities
(U+FFFD, mojibake, control and invisible characters), records in another script than
the rest of the dataset, and near-duplicates shared with held-out data (leakage).

Each returns the lines it flags; `mlxsft.datacheck` reports them.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from typing import Sequence

from mlxsft.curation import near_duplicate_pairs, normalize, record_text
from mlxsft.records import Record

# UTF-8 read as Latin-1/CP-1252 leaves these pairs behind ("Ã©" for "é", "â€™" for "'").
_MOJIBAKE = re.compile("[\u00c2\u00c3][\u0080-\u00bf]|\u00e2\u20ac[\u0080-\u00bf\u2018-\u203a\u0153\u017e]")
# Text that ends a sentence, or a structure that needs no full stop (code, lists, URLs).
_ENDS_WELL = re.compile(r"""[.!?…。！？:;)\]}"'`*>\d%]\s*$|^\s*[-*•|]|```\s*$""")
# C0 and C1 controls but newline, tab and carriage return (category Cc).
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# Zero-width and bidirectional controls: invisible, and they reorder displayed text.
_INVISIBLE = re.compile("[\u200b-\u200f\u2060\ufeff\u202a-\u202e\u2066-\u2069]")


def _responses(record: Record) -> list[tuple[int, str]]:
    return [(i, m["content"]) for i, m in enumerate(record.messages)
            if m["role"] == "assistant" and m["content"].strip()]


def copies_prompt(records: Sequence[Record]) -> list[int]:
    """Records with a response that repeats the message before it (normalized)."""
    found = []
    for record in records:
        for i, content in _responses(record):
            before = record.messages[i - 1]["content"] if i else ""
            # Lengths far apart cannot normalize to the same text; skip the work.
            if (before.strip() and len(content) <= 2 * len(before) + 16
                    and normalize(before) == normalize(content)):
                found.append(record.line)
                break
    return found


def cut_off(records: Sequence[Record]) -> list[int]:
    """Records whose last response stops mid-sentence: its last line has six words or more
    and ends in a lower-case word or a comma, without closing punctuation."""
    found = []
    for record in records:
        responses = _responses(record)
        if not responses:
            continue
        last_line = responses[-1][1].rstrip().rpartition("\n")[2]
        words = last_line.split()
        if (len(words) >= 6 and not _ENDS_WELL.search(last_line)
                and (words[-1].endswith(",") or words[-1][0].islower() and words[-1][-1].isalpha())):
            found.append(record.line)
    return found


def _texts(record: Record) -> list[str]:
    return [record.text] if record.text is not None else [m["content"] for m in record.messages]


def encoding_oddities(records: Sequence[Record]) -> list[str]:
    """"line(what)" for replacement characters, mojibake, control or invisible characters."""
    found = []
    for record in records:
        kinds = []
        for text in _texts(record):
            if "\ufffd" in text:
                kinds.append("U+FFFD")
            if _MOJIBAKE.search(text):
                kinds.append("mojibake")
            if _CONTROL.search(text):
                kinds.append("control characters")
            if _INVISIBLE.search(text):
                kinds.append("invisible characters")
        if kinds:
            found.append(f"{record.line}({', '.join(sorted(set(kinds)))})")
    return found


def _script(text: str, sample: int = 2000) -> str | None:
    """The script most letters of the text's start are in (LATIN, CYRILLIC, CJK...)."""
    counts: Counter = Counter()
    for c in text[:sample]:
        if c.isalpha():
            name = unicodedata.name(c, "")
            counts[name.split(" ")[0] if name else "OTHER"] += 1
    return counts.most_common(1)[0][0] if counts else None


def other_script(records: Sequence[Record]) -> list[str]:
    """"line(SCRIPT)" for records mostly in another script than 80% or more of the rest."""
    scripts = [(r.line, _script(record_text(r))) for r in records]
    counts = Counter(s for _, s in scripts if s)
    if not counts:
        return []
    main, n = counts.most_common(1)[0]
    if n < 0.8 * sum(counts.values()):
        return []  # a multilingual dataset: no outliers to speak of
    return [f"{line}({s.lower()})" for line, s in scripts if s and s != main]


def leakage(records: Sequence[Record], held_out: Sequence[Record],
            threshold: float = 0.8) -> list[str]:
    """"line~held-out line" for training records that (nearly) repeat a held-out one."""
    pairs = near_duplicate_pairs([record_text(r) for r in records], threshold,
                                 [record_text(r) for r in held_out])
    return [f"{records[i].line}~{held_out[j].line}" for i, j, _ in pairs]
