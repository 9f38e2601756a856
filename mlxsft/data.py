"""Read and validate SFT data: JSONL files of demonstrations -> `Record`s.

Four record formats are detected per line (a file may mix them):

- chat: ``{"messages": [{"role": ..., "content": ...}, ...], "tools": [...]?}``
- prompt/completion: ``{"prompt": ..., "completion": ...}``
- Alpaca: ``{"instruction": ..., "input": ...?, "output": ...}``
- plain text: ``{"text": ...}`` (no prompt: every token is supervised)

Prompt/completion and Alpaca records become a user turn and an assistant turn, so one
code path (the chat template) renders everything but plain text. A data directory holds
``train.jsonl`` and optionally ``valid.jsonl`` / ``test.jsonl``.

Every problem a user can cause is a `DataError`: one line naming file:line, the field,
and what to do. This module does no tokenization (see `mlxsft.masking`).
"""

from __future__ import annotations

import difflib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlxsft.errors import UserError

ROLES = ("system", "user", "assistant", "tool")
FORMATS = ("chat", "completion", "alpaca", "text")
SPLITS = ("train", "valid", "test")

# The top-level keys that identify each format, for "did you mean" hints.
_FORMAT_KEYS = ("messages", "prompt", "completion", "instruction", "input", "output", "text")


class DataError(UserError):
    """A problem in a data file, located at file:line (line 0 means the whole file)."""

    def __init__(self, path: str | Path, line: int, message: str):
        self.path = str(path)
        self.line = line
        self.reason = message
        where = f"{self.path}:{line}" if line else self.path
        super().__init__(f"{where}: {message}")


@dataclass
class Record:
    """One validated demonstration, normalized to chat messages (or plain text)."""

    source: str
    line: int
    format: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    tools: list[Any] | None = None
    text: str | None = None  # only for the plain-text format

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


@dataclass
class DataFile:
    """The records of one JSONL file, with what was skipped and why."""

    path: str
    records: list[Record]
    skipped: list[DataError] = field(default_factory=list)

    @property
    def formats(self) -> Counter:
        return Counter(r.format for r in self.records)


def _did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", type(None): "null", bool: "a boolean",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _require_string(obj: dict, key: str, where: str, path, line) -> str:
    if key not in obj:
        close = difflib.get_close_matches(key, [k for k in obj if isinstance(k, str)], n=1,
                                          cutoff=0.6)
        if close:
            raise DataError(path, line, f"missing field '{where}{key}' (found '{where}{close[0]}'; "
                            f"rename it to '{key}')")
        raise DataError(path, line, f"missing field '{where}{key}'; add it as a string")
    value = obj[key]
    if not isinstance(value, str):
        raise DataError(path, line, f"field '{where}{key}' is {_type_name(value)}, expected a string")
    return value


def _parse_messages(obj: dict, path, line) -> list[dict[str, Any]]:
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        raise DataError(path, line, "field 'messages' must be a non-empty list of "
                        "{\"role\": ..., \"content\": ...} objects")
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]."
        if not isinstance(message, dict):
            raise DataError(path, line, f"messages[{i}] is {_type_name(message)}, expected an "
                            "object with 'role' and 'content'")
        role = _require_string(message, "role", where, path, line)
        if role not in ROLES:
            raise DataError(path, line, f"messages[{i}].role '{role}' is not one of "
                            f"{', '.join(ROLES)}{_did_you_mean(role, ROLES)}")
        # An assistant turn that only calls tools may have no text content.
        if role == "assistant" and message.get("tool_calls") and message.get("content") is None:
            message = {**message, "content": ""}
        _require_string(message, "content", where, path, line)
        out.append(dict(message))
    if not any(m["role"] == "assistant" for m in out):
        raise DataError(path, line, "no assistant turn in 'messages'; add the response to "
                        "train on as {\"role\": \"assistant\", \"content\": ...}")
    return out


