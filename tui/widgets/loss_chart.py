"""The Loss chart: train and validation loss against step, drawn with plotext.

A real line chart (axes, ticks, a legend) from `textual-plotext`. It only draws the
points it is given; the training view owns them.
"""

from __future__ import annotations

from textual_plotext import PlotextPlot

TRAIN_COLOR = "cyan"
VAL_COLOR = "orange"


class LossChart(PlotextPlot):
    """Train loss (a line) and validation loss (a line with markers) against step."""

    def __init__(self, *, id: str | None = None, classes: str | None = None):
        super().__init__(id=id, classes=classes)
        self.train_points: list[tuple[int, float]] = []
        self.val_points: list[tuple[int, float]] = []
        self.total_steps: int | None = None

    def on_mount(self) -> None:
        self.border_title = "Loss"
        self.replot()

    def set_series(self, train: list[tuple[int, float]], val: list[tuple[int, float]],
                   total_steps: int | None = None) -> None:
        self.train_points = list(train)
        self.val_points = list(val)
        self.total_steps = total_steps
        self.replot()

    def replot(self) -> None:
        plt = self.plt
        plt.clear_figure()
        plt.xlabel("step")
        plt.ylabel("loss")
        if self.train_points:
            xs, ys = zip(*self.train_points)
            plt.plot(list(xs), list(ys), label="train", color=TRAIN_COLOR, marker="braille")
        if self.val_points:
            xs, ys = zip(*self.val_points)
            plt.plot(list(xs), list(ys), label="validation", color=VAL_COLOR, marker="dot")
        if self.total_steps:
            # The x axis spans the whole run, so the curve's length shows progress too.
            plt.xlim(0, self.total_steps)
        if not self.train_points and not self.val_points:
            plt.title("no points yet: start a run (ctrl+s) or open a run directory (ctrl+o)")
        self.refresh()
