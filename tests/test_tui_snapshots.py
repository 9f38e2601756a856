"""SVG snapshots of the TUI's main screens (pytest-textual-snapshot).

The run and the chat answers are fakes with fixed numbers and the run directory is
relative to a temporary working directory, so each screen is the same on every run.
Input cursors stop blinking and nothing keeps focus before the screenshot.
Update after an intended change: pytest tests/test_tui_snapshots.py --snapshot-update
"""

import pytest

pytest.importorskip("pytest_textual_snapshot")

from helpers.data import write_jsonl
from mlxsft.tui.app import create_app  # noqa: E402
from test_tui import NARROW, WIDE, ask, fake_chat, fake_trainer, wait_for  # noqa: E402


async def _finish_fake_run(pilot, prompt=None):
    app = pilot.app
    await pilot.pause()  # run_before starts before the screen has settled
    for widget in app.query("Input"):
        widget.cursor_blink = False
    await pilot.press("ctrl+s")
    await wait_for(pilot, lambda: app.training_view.finished and not app.training,
                   what="the fake run")
    if prompt:
        await ask(pilot, prompt)
        await wait_for(pilot, lambda: app.compare.answers("tuned")[-1] and
                       not app.compare.exchanges[1].tuned_note, what="the fake answers")
    app.screen.set_focus(None)
    await pilot.pause()


def snapshot_app():
    fakes, _ = fake_chat()
    app = create_app(data="data/train.jsonl", model="tiny-model",
                     train_fn=fake_trainer(save=True), **fakes)
    return app


def test_snapshot_main_screen_after_a_run(snap_compare, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert snap_compare(snapshot_app(), terminal_size=WIDE,
                        run_before=lambda pilot: _finish_fake_run(pilot, "hello"))


def test_snapshot_narrow_chat_tab(snap_compare, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    async def run_before(pilot):
        await _finish_fake_run(pilot, "hello")
        await pilot.press("f3")
        pilot.app.screen.set_focus(None)
        await pilot.pause()

    assert snap_compare(snapshot_app(), terminal_size=NARROW, run_before=run_before)


def test_snapshot_data_view(snap_compare, tiny_llama, tmp_path, monkeypatch):

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data/train.jsonl", [
        {"messages": [{"role": "user", "content": "add 2 3"},
                      {"role": "assistant", "content": "sum 5"}]},
        {"prompt": "add 4 4", "completion": "sum 8"},
        {"text": "Plain text carries loss on every token."}])
    app = create_app(data="data/train.jsonl", model=str(tiny_llama))

    async def run_before(pilot):
        await pilot.pause()
        await pilot.press("f4")
        await wait_for(pilot, lambda: pilot.app.data_view.records, what="the data check")
        pilot.app.screen.set_focus(None)
        await pilot.pause()

    assert snap_compare(app, terminal_size=WIDE, run_before=run_before)


def _demo_run(root):
    """A run directory written by hand: the fake run's events with samples after each
    evaluation, and adapters (dummy weights) at steps 4 and 8, best/ and final."""
    import json
    from types import SimpleNamespace

    from mlxsft import events as ev

    run = root / "runs/demo"
    run.mkdir(parents=True)
    lines = []
    for event in fake_trainer(total=8)(SimpleNamespace(out="runs/demo"), lambda: False):
        lines.append(event.to_json())
        if isinstance(event, ev.EvalReport):
            lines.append(ev.SampleAnswers(event.step, [
                {"prompt": "add 2 3", "answer": "sum 5", "reference": "sum 5", "exact": True,
                 "ended": True, "tokens": 3, "where": "valid.jsonl:1"},
                {"prompt": "add 4 4", "answer": "sum 8 sum", "reference": "sum 8",
                 "exact": False, "ended": False, "tokens": 4, "where": "valid.jsonl:2"}
            ]).to_json())
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    for where, step, val in (("checkpoints/step-000004", 4, 2.62), ("checkpoints/step-000008", 8,
                             2.14), ("best", 8, 2.14), (".", 8, 2.14)):
        (run / where).mkdir(parents=True, exist_ok=True)
        (run / where / "adapters.safetensors").write_bytes(where.encode())
        (run / where / "adapter_config.json").write_text(json.dumps({"step": step,
                                                                     "val_loss": val}))
    return run


def _demo_compare(run_dir, limit, max_tokens, progress):
    """Fixed answers for the demo run's columns, as `mlxsft.compare.compare` names them."""
    from mlxsft.compare import run_candidates
    from mlxsft.probes import Answer, Probe, SampleTable

    probes = [Probe([{"role": "user", "content": f"add {a} {b}"}], f"sum {a + b}",
                    f"valid.jsonl:{i + 1}") for i, (a, b) in enumerate([(2, 3), (4, 4)])]
    table = SampleTable(probes)
    for i, candidate in enumerate(run_candidates(run_dir, [])):
        right = min(i, 2)
        table.add(candidate.name, [Answer(f"sum {a + b}" if n < right else "3333", 3 + n, n < right)
                                   for n, (a, b) in enumerate([(2, 3), (4, 4)])],
                  3.5 - 0.5 * i)
    return table


def test_snapshot_checkpoints_after_compare(snap_compare, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _demo_run(tmp_path)
    fakes, _ = fake_chat()
    app = create_app(run_dir="runs/demo", compare_fn=_demo_compare, **fakes)

    async def run_before(pilot):
        await pilot.pause()
        await pilot.press("f6", "c")
        await wait_for(pilot, lambda: pilot.app.checkpoints.scores, what="the comparison")
        pilot.app.screen.set_focus(None)
        await pilot.pause()

    assert snap_compare(app, terminal_size=WIDE, run_before=run_before)
