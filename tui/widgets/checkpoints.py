"""The Checkpoints section: saved adapters, their scores, the one to chat with, and samples.

One row per adapter the run saved (`mlxsft.rundir.saved_adapters`: final, best/, each
checkpoint) with its step and validation loss. `c` (or the button) runs `mlxsft compare`
on the run — the base and every saved adapter answer the same held-out prompts — and
fills in each row's scores: response-only loss of the reference answers, exact match,
answers that ended at the end-of-turn token, mean length, and JSON answers that parse.
Enter (or a click) on a row posts `AdapterChosen`; the app hands it to the compare
pane, whose Tuned column then answers with that adapter. Below the table, the held-out
answers the trainer generated at each evaluation (`SampleAnswers`), live or replayed.

The comparison loads one model after another, so it runs on a worker thread of its own
(`mlx_thread.run_on_own_thread`: MLX streams are thread-local, and the thread frees its
MLX state before it ends) and reports through messages only. Quitting stops it between
two models.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Button, DataTable, RichLog, Static
from textual.worker import get_current_worker

from mlxsft import events as ev
from mlxsft.errors import UserError
from mlxsft.mlx_thread import run_on_own_thread
from mlxsft.tui.runs import SavedAdapter
from mlxsft.tui.widgets.training_view import SEVERITY_STYLE

BASE = "base"
COLUMNS = ("adapter", "step", "val loss", "ref loss", "exact", "ended", "tokens", "parses")


@dataclass
class AdapterChosen(Message):
    """The user chose a saved adapter (its `SavedAdapter.key`) for the chat pane."""

    key: str


@dataclass
class CompareProgress(Message):
    text: str


@dataclass
class CompareDone(Message):
    """Scores per adapter key (and "base"), or the error that stopped the comparison."""

    run_dir: Path
    scores: dict[str, dict]
    error: str | None = None


class CompareCancelled(Exception):
    """Raised from the progress hook when the app quits mid-comparison."""


def scores_by_key(run_dir: Path, adapters: list[SavedAdapter], table) -> dict[str, dict]:
    """Each adapter's column of `table` (a `SampleTable`), keyed by adapter key.

    `mlxsft.compare` names its columns and answers once with adapters that share
    their files (the final adapter is links into its checkpoint); an adapter without a
    column of its own takes the column of the one saved at the same step."""
    from mlxsft.compare import run_candidates

    named = {c.adapter: c.name for c in run_candidates(run_dir, []) if c.adapter is not None}
    column_of_step = {a.step: named[a.path] for a in adapters if a.path in named}
    out = {BASE: table.summary(BASE)} if BASE in table.columns else {}
    for a in adapters:
        column = named.get(a.path) or column_of_step.get(a.step)
        if column in table.columns:
            out[a.key] = table.summary(column)
    return out


def run_compare(post: Callable, compare_fn: Callable | None, run_dir: Path,
                adapters: list[SavedAdapter], cancelled: Callable[[], bool],
                limit: int, max_tokens: int) -> None:
    """Compare the run's adapters and post `CompareDone` (a worker thread's job)."""
    def progress(text: str) -> None:
        if cancelled():
            raise CompareCancelled
        post(CompareProgress(text))

    if compare_fn is None:
        # heavy (mlx, mlx_lm), and importing MLX before the app has set up BLAS is too late
        # for its thread settings: import when a comparison runs.
        from mlxsft.compare import compare as compare_fn
    try:
        table = compare_fn(run_dir, limit=limit, max_tokens=max_tokens, progress=progress)
        post(CompareDone(run_dir, scores_by_key(run_dir, adapters, table)))
    except CompareCancelled:
        pass
    except UserError as e:
        post(CompareDone(run_dir, {}, str(e)))
    except Exception as e:  # a bug: show it rather than crash the app
        post(CompareDone(run_dir, {}, f"{type(e).__name__}: {e}"))


def _number(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _share(value) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


class CheckpointsView(Vertical):
    """The saved adapters table, the compare button and its status line."""

    BINDINGS = [Binding("c", "compare", "Compare checkpoints")]

    def __init__(self, *, id: str | None = None, compare_fn: Callable | None = None,
                 limit: int = 8, max_tokens: int = 64):
        super().__init__(id=id)
        self.compare_fn = compare_fn  # None: mlxsft.compare.compare
        self.limit, self.max_tokens = limit, max_tokens
        self.run_dir: Path | None = None
        self.adapters: list[SavedAdapter] = []
        self.scores: dict[str, dict] = {}  # what the table shows; tests read it
        self.comparing = False
        self.samples: list[tuple[str, str]] = []  # (severity, line) as shown; tests read it

    def compose(self) -> ComposeResult:
        with Horizontal(id="checkpoints-buttons"):
            yield Button("Compare (c)", id="compare-run", compact=True,
                         tooltip="answer held-out prompts with the base and every adapter")
            yield Static("", id="checkpoints-status")
        yield DataTable(id="checkpoints-table", cursor_type="row", zebra_stripes=True)
        yield RichLog(id="samples-log", wrap=True, markup=False, highlight=False)

    def on_mount(self) -> None:
        self.border_title = "Checkpoints"
        self.border_subtitle = "enter: chat with the adapter"
        table = self.query_one(DataTable)
        for column in COLUMNS:
            table.add_column(column, key=column)
        self.set_status("no run yet: start one (ctrl+s) or open a run directory (ctrl+o)")
        self.query_one("#samples-log").border_title = "Samples at each evaluation"

    def set_status(self, text: str, style: str = "dim italic") -> None:
        self.query_one("#checkpoints-status", Static).update(Text(text, style=style))

    def set_run(self, run_dir: Path | None, adapters: list[SavedAdapter]) -> None:
        """Show the adapters of `run_dir`; scores stay while they are of the same run."""
        if run_dir != self.run_dir:
            self.scores, self.samples = {}, []
            self.run_dir = run_dir
            self.query_one("#samples-log", RichLog).clear()
        self.adapters = adapters
        if not self.comparing:
            self.set_status(f"{len(adapters)} saved adapters; c compares them" if adapters else
                            "no adapter saved yet" if run_dir else
                            "no run yet: start one (ctrl+s) or open a run directory (ctrl+o)")
        self._fill()

    def _fill(self) -> None:
        table = self.query_one(DataTable)
        cursor = table.cursor_row
        table.clear()
        rows = [(BASE, None)] if BASE in self.scores else []
        rows += [(a.key, a) for a in self.adapters]
        for key, adapter in rows:
            s = self.scores.get(key, {})
            name = key if "/" not in key else f"checkpoint {key.rsplit('/', 1)[-1]}"
            table.add_row(
                name,
                "" if adapter is None else str(adapter.step),
                _number(adapter.val_loss if adapter else None, ".4f"),
                _number(s.get("loss"), ".4f"), _share(s.get("exact")),
                _share(s.get("ended")), _number(s.get("mean_tokens"), ".1f"),
                _share(s.get("parses")), key=key)
        if rows:
            table.move_cursor(row=min(cursor, len(rows) - 1))

    def apply(self, *events: ev.Event) -> None:
        """Show the held-out answers among trainer events (others are ignored)."""
        log = self.query_one("#samples-log", RichLog)
        for event in events:
            if isinstance(event, ev.SampleAnswers):
                for severity, line in ev.describe(event):
                    self.samples.append((severity, line))
                    log.write(Text(line, style=SEVERITY_STYLE.get(severity, "")))

    @property
    def row_keys(self) -> list[str]:
        """The table's rows, top to bottom, by adapter key ("base" for the base)."""
        table = self.query_one(DataTable)
        return [row.key.value for row in table.ordered_rows]

    # -- comparing ------------------------------------------------------------------
    @on(Button.Pressed, "#compare-run")
    def _compare_pressed(self) -> None:
        self.action_compare()

    def action_compare(self) -> None:
        if self.comparing:
            return
        if not self.adapters or self.run_dir is None:
            self.set_status("nothing to compare: the run has no saved adapter yet",
                            "bold red")
            return
        self.comparing = True
        self.query_one("#compare-run", Button).disabled = True
        self.set_status(f"comparing {len(self.adapters)} adapters and the base...")
        self.compare_worker(self.run_dir, list(self.adapters))

    @work(thread=True, exclusive=True, group="compare", exit_on_error=False)
    def compare_worker(self, run_dir: Path, adapters: list[SavedAdapter]) -> None:
        worker = get_current_worker()
        run_on_own_thread(run_compare, self.post_message, self.compare_fn, run_dir, adapters,
                          lambda: worker.is_cancelled, self.limit, self.max_tokens,
                          name="mlxsft compare")

    def on_compare_progress(self, message: CompareProgress) -> None:
        self.set_status(message.text + "...")

    def on_compare_done(self, message: CompareDone) -> None:
        self.comparing = False
        self.query_one("#compare-run", Button).disabled = False
        if message.error:
            self.set_status(f"error: {message.error}", "bold red")
            return
        if message.run_dir != self.run_dir:
            return  # another run was opened meanwhile
        self.scores = message.scores
        self.set_status("scores on held-out prompts (greedy); enter on a row chats with "
                        "that adapter")
        self._fill()

    # -- choosing -------------------------------------------------------------------
    @on(DataTable.RowSelected, "#checkpoints-table")
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        key = event.row_key.value
        if key == BASE:
            self.set_status("the base answers in the chat pane's Base column already")
            return
        self.post_message(AdapterChosen(key))
