"""Probes: held-out prompts answered by a model, and scores of those answers.

A lower held-out loss once hid a tuned model that was wrong more often than its base, so
the trainer answers a few held-out prompts at every evaluation (`SampleAnswers` events)
and `mlxsft compare` answers a probe set with the base, every checkpoint and exports.

A probe is the conversation up to its last assistant turn; that turn, when the record has
one, is the reference answer. Scores per answer:
- exact: the answer equals the reference (`mlxsft.answers.judge`: white space runs count as one);
- ended: generation stopped at the end-of-turn token (not at the length limit);
- tokens: the answer's length in tokens;
- parses: for a reference that is JSON (or a tool call), whether the answer parses as JSON.
The response-only loss against the reference is computed by the caller (`mlxsft.evaluate`),
with the same masks as training. Generation is greedy, so answers are reproducible.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from mlxsft.answers import judge
from mlxsft.data import Record, decode_json, parse_record, read_jsonl
from mlxsft.errors import UserError


@dataclass
class Probe:
    messages: list[dict]  # the conversation before the answer
    reference: str | None  # the demonstration's answer, when there is one
    where: str  # file:line

    @property
    def prompt(self) -> str:
        """The last user turn, for display."""
        users = [m.get("content") for m in self.messages if m.get("role") == "user"]
        return str(users[-1]) if users else ""


@dataclass
class Answer:
    text: str
    tokens: int
    ended: bool  # stopped at the end-of-turn token

    def scores(self, reference: str | None) -> dict:
        out = {"tokens": self.tokens, "ended": self.ended}
        if reference is not None:
            # One meaning of "exact" across mlxsft (eval --answers too): white space runs
            # count as one space.
            out["exact"] = judge(self.text, reference, "exact").exact
            if _is_json(reference):
                out["parses"] = _is_json(self.text)
        return out


def _is_json(text: str) -> bool:
    text = text.strip()
    if not text or text[0] not in "[{":
        return False
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def probe_from_record(record: Record) -> Probe | None:
    """The conversation before the record's last assistant turn (None for plain text or a
    record with nothing before its answer)."""
    if record.format == "text":
        return None
    last = max((i for i, m in enumerate(record.messages) if m.get("role") == "assistant"),
               default=None)
    if last is None:
        return Probe(list(record.messages), None, record.where)
    if last == 0:
        return None
    reference = record.messages[last].get("content")
    if not isinstance(reference, str):
        reference = json.dumps(record.messages[last].get("tool_calls")) \
            if record.messages[last].get("tool_calls") else None
    return Probe(list(record.messages[:last]), reference, record.where)


def probes_from_records(records: list[Record], limit: int) -> list[Probe]:
    out = []
    for record in records:
        if len(out) >= limit:
            break
        if (probe := probe_from_record(record)) is not None:
            out.append(probe)
    return out


def read_probes(path: str | Path, limit: int | None = None) -> list[Probe]:
    """Probes from a JSONL file of records in any training format; a bare prompt
    ({"prompt": "..."}) or messages ending in a user turn have no reference."""
    path = Path(path)
    if not path.is_file():
        read_jsonl(path)  # the located "no such file" / "is a directory" error
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--prompts {path}: unreadable ({e}); pass a UTF-8 .jsonl file") from None
    records = []
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        obj = decode_json(line, path, line_no)
        if isinstance(obj, dict) and isinstance(obj.get("prompt"), str) and "completion" not in obj:
            records.append(Record(str(path), line_no, "chat",
                                  [{"role": "user", "content": obj["prompt"]}]))
        elif isinstance(obj, dict) and _prompt_only(obj.get("messages")):
            records.append(Record(str(path), line_no, "chat", obj["messages"]))
        else:
            records.append(parse_record(obj, path, line_no))
    probes = probes_from_records(records, limit if limit is not None else len(records))
    if not probes:
        raise UserError(f"--prompts {path}: no record has a prompt to answer (plain-text "
                        "records have none); give chat, prompt/completion or Alpaca records")
    return probes


def _prompt_only(messages) -> bool:
    """Messages that end in a user turn and carry no answer: a prompt to probe with."""
    return (isinstance(messages, list) and bool(messages)
            and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages)
            and messages[-1].get("role") == "user"
            and not any(m.get("role") == "assistant" for m in messages))


def answer(loaded, probe: Probe, max_tokens: int) -> Answer:
    """The model's greedy answer to a probe, on the calling thread."""
    import mlx.core as mx
    from mlx_lm import stream_generate
    from mlx_lm.sample_utils import make_sampler

    from mlxsft.generate import chat_prompt_tokens

    prompt = mx.array(chat_prompt_tokens(loaded.tokenizer, probe.messages))
    pieces, tokens, ended = [], 0, False
    for response in stream_generate(loaded.model, loaded.tokenizer, prompt,
                                     max_tokens=max_tokens, sampler=make_sampler(temp=0.0)):
        pieces.append(response.text)
        tokens = response.generation_tokens
        ended = response.finish_reason == "stop"
    return Answer("".join(pieces), tokens, ended)


@dataclass
class SampleTable:
    """Answers of several models (columns) to the same probes (rows)."""

    probes: list[Probe]
    columns: list[str] = field(default_factory=list)
    answers: dict[str, list[Answer]] = field(default_factory=dict)
    losses: dict[str, float | None] = field(default_factory=dict)

    def add(self, column: str, answers: list[Answer], loss: float | None) -> None:
        self.columns.append(column)
        self.answers[column] = answers
        self.losses[column] = loss

    def summary(self, column: str) -> dict:
        """Per-column scores: loss, exact-match share, end-of-turn share, mean length and
        JSON-parse share (over probes with a JSON reference)."""
        answers = self.answers[column]
        scored = [a.scores(p.reference) for a, p in zip(answers, self.probes)]
        with_ref = [s for s in scored if "exact" in s]
        json_refs = [s for s in scored if "parses" in s]
        n = max(len(scored), 1)
        return {"model": column, "loss": self.losses.get(column),
                "exact": (sum(s["exact"] for s in with_ref) / len(with_ref)) if with_ref else None,
                "ended": sum(s["ended"] for s in scored) / n,
                "mean_tokens": sum(s["tokens"] for s in scored) / n,
                "parses": (sum(s["parses"] for s in json_refs) / len(json_refs))
                if json_refs else None}
