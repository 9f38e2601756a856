"""The TUI's behaviour panel: held-out sample answers in the event log and the Samples log
(live and replayed from metrics.jsonl), and the Checkpoints section — the run's saved
adapters, `mlxsft compare`'s scores per adapter, and the row that sets the chat pane's
Tuned adapter."""

import re

import pytest

from mlxsft import events as ev
from mlxsft.errors import UserError
from mlxsft.rundir import read_metrics, saved_adapters
from mlxsft.tui.app import create_app
from mlxsft.tui.widgets.checkpoints import COLUMNS

from test_tui import WIDE, ask, fake_chat, fake_trainer, wait_for

pytest.importorskip("textual_plotext")


@pytest.fixture(scope="module")
def tiny_run(tiny_llama, tiny_data, tmp_path_factory):
    """A real 4-step run: checkpoints at steps 2 and 4, best/, final, and 2 samples per
    evaluation in its metrics.jsonl."""
    from mlxsft.cli import main

    run = tmp_path_factory.mktemp("checkpoints") / "run"
    assert main(["train", str(tiny_data), "--model", str(tiny_llama), "--out", str(run),
                 "--iters", "4", "--batch-size", "8", "--learning-rate", "1e-3",
                 "--steps-per-save", "2", "--steps-per-eval", "2", "--samples", "2"]) == 0
    return run


def cells(app):
    table = app.query_one("#checkpoints-table")
    return {row.key.value: dict(zip(COLUMNS, map(str, table.get_row(row.key))))
            for row in table.ordered_rows}


def test_samples_from_a_live_run_show_in_the_event_log():
    sample_right = {"prompt": "add 2 3", "answer": "sum 5", "reference": "sum 5",
                    "where": "valid.jsonl:1", "exact": True, "ended": True, "tokens": 3}
    sample_wrong = {"prompt": "add 4 4", "answer": "sum 8 sum 8 sum", "reference": "sum 8",
                    "where": "valid.jsonl:2", "exact": False, "ended": False, "tokens": 8}
    plain = fake_trainer(total=4)

    def train_fn(config, should_stop, resume_from=None):
        for event in plain(config, should_stop):
            yield event
            if isinstance(event, ev.EvalReport):
                yield ev.SampleAnswers(event.step, [sample_right, sample_wrong])

    async def scenario():
        app = create_app(data="d.jsonl", model="m", train_fn=train_fn)
        async with app.run_test(size=WIDE) as pilot:
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: not app.training and app.training_view.finished,
                           what="the fake run")
            lines = [(s, t) for s, t in app.event_log.entries if "add " in t]
            assert lines == [("good", "step 4: right: add 2 3 -> sum 5"),
                             ("warning", "step 4: wrong: add 4 4 -> sum 8 sum 8 sum")]
            # The Checkpoints section's Samples log shows the same answers.
            assert app.checkpoints.samples == lines

    import asyncio
    asyncio.run(scenario())


