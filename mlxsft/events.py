"""Plain event objects the trainer reports through.

The trainer yields these (or hands them to a callback); the CLI prints them and the
TUI posts them as messages. They hold numbers and paths only, so they can be written
to `metrics.jsonl` as they are (`event.to_json()`), and neither side needs the other.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Event:
    def to_json(self) -> dict[str, Any]:
        out = {"event": self.kind}
        out.update(dataclasses.asdict(self))
        return out

    @property
    def kind(self) -> str:
        return _KIND[type(self)]


@dataclass
class Setup(Event):
    """A setup stage is starting (loading the model, tokenizing, compiling the step), so
    a long silence before the first step report says what it is waiting for. Not
    written to metrics.jsonl: it precedes the run's first line."""

    stage: str  # "load", "tokenize" or "compile"
    message: str


@dataclass
class RunStarted(Event):
    """The run is set up: model loaded, data tokenized, compiled step about to run."""

    run_dir: str
    total_steps: int
    trainable_parameters: int
    total_parameters: int
    train_records: int
    valid_records: int
    messages: list[str] = field(default_factory=list)


@dataclass
class StepReport(Event):
    """Training progress, averaged over the steps since the last report."""

    step: int
    total_steps: int
    epoch: float
    train_loss: float
    learning_rate: float
    tokens: int  # all tokens processed so far (padding excluded)
    supervised_tokens: int  # tokens that carried loss so far
    tokens_per_second: float
    supervised_tokens_per_second: float
    seconds: float  # wall time since the run started
    peak_memory_gb: float


@dataclass
class EvalReport(Event):
    """Response-only mean NLL on the validation data."""

    step: int
    val_loss: float
    val_supervised_tokens: int
    seconds: float


@dataclass
class SampleAnswers(Event):
    """Greedy answers to held-out prompts at an evaluation: what the loss does not show.
    Each sample: prompt, answer, reference (or None), exact, ended (stopped at the
    end-of-turn token), tokens."""

    step: int
    samples: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class CheckpointSaved(Event):
    step: int
    path: str
    best: bool = False


@dataclass
class Warning(Event):  # noqa: A001 - the field's word; never shadows builtins at use sites
    message: str
    step: int = 0


@dataclass
class Finished(Event):
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
    step: int
    message: str
    last_good_checkpoint: str | None = None


_KIND = {
    Setup: "setup",
    RunStarted: "start",
    StepReport: "train",
    EvalReport: "eval",
    SampleAnswers: "samples",
    CheckpointSaved: "checkpoint",
    Warning: "warning",
    Finished: "finished",
    Failed: "failed",
}
