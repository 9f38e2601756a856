"""Reading a run directory for the TUI: its events, and how an event reads in the log.

A run directory is what `mlxsft train` writes; `mlxsft.rundir` owns its layout (files,
saved adapters, settings) and is re-exported here for the widgets. This module turns
RUN's metrics back into `mlxsft.events` objects, so a replayed run and a live one go
through the same widgets. No widgets here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from mlxsft import events as ev
from mlxsft.rundir import (SavedAdapter, check_run_dir, latest_adapter, newest,  # noqa: F401
                           pick_adapter, read_metrics, run_settings, saved_adapters)

__all__ = ["SavedAdapter", "check_run_dir", "latest_adapter", "newest", "pick_adapter",
           "run_settings", "saved_adapters", "EVENT_TYPES", "END_EVENTS", "event_from_json",
           "read_events", "describe", "sample_line"]

EVENT_TYPES: dict[str, type[ev.Event]] = {
    "setup": ev.Setup, "start": ev.RunStarted, "train": ev.StepReport, "eval": ev.EvalReport,
    "samples": ev.SampleAnswers, "checkpoint": ev.CheckpointSaved, "warning": ev.Warning,
    "finished": ev.Finished,
    "failed": ev.Failed,
}
END_EVENTS = (ev.Finished, ev.Failed)


def event_from_json(record: dict) -> ev.Event | None:
    """The event object of one metrics.jsonl line (None for a kind we do not know)."""
    cls = EVENT_TYPES.get(record.get("event", ""))
    if cls is None:
        return None
    names = {f.name for f in dataclasses.fields(cls)}
    try:
        return cls(**{k: v for k, v in record.items() if k in names})
    except TypeError:  # a line from another version with a missing field
        return None


def read_events(run_dir: str | Path, start: int = 0) -> tuple[list[ev.Event], int]:
    """Events of RUN/metrics.jsonl from line `start` on, and the next start."""
    records = read_metrics(run_dir)
    events = [e for e in map(event_from_json, records[start:]) if e is not None]
    return events, len(records)


# exact: True against the reference, False, or None (no reference to check against)
SAMPLE_MARKS = {True: ("good", "✓ right"), False: ("warning", "✗ wrong"),
                None: ("info", "· answer")}


def _one_line(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def sample_line(step: int, sample: dict) -> tuple[str, str]:
    """(severity, line) of one held-out answer: right/wrong against its reference
    (no mark without one), and a note when it ran out of tokens before ending."""
    severity, mark = SAMPLE_MARKS[sample.get("exact")]
    cut = "" if sample.get("ended", True) else " (cut at the length limit)"
    return severity, (f"step {step} {mark}: {_one_line(sample.get('prompt', ''), 40)} -> "
                      f"{_one_line(sample.get('answer', ''), 60)}{cut}")


def describe(event: ev.Event) -> list[tuple[str, str]]:
    """(severity, line) pairs for the event log; step reports are not logged."""
    if isinstance(event, ev.Setup):
        return [("info", f"{event.message}...")]
    if isinstance(event, ev.RunStarted):
        share = 100 * event.trainable_parameters / max(event.total_parameters, 1)
        notes = [("note", f"note: {m}") for m in event.messages]
        return notes + [("info", f"started: {event.train_records} training and "
                                 f"{event.valid_records} validation records, "
                                 f"{event.total_steps} steps, {event.trainable_parameters:,} "
                                 f"trainable parameters ({share:.2f}%) -> {event.run_dir}")]
    if isinstance(event, ev.EvalReport):
        return [("info", f"step {event.step}: validation loss {event.val_loss:.4f}")]
    if isinstance(event, ev.SampleAnswers):
        return [sample_line(event.step, sample) for sample in event.samples]
    if isinstance(event, ev.CheckpointSaved):
        label = "best adapter" if event.best else "adapter"
        return [("good", f"step {event.step}: saved {label} to {event.path}")]
    if isinstance(event, ev.Warning):
        return [("warning", f"warning: {event.message}")]
    if isinstance(event, ev.Finished):
        how = "stopped early" if event.stopped_early else "finished"
        loss = (f", train loss {event.final_train_loss:.4f}"
                if event.final_train_loss is not None else "")
        best = (f", best validation loss {event.best_val_loss:.4f}"
                if event.best_val_loss is not None else "")
        return [("good", f"{how} at step {event.step} in {event.seconds:.1f}s{loss}{best}")]
    if isinstance(event, ev.Failed):
        return [("error", f"failed at step {event.step}: {event.message}")]
    return []