def parse_record(obj: Any, path: str | Path, line: int) -> Record:
    """Validate one decoded JSON value and normalize it to a `Record`."""
    source = str(path)
    if not isinstance(obj, dict):
        raise DataError(path, line, f"the line is {_type_name(obj)}, expected a JSON object "
                        "such as {\"messages\": [...]}")
    if "messages" in obj:
        tools = obj.get("tools")
        if tools is not None and not isinstance(tools, list):
            raise DataError(path, line, f"field 'tools' is {_type_name(tools)}, expected a list")
        return Record(source, line, "chat", _parse_messages(obj, path, line), tools=tools)
    if "prompt" in obj or "completion" in obj:
        prompt = _require_string(obj, "prompt", "", path, line)
        completion = _require_string(obj, "completion", "", path, line)
        messages = [{"role": "user", "content": prompt},
                    {"role": "assistant", "content": completion}]
        return Record(source, line, "completion", messages)
    if "instruction" in obj or "output" in obj:
        instruction = _require_string(obj, "instruction", "", path, line)
        output = _require_string(obj, "output", "", path, line)
        extra = obj.get("input", "")
        if extra is None:
            extra = ""
        if not isinstance(extra, str):
            raise DataError(path, line, f"field 'input' is {_type_name(extra)}, expected a string")
        prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        messages = [{"role": "user", "content": prompt},
                    {"role": "assistant", "content": output}]
        return Record(source, line, "alpaca", messages)
    if "text" in obj:
        return Record(source, line, "text", text=_require_string(obj, "text", "", path, line))
    keys = [k for k in obj if isinstance(k, str)]
    hints = {h for k in keys for h in difflib.get_close_matches(k, _FORMAT_KEYS, n=1, cutoff=0.6)}
    found = ", ".join(repr(k) for k in keys[:5]) or "no fields"
    hint = f"; did you mean {' / '.join(repr(h) for h in sorted(hints))}?" if hints else ""
    raise DataError(path, line, f"unknown record format (found {found}): expected 'messages', "
                    f"'prompt'+'completion', 'instruction'+'output' or 'text'{hint}")


def read_jsonl(path: str | Path, skip_invalid: bool = False) -> DataFile:
    """Read one JSONL file. Raise the first `DataError`, or collect them with skip_invalid."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, 0, "no such file; check the path")
    if path.is_dir():
        raise DataError(path, 0, "is a directory; pass a .jsonl file, or a directory "
                        "holding train.jsonl")
    records: list[Record] = []
    skipped: list[DataError] = []
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(path, line_no, f"not valid UTF-8 (byte 0x{raw[e.start]:02x} "
                                    f"at column {e.start + 1}); save the file as UTF-8") from None
                if line_no == 1:
                    text = text.removeprefix("\ufeff")  # tolerate a byte-order mark
                if not text.strip():
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as e:
                    raise DataError(path, line_no, f"invalid JSON ({e.msg} at column {e.colno}); "
                                    "each line must be one complete JSON object") from None
                records.append(parse_record(obj, path, line_no))
            except DataError as error:
                if not skip_invalid:
                    raise
                skipped.append(error)
    if not records and not skipped:
        raise DataError(path, 0, "empty file (no records); add one JSON object per line")
    if not records:
        raise DataError(path, 0, f"no valid records ({len(skipped)} invalid; first: "
                        f"{skipped[0]})")
    return DataFile(str(path), records, skipped)


def resolve_data_files(data: str | Path) -> dict[str, Path]:
    """Map split name -> file for a .jsonl file (train only) or a data directory."""
    data = Path(data)
    if data.is_dir():
        files = {s: data / f"{s}.jsonl" for s in SPLITS if (data / f"{s}.jsonl").exists()}
        if "train" not in files:
            raise DataError(data, 0, "data directory has no train.jsonl; name the training "
                            "file train.jsonl (and optionally valid.jsonl, test.jsonl)")
        return files
    if not data.exists():
        raise DataError(data, 0, "no such file or directory; check the path")
    return {"train": data}


def load_splits(data: str | Path, skip_invalid: bool = False) -> dict[str, DataFile]:
    """Read every split of a data file or directory."""
    return {split: read_jsonl(path, skip_invalid) for split, path in resolve_data_files(data).items()}
