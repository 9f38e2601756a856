"""Reading a run directory for the TUI: its events (how one reads is `mlxsft.events.describe`).

A run directory is what `mlxsft train` writes; `mlxsft.rundir` owns its layout (files,
saved adapters, settings) and is re-exported here for the widgets. This module turns
RUN's metrics back into `mlxsft.events` objects, so a replayed run and a live one go
through the same widgets. No widgets here.
"""

from __future__ import annotations

from pathlib import Path

from mlxsft import events as ev
from mlxsft.rundir import (SavedAdapter, check_run_dir, latest_adapter, newest,  # noqa: F401
                           pick_adapter, read_metrics, run_settings, saved_adapters)

__all__ = ["SavedAdapter", "check_run_dir", "latest_adapter", "newest", "pick_adapter",
           "run_settings", "saved_adapters", "read_events"]


def read_events(run_dir: str | Path, start: int = 0) -> tuple[list[ev.Event], int]:
    """Events of RUN/metrics.jsonl from line `start` on, and the next start."""
    records = read_metrics(run_dir)
    events = [e for e in map(ev.from_json, records[start:]) if e is not None]
    return events, len(records)
