"""What the app shows of a run while and after it trains: starting from the Setup tab
of a small terminal shows the Train tab, the stats line and the progress bar count the
same step after a stop, and the run-directory field shows where the run is written."""

import asyncio
import time

import pytest

from mlxsft import events as ev
from mlxsft.tui.app import create_app

pytest.importorskip("textual_plotext")

NARROW, WIDE = (80, 24), (120, 40)


def stoppable_trainer(total=80, report_every=10):
    """Reports every `report_every` steps and stops between reports when asked, as the
    real trainer does (its last report is older than the step it stopped at)."""

    def train_fn(config, should_stop, resume_from=None):
        run_dir = config.out or "runs/20260101-120000"
        yield ev.RunStarted(run_dir, total, 1000, 100000, 64, 8)
        step = 0
        while step < total:
            if should_stop() and step % report_every:
                break
            step += 1
            time.sleep(0.01)
            if step % report_every == 0:
                yield ev.StepReport(step, total, step / 40, 2.0, 1e-4, 100 * step, 50 * step,
                                    1000.0, 500.0, 0.01 * step, 0.1)
            if step == report_every + 6:
                while not should_stop():  # hold at step 16 until stopped
                    time.sleep(0.01)
        yield ev.CheckpointSaved(step, run_dir)
        yield ev.Finished(step, run_dir, 2.0, None, None, 0.01 * step,
                          stopped_early=step < total)

    return train_fn


async def until(pilot, condition, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await pilot.pause(0.05)


def shown(app):
    return {s for s in ("run-panel", "training", "compare", "data-view", "event-log")
            if app.query_one(f"#{s}").display}


def test_starting_from_the_setup_tab_shows_the_train_tab(tmp_path):
    async def scenario():
        app = create_app(train_fn=stoppable_trainer())
        async with app.run_test(size=NARROW) as pilot:
            await pilot.press("f1")
            assert shown(app) == {"run-panel"} and app.focused.id == "field-model"
            app.query_one("#field-data").value = "train.jsonl"
            app.query_one("#field-out").value = str(tmp_path / "run")
            await pilot.press("ctrl+s")
            await until(pilot, lambda: app.training_view.reports, "a step")
            assert shown(app) == {"training"}
            assert app.query_one("#view-tabs").active == "train"
            await pilot.press("ctrl+t")
            await until(pilot, lambda: not app.training, "the run to stop")

    asyncio.run(scenario())


def test_after_a_stop_the_stats_line_and_the_bar_show_the_same_step(tmp_path):
    async def scenario():
        app = create_app(train_fn=stoppable_trainer())
        async with app.run_test(size=WIDE) as pilot:
            app.query_one("#field-data").value = "train.jsonl"
            await pilot.press("ctrl+s")
            await until(pilot, lambda: app.training_view.reports, "a step")
            await pilot.press("ctrl+t")
            await until(pilot, lambda: not app.training, "the run to stop")
            assert app.training_view.reports[-1].step == 10  # the last report is older
            assert app.query_one("#progress").progress == 16
            stats = str(app.query_one("#stats").render())
            assert stats.startswith("step 16/80  "), stats
            assert app.query_one("#eta").render().plain == "stopped"

    asyncio.run(scenario())


def test_the_run_directory_field_shows_where_the_run_goes(tmp_path):
    async def scenario():
        app = create_app(train_fn=stoppable_trainer())
        async with app.run_test(size=WIDE) as pilot:
            out = app.query_one("#field-out")
            app.query_one("#field-data").value = "train.jsonl"
            assert out.value == "" and out.placeholder == "runs/<date>-<time>"
            await pilot.press("ctrl+s")
            await until(pilot, lambda: app.training_view.reports, "a step")
            assert out.value == "runs/20260101-120000" and out.disabled  # during the run
            await pilot.press("ctrl+t")
            await until(pilot, lambda: not app.training, "the run to stop")
            assert out.value == "runs/20260101-120000" and not out.disabled  # after it
            # A named run directory is what the user typed, during and after.
            out.value = str(tmp_path / "named")
            await pilot.press("ctrl+s")
            await until(pilot, lambda: app.training, "the second run")
            await until(pilot, lambda: app.training_view.reports, "a step")
            assert out.value == str(tmp_path / "named")
            await pilot.press("ctrl+t")
            await until(pilot, lambda: not app.training, "the second run to stop")

    asyncio.run(scenario())


def test_a_new_run_after_an_unnamed_one_gets_a_new_directory(tmp_path):
    seen = []

    def recording(config, should_stop, resume_from=None):
        seen.append(config.out)
        run_dir = config.out or f"runs/auto-{len(seen)}"
        yield ev.RunStarted(run_dir, 2, 1000, 100000, 64, 8)
        yield ev.Finished(2, run_dir, 2.0, None, None, 0.1)

    async def scenario():
        app = create_app(train_fn=recording)
        async with app.run_test(size=WIDE) as pilot:
            app.query_one("#field-data").value = "train.jsonl"
            for n in (1, 2):
                await pilot.press("ctrl+s")
                await until(pilot, lambda: app.training_view.finished, f"run {n}")
                await until(pilot, lambda: not app.training, f"run {n} to end")
                assert app.query_one("#field-out").value == f"runs/auto-{n}"
            # The shown directory was the default's choice: the next run gets its own.
            assert seen == [None, None]

    asyncio.run(scenario())
