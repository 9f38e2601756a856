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
        if isinstance(event, ev.Setup):
            self._line(f"{event.message}...")
        elif isinstance(event, ev.RunStarted):
            for message in event.messages:
                self._line(f"note: {message}")
            share = 100 * event.trainable_parameters / max(event.total_parameters, 1)
            self._line(f"trainable parameters: {event.trainable_parameters:,} of "
                       f"{event.total_parameters:,} ({share:.3f}%)")
            self._line(f"training on {event.train_records} records, validating on "
                       f"{event.valid_records}, for {event.total_steps} steps -> {event.run_dir}")
        elif isinstance(event, ev.StepReport):
            self._line(self.progress(event), live=True)
        elif isinstance(event, ev.EvalReport):
            self.val_loss = event.val_loss
            self._line(f"step {event.step}: validation loss {event.val_loss:.4f} "
                       f"({event.val_supervised_tokens} supervised tokens)")
        elif isinstance(event, ev.SampleAnswers):
            for sample in event.samples:
                mark = {True: "right", False: "wrong", None: "answer"}[sample.get("exact")]
                self._line(f"step {event.step}: {mark}: {_one_line(sample['prompt'], 50)} -> "
                           f"{_one_line(sample['answer'], 70)}")
        elif isinstance(event, ev.CheckpointSaved):
            label = "best adapter" if event.best else "adapter"
            self._line(f"step {event.step}: saved {label} to {event.path}")
        elif isinstance(event, ev.Warning):
            self._line(f"warning: {event.message}")
        elif isinstance(event, ev.Finished):
            how = "stopped early" if event.stopped_early else "finished"
            parts = [f"{how} at step {event.step} in {event.seconds:.1f}s"]
            if event.final_train_loss is not None:
                parts.append(f"train loss {event.final_train_loss:.4f}")
            if event.best_val_loss is not None:
                parts.append(f"best validation loss {event.best_val_loss:.4f}")
            self._line("; ".join(parts) + f"; adapter: {event.adapter_dir}")
            if event.stop_reason and event.stop_reason != "interrupted":
                self._line(event.stop_reason)
        elif isinstance(event, ev.Failed):
            if self.open_line:
                self.stream.write("\n")
                self.open_line = False
            self.stream.flush()
            print(f"mlxsft: error: {event.message}", file=self.errors, flush=True)

    def progress(self, e) -> str:
        width = 20
        done = int(width * e.step / max(e.total_steps, 1))
        bar = "=" * done + (">" if done < width else "") + " " * (width - done - 1)
        rate = e.seconds / max(e.step, 1)
        eta = int(rate * (e.total_steps - e.step))
        val = f" val {self.val_loss:.3f}" if self.val_loss is not None else ""
        return (f"step {e.step}/{e.total_steps} [{bar}] loss {e.train_loss:.3f}{val} "
                f"lr {e.learning_rate:.1e} tok/s {e.tokens_per_second:.0f} "
                f"sup/s {e.supervised_tokens_per_second:.0f} mem {e.peak_memory_gb:.2f}GB "
                f"ETA {eta // 60}:{eta % 60:02d}")


def _one_line(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"
