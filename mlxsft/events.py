"""Plain event objects the trainer reports through, and their one line of text.

The trainer yields these (or hands them to a callback); the CLI prints them and the
TUI posts them as messages. They hold numbers and paths only, so they can be written
to `metrics.jsonl` as they are (`event.to_json()`) and read back (`from_json`), and
neither side needs the other. `describe` is the text both front ends show for an event
(the CLI's live progress bar for step reports is its own).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass
class Event:
    kind: ClassVar[str]  # the "event" field of its metrics.jsonl line

    def to_json(self) -> dict[str, Any]:
        out = {"event": self.kind}
        out.update(dataclasses.asdict(self))
        return out


@dataclass
class Setup(Event):
    """A setup stage is starting (loading the model, tokenizing, compiling the step), so
    a long silence before the first step report says what it is waiting for. Not
    written to metrics.jsonl: it precedes the run's first line."""

    kind: ClassVar[str] = "setup"
    stage: str  # "load", "tokenize" or "compile"
    message: str


@dataclass
class RunStarted(Event):
    """The run is set up: model loaded, data tokenized, compiled step about to run."""

    kind: ClassVar[str] = "start"
    run_dir: str
    total_steps: int
    trainable_parameters: int
    total_parameters: int
    train_records: int
    valid_records: int
    messages: list[str] = field(default_factory=list)
    world_size: int = 1  # processes training data-parallel (mlx.launch)
    global_batch_size: int = 0  # records per micro-batch over all of them


@dataclass
class StepReport(Event):
    """Training progress, averaged over the steps since the last report."""

    kind: ClassVar[str] = "train"
    step: int
    total_steps: int
    epoch: float
    train_loss: float
    learning_rate: float
    tokens: int  # all tokens processed so far (padding excluded), by every rank
    supervised_tokens: int  # tokens that carried loss so far
    tokens_per_second: float  # of the whole group in a data-parallel run
    supervised_tokens_per_second: float
    seconds: float  # wall time since the run started
    peak_memory_gb: float  # of this process (rank 0)
    world_size: int = 1


@dataclass
class EvalReport(Event):
    """Response-only mean NLL on the validation data."""

    kind: ClassVar[str] = "eval"
    step: int
    val_loss: float
    val_supervised_tokens: int
    seconds: float


@dataclass
class SampleAnswers(Event):
    """Greedy answers to held-out prompts at an evaluation: what the loss does not show.
    Each sample: prompt, answer, reference (or None), exact, ended (stopped at the
    end-of-turn token), tokens."""

    kind: ClassVar[str] = "samples"
    step: int
    samples: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class CheckpointSaved(Event):
    kind: ClassVar[str] = "checkpoint"
    step: int
    path: str
    best: bool = False


@dataclass
class RunWarning(Event):
    """Something the user should know that does not stop the run."""

    kind: ClassVar[str] = "warning"
    message: str
    step: int = 0


@dataclass
class Finished(Event):
    kind: ClassVar[str] = "finished"
    step: int
    adapter_dir: str
    final_train_loss: float | None
    final_val_loss: float | None
    best_val_loss: float | None
    seconds: float
    stopped_early: bool = False
    # Why the run ended before its last step: "" (it did not), "interrupted", or the
    # early-stopping message naming the best adapter.
    stop_reason: str = ""


@dataclass
class Failed(Event):
    kind: ClassVar[str] = "failed"
    step: int
    message: str
    last_good_checkpoint: str | None = None
    # The rank that saw it (data-parallel runs). Rank 0 reports what every rank saw;
    # another rank prints only its own failures.
    rank: int = 0


EVENT_TYPES: dict[str, type[Event]] = {cls.kind: cls for cls in (
    Setup, RunStarted, StepReport, EvalReport, SampleAnswers, CheckpointSaved, RunWarning,
    Finished, Failed)}


def from_json(record: dict) -> Event | None:
    """The event of one metrics.jsonl line (None for a kind we do not know)."""
    cls = EVENT_TYPES.get(record.get("event", ""))
    if cls is None:
        return None
    names = {f.name for f in dataclasses.fields(cls)}
    try:
        return cls(**{k: v for k, v in record.items() if k in names})
    except TypeError:  # a line from another version with a missing field
        return None


def describe(event: Event) -> list[tuple[str, str]]:
    """(severity, line) pairs: the text of an event for a log; step reports have none
    (each front end draws its own progress). Severity: note, info, good, warning, error."""
    if isinstance(event, Setup):
        return [("info", f"{event.message}...")]
    if isinstance(event, RunStarted):
        share = 100 * event.trainable_parameters / max(event.total_parameters, 1)
        notes = [("note", f"note: {m}") for m in event.messages]
        ranks = f" on {event.world_size} ranks" if event.world_size > 1 else ""
        return notes + [("info", f"started: {event.train_records} training and "
                                 f"{event.valid_records} validation records, "
                                 f"{event.total_steps} steps{ranks}, "
                                 f"{event.trainable_parameters:,} trainable parameters "
                                 f"({share:.2f}%) -> {event.run_dir}")]
    if isinstance(event, EvalReport):
        return [("info", f"step {event.step}: validation loss {event.val_loss:.4f}")]
    if isinstance(event, SampleAnswers):
        # (severity, mark) by exact match: None when the prompt had no reference answer
        marks = {True: ("good", "right"), False: ("warning", "wrong"), None: ("info", "answer")}
        return [(marks[s.get("exact")][0], f"step {event.step}: {marks[s.get('exact')][1]}: "
                 f"{_one_line(s['prompt'], 50)} -> {_one_line(s['answer'], 70)}")
                for s in event.samples]
    if isinstance(event, CheckpointSaved):
        label = "best adapter" if event.best else "adapter"
        return [("good", f"step {event.step}: saved {label} to {event.path}")]
    if isinstance(event, RunWarning):
        return [("warning", f"warning: {event.message}")]
    if isinstance(event, Finished):
        how = "stopped early" if event.stopped_early else "finished"
        loss = (f", train loss {event.final_train_loss:.4f}"
                if event.final_train_loss is not None else "")
        best = (f", best validation loss {event.best_val_loss:.4f}"
                if event.best_val_loss is not None else "")
        lines = [("good", f"{how} at step {event.step} in {event.seconds:.1f}s{loss}{best}")]
        if event.stop_reason and event.stop_reason != "interrupted":
            lines.append(("info", event.stop_reason))
        return lines
    if isinstance(event, Failed):
        return [("error", f"failed at step {event.step}: {event.message}")]
    return []


def _one_line(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"
