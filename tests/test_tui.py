"""The Textual app driven through a pilot: a live run on a tiny model (chart points,
progress, stop saves the adapter, Base and Tuned answer), queued chat while training,
errors shown in the UI, replaying and following a run directory, the data view's
masks, the narrow layout, and that the library never imports textual."""

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.data import write_jsonl
from mlxsft.tui.app import QUEUED_NOTE, create_app
from mlxsft.tui.chat_engine import EMPTY_NOTE
from mlxsft.tui.messages import ChatUpdate, StepProgress, TrainDone, TrainEvent

from mlxsft import events as ev

pytest.importorskip("textual_plotext")

WIDE, NARROW = (120, 40), (80, 24)


async def wait_for(pilot, condition, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


def fill(app, **values):
    for name, value in values.items():
        app.query_one(f"#field-{name}").value = str(value)


async def ask(pilot, text):
    prompt = pilot.app.query_one("#prompt")
    prompt.focus()
    prompt.value = text
    await pilot.press("enter")


def errors(app):
    return [text for severity, text in app.event_log.entries if severity == "error"]


# -- fakes: a trainer and chat models with known output ------------------------------
def fake_trainer(total=12, hold=False, save=False):
    """Yields a fixed run; with `hold` it trains until asked to stop; with `save` it
    leaves a (dummy) final adapter in the run directory, as the real trainer does."""

    def train_fn(config, should_stop, resume_from=None):
        run_dir = config.out or "runs/fake"
        yield ev.RunStarted(run_dir, total, 16384, 123456, 64, 8, ["a note from setup"])
        step, stopped = 0, False
        while step < total or hold:
            if should_stop():
                stopped = True
                break
            step += 1
            if hold:
                time.sleep(0.01)
            if step % 2 == 0:
                yield ev.StepReport(step, total, step / 8, 3.0 - 0.15 * step, 1e-4, 512 * step,
                                    128 * step, 4096.0, 1024.0, 0.5 * step, 0.25)
            if step % 4 == 0 and step <= total:
                yield ev.EvalReport(step, 3.1 - 0.12 * step, 40, 0.5 * step)
        if save:
            adapter_dir = Path(run_dir)
            adapter_dir.mkdir(parents=True, exist_ok=True)
            (adapter_dir / "adapters.safetensors").write_bytes(b"")
            (adapter_dir / "adapter_config.json").write_text(json.dumps({"step": step}))
        yield ev.CheckpointSaved(step, run_dir)
        yield ev.Finished(step, run_dir, 1.2, 1.3, 1.25, 6.0, stopped_early=stopped)

    return train_fn


def fake_chat():
    calls = []

    def load(model, adapter_dir=None):
        calls.append((model, adapter_dir))
        return "tuned" if adapter_dir else "base"

    def stream(loaded, messages, max_tokens):
        yield from [f"{loaded} says", f" hi to {messages[-1]['content']}"]

    return {"chat_load": load, "chat_stream": stream}, calls


# -- a real run on the tiny model ---------------------------------------------------
@pytest.mark.slow
def test_live_run_plots_steps_stops_with_an_adapter_and_compares(tiny_llama, tiny_data,
                                                                  tmp_path):
    out = tmp_path / "run"
    seen = []

    async def scenario():
        app = create_app(data=str(tiny_data), model=str(tiny_llama), chat_max_tokens=6)
        async with app.run_test(size=WIDE, message_hook=seen.append) as pilot:
            fill(app, out=out, iters=300, batch_size=8, learning_rate=0.001,
                 steps_per_report=2, steps_per_eval=4)
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: len(app.training_view.chart.train_points) >= 3
                           and app.training_view.chart.val_points, what="step reports")
            chart = app.training_view.chart
            steps = [s for s, _ in chart.train_points]
            assert steps == sorted(steps) and steps[:3] == [1, 2, 4]  # from the first step
            assert chart.total_steps == 300
            progress = app.query_one("#progress")
            assert progress.total == 300 and progress.progress >= steps[2]
            assert "ETA" in str(app.query_one("#eta").render())
            assert app.query_one("#start").disabled and not app.query_one("#stop").disabled

            await pilot.press("ctrl+t")
            await wait_for(pilot, lambda: not app.training, what="the run to stop")
            finished = app.training_view.finished
            assert isinstance(finished, ev.Finished) and finished.stopped_early
            assert steps[2] <= finished.step < 300
            assert (out / "adapters.safetensors").exists()
            assert any("stopped early" in text for _, text in app.event_log.entries)
            assert not errors(app)
            # Before any answer, the Tuned column names the adapter that would answer.
            assert str(app.query_one("#tuned-column").border_subtitle).startswith(
                f"saved: final (step {finished.step}")

            await ask(pilot, "add 2 3")
            await wait_for(pilot, lambda: any(isinstance(m, ChatUpdate) and m.done
                                              for m in seen), what="both answers")
            final = [m for m in seen if isinstance(m, ChatUpdate)][-1]
            # A barely trained model may end its turn at once: that is an answer too.
            for text, note in ((final.base_text, final.base_note),
                               (final.tuned_text, final.tuned_note)):
                assert (text and not note) or (not text and note == EMPTY_NOTE)
            assert app.compare.answers("base") == [final.base_text]
            tuned_column = app.query_one("#tuned-column")
            assert f"final (step {finished.step}" in str(tuned_column.border_subtitle)

            # Resume: the curve goes on from the saved step, with nothing drawn twice.
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: chart.train_points[-1][0] > finished.step + 2,
                           what="steps after resuming")
            await pilot.press("ctrl+t")
            await wait_for(pilot, lambda: not app.training, what="the resumed run to stop")
            steps = [s for s, _ in chart.train_points]
            assert steps[0] == 1 and steps == sorted(set(steps))
            assert app.training_view.finished.step > finished.step and not errors(app)

    asyncio.run(scenario())
    kinds = {type(m) for m in seen}
    assert {StepProgress, TrainEvent, TrainDone, ChatUpdate} <= kinds
    progress = [m for m in seen if isinstance(m, StepProgress)]
    # Every message carries all reports so far: coalescing one away loses no point.
    # (Steps 1 and 2 arrive within milliseconds, so the app may well coalesce them.)
    assert all(b.reports[:len(a.reports)] == a.reports and len(b.reports) > len(a.reports)
               for a, b in zip(progress, progress[1:]))


