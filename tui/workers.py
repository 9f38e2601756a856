"""What the app's worker threads run: plain functions that report through `post`.

`run_training` iterates the trainer (so the model being trained lives on the calling
thread) and posts each event; `lint_data` reads and masks a data file for the data
view. Neither touches a widget; the app wraps them in Textual thread workers, each job
on a thread of its own (`mlxsft.mlx_thread.run_on_own_thread`) that frees its MLX state
before it ends, since the workers' pooled threads outlive the job.
"""

from __future__ import annotations

import traceback
from typing import Callable

from mlxsft import events as ev
from mlxsft.errors import UserError
from mlxsft.tui.messages import (DataChecked, DataFailed, StepProgress, TrainDone,
                                 TrainEvent)
from mlxsft.tui.widgets.data_view import check_data


def run_training(post: Callable, train_fn: Callable, config, should_stop: Callable[[], bool],
                 resume_from=None, earlier: tuple[ev.StepReport, ...] = (),
                 log: Callable[[str], object] = print) -> None:
    """Run `train_fn` to the end and post its events, then `TrainDone`."""
    # A resumed run's curve continues the reports already on the chart.
    reports: list[ev.StepReport] = list(earlier)
    kwargs = {"resume_from": resume_from} if resume_from is not None else {}
    error = None
    try:
        for event in train_fn(config, should_stop=should_stop, **kwargs):
            if isinstance(event, ev.StepReport):
                reports.append(event)
                post(StepProgress(tuple(reports)))
            else:
                post(TrainEvent(event))
    except UserError as e:
        error = str(e)
    except Exception as e:  # a bug: keep the app alive, show it, log the traceback
        error = f"{type(e).__name__}: {e}"
        log(traceback.format_exc())
    post(TrainDone(error))


def lint_data(post: Callable, key: tuple) -> None:
    """Post `DataChecked` for (data, model, mask, max_seq_len), or `DataFailed`."""
    try:
        summaries, records, warnings = check_data(*key)
    except UserError as e:
        post(DataFailed(key, str(e)))
    except Exception as e:  # a bug: show it rather than crash
        post(DataFailed(key, f"{type(e).__name__}: {e}"))
    else:
        post(DataChecked(key, summaries, records, warnings))
