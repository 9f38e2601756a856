"""The mlxsft Textual app: run panel, live Loss chart, Base/Tuned chat, data view.

Three kinds of worker thread, each owning what it touches:

- the training worker (group "train") iterates `mlxsft.train.train()`, so the model
  being trained lives and dies on it;
- the chat worker (group "chat") runs `ChatEngine.serve` for the app's whole life and
  owns the base and tuned copies the compare pane answers with (MLX streams are
  thread-local, and nobody chats with the model being trained);
- the data worker (group "data") loads a tokenizer and lints the data file.

Each runs its job on a thread of its own that frees the MLX state it made before it
ends (`mlxsft.mlx_thread`: left to interpreter exit, that state can abort the process).
They report through `post_message` only (see `workers.py`); every widget change
happens here on the UI thread. A prompt sent while a run trains is queued until the run
stops; ctrl+n answers it at once on the chat thread's own copies (and slows training
meanwhile). ctrl+r resumes a stopped run from its last saved adapter and optimizer.
The Checkpoints section (f6) compares the saved adapters on its own worker thread
(group "compare") and hands the chosen one to the chat pane.
"""

from __future__ import annotations

import itertools
import threading
from pathlib import Path
from typing import Callable

from textual import on, work
from textual.app import App
from textual.binding import Binding
from textual.reactive import reactive
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Input, Tabs
from textual.worker import get_current_worker

# heavy: mlxsft.train (mlx, mlx_lm) is imported inside the methods that start a run, so the
# app opens without waiting for it.
from mlxsft import blas
from mlxsft import events as ev
from mlxsft.config import build_config
from mlxsft.errors import UserError
from mlxsft.mlx_thread import run_on_own_thread
from mlxsft.models import DEFAULT_MODEL
from mlxsft.rundir import find_runs
from mlxsft.tui.chat_engine import ChatEngine, ChatRequest
from mlxsft.tui.messages import ChatUpdate, DataChecked, DataFailed, StepProgress, TrainDone
from mlxsft.tui.messages import TrainEvent
from mlxsft.tui.runs import check_run_dir, pick_adapter, read_events, run_settings
from mlxsft.tui.runs import saved_adapters
from mlxsft.tui.screen import MainScreen
from mlxsft.tui.widgets.checkpoints import AdapterChosen, CheckpointsView
from mlxsft.tui.widgets.compare import ComparePane
from mlxsft.tui.widgets.data_view import DataView
from mlxsft.tui.widgets.run_panel import FIELDS, RunPanel
from mlxsft.tui.widgets.training_view import EventLog, TrainingView
from mlxsft.tui.workers import lint_data, run_training

QUEUED_NOTE = ("queued: a run is training; answered when it stops (ctrl+t stops it and saves "
               "the adapter; ctrl+n answers now on separate model copies)")