@pytest.mark.slow  # a real 4-step run, then six models answer: ~15 s
def test_checkpoints_list_a_real_run_compare_fills_scores_and_a_row_sets_the_chat_adapter(
        tiny_run):
    import asyncio

    from mlxsft.compare import compare

    fakes, calls = fake_chat()
    adapters = {a.key: a for a in saved_adapters(tiny_run)}
    assert set(adapters) == {"final", "best", "checkpoints/step-000002",
                             "checkpoints/step-000004"}
    # What the section must show: the library's own comparison, answered independently.
    expected = compare(tiny_run, limit=2, max_tokens=3)
    summary = {c: expected.summary(c) for c in expected.columns}

    async def scenario():
        app = create_app(run_dir=str(tiny_run), **fakes)
        async with app.run_test(size=WIDE) as pilot:
            # The replayed metrics.jsonl: each evaluation's samples are in the event log.
            samples = [r for r in read_metrics(tiny_run) if r.get("event") == "samples"]
            assert [r["step"] for r in samples] == [2, 4]
            logged = [t for _, t in app.event_log.entries
                      if re.match(r"step \d+: (right|wrong|answer): ", t)]
            assert len(logged) == 4
            for line, sample in zip(logged, [s for r in samples for s in r["samples"]]):
                assert line.startswith("step ") and sample["prompt"] in line
                assert (": right: " in line) == (sample["exact"] is True)
            assert [t for _, t in app.checkpoints.samples] == logged

            await pilot.press("f6")
            view = app.checkpoints
            assert view.display and not app.query_one("#workspace").display
            assert view.row_keys == ["final", "best", "checkpoints/step-000002",
                                     "checkpoints/step-000004"]
            shown = cells(app)
            for key, adapter in adapters.items():
                assert shown[key]["step"] == str(adapter.step)
                assert shown[key]["val loss"] == f"{adapter.val_loss:.4f}"
                assert shown[key]["exact"] == "-"  # no scores before comparing

            view.limit, view.max_tokens = 2, 3
            await pilot.press("c")
            await wait_for(pilot, lambda: not view.comparing, timeout=60,
                           what="the comparison")
            assert view.scores, str(app.query_one("#checkpoints-status").render())
            assert view.row_keys[0] == "base"
            shown = cells(app)
            # Each adapter's row has the scores of its own column; final shares step 4's
            # files and best (step 4) holds the same weights, so compare answers once for all three.
            column = {"base": "base", "final": "final = best (step 4)", "best": "final = best (step 4)",
                      "checkpoints/step-000002": "step-000002 (step 2)",
                      "checkpoints/step-000004": "final = best (step 4)"}
            for key, name in column.items():
                s = summary[name]
                assert shown[key]["ref loss"] == f"{s['loss']:.4f}", key
                assert shown[key]["ended"] == f"{100 * s['ended']:.0f}%"
                assert shown[key]["tokens"] == f"{s['mean_tokens']:.1f}"
            assert shown["base"]["ref loss"] != shown["checkpoints/step-000002"]["ref loss"]

            # Enter on the step-2 row: the chat pane's Tuned column answers with it.
            assert app.compare.adapter_choice == "latest"
            table = app.query_one("#checkpoints-table")
            table.focus()
            table.move_cursor(row=view.row_keys.index("base"))  # the base has no adapter
            await pilot.press("enter")
            await pilot.pause()
            assert app.compare.adapter_choice == "latest" and app.view == "checkpoints"
            assert "Base column" in str(app.query_one("#checkpoints-status").render())
            table.move_cursor(row=view.row_keys.index("checkpoints/step-000002"))
            await pilot.press("enter")
            await pilot.pause()
            assert app.compare.adapter_choice == "checkpoints/step-000002"
            assert app.view == "train"  # the chat pane is part of the wide Train view
            await ask(pilot, "add 1 1")
            await wait_for(pilot, lambda: any(adapter for _, adapter in calls),
                           what="the tuned answer")
            assert (str(tiny_run), None) not in calls
            tuned = [adapter for _, adapter in calls if adapter]
            assert tuned == [str(adapters["checkpoints/step-000002"].path)]

    asyncio.run(scenario())


def test_compare_errors_show_in_the_section(tmp_path, monkeypatch):
    import asyncio

    monkeypatch.chdir(tmp_path)
    asked = []

    def failing(run_dir, **kwargs):
        asked.append((str(run_dir), kwargs["limit"], kwargs["max_tokens"]))
        kwargs["progress"]("answering 8 prompts with base")
        raise UserError(f"{run_dir}: the run had no validation data to probe with")

    async def scenario():
        app = create_app(data="d.jsonl", model="m", train_fn=fake_trainer(save=True),
                         compare_fn=failing)
        async with app.run_test(size=WIDE) as pilot:
            await pilot.press("f6")
            await pilot.press("c")  # no run yet
            status = str(app.query_one("#checkpoints-status").render())
            assert status.startswith("nothing to compare") and not asked
            await pilot.press("f2", "ctrl+s")
            await wait_for(pilot, lambda: not app.training and app.training_view.finished,
                           what="the fake run")
            await pilot.press("f6")
            assert app.checkpoints.row_keys == ["final"]
            await pilot.press("c")
            await wait_for(pilot, lambda: not app.checkpoints.comparing and asked,
                           what="the comparison")
            await pilot.pause()
            status = str(app.query_one("#checkpoints-status").render())
            assert asked == [("runs/fake", 8, 64)]
            assert status == ("error: runs/fake: the run had no validation data to probe "
                              "with")
            assert not app.query_one("#compare-run").disabled

    asyncio.run(scenario())