def test_prompts_wait_while_training_then_both_columns_answer(tmp_path):
    fakes, calls = fake_chat()
    run = tmp_path / "run"

    async def scenario():
        app = create_app(train_fn=fake_trainer(hold=True, save=True), **fakes)
        async with app.run_test(size=WIDE) as pilot:
            fill(app, data="train.jsonl", model="tiny", out=run)
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: app.training_view.reports, what="a step")
            await ask(pilot, "hello")
            await pilot.pause(0.2)
            exchange = app.compare.exchanges[1]
            assert exchange.base_note == QUEUED_NOTE and not calls
            await pilot.press("ctrl+t")
            await wait_for(pilot, lambda: app.compare.exchanges[1].tuned_text,
                           what="the queued answer")
            await wait_for(pilot, lambda: not app.compare.exchanges[1].tuned_note,
                           what="the answer to finish")
            assert app.compare.answers("base") == ["base says hi to hello"]
            assert app.compare.answers("tuned") == ["tuned says hi to hello"]
            assert calls == [("tiny", None), ("tiny", str(run))]

            # ctrl+n answers at once, on the chat thread's own copies, while a run trains.
            fill(app, out=tmp_path / "run2")
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: app.training_view.reports, what="a step")
            await ask(pilot, "again")
            await pilot.press("ctrl+n")
            await wait_for(pilot, lambda: app.compare.answers("base")[-1], what="answer now")
            assert app.training
            assert app.compare.exchanges[2].tuned_note.startswith("no adapter saved")
            await pilot.press("ctrl+t")
            await wait_for(pilot, lambda: not app.training, what="the run to stop")

    asyncio.run(scenario())


def test_quitting_mid_run_stops_and_saves_first(tmp_path):
    async def scenario():
        app = create_app(train_fn=fake_trainer(hold=True, save=True))
        async with app.run_test(size=WIDE) as pilot:
            fill(app, data="train.jsonl", out=tmp_path / "run")
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: app.training_view.reports, what="a step")
            await pilot.press("ctrl+q")
            await wait_for(pilot, lambda: not app.is_running, what="the app to exit")
        assert (tmp_path / "run/adapters.safetensors").exists()

    asyncio.run(scenario())


