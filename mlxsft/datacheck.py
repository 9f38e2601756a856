"""`mlxsft data check`: the dataset lint a careful user runs before training.

Reads each split, tokenizes it with the model's chat template and loss mask exactly as
training will, and summarizes what a person should look at: formats, token lengths,
the supervised share, truncation, records with no supervised tokens, duplicates, empty
responses, and whether each response ends with the end-of-turn token (so the tuned
model learns to stop). It also renders records with masked and supervised tokens told
apart. No model weights are loaded: only the tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

from mlxsft.batching import padding_waste
from mlxsft.data import DataFile, Record
from mlxsft.masking import Masker, MaskingError, Tokenized, encode_records, hf_tokenizer


# The batch size the padding estimate assumes (train's default --batch-size).
PADDING_BATCH = 4


@dataclass
class SplitReport:
    """The lint summary of one data file."""

    split: str
    path: str
    records: int
    formats: dict[str, int]
    skipped_invalid: list[str]
    failed_masking: list[str]
    lengths: list[int]
    tokens: int
    supervised_tokens: int
    truncated: list[int]  # line numbers
    zero_supervised: list[int]
    duplicates: list[tuple[int, int]]  # (line, line of its first copy)
    empty_responses: list[int]
    missing_end_of_turn: list[int]
    not_rendered: list[str]  # "line(messages[i])"
    methods: dict[str, int]
    items: list[Tokenized] = field(default_factory=list, repr=False)
    padding: dict = field(default_factory=dict)  # batching.padding_waste at batch 4

    def summary(self) -> dict[str, Any]:
        lengths = sorted(self.lengths)
        return {
            "split": self.split, "path": self.path, "records": self.records,
            "formats": self.formats,
            "skipped_invalid": len(self.skipped_invalid),
            "failed_masking": len(self.failed_masking),
            "tokens": self.tokens, "supervised_tokens": self.supervised_tokens,
            "supervised_share": round(self.supervised_tokens / self.tokens, 4) if self.tokens else 0.0,
            "length_min": lengths[0] if lengths else 0,
            "length_median": statistics.median(lengths) if lengths else 0,
            "length_max": lengths[-1] if lengths else 0,
            "truncated": len(self.truncated), "zero_supervised": len(self.zero_supervised),
            "duplicates": len(self.duplicates), "empty_responses": len(self.empty_responses),
            "missing_end_of_turn": len(self.missing_end_of_turn),
            "not_rendered": len(self.not_rendered),
            "mask_methods": self.methods,
            "padding": self.padding,
        }


def _record_key(record: Record) -> str:
    body = {"messages": record.messages, "tools": record.tools, "text": record.text}
    return hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _end_of_turn_ids(masker: Masker) -> set[int]:
    tok = masker.tokenizer
    ids = {i for i in (getattr(tok, "all_special_ids", None) or []) if i is not None}
    # Tokens marked special only in added_tokens_decoder (Gemma 3's <end_of_turn>, as
    # the Masker also counts them), not among the named special tokens.
    ids |= {i for i, t in (getattr(tok, "added_tokens_decoder", None) or {}).items()
            if getattr(t, "special", False)}
    if tok.eos_token_id is not None:
        ids.add(tok.eos_token_id)
    return ids


def _content_not_rendered(records, masker: Masker) -> list[str]:
    """"line(messages[i])" for each message whose content the chat template leaves out
    of the rendering (some templates drop a system prompt, or a tool call's content,
    or reasoning from earlier turns): the model never sees or learns that text."""
    found = []
    for record in records:
        if not record.messages:
            continue
        try:
            text = masker.render(record.messages, record.tools, False, record.where)
        except MaskingError:
            continue  # reported as a masking failure already
        found += [f"{record.line}(messages[{i}])" for i, m in enumerate(record.messages)
                  if m["content"].strip() and m["content"].strip() not in text]
    return found


def check_split(split: str, data: DataFile, masker: Masker) -> SplitReport:
    """Tokenize one split as training would and collect the lint findings."""
    encoded = encode_records(masker, data.records, skip_invalid=True)
    items = sorted(encoded.items + encoded.zero_supervised, key=lambda t: t.line)
    seen: dict[str, int] = {}
    duplicates = []
    for record in data.records:
        key = _record_key(record)
        if key in seen:
            duplicates.append((record.line, seen[key]))
        else:
            seen[key] = record.line
    empty = [r.line for r in data.records
             if any(m["role"] == "assistant" and not m["content"].strip() and not m.get("tool_calls")
                    for m in r.messages)]
    dropped = _content_not_rendered(data.records, masker)
    eot_ids = _end_of_turn_ids(masker)
    missing_eot = []
    if masker.mode != "all" and not masker.uses_default_template:
        for item in items:
            supervised = [t for t, m in zip(item.tokens, item.loss_mask) if m]
            if item.format != "text" and not item.truncated and supervised and supervised[-1] not in eot_ids:
                missing_eot.append(item.line)
    return SplitReport(
        split=split, path=data.path, records=len(data.records), formats=dict(data.formats),
        skipped_invalid=[str(e) for e in data.skipped],
        failed_masking=[str(e) for e in encoded.failed],
        lengths=[len(t.tokens) for t in items],
        tokens=sum(len(t.tokens) for t in items),
        supervised_tokens=sum(t.supervised_tokens for t in items),
        truncated=[t.line for t in items if t.truncated],
        zero_supervised=[t.line for t in encoded.zero_supervised],
        duplicates=duplicates, empty_responses=empty, missing_end_of_turn=missing_eot,
        not_rendered=dropped,
        methods=dict(Counter(t.method for t in items)), items=items,
        padding=padding_waste([len(t.tokens) for t in items], PADDING_BATCH,
                              masker.max_seq_len or max([len(t.tokens) for t in items] or [2])))


def histogram(values: Iterable[int], bins: int = 10, width: int = 40) -> list[str]:
    """A text histogram, one line per bin: range, bar, count."""
    values = list(values)
    if not values:
        return []
    lo, hi = min(values), max(values)
    step = max(1, -(-(hi - lo + 1) // bins))
    counts = Counter((v - lo) // step for v in values)
    top = max(counts.values())
    lines = []
    for b in range(-(-(hi - lo + 1) // step)):
        n = counts.get(b, 0)
        start = lo + b * step
        lines.append(f"  {start:>6}-{start + step - 1:<6} {'#' * round(width * n / top):<{width}} {n}")
    return lines


def render_summary(report: SplitReport) -> str:
    s = report.summary()
    formats = ", ".join(f"{k} {v}" for k, v in sorted(report.formats.items()))
    out = [f"{report.split}: {report.path}",
           f"  records: {report.records} ({formats})"
           + (f"; {len(report.skipped_invalid)} invalid skipped" if report.skipped_invalid else ""),
           f"  tokens per record: min {s['length_min']}, median {s['length_median']:g}, "
           f"max {s['length_max']}",
           f"  supervised tokens: {report.supervised_tokens} of {report.tokens} "
           f"({100 * s['supervised_share']:.1f}%)"]
    out += histogram(report.lengths)
    if report.padding:
        p = report.padding
        line = (f"  padding at batch {PADDING_BATCH}: {100 * p['bucketed_padding']:.0f}% of the "
                f"step's tokens with length buckets, {100 * p['packed_padding']:.0f}% with --pack")
        if p["packed_slots"] < 0.95 * p["bucketed_slots"]:  # worth a flag
            line += (f"; --pack computes {100 * (1 - p['packed_slots'] / p['bucketed_slots']):.0f}"
                     "% fewer tokens per epoch")
        out.append(line)

    passed = []  # said too, so a clean file shows what was checked

    def finding(label: str, lines: list, advice: str) -> None:
        if lines:
            shown = ", ".join(str(x) for x in lines[:8]) + (" ..." if len(lines) > 8 else "")
            out.append(f"  ! {label}: {len(lines)} (lines {shown}); {advice}")
        else:
            passed.append(label)

    finding("truncated", report.truncated, "raise --max-seq-len or shorten them")
    finding("no supervised tokens", report.zero_supervised,
            "excluded from training (the response was cut off or is empty)")
    finding("duplicates", [f"{a}={b}" for a, b in report.duplicates],
            "exact copies weigh a demonstration twice; remove them")
    finding("empty responses", report.empty_responses, "the model learns to say nothing")
    finding("no end-of-turn token supervised", report.missing_end_of_turn,
            "the model may not learn to stop")
    finding("content the template does not render", report.not_rendered,
            "the model never sees it; move it into a message the template keeps")
    if passed:
        out.append(f"  checked, none found: {', '.join(passed)}")
    for e in report.failed_masking[:5]:
        out.append(f"  ! cannot mask: {e}")
    for e in report.skipped_invalid[:5]:
        out.append(f"  ! invalid: {e}")
    methods = report.methods
    segments = sum(n for m, n in methods.items() if "segments" in m.split("+"))
    search = sum(n for m, n in methods.items() if "search" in m.split("+"))
    if segments:
        out.append(f"  note: {segments} records tokenized segment by segment (the "
                   "tokenizer merges text across a prompt/response boundary)")
    if search:
        out.append(f"  note: {search} records masked by searching the rendering "
                   "(the template rewrites earlier turns)")
    return "\n".join(out)


SUPERVISED_STYLE = "\x1b[1;32m"
MASKED_STYLE = "\x1b[2m"
RESET = "\x1b[0m"


def render_record(item: Tokenized, tokenizer: Any, color: bool = True) -> str:
    """The record's text with supervised tokens bold green and masked ones dim
    (without colour: supervised runs between « and »)."""
    tok = hf_tokenizer(tokenizer)
    runs: list[tuple[int, list[int]]] = []
    for t, m in zip(item.tokens, item.loss_mask):
        if runs and runs[-1][0] == m:
            runs[-1][1].append(t)
        else:
            runs.append((m, [t]))
    parts = []
    for m, ids in runs:
        text = tok.decode(ids)
        if color:
            parts.append((SUPERVISED_STYLE if m else MASKED_STYLE) + text + RESET)
        else:
            parts.append(f"«{text}»" if m else text)
    head = (f"--- {item.source}:{item.line} ({item.format}, {len(item.tokens)} tokens, "
            f"{item.supervised_tokens} supervised{', truncated' if item.truncated else ''})")
    return head + "\n" + "".join(parts)


def record_json(item: Tokenized) -> dict[str, Any]:
    return {"source": item.source, "line": item.line, "format": item.format,
            "tokens": item.tokens, "loss_mask": item.loss_mask,
            "supervised_tokens": item.supervised_tokens, "truncated": item.truncated,
            "method": item.method}
