"""The main screen: every section of the app, and which of them show at this size.

At 100x30 and up the Train view shows the run panel, the event log, the Loss chart and
the Base/Tuned compare pane at once (Data and Checkpoints are the other tabs). Below
that each section gets its own tab: Setup, Train, Chat, Data, Log, Checkpoints. The
sections are composed once and only shown or hidden, so nothing is lost when the
terminal is resized.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Header, Tab, Tabs

from mlxsft.tui.widgets.checkpoints import CheckpointsView
from mlxsft.tui.widgets.compare import ComparePane
from mlxsft.tui.widgets.data_view import DataView
from mlxsft.tui.widgets.run_panel import RunPanel
from mlxsft.tui.widgets.training_view import EventLog, TrainingView

NARROW_WIDTH, NARROW_HEIGHT = 100, 30
SECTIONS = ("run-panel", "event-log", "training", "compare", "data-view", "checkpoints-view")
# Sections composed outside the workspace (each fills the screen on its own tab).
FULL_SECTIONS = {"data-view", "checkpoints-view"}
WIDE_VIEWS = {"train": {"run-panel", "event-log", "training", "compare"}, "data": {"data-view"},
              "checkpoints": {"checkpoints-view"}}
NARROW_VIEWS = {"setup": {"run-panel"}, "train": {"training"}, "chat": {"compare"},
                "data": {"data-view"}, "log": {"event-log"},
                "checkpoints": {"checkpoints-view"}}


class MainScreen(Screen):
    """All sections; `show_view` picks the ones that fit."""

    def __init__(self, **checkpoints_options):
        super().__init__()
        self.narrow: bool | None = None
        self.checkpoints_options = checkpoints_options  # tests inject a fake compare

    def compose(self) -> ComposeResult:
        yield Header()
        yield Tabs(Tab("Setup", id="setup"), Tab("Train", id="train"), Tab("Chat", id="chat"),
                   Tab("Data", id="data"), Tab("Log", id="log"),
                   Tab("Checkpoints", id="checkpoints"), active="train", id="view-tabs")
        with Horizontal(id="workspace"):
            with Vertical(id="left"):
                yield RunPanel(id="run-panel")
                yield EventLog(id="event-log")
            with Vertical(id="right"):
                yield TrainingView(id="training")
                yield ComparePane(id="compare")
        yield DataView(id="data-view")
        yield CheckpointsView(id="checkpoints-view", **self.checkpoints_options)
        yield Footer()

    def on_mount(self) -> None:
        self.app.screen_ready()

    def on_resize(self) -> None:
        if self.query("#view-tabs"):  # the first resize comes before compose
            self.app.show_view()

    def show_view(self, view: str) -> str:
        """Show `view` as well as the size allows; returns the tab that is active."""
        width, height = self.app.size
        narrow = width < NARROW_WIDTH or height < NARROW_HEIGHT
        tabs = self.query_one("#view-tabs", Tabs)
        if not narrow and view not in WIDE_VIEWS:
            view = "train"  # Setup, Chat and Log are all part of the wide Train view
        if tabs.active != view:
            tabs.active = view
        if narrow != self.narrow:
            self.narrow = narrow
            self.set_class(narrow, "-narrow")
            for tab in ("setup", "chat", "log"):
                (tabs.show if narrow else tabs.hide)(tab)
        shown = (NARROW_VIEWS if narrow else WIDE_VIEWS)[view]
        for section in SECTIONS:
            self.query_one(f"#{section}").display = section in shown
        self.query_one("#left").display = bool(shown & {"run-panel", "event-log"})
        self.query_one("#right").display = bool(shown & {"training", "compare"})
        self.query_one("#workspace").display = not shown <= FULL_SECTIONS
        return view