def test_events_arriving_under_the_command_palette_still_land(tmp_path):
    async def scenario():
        app = create_app(train_fn=fake_trainer(hold=True))
        async with app.run_test(size=WIDE) as pilot:
            fill(app, data="train.jsonl", out=tmp_path / "run")
            await pilot.press("ctrl+s")
            await pilot.press("ctrl+p")  # another screen on top while steps arrive
            await wait_for(pilot, lambda: len(app.training_view.reports) >= 3, what="steps")
            app.action_stop_run()
            await wait_for(pilot, lambda: not app.training, what="the run to stop")
            assert app.training_view.finished.stopped_early

    asyncio.run(scenario())


# -- errors are shown, never raised -------------------------------------------------
def test_bad_data_missing_model_and_bad_option_are_shown_in_the_ui(tiny_llama, tiny_data,
                                                                   tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{not json\n')

    async def scenario():
        app = create_app(data=str(bad), model=str(tiny_llama))
        async with app.run_test(size=WIDE) as pilot:
            fill(app, out=tmp_path / "r1")
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: errors(app), what="the data error")
            assert f"{bad}:2: invalid JSON" in errors(app)[-1]
            await wait_for(pilot, lambda: not app.training, what="the worker to end")
            assert not app.query_one("#start").disabled

            fill(app, data=tiny_data, model=tmp_path / "no-model", out=tmp_path / "r2")
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: len(errors(app)) == 2, what="the model error")
            assert "no-model: no such file or directory" in errors(app)[-1]

            fill(app, iters="many")
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: len(errors(app)) == 3, what="the option error")
            assert "'iters' must be int" in errors(app)[-1]

            fill(app, out=tmp_path / "nowhere")
            await pilot.press("ctrl+o")
            await wait_for(pilot, lambda: len(errors(app)) == 4, what="the open error")
            assert "no such directory" in errors(app)[-1]

            await ask(pilot, "hello")  # the chat thread cannot load the missing model
            await wait_for(pilot, lambda: app.compare.exchanges[1].base_note.startswith(
                "error"), what="the chat error")
            assert "no-model: no such file or directory" in app.compare.exchanges[1].base_note
            assert app.is_running

    asyncio.run(scenario())


# -- run directories --------------------------------------------------------------------
def write_run(run, finished=True):
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("model: some-base\ndata: d/train.jsonl\niters: 10\n")
    events = [ev.RunStarted(str(run), 10, 100, 1000, 64, 8)]
    events += [ev.StepReport(s, 10, s / 8, 4.0 / s, 1e-4, 100 * s, 30 * s, 900.0, 300.0,
                             0.2 * s, 0.1) for s in (2, 4, 6)]
    events += [ev.EvalReport(6, 1.5, 40, 1.3), ev.CheckpointSaved(6, str(run / "best"), True)]
    if finished:
        events += [ev.StepReport(s, 10, s / 8, 4.0 / s, 1e-4, 100 * s, 30 * s, 900.0, 300.0,
                                 0.2 * s, 0.1) for s in (8, 10)]
        events += [ev.EvalReport(10, 1.2, 40, 2.1), ev.CheckpointSaved(10, str(run)),
                   ev.Finished(10, str(run), 0.4, 1.2, 1.2, 2.2)]
        (run / "adapters.safetensors").write_bytes(b"")
        (run / "adapter_config.json").write_text('{"step": 10, "val_loss": 1.2}')
    write_jsonl(run / "metrics.jsonl", [e.to_json() for e in events])
    return run


def test_opening_a_finished_run_plots_its_metrics(tmp_path):
    run = write_run(tmp_path / "run")

    async def scenario():
        app = create_app(run_dir=str(run))
        async with app.run_test(size=WIDE) as pilot:
            await pilot.pause()
            chart = app.training_view.chart
            assert chart.train_points == [(s, 4.0 / s) for s in (2, 4, 6, 8, 10)]
            assert chart.val_points == [(6, 1.5), (10, 1.2)] and chart.total_steps == 10
            assert app.query_one("#progress").progress == 10
            assert str(app.query_one("#eta").render()) == "done"
            assert app.query_one("#field-model").value == "some-base"
            assert app.query_one("#field-out").value == str(run)
            assert app.poll_timer is None
            assert any(text.startswith("finished at step 10") for _, text in
                       app.event_log.entries)
            assert ("final (step 10, val 1.200)", "final") in app.compare.adapter_options

    asyncio.run(scenario())


