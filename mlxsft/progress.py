"""The terminal rendering of trainer events for `mlxsft train`.

A live progress line (step, loss, validation loss, learning rate, tokens/s, supervised
tokens/s, peak memory, ETA) on a terminal, one plain line per report otherwise; notes,
evaluations and checkpoints as lines; a failure as one `mlxsft: error:` line on stderr.
The trainer knows nothing of this: it only yields `mlxsft.events` objects.
"""

from __future__ import annotations

import sys

from mlxsft import events as ev


class ProgressPrinter:
    """Renders trainer events: a live progress line on a terminal, plain lines otherwise."""

    def __init__(self, stream=None, errors=None):
        self.stream = stream = stream or sys.stdout
        self.errors = errors or sys.stderr
        self.tty = stream.isatty()
        self.val_loss = None
        self.open_line = False

    def _line(self, text: str, live: bool = False) -> None:
        if self.tty and live:
            self.stream.write("\r\x1b[2K" + text)
            self.open_line = True
        else:
            if self.open_line:
                self.stream.write("\n")
            self.stream.write(text + "\n")
            self.open_line = False
        self.stream.flush()

    def __call__(self, event) -> None:
        if isinstance(event, ev.StepReport):
            self._line(self.progress(event), live=True)
            return
        if isinstance(event, ev.EvalReport):
            self.val_loss = event.val_loss  # shown on the progress line from now on
        if isinstance(event, ev.Failed):
            if self.open_line:
                self.stream.write("\n")
                self.open_line = False
            self.stream.flush()
            print(f"mlxsft: error: {event.message}", file=self.errors, flush=True)
            return
        if isinstance(event, ev.RunStarted):
            # The terminal's own, fuller start: the model's whole size and where the run
            # goes, on lines of their own (the TUI shows these in its panels).
            for severity, text in ev.describe(event):
                if severity == "note":
                    self._line(text)
            share = 100 * event.trainable_parameters / max(event.total_parameters, 1)
            self._line(f"trainable parameters: {event.trainable_parameters:,} of "
                       f"{event.total_parameters:,} ({share:.3f}%)")
            ranks = f" on {event.world_size} ranks" if event.world_size > 1 else ""
            self._line(f"training on {event.train_records} records, validating on "
                       f"{event.valid_records}, for {event.total_steps} steps{ranks} -> "
                       f"{event.run_dir}")
            return
        for i, (_, text) in enumerate(ev.describe(event)):
            if isinstance(event, ev.Finished) and i == 0:
                text += f"; adapter: {event.adapter_dir}"  # the TUI lists it in its chat pane
            self._line(text)

    def progress(self, e) -> str:
        width = 20
        done = int(width * e.step / max(e.total_steps, 1))
        bar = "=" * done + (">" if done < width else "") + " " * (width - done - 1)
        rate = e.seconds / max(e.step, 1)
        eta = int(rate * (e.total_steps - e.step))
        val = f" val {self.val_loss:.3f}" if self.val_loss is not None else ""
        ranks = f" x{e.world_size} ranks" if e.world_size > 1 else ""
        return (f"step {e.step}/{e.total_steps} [{bar}] loss {e.train_loss:.3f}{val} "
                f"lr {e.learning_rate:.1e} tok/s {e.tokens_per_second:.0f}{ranks} "
                f"sup/s {e.supervised_tokens_per_second:.0f} mem {e.peak_memory_gb:.2f}GB "
                f"ETA {eta // 60}:{eta % 60:02d}")

