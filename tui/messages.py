"""The messages worker threads post to the app: small dataclasses, nothing else.

Threads never touch widgets. The training worker posts one `TrainEvent` per trainer
event except step reports, which go out as `StepProgress` carrying every report of the
run so far: consecutive ones coalesce (`can_replace`) when the UI falls behind, and no
point of the loss curve is lost. The chat worker posts `ChatUpdate`s with the text so
far of both answers, which coalesce the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.text import Text
from textual.message import Message

from mlxsft import events as ev


@dataclass
class TrainEvent(Message):
    """One trainer event other than a step report (start, eval, checkpoint, ...)."""

    event: ev.Event


@dataclass
class StepProgress(Message):
    """All step reports of the current run so far; a newer one supersedes an older."""

    reports: tuple[ev.StepReport, ...]

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, StepProgress)


@dataclass
class TrainDone(Message):
    """The training worker has returned; `error` is set when it raised instead."""

    error: str | None = None


@dataclass
class Answers:
    """The Base and Tuned answers to one prompt so far: per side ("base", "tuned") the text
    and a note saying what the column is doing ("generating...", an error). The chat engine
    fills one, each `ChatUpdate` carries a copy, and the compare pane keeps one per prompt."""

    base_text: str = ""
    tuned_text: str = ""
    base_note: str = ""
    tuned_note: str = ""

    def text(self, side: str) -> str:
        return getattr(self, f"{side}_text")

    def note(self, side: str) -> str:
        return getattr(self, f"{side}_note")

    def set(self, side: str, *, text: str | None = None, note: str | None = None) -> None:
        if text is not None:
            setattr(self, f"{side}_text", text)
        if note is not None:
            setattr(self, f"{side}_note", note)

    def answers(self) -> Answers:
        """A copy of just the answers (without what a subclass adds)."""
        return Answers(self.base_text, self.tuned_text, self.base_note, self.tuned_note)


@dataclass
class ChatUpdate(Answers, Message):
    """The answers to one prompt so far."""

    request_id: int = 0
    done: bool = False

    def can_replace(self, message: Message) -> bool:
        return (isinstance(message, ChatUpdate) and message.request_id == self.request_id
                and not self.done)


@dataclass
class DataChecked(Message):
    """The lint summaries and rendered records of a data file."""

    key: tuple
    summaries: list[str]
    records: list[Text]
    warnings: list[str] = field(default_factory=list)


@dataclass
class DataFailed(Message):
    key: tuple
    message: str
