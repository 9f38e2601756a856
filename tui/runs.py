"""Reading a run directory for the TUI: its events, its settings, its saved adapters.

A run directory is what `mlxsft train` writes (see `mlxsft.checkpoints`). This module
turns RUN/metrics.jsonl back into `mlxsft.events` objects so a replayed run and a live
one go through the same widgets, lists the adapters a run has saved (final, best,
checkpoints) for the compare pane. No widgets here; how an event reads is
`mlxsft.events.describe`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from mlxsft import events as ev
from mlxsft.checkpoints import ADAPTER_CONFIG, ADAPTER_WEIGHTS, read_metrics
from mlxsft.errors import UserError


def read_events(run_dir: str | Path, start: int = 0) -> tuple[list[ev.Event], int]:
    """Events of RUN/metrics.jsonl from line `start` on, and the next start."""
    records = read_metrics(run_dir)
    events = [e for e in map(ev.from_json, records[start:]) if e is not None]
    return events, len(records)


def check_run_dir(run_dir: str | Path) -> Path:
    """The run directory, or a UserError saying why it is not one."""
    path = Path(run_dir).expanduser()
    if not path.is_dir():
        raise UserError(f"run directory {path}: no such directory; pass the --out of a run "
                        "(e.g. runs/20250101-120000)")
    if not (path / "metrics.jsonl").exists():
        raise UserError(f"run directory {path}: no metrics.jsonl; it is not a run directory "
                        "written by mlxsft train")
    return path


def run_settings(run_dir: Path) -> dict:
    """The resolved options of a run (RUN/config.yaml), or {} when it is missing."""
    path = run_dir / "config.yaml"
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


@dataclass
class SavedAdapter:
    """One adapter a run saved: the final one, best/ or a checkpoint."""

    key: str  # "final", "best" or "checkpoints/step-000100": the path under RUN
    path: Path
    step: int
    val_loss: float | None

    @property
    def label(self) -> str:
        name = {"final": "final", "best": "best"}.get(self.key, "checkpoint")
        val = f", val {self.val_loss:.3f}" if self.val_loss is not None else ""
        return f"{name} (step {self.step}{val})"


def saved_adapters(run_dir: str | Path | None) -> list[SavedAdapter]:
    """The adapters saved in a run so far, in the order final, best, checkpoints."""
    if run_dir is None:
        return []
    run_dir = Path(run_dir)
    candidates = [("final", run_dir), ("best", run_dir / "best")]
    candidates += [(f"checkpoints/{d.name}", d)
                   for d in sorted((run_dir / "checkpoints").glob("step-*"))]
    out = []
    for key, path in candidates:
        if not (path / ADAPTER_WEIGHTS).exists() or not (path / ADAPTER_CONFIG).exists():
            continue
        try:
            config = json.loads((path / ADAPTER_CONFIG).read_text())
        except (OSError, json.JSONDecodeError):
            continue
        out.append(SavedAdapter(key, path, int(config.get("step") or 0), config.get("val_loss")))
    return out


def newest(adapters: list[SavedAdapter]) -> SavedAdapter | None:
    """The most advanced of these adapters (the final one wins a tie)."""
    return max(adapters, key=lambda a: (a.step, a.key == "final")) if adapters else None


def latest_adapter(run_dir: str | Path | None) -> SavedAdapter | None:
    """The most advanced adapter saved so far."""
    return newest(saved_adapters(run_dir))


def pick_adapter(run_dir: str | Path | None, choice: str) -> SavedAdapter | None:
    """The adapter for a compare-pane choice: "latest", "best", "final" or a checkpoint."""
    if choice == "latest":
        return latest_adapter(run_dir)
    return next((a for a in saved_adapters(run_dir) if a.key == choice), None)


