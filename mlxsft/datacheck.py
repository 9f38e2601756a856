"""`mlxsft data check`: the dataset lint a careful user runs before training.

Reads each split, tokenizes it with the model's chat template and loss mask exactly as
training will, and summarizes what a person should look at: formats, token lengths,
the supervised share, truncation, records with no supervised tokens, duplicates, empty
responses, and whether each response ends with the end-of-turn token (so the tuned
model learns to stop); content and tool calls the template does not render; turns whose
training context differs from what the model is fed at inference (a template that strips
reasoning from history); per-turn "train" overrides; the text lints of `mlxsft.lints`
and, with held-out records, leakage into them. It also renders records with masked and
supervised tokens told apart (control characters from the data escaped, so they cannot
drive the terminal). No model weights are loaded: only the tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

from mlxsft import lints
from mlxsft.batching import padding_waste
from mlxsft.data import DataFile, Record
from mlxsft.masking import Masker, MaskingError, Tokenized, encode_records, hf_tokenizer
from mlxsft.records import escape_controls
from mlxsft.templates import reasoning_of


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
    tool_calls_not_rendered: list[str] = field(default_factory=list)
    train_overrides: list[str] = field(default_factory=list)  # "line(messages[i]=false)"
    context_differs: list[str] = field(default_factory=list)  # "line(messages[k])"
    reasoning_dropped: list[str] = field(default_factory=list)
    copies_prompt: list[int] = field(default_factory=list)
    cut_off: list[int] = field(default_factory=list)
    encoding: list[str] = field(default_factory=list)
    other_script: list[str] = field(default_factory=list)
    leaked: list[str] | None = None  # "line~held-out line"; None when not checked
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
            "tool_calls_not_rendered": len(self.tool_calls_not_rendered),
            "train_overrides": len(self.train_overrides),
            "context_differs_from_inference": len(self.context_differs),
            "reasoning_not_trained": len(self.reasoning_dropped),
            "copies_prompt": len(self.copies_prompt), "cut_off": len(self.cut_off),
            "encoding_oddities": len(self.encoding), "other_script": len(self.other_script),
            "leaked": None if self.leaked is None else len(self.leaked),
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


def _per_renderable(records, masker: Masker, find) -> list[str]:
    """find(record as rendered) for every chat record the template can render (one it
    cannot render is reported as a masking failure already)."""
    found = []
    for record in records:
        if not record.messages:
            continue
        try:
            found += find(masker.prepared(record))
        except MaskingError:
            continue
    return found


def _content_not_rendered(records, masker: Masker) -> list[str]:
    """"line(messages[i])" for each message whose content the chat template leaves out
    of the rendering (some templates drop a system prompt, or a tool call's content,
    or reasoning from earlier turns): the model never sees or learns that text."""
    def find(record):
        text = masker.render(record.messages, record.tools, False, record.where)
        return [f"{record.line}(messages[{i}])" for i, m in enumerate(record.messages)
                if m["content"].strip() and m["content"].strip() not in text]
    return _per_renderable(records, masker, find)


def _tool_calls_not_rendered(records, masker: Masker) -> list[str]:
    return _per_renderable(records, masker, lambda record: [
        f"{record.line}(messages[{i}])" for i in masker.tool_calls_not_rendered(record)])


def _inference_mismatch(records, masker: Masker) -> tuple[list[str], list[str]]:
    """(turns trained after a context other than the one the model is fed at inference,
    turns trained without the reasoning the data gives them). At inference the template
    renders the conversation so far as the data has it (the model's own reasoning
    included) with the generation prompt; in training, turn k follows the whole
    conversation's rendering up to it, and a template that strips reasoning from history
    (or --thinking) makes the two differ."""
    context, reasoning = [], []
    for original in records:
        if not original.messages:
            continue
        record = masker.prepared(original)
        try:
            full = masker.render(record.messages, record.tools, False, record.where)
            spans, _ = masker.spans(record, full, masker.supervised_turns(record.messages))
        except MaskingError:
            continue  # reported as a masking failure already
        for k, (lo, hi) in sorted(spans.items()):
            try:
                prompt = masker.render(original.messages[:k], original.tools, True,
                                       original.where)
            except MaskingError:
                prompt = None  # a template that cannot render an empty conversation
            if prompt is not None and full[:lo] != prompt:
                context.append(f"{original.line}(messages[{k}])")
            thought = reasoning_of(original.messages[k])
            if masker.template.thinking == "keep" and thought and thought not in full[lo:hi]:
                reasoning.append(f"{original.line}(messages[{k}])")
    return context, reasoning


def _train_overrides(records) -> list[str]:
    return [f"{r.line}(messages[{i}]={'true' if m['train'] else 'false'})"
            for r in records for i, m in enumerate(r.messages) if m.get("train") is not None]


def check_split(split: str, data: DataFile, masker: Masker,
                held_out: DataFile | None = None) -> SplitReport:
    """Tokenize one split as training would and collect the lint findings (with
    `held_out`, also the training records that nearly repeat one of its records)."""
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
    context, reasoning = _inference_mismatch(data.records, masker)
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
        tool_calls_not_rendered=_tool_calls_not_rendered(data.records, masker),
        train_overrides=_train_overrides(data.records),
        context_differs=context, reasoning_dropped=reasoning,
        copies_prompt=lints.copies_prompt(data.records), cut_off=lints.cut_off(data.records),
        encoding=lints.encoding_oddities(data.records),
        other_script=lints.other_script(data.records),
        leaked=(lints.leakage(data.records, held_out.records) if held_out is not None
                else None),
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
        line = (f"  padding at batch {PADDING_BATCH}: {100 * p['shuffled_padding']:.0f}% of the "
                f"step's tokens in shuffled batches, {100 * p['grouped_padding']:.0f}% with "
                f"--group-by-length, {100 * p['packed_padding']:.0f}% with --pack")
        if p["packed_slots"] < 0.95 * p["shuffled_slots"]:  # worth a flag
            line += (f"; --pack computes {100 * (1 - p['packed_slots'] / p['shuffled_slots']):.0f}"
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
    finding("tool calls the template does not render", report.tool_calls_not_rendered,
            "such a turn trains as an empty reply (train refuses it); pass a --chat-template "
            "that renders tool_calls")
    finding("turns trained after another context than at inference", report.context_differs,
            "the template renders history differently (e.g. strips reasoning the data "
            "keeps); try --thinking strip-history or --mask last")
    finding("reasoning the template does not train", report.reasoning_dropped,
            "the template strips it from these turns; use --thinking strip-history (say so) "
            "or split the conversation per turn")
    finding("responses that copy the prompt", report.copies_prompt,
            "the model learns to echo; fix or remove them")
    finding("responses cut off mid-sentence", report.cut_off,
            "the model learns to stop mid-sentence; complete or remove them")
    finding("encoding oddities", report.encoding,
            "mojibake, U+FFFD or control characters; re-export the data as UTF-8")
    finding("records in another script than the rest", report.other_script,
            "check they belong (wrong language, or mis-decoded text)")
    if report.leaked is not None:
        finding("near-duplicates of held-out records", report.leaked,
                "held-out loss will be optimistic; remove them (`mlxsft data dedupe`)")
    if report.train_overrides:
        shown = ", ".join(report.train_overrides[:8])
        out.append(f"  train overrides: {len(report.train_overrides)} turns ({shown}"
                   f"{' ...' if len(report.train_overrides) > 8 else ''})")
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


def mask_runs(item: Tokenized, tokenizer: Any) -> list[tuple[bool, str]]:
    """The record's text cut where the loss mask changes: (supervised, text) pairs, each
    run decoded as a whole (so multi-token characters come out whole)."""
    tok = hf_tokenizer(tokenizer)
    runs: list[tuple[int, list[int]]] = []
    for t, m in zip(item.tokens, item.loss_mask):
        if runs and runs[-1][0] == m:
            runs[-1][1].append(t)
        else:
            runs.append((m, [t]))
    return [(bool(m), tok.decode(ids)) for m, ids in runs]


def render_record(item: Tokenized, tokenizer: Any, color: bool = True) -> str:
    """The record's text with supervised tokens bold green and masked ones dim
    (without colour: supervised runs between « and »)."""
    parts = []
    for supervised, text in mask_runs(item, tokenizer):
        text = escape_controls(text)  # a terminal must not run control sequences from data
        if color:
            parts.append((SUPERVISED_STYLE if supervised else MASKED_STYLE) + text + RESET)
        else:
            parts.append(f"«{text}»" if supervised else text)
    head = (f"--- {item.source}:{item.line} ({item.format}, {len(item.tokens)} tokens, "
            f"{item.supervised_tokens} supervised{', truncated' if item.truncated else ''})")
    return escape_controls(head) + "\n" + "".join(parts)


def record_json(item: Tokenized) -> dict[str, Any]:
    return {"source": item.source, "line": item.line, "format": item.format,
            "tokens": item.tokens, "loss_mask": item.loss_mask,
            "supervised_tokens": item.supervised_tokens, "truncated": item.truncated,
            "method": item.method}
