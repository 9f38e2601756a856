"""The run panel: the settings of the next run, editable until it starts.

One row per option of `mlxsft.config.TrainConfig` worth changing on a laptop; each row's
tooltip is the option's own help text, the same one `mlxsft train --help` prints. The
panel holds strings: `mlxsft.config.build_config` checks and converts them when a run
starts, so a typo becomes the same `UserError` the CLI gives.
"""

from __future__ import annotations

import dataclasses

from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.reactive import reactive
from textual.widgets import Button, Input, Label, Select

from mlxsft.config import TrainConfig

# (option, label, placeholder shown when empty)
FIELDS: list[tuple[str, str, str]] = [
    ("model", "model", "smollm2-135m"),
    ("data", "data", "train.jsonl or a data dir"),
    ("valid", "valid", "beside the data"),
    ("out", "run dir", "runs/<date>-<time>"),
    ("iters", "iters", "one pass (--epochs)"),
    ("epochs", "epochs", ""),
    ("batch_size", "batch size", ""),
    ("learning_rate", "learning rate", ""),
    ("lora_rank", "lora rank", ""),
    ("lora_alpha", "lora alpha", ""),
    ("mask", "mask", ""),
    ("max_seq_len", "max seq len", ""),
    ("fine_tune", "fine-tune", ""),
    ("steps_per_report", "report every", ""),
    ("steps_per_eval", "eval every", ""),
    ("steps_per_save", "save every", ""),
]
_META = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


class RunPanel(VerticalScroll):
    """The form of run options with Start, Stop and Open run buttons."""

    running: reactive[bool] = reactive(False, init=False)  # set by the app's `training`

    def compose(self) -> ComposeResult:
        for name, label, placeholder in FIELDS:
            meta = _META[name].metadata
            with Horizontal(classes="field-row"):
                yield Label(label, classes="field-label")
                if meta.get("choices"):
                    yield Select([(c, c) for c in meta["choices"]], allow_blank=False,
                                 value=_META[name].default, compact=True,
                                 id=f"field-{name}", tooltip=meta["help"])
                else:
                    yield Input(placeholder=placeholder, compact=True, id=f"field-{name}",
                                tooltip=meta["help"])
        with Horizontal(id="run-buttons"):
            yield Button("Start", id="start", variant="success", compact=True,
                         action="app.start_run", tooltip="start training (ctrl+s)")
            yield Button("Stop", id="stop", variant="error", compact=True, disabled=True,
                         action="app.stop_run",
                         tooltip="stop after this step and save the adapter (ctrl+t)")
            yield Button("Open run", id="open", compact=True, action="app.open_run",
                         tooltip="plot the run directory in 'run dir' (ctrl+o)")

    def on_mount(self) -> None:
        self.border_title = "Run"

    def values(self) -> dict[str, str]:
        """The options the user filled in (empty fields are left to the defaults)."""
        out = {}
        for name, _, _ in FIELDS:
            widget = self.query_one(f"#field-{name}")
            value = widget.value
            if isinstance(value, str) and value.strip():
                out[name] = value.strip()
        return out

    def set_values(self, values: dict) -> None:
        """Fill the fields from resolved options (a TrainConfig dict or config.yaml)."""
        for name, _, _ in FIELDS:
            if name not in values:
                continue
            widget = self.query_one(f"#field-{name}")
            if isinstance(widget, Select):
                if values[name] in _META[name].metadata["choices"]:
                    widget.value = values[name]
            else:
                widget.value = _text(values[name])
                widget.cursor_position = 0

    def watch_running(self, running: bool) -> None:
        # The form is frozen while a run trains: its values are the run's settings.
        for name, _, _ in FIELDS:
            self.query_one(f"#field-{name}").disabled = running
        self.query_one("#start", Button).disabled = running
        self.query_one("#open", Button).disabled = running
        self.query_one("#stop", Button).disabled = not running
