"""The live training view (Loss chart, progress with ETA, throughput) and the event log.

Both take `mlxsft.events` objects, so a live run and a run replayed from its
metrics.jsonl look the same. The ETA comes from the trainer's own clock (seconds per
step so far), not from the progress bar's, which also keeps snapshots deterministic.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Label, ProgressBar, RichLog, Static

from mlxsft import events as ev
from mlxsft.tui.widgets.loss_chart import LossChart


def _clock(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class TrainingView(Vertical):
    """Loss chart, progress bar with ETA, and the latest rates of the run."""

    def __init__(self, *, id: str | None = None):
        super().__init__(id=id)
        self.reports: tuple[ev.StepReport, ...] = ()
        self.val_points: list[tuple[int, float]] = []
        self.total_steps: int | None = None
        self.finished: ev.Finished | ev.Failed | None = None

    def compose(self) -> ComposeResult:
        yield LossChart(id="loss-chart")
        with Horizontal(id="progress-row"):
            yield ProgressBar(id="progress", show_eta=False)
            yield Label("", id="eta")
        yield Static("no run yet", id="stats")

    @property
    def chart(self) -> LossChart:
        return self.query_one(LossChart)

    def on_mount(self) -> None:
        self.query_one(ProgressBar).update(total=1, progress=0)

    def reset(self, title: str = "", starting: bool = False) -> None:
        self.reports, self.val_points, self.total_steps, self.finished = (), [], None, None
        self.border_subtitle = title
        # An indeterminate (animated) bar while a run sets up; an empty one otherwise.
        self.query_one(ProgressBar).update(total=None if starting else 1, progress=0)
        self._redraw()

    def resume_at(self, step: int) -> None:
        """Keep the curve up to `step` (where a resumed run continues) and go on."""
        self.reports = tuple(r for r in self.reports if r.step <= step)
        self.val_points = [(s, v) for s, v in self.val_points if s <= step]
        self.finished = None
        self._redraw()

    def apply(self, *events: ev.Event) -> None:
        """Show trainer events (a live run's step reports come through `set_reports`)."""
        for event in events:
            self._take(event)
        self._redraw()

    def _take(self, event: ev.Event) -> None:
        if isinstance(event, ev.RunStarted):
            self.total_steps = event.total_steps
            self.border_subtitle = event.run_dir
        elif isinstance(event, ev.EvalReport):
            self.val_points.append((event.step, event.val_loss))
        elif isinstance(event, (ev.Finished, ev.Failed)):
            self.finished = event
        elif isinstance(event, ev.StepReport):
            self.reports = self.reports + (event,)

    def set_reports(self, reports: tuple[ev.StepReport, ...]) -> None:
        self.reports = reports
        self._redraw()

    def _redraw(self) -> None:
        last = self.reports[-1] if self.reports else None
        total = self.total_steps or (last.total_steps if last else None)
        self.chart.set_series([(r.step, r.train_loss) for r in self.reports], self.val_points,
                              total)
        bar = self.query_one(ProgressBar)
        step = self.finished.step if self.finished else (last.step if last else 0)
        if total:
            bar.update(total=total, progress=step)
        self.query_one("#eta", Label).update(self._eta(last, total))
        self.query_one("#stats", Static).update(self._stats(last, total, step))

    def _eta(self, last: ev.StepReport | None, total: int | None) -> str:
        if isinstance(self.finished, ev.Finished):
            return "stopped" if self.finished.stopped_early else "done"
        if isinstance(self.finished, ev.Failed):
            return "failed"
        if last is None or not total:
            return "ETA --:--"
        per_step = last.seconds / max(last.step, 1)
        return f"ETA {_clock(per_step * (total - last.step))}"

    def _stats(self, last: ev.StepReport | None, total: int | None, step: int) -> Text:
        """The run's figures; `step` is the bar's (a stopped run ends after its last
        report, and the two must not disagree), the rates are the last report's."""
        if last is None:
            return Text("waiting for the first step report..." if total else "no run yet",
                        style="dim")
        val = self.val_points[-1][1] if self.val_points else None
        parts = [("step ", f"{max(step, last.step)}/{total or last.total_steps}"),
                 ("epoch ", f"{last.epoch:.2f}"),
                 ("loss ", f"{last.train_loss:.4f}"),
                 ("val ", f"{val:.4f}" if val is not None else "-"),
                 ("lr ", f"{last.learning_rate:.2e}"),
                 ("tok/s ", f"{last.tokens_per_second:,.0f}"),
                 ("sup tok/s ", f"{last.supervised_tokens_per_second:,.0f}"),
                 ("peak mem ", f"{last.peak_memory_gb:.2f} GB")]
        text = Text()
        for i, (label, value) in enumerate(parts):
            if i:
                text.append("  ")
            text.append(label, style="dim")
            text.append(value, style="bold")
        return text


SEVERITY_STYLE = {"info": "", "note": "dim", "good": "green", "warning": "yellow",
                  "error": "bold red"}


class EventLog(RichLog):
    """Checkpoints, evaluations, warnings and errors, one line each."""

    def __init__(self, *, id: str | None = None):
        super().__init__(id=id, wrap=True, markup=False, highlight=False, min_width=20)
        self.entries: list[tuple[str, str]] = []  # (severity, text): what tests read

    def on_mount(self) -> None:
        self.border_title = "Events"

    def add(self, severity: str, text: str) -> None:
        self.entries.append((severity, text))
        self.write(Text(text, style=SEVERITY_STYLE.get(severity, "")))
