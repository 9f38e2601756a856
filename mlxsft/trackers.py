"""Experiment trackers fed from the trainer's event stream: `--report-to tensorboard,wandb`.

The same events that go to RUN/metrics.jsonl go to each tracker: training loss, learning
rate, tokens/s, peak memory, validation loss, and the sample answers of the behaviour
panel (as text). TensorBoard event files are written to RUN/tensorboard with
`tensorboardX` (no TensorFlow); W&B runs through `wandb` and respects its environment
(`WANDB_MODE=offline` writes the run under RUN/wandb without a network). Both are
optional extras: `pip install 'mlxsft[tensorboard]'` / `'mlxsft[wandb]'`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from mlxsft import events as ev
from mlxsft.errors import UserError

_PACKAGES = {"tensorboard": "tensorboardX", "wandb": "wandb"}


def check_trackers(names: list[str] | None) -> None:
    """Fail before any work when a tracker's package is not installed."""
    for name in names or []:
        if name not in _PACKAGES:
            raise UserError(f"--report-to {name}: not a tracker; choose from "
                            f"{', '.join(_PACKAGES)}")
        if importlib.util.find_spec(_PACKAGES[name]) is None:
            raise UserError(f"--report-to {name}: the {_PACKAGES[name]} package is not "
                            f"installed; pip install 'mlxsft[{name}]'")


def _scalars(event) -> dict[str, float]:
    if isinstance(event, ev.StepReport):
        return {"train/loss": event.train_loss, "train/learning_rate": event.learning_rate,
                "train/tokens_per_second": event.tokens_per_second,
                "train/supervised_tokens_per_second": event.supervised_tokens_per_second,
                "train/peak_memory_gb": event.peak_memory_gb}
    if isinstance(event, ev.EvalReport):
        return {"eval/loss": event.val_loss}
    if isinstance(event, ev.SampleAnswers):
        exact = [s["exact"] for s in event.samples if s.get("exact") is not None]
        out = {"samples/ended": sum(s["ended"] for s in event.samples) / max(len(event.samples), 1)}
        if exact:
            out["samples/exact"] = sum(exact) / len(exact)
        return out
    return {}


def _samples_markdown(event: ev.SampleAnswers) -> str:
    rows = ["| prompt | answer | reference | exact | ended |", "|---|---|---|---|---|"]
    for s in event.samples:
        cells = [s["prompt"], s["answer"], s.get("reference") or "", s.get("exact"), s["ended"]]
        rows.append("| " + " | ".join(" ".join(str(c).split()).replace("|", "\\|")
                                      for c in cells) + " |")
    return "\n".join(rows)


class TensorBoardTracker:
    def __init__(self, run_dir: Path, config: dict):
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(logdir=str(run_dir / "tensorboard"))
        self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in config.items()), 0)

    def __call__(self, event) -> None:
        step = getattr(event, "step", 0)
        for tag, value in _scalars(event).items():
            self.writer.add_scalar(tag, value, step)
        if isinstance(event, ev.SampleAnswers):
            self.writer.add_text("samples", _samples_markdown(event), step)

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    def __init__(self, run_dir: Path, config: dict):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project="mlxsft", name=run_dir.name, dir=str(run_dir),
                              config=config, reinit="finish_previous")

    def __call__(self, event) -> None:
        step = getattr(event, "step", 0)
        values: dict = dict(_scalars(event))
        if isinstance(event, ev.SampleAnswers):
            values["samples/table"] = self.wandb.Table(
                columns=["prompt", "answer", "reference", "exact", "ended"],
                data=[[s["prompt"], s["answer"], s.get("reference"), s.get("exact"), s["ended"]]
                      for s in event.samples])
        if isinstance(event, ev.Finished) and event.best_val_loss is not None:
            self.run.summary["best_val_loss"] = event.best_val_loss
        if values:
            self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


def open_trackers(names: list[str] | None, run_dir: Path, config: dict) -> list:
    """One tracker per name; each is called with every event and closed at the end."""
    trackers = []
    for name in names or []:
        trackers.append((TensorBoardTracker if name == "tensorboard" else WandbTracker)(
            Path(run_dir), config))
    return trackers