class MlxsftApp(App):
    """Fine-tune with live loss curves, and compare the base and tuned models."""

    # Whether a run is training: set when a run is launched and when its worker returns;
    # `watch_training` is the one place the widgets and keys follow it.
    training: reactive[bool] = reactive(False, init=False)

    TITLE = "mlxsft"
    CSS_PATH = "app.tcss"
    BINDINGS = [
        Binding("ctrl+s", "start_run", "Start"),
        Binding("ctrl+t", "stop_run", "Stop"),
        Binding("ctrl+o", "open_run", "Open run"),
        Binding("ctrl+r", "resume_run", "Resume"),
        Binding("ctrl+n", "answer_now", "Answer now"),
        Binding("ctrl+l", "check_data", "Check data"),
        Binding("f1", "show_view('setup')", "Setup", show=False),
        Binding("f2", "show_view('train')", "Train", show=False),
        Binding("f3", "show_view('chat')", "Chat"),
        Binding("f4", "show_view('data')", "Data"),
        Binding("f5", "show_view('log')", "Log", show=False),
        Binding("f6", "show_view('checkpoints')", "Checkpoints"),
        Binding("ctrl+q", "quit", "Quit", priority=True),
    ]

    def __init__(self, data: str | None = None, model: str | None = None,
                 config_path: str | None = None, run_dir: str | None = None,
                 train_fn: Callable | None = None, chat_load: Callable | None = None,
                 chat_stream: Callable | None = None, chat_max_tokens: int = 256,
                 poll_seconds: float = 1.0, compare_fn: Callable | None = None):
        super().__init__()
        self.initial = {"data": data, "model": model, "config_path": config_path,
                        "run_dir": run_dir}
        if train_fn is None:
            from mlxsft.train import train as train_fn
        self.train_fn = train_fn
        engine_kwargs = {k: v for k, v in (("load", chat_load), ("stream", chat_stream)) if v}
        self.chat_engine = ChatEngine(self.post_message, **engine_kwargs)
        self.chat_max_tokens = chat_max_tokens
        self.poll_seconds = poll_seconds
        self.settings: dict = {}  # options from --config / the opened run beyond the form
        self.run_dir: Path | None = None
        self.stop_event = threading.Event()
        self.quit_after_run = False
        self.answer_during_training = False
        self.queued: list[tuple[int, str, str]] = []  # (request id, prompt, adapter choice)
        self.request_ids = itertools.count(1)
        self.view = "train"
        # Widgets are looked up on this screen, not on whichever screen is on top (the
        # command palette, say), so a message arriving meanwhile still finds them.
        self.main_screen = MainScreen(compare_fn=compare_fn)
        self.data_key: tuple | None = None
        self.metrics_pos = 0
        self.poll_timer: Timer | None = None
        # The directory the trainer named for a run started with 'run dir' empty: shown in
        # the field, but the next run started from it gets a fresh name of its own.
        self.auto_run_dir: str | None = None

    # -- layout -----------------------------------------------------------------------
    def get_default_screen(self) -> Screen:
        return self.main_screen

    @property
    def run_panel(self) -> RunPanel:
        return self.main_screen.query_one(RunPanel)

    @property
    def event_log(self) -> EventLog:
        return self.main_screen.query_one(EventLog)

    @property
    def training_view(self) -> TrainingView:
        return self.main_screen.query_one(TrainingView)

    @property
    def compare(self) -> ComparePane:
        return self.main_screen.query_one(ComparePane)

    @property
    def data_view(self) -> DataView:
        return self.main_screen.query_one(DataView)

    @property
    def checkpoints(self) -> CheckpointsView:
        return self.main_screen.query_one(CheckpointsView)

    def _list_adapters(self) -> None:
        """Offer the run's saved adapters to the chat pane and the Checkpoints section."""
        adapters = saved_adapters(self.run_dir)
        self.compare.set_adapters(adapters)
        self.checkpoints.set_run(self.run_dir, adapters)

    def on_adapter_chosen(self, message: AdapterChosen) -> None:
        if self.compare.choose_adapter(message.key):
            self.notify(f"the Tuned column now answers with {message.key}")
            self.action_show_view("chat")

    def screen_ready(self) -> None:
        """Start the chat thread, lay out, and apply the command line's options."""
        self.run_worker(self._serve_chat, thread=True, group="chat", exit_on_error=False,
                        name="chat models")
        self.show_view()
        slow = blas.slow_warning()  # printed on stderr too, but the app's screen hides it
        if slow:
            self.event_log.add("warning", f"warning: {slow}")
        given = {k: v for k, v in self.initial.items() if k in ("data", "model") and v}
        try:
            self.settings = build_config(given, self.initial["config_path"]).resolved()
        except UserError as e:
            self.settings = build_config(given).resolved()
            self.show_error(str(e))
        self.run_panel.set_values(self.settings)
        if self.initial["run_dir"]:
            self.open_run_dir(self.initial["run_dir"], keep=given)
        self.compare.set_sources(self._chat_model(), "no adapter yet", answered=False)
        self._list_adapters()

    def show_view(self, view: str | None = None) -> None:
        self.view = self.main_screen.show_view(view or self.view)
        if self.view == "data":
            self.action_check_data(force=False)

    @on(Tabs.TabActivated, "#view-tabs")
    def _tab_activated(self, event: Tabs.TabActivated) -> None:
        if event.tab.id and event.tab.id != self.view:
            self.show_view(event.tab.id)

    def action_show_view(self, view: str) -> None:
        self.show_view(view)
        focus = {"setup": "#field-model", "chat": "#prompt",
                 "checkpoints": "#checkpoints-table"}.get(view)
        if focus:
            self.main_screen.query_one(focus).focus()

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        if action == "start_run":
            return not self.training
        if action == "stop_run":
            return self.training
        if action == "answer_now":
            return bool(self.queued)
        if action == "open_run":
            return None if self.training else True
        if action == "resume_run":
            return not self.training and self.run_dir is not None
        return True

    def show_error(self, message: str) -> None:
        self.event_log.add("error", f"error: {message}")
        self.notify(message, title="error", severity="error", timeout=10)

    # -- training ---------------------------------------------------------------------
    def _form_options(self) -> dict:
        # The form is the truth for its fields (an emptied field means the default).
        form = {name for name, _, _ in FIELDS}
        values = self.run_panel.values()
        if self.auto_run_dir is not None and values.get("out") == self.auto_run_dir:
            del values["out"]  # the last run's default name, not the user's choice
        return {k: v for k, v in self.settings.items() if k not in form} | values

    def action_start_run(self) -> None:
        if self.training:
            return
        try:
            config = build_config(self._form_options())
        except UserError as e:
            self.show_error(str(e))
            return
        self.run_dir = Path(config.out) if config.out else None
        self.training_view.reset(config.out or "", starting=True)
        self.event_log.add("info", f"starting: {config.model} on {config.data}")
        self._launch(config)

    def action_resume_run(self) -> None:
        """Continue the opened (or last) run from its last saved adapter and optimizer."""
        from mlxsft.rundir import resume_point

        if self.training:
            return
        if self.run_dir is None:
            self.show_error("no run to resume: open a run directory (ctrl+o) first")
            return
        try:
            point = resume_point(self.run_dir)
            config = build_config({**self._form_options(), "out": str(self.run_dir)})
        except UserError as e:
            self.show_error(str(e))
            return
        resume_from, step = point.path, point.step
        self.training_view.resume_at(step)
        self.event_log.add("info", f"resuming {self.run_dir} from step {step}")
        self._launch(config, resume_from)

    def _launch(self, config, resume_from: Path | None = None) -> None:
        self._stop_polling()
        if self.view != "train":
            self.show_view("train")  # on a small terminal: leave Setup for the progress
        self.answer_during_training = False
        self.stop_event = threading.Event()
        self.training = True
        self.train_worker(config, self.stop_event, resume_from, self.training_view.reports)

    @work(thread=True, exclusive=True, group="train", exit_on_error=False)
    def train_worker(self, config, stop: threading.Event, resume_from: Path | None = None,
                     earlier: tuple[ev.StepReport, ...] = ()) -> None:
        worker = get_current_worker()
        run_on_own_thread(run_training, self.post_message, self.train_fn, config,
                          lambda: stop.is_set() or worker.is_cancelled, resume_from, earlier,
                          log=self.log.error, name="mlxsft train")

    def action_stop_run(self) -> None:
        if self.training and not self.stop_event.is_set():
            self.stop_event.set()
            self.event_log.add("info", "stopping after this step; the trainer saves the adapter")

    def on_step_progress(self, message: StepProgress) -> None:
        self.training_view.set_reports(message.reports)

    def on_train_event(self, message: TrainEvent) -> None:
        event = message.event
        self.training_view.apply(event)
        self.checkpoints.apply(event)
        for severity, line in ev.describe(event):
            self.event_log.add(severity, line)
        if isinstance(event, ev.RunStarted):
            self.run_dir = Path(event.run_dir)
            if self.run_panel.values().get("out") in (None, self.auto_run_dir):
                self.auto_run_dir = event.run_dir  # show where it goes, not the placeholder
                self.run_panel.set_values({"out": event.run_dir})
        if isinstance(event, (ev.RunStarted, ev.CheckpointSaved, ev.Finished)):
            self._list_adapters()
        if isinstance(event, ev.Failed):
            self.notify(event.message, title="training failed", severity="error", timeout=10)

    def watch_training(self, running: bool) -> None:
        self.run_panel.running = running
        self.compare.set_status("a run is training: new prompts wait for it to stop "
                                "(ctrl+n answers them now)" if running else "")
        self.refresh_bindings()

    def on_train_done(self, message: TrainDone) -> None:
        self.training = False
        if message.error:
            self.show_error(message.error)
        self.compare.set_adapters(saved_adapters(self.run_dir))
        queued, self.queued = self.queued, []
        for request in queued:
            self._dispatch(*request)
        self.refresh_bindings()  # ctrl+n: nothing is queued any more
        if self.quit_after_run:
            self.exit()

    async def action_quit(self) -> None:
        if self.training:
            # Quitting mid-run would wait for the trainer anyway: stop it cleanly first.
            self.quit_after_run = True
            self.action_stop_run()
            self.notify("stopping the run and saving the adapter, then quitting")
            return
        self.exit()

    def on_unmount(self) -> None:
        self.chat_engine.close()
        self.stop_event.set()

    # -- opening a run directory ------------------------------------------------------
    def action_open_run(self) -> None:
        if self.training:
            self.show_error("a run is training: stop it (ctrl+t) before opening another")
            return
        path = self.run_panel.values().get("out")
        if not path:
            runs = find_runs()
            if not runs:
                self.show_error("fill in 'run dir' with a run directory to open")
                return
            path = str(runs[-1])
        self.open_run_dir(path)

    def open_run_dir(self, path: str, keep: dict | None = None) -> None:
        """Plot a finished or running run; a running one is followed by polling."""
        try:
            run_dir = check_run_dir(path)
        except UserError as e:
            self.show_error(str(e))
            return
        self._stop_polling()
        settings = run_settings(run_dir)
        self.settings = {**self.settings, **settings, **(keep or {}), "out": str(run_dir)}
        self.run_panel.set_values(self.settings)
        self.run_dir, self.metrics_pos = run_dir, 0
        self.training_view.reset(str(run_dir))
        self.event_log.add("info", f"opened {run_dir}")
        self._list_adapters()
        if not self._poll_metrics():
            self.event_log.add("info", "the run has not finished: following its metrics.jsonl")
            self.poll_timer = self.set_interval(self.poll_seconds, self._poll_metrics)

    def _poll_metrics(self) -> bool:
        """Show new events of the opened run; True once it has ended."""
        if self.run_dir is None:
            return True
        events, self.metrics_pos = read_events(self.run_dir, self.metrics_pos)
        if events:
            self.training_view.apply(*events)
            self.checkpoints.apply(*events)
            for event in events:
                for severity, line in ev.describe(event):
                    self.event_log.add(severity, line)
            self._list_adapters()
        ended = self.training_view.finished is not None
        if ended:
            self._stop_polling()
        return ended

    def _stop_polling(self) -> None:
        if self.poll_timer is not None:
            self.poll_timer.stop()
            self.poll_timer = None

    # -- chat -------------------------------------------------------------------------
    def _serve_chat(self) -> None:
        worker = get_current_worker()
        run_on_own_thread(self.chat_engine.serve, cancelled=lambda: worker.is_cancelled,
                          name="mlxsft chat")

    def _chat_model(self) -> str:
        return self.run_panel.values().get("model") or DEFAULT_MODEL

    @on(Input.Submitted, "#prompt")
    def ask(self, event: Input.Submitted) -> None:
        prompt = event.value.strip()
        event.input.value = ""
        if not prompt:
            return
        request = (next(self.request_ids), prompt, self.compare.adapter_choice)
        if self.training and not self.answer_during_training:
            self.compare.add_prompt(request[0], prompt, QUEUED_NOTE)
            self.queued.append(request)
            self.refresh_bindings()
        else:
            self.compare.add_prompt(request[0], prompt)
            self._dispatch(*request)

    def action_answer_now(self) -> None:
        self.answer_during_training = True
        queued, self.queued = self.queued, []
        for request in queued:
            self._dispatch(*request)
        self.refresh_bindings()

    def _dispatch(self, request_id: int, prompt: str, choice: str) -> None:
        model = self._chat_model()
        adapter = pick_adapter(self.run_dir, choice)
        if adapter is not None:
            note, tuned = "", adapter.label
        elif self.run_dir is None:
            note, tuned = ("no tuned model yet: start a run (ctrl+s) or open a run "
                           "directory (ctrl+o)"), "no adapter"
        else:
            note, tuned = f"no adapter saved in {self.run_dir} yet", "no adapter"
        self.compare.set_sources(model, tuned)
        if self.training:
            self.compare.set_status("answering on the chat thread's own model copies while "
                                    "the run trains (both run slower meanwhile)")
        self.chat_engine.submit(ChatRequest(
            request_id, prompt, model, str(adapter.path) if adapter else None,
            self.chat_max_tokens, note, adapter.label if adapter else ""))

    def on_chat_update(self, message: ChatUpdate) -> None:
        self.compare.update_answer(message)

    # -- data view --------------------------------------------------------------------
    def action_check_data(self, force: bool = True) -> None:
        try:
            config = build_config(self._form_options())
        except UserError as e:
            self.data_view.show_error(str(e))
            return
        if not config.data:
            self.data_view.show_error("no data: fill in 'data' in the Run panel")
            return
        key = (config.data, config.model, config.mask, config.max_seq_len)
        if key == self.data_key and not force:
            return
        self.data_key = key
        self.data_view.show_loading(config.data)
        self.data_worker(key)

    @work(thread=True, exclusive=True, group="data", exit_on_error=False)
    def data_worker(self, key: tuple) -> None:
        run_on_own_thread(lint_data, self.post_message, key, name="mlxsft data")

    def on_data_checked(self, message: DataChecked) -> None:
        if message.key == self.data_key:
            self.data_view.show(message.summaries, message.records, message.warnings)

    def on_data_failed(self, message: DataFailed) -> None:
        if message.key == self.data_key:
            self.data_view.show_error(message.message)
            self.show_error(message.message)


def create_app(**kwargs) -> MlxsftApp:
    """App factory: `data`, `model`, `config_path`, `run_dir` as on the command line;
    tests inject `train_fn` (a fake or tiny trainer), `chat_load`, `chat_stream` and
    `compare_fn` (for the Checkpoints section's comparison)."""
    return MlxsftApp(**kwargs)
