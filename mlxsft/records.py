"""What a demonstration is once read: a `Record` of chat messages (or plain text), and the
`DataError` that locates a bad one at file:line.

Kept apart from reading (`mlxsft.data`) and from the record shapes (`mlxsft.shapes`) so
both can use them without importing each other.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlxsft.errors import UserError

ROLES = ("system", "user", "assistant", "tool")


def escape_controls(text: str, keep: str = "\n\t") -> str:
    """Control and format characters as visible escapes (\x1b, \u202e), except those in
    `keep`: text from the data must not move the cursor or recolour the terminal (and an
    error message stays one line)."""
    return "".join(c if c in keep or unicodedata.category(c) not in ("Cc", "Cf")
                   else (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
                   for c in text)


class DataError(UserError):
    """A problem in a data file, located at file:line (line 0 means the whole file).
    For a parquet file or a JSON array the line is the row, counted from 1. The message
    may quote the data, so its control characters are escaped."""

    def __init__(self, path: str | Path, line: int, message: str):
        self.path = str(path)
        self.line = line
        self.reason = message
        where = f"{self.path}:{line}" if line else self.path
        super().__init__(escape_controls(f"{where}: {message}", keep=""))


@dataclass
class Record:
    """One validated demonstration, normalized to chat messages (or plain text).

    A message may carry ``"train": True/False`` (assistant turns only): it overrides the
    mask mode for that turn."""

    source: str
    line: int
    format: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    tools: list[Any] | None = None
    text: str | None = None  # only for the plain-text format
    # The object as read (for curation, which writes records back in their own shape).
    raw: Any = field(default=None, repr=False, compare=False)

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"
