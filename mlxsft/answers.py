"""How often a model's generated answers are right, and in the right shape, on held-out data.

The loss can fall while answers get worse (a model that learns the format of a reply
but not its content), so `mlxsft eval --answers N` also generates: for each held-out
record whose last turn is the assistant's, the model answers the conversation before it
(greedy) and the reply is checked against that last turn, the reference.

Two checks, chosen with `--match`:

- `exact`: right when the reply is the reference (whitespace runs count as one space);
  in shape when it has the reference's lines, each starting with the same label (the
  text up to the first ':'), e.g. `Answer: ...` then `Why: ...`.
- `json`: the reference is a JSON object. Right when the first JSON object in the reply
  (after prose, or inside a code block) has the reference's value under each of its keys
  (more keys are allowed; surrounding spaces in a string do not count); in shape when the whole reply is one JSON object with exactly
  the reference's keys; exact when it is equal to the reference.

This module scores; generation is `mlxsft.generate`, data loading `mlxsft.data`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Sequence

MATCHES = ("exact", "json")


@dataclass
class Verdict:
    right: bool
    shape: bool
    exact: bool


@dataclass
class AnswerScore:
    match: str
    answered: int = 0
    right: int = 0
    shape: int = 0
    exact: int = 0
    examples: list[dict] = field(default_factory=list)  # prompt, reference, reply, verdict

    def to_json(self) -> dict:
        return {"match": self.match, "answered": self.answered, "right": self.right,
                "in_shape": self.shape, "exact": self.exact}

    def summary(self) -> str:
        n = self.answered
        return (f"answers ({self.match} check, greedy, {n} held-out prompts): right "
                f"{self.right}/{n}, in shape {self.shape}/{n}, exact {self.exact}/{n}")


def _normalized(text: str) -> str:
    return " ".join(text.split())


def _labels(text: str) -> list[str]:
    return [line.split(":", 1)[0].strip() if ":" in line else None
            for line in text.strip().splitlines()]


def _json_object(text: str):
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _field(value):
    """A value as `right` compares it: strings without surrounding whitespace (a reply's
    `" Perth"` has the right city; only `exact` holds the space against it)."""
    return value.strip() if isinstance(value, str) else value


def _first_json_object(text: str):
    """The first JSON object in a text, also after prose or inside a code block."""
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
            if isinstance(value, dict):
                return value
        except json.JSONDecodeError:
            pass
        start = text.find("{", start + 1)
    return None


def judge(reply: str, reference: str, match: str) -> Verdict:
    """Compare one generated reply with the reference reply."""
    if match == "exact":
        exact = _normalized(reply) == _normalized(reference)
        return Verdict(exact, _labels(reply) == _labels(reference), exact)
    want = _json_object(reference.strip())
    if want is None:
        raise ValueError(f"--match json: the reference {reference[:60]!r} is not a JSON object")
    got = _json_object(reply.strip())
    shape = got is not None and set(got) == set(want)
    found = _first_json_object(reply)
    right = found is not None and all(_field(found.get(k)) == _field(v) for k, v in want.items())
    return Verdict(right, shape, got == want)


def held_out_turns(records) -> list[tuple[list[dict], str]]:
    """(conversation before the last assistant turn, that turn) of each chat record."""
    out = []
    for record in records:
        messages = getattr(record, "messages", None) or []
        if messages and messages[-1].get("role") == "assistant":
            out.append((messages[:-1], messages[-1].get("content") or ""))
    return out


def score_answers(loaded, records: Sequence, match: str = "exact", limit: int = 20,
                  extra_tokens: int = 32) -> AnswerScore:
    """Generate a greedy reply to each of the first `limit` held-out records and judge it.
    A reply may run `extra_tokens` past the reference's length: longer is wrong anyway."""
    from mlxsft.generate import reply
    from mlxsft.masking import hf_tokenizer

    tokenizer = hf_tokenizer(loaded.tokenizer)
    score = AnswerScore(match)
    for prompt, reference in held_out_turns(records)[:limit]:
        budget = len(tokenizer(reference, add_special_tokens=False)["input_ids"]) + extra_tokens
        answer = reply(loaded, prompt, max_tokens=budget).strip()
        verdict = judge(answer, reference, match)
        score.answered += 1
        score.right += verdict.right
        score.shape += verdict.shape
        score.exact += verdict.exact
        score.examples.append({"prompt": prompt[-1]["content"], "reference": reference,
                               "reply": answer, "right": verdict.right,
                               "in_shape": verdict.shape, "exact": verdict.exact})
    return score