def test_opening_a_running_run_follows_its_metrics(tmp_path):
    run = write_run(tmp_path / "run", finished=False)

    async def scenario():
        app = create_app(poll_seconds=0.05)
        async with app.run_test(size=WIDE) as pilot:
            fill(app, out=run)
            await pilot.press("ctrl+o")
            await pilot.pause()
            chart = app.training_view.chart
            assert [s for s, _ in chart.train_points] == [2, 4, 6]
            assert app.poll_timer is not None
            with open(run / "metrics.jsonl", "a") as f:
                f.write(json.dumps(ev.StepReport(8, 10, 1, 0.5, 1e-4, 800, 240, 900.0, 300.0,
                                                 1.6, 0.1).to_json()) + "\n")
            await wait_for(pilot, lambda: len(chart.train_points) == 4, what="the new point")
            with open(run / "metrics.jsonl", "a") as f:
                f.write(json.dumps(ev.Finished(8, str(run), 0.5, None, 1.5, 2.0, True)
                                   .to_json()) + "\n")
            await wait_for(pilot, lambda: app.poll_timer is None, what="polling to stop")
            assert str(app.query_one("#eta").render()) == "stopped"

    asyncio.run(scenario())


# -- data view ------------------------------------------------------------------------
def test_data_view_colours_masked_and_supervised_tokens(tiny_llama, tiny_data, tmp_path):
    async def scenario():
        app = create_app(data=str(tiny_data), model=str(tiny_llama))
        async with app.run_test(size=WIDE) as pilot:
            await pilot.press("f4")
            view = app.data_view
            assert view.display and not app.query_one("#training").display
            await wait_for(pilot, lambda: view.records or view.error, what="the data check")
            assert view.error is None
            assert "train: " in view.summary_text and "valid: " in view.summary_text
            assert "supervised tokens:" in view.summary_text
            assert len(view.records) == 72  # 64 train + 8 valid records
            first = view.records[0]
            supervised = "".join(first.plain[s.start:s.end] for s in first.spans
                                 if s.style == "bold green")
            masked = "".join(first.plain[s.start:s.end] for s in first.spans if s.style == "dim")
            assert supervised.startswith("sum ") and supervised.endswith("<|im_end|>")
            assert "add " in masked and "sum" not in masked

            bad = write_jsonl(tmp_path / "bad.jsonl", [{"messages": "nope"}])
            fill(app, data=bad)
            await pilot.press("ctrl+l")
            await wait_for(pilot, lambda: view.error, what="the data error")
            assert str(bad) in view.error and app.is_running

    asyncio.run(scenario())


# -- layout ---------------------------------------------------------------------------
def test_narrow_terminal_puts_each_section_on_a_tab(tmp_path):
    async def scenario():
        app = create_app(train_fn=fake_trainer())
        async with app.run_test(size=NARROW) as pilot:
            shown = lambda: {s for s in ("run-panel", "training", "compare", "data-view",  # noqa
                                         "event-log") if app.query_one(f"#{s}").display}
            await pilot.pause()
            assert shown() == {"training"}
            await pilot.press("f3")
            assert shown() == {"compare"} and app.focused.id == "prompt"
            await pilot.press("f1")
            assert shown() == {"run-panel"}
            await pilot.press("f5")
            assert shown() == {"event-log"}
            await pilot.resize_terminal(*WIDE)
            await pilot.pause()
            assert shown() == {"run-panel", "event-log", "training", "compare"}
            assert app.query_one("#loss-chart").border_title == "Loss"
            assert [c.border_title for c in app.query(".answer-column")] == ["Base", "Tuned"]

    asyncio.run(scenario())


def test_the_library_never_imports_textual():
    code = (
        "import importlib, pkgutil, sys, mlxsft\n"
        "for m in pkgutil.iter_modules(mlxsft.__path__):\n"
        "    if not m.name.startswith('_'):\n"
        "        importlib.import_module('mlxsft.' + m.name)\n"
        "import mlxsft.cli; mlxsft.cli.build_parser()\n"
        "bad = sorted(k for k in sys.modules if k.split('.')[0] in ('textual', 'textual_plotext')"
        " or k.startswith('mlxsft.tui'))\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
