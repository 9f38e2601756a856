"""What a demonstration is once read: a `Record` of chat messages (or plain text), and the
`DataError` that locates a bad one at file:line.

Kept apart from reading (`mlxsft.data`) and from the record shapes (`mlxsft.shapes`) so
both can use them without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlxsft.errors import UserError

ROLES = ("system", "user", "assistant", "tool")


class DataError(UserError):
    """A problem in a data file, located at file:line (line 0 means the whole file).
    For a parquet file or a JSON array the line is the row, counted from 1."""

    def __init__(self, path: str | Path, line: int, message: str):
        self.path = str(path)
        self.line = line
        self.reason = message
        where = f"{self.path}:{line}" if line else self.path
        super().__init__(f"{where}: {message}")


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
