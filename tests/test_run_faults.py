"""Training under faults: a full disk, changed data on --resume, a damaged newest
checkpoint, signals, two runs on one directory, and kill -9 inside a checkpoint write.
Signals, concurrency and kills run `mlxsft train` in subprocesses on the tiny model."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlxsft import events as ev
from mlxsft import rundir
from mlxsft.cli import main
from mlxsft.config import TrainConfig
from mlxsft.rundir import problem, read_metrics, resume_point
from mlxsft.train import train

ROOT = Path(__file__).resolve().parent.parent
COMMON = ["--batch-size", "4", "--learning-rate", "1e-3", "--steps-per-report", "1",
          "--steps-per-eval", "0", "--lora-dropout", "0"]


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("mlxsft: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def train_losses(run):
    return {m["step"]: m["train_loss"] for m in read_metrics(run) if m["event"] == "train"}


# -- a full disk ---------------------------------------------------------------------------
def test_a_full_disk_is_a_failed_event_and_the_last_checkpoint_stays_resumable(
        tiny_llama, tiny_data, tmp_path, monkeypatch, capsys):
    real, calls = rundir._write_tensors, {"n": 0}

    def fills_the_disk(path, arrays, metadata):
        calls["n"] += 1
        if calls["n"] > 2:  # the first checkpoint (adapter + optimizer) fits, nothing after
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, arrays, metadata)

    monkeypatch.setattr(rundir, "_write_tensors", fills_the_disk)
    out = tmp_path / "run"
    code = main(["train", str(tiny_data), "--model", str(tiny_llama), "--out", str(out),
                 "--iters", "6", "--steps-per-save", "2", *COMMON])
    captured = capsys.readouterr()
    assert code == 1
    line = _one_error_line(captured.err)
    assert line.startswith(f"mlxsft: error: cannot save to {out / 'checkpoints' / 'step-000004'} "
                           "(No space left on device); a checkpoint needs about ")
    assert line.endswith(f"MiB are free; free some space, then `mlxsft train --resume {out}` "
                         f"continues from {out / 'checkpoints' / 'step-000002'}")
    assert read_metrics(out)[-1]["event"] == "failed"
    assert os.listdir(out / "checkpoints") == ["step-000002"]  # no partial unit
    monkeypatch.setattr(rundir, "_write_tensors", real)
    assert resume_point(out).step == 2
    assert main(["train", "--resume", str(out)]) == 0
    assert resume_point(out).step == 6


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 300 KiB tmpfs (room for config, metrics and two tiny checkpoints); skipped
    where mounting is not permitted."""
    where = tmp_path / "small"
    where.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(where)],
                                 capture_output=True).returncode == 0
    except OSError:
        mounted = False
    if not mounted:
        pytest.skip("cannot mount a tmpfs here (needs root or a user namespace)")
    yield where
    subprocess.run(["umount", str(where)], check=True)


def test_a_really_full_disk(tiny_llama, tiny_data, small_tmpfs, capsys):
    # MLX reports a full disk in its own words (not an OSError): the disk itself is checked.
    out = small_tmpfs / "run"
    code = main(["train", str(tiny_data), "--model", str(tiny_llama), "--out", str(out),
                 "--iters", "20", "--steps-per-save", "1", *COMMON])
    assert code == 1
    line = _one_error_line(capsys.readouterr().err)
    assert " (no space left on the device); a checkpoint needs about " in line
    last = resume_point(out)
    assert line.endswith(f"continues from {last.path}") and problem(last.path) is None
    assert read_metrics(out)[-1]["event"] == "failed"
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]


def test_a_bug_while_saving_is_not_reported_as_a_full_disk(tiny_llama, tiny_data, tmp_path,
                                                           monkeypatch):
    def broken(path, arrays, metadata):
        raise ValueError("a bug")

    monkeypatch.setattr(rundir, "_write_tensors", broken)
    with pytest.raises(ValueError, match="a bug"):
        list(train(TrainConfig(data=str(tiny_data), model=str(tiny_llama),
                               out=str(tmp_path / "run"), iters=1, steps_per_eval=0)))


# -- resuming ------------------------------------------------------------------------------
def test_resume_refuses_changed_data_unless_allowed(tiny_llama, tiny_data, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train.jsonl", "valid.jsonl"):
        (data / name).write_bytes((tiny_data / name).read_bytes())
    out = tmp_path / "run"
    assert main(["train", str(data), "--model", str(tiny_llama), "--out", str(out),
                 "--iters", "2", *COMMON]) == 0
    lines = (data / "train.jsonl").read_text().splitlines(keepends=True)
    (data / "train.jsonl").write_text("".join(lines[1:]))
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--iters", "4"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"{data / 'train.jsonl'} (train) changed since the checkpoint (sha256 " in line
    assert line.endswith("restore it, or pass --allow-data-change to continue on the new data")
    assert resume_point(out).step == 2  # nothing was written
    assert main(["train", "--resume", str(out), "--iters", "4", "--allow-data-change"]) == 0
    assert "note: continuing on changed data:" in capsys.readouterr().out


def test_resume_from_an_older_checkpoint_when_the_newest_is_damaged(tiny_llama, tiny_data,
                                                                   tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(tiny_data), "--model", str(tiny_llama), "--out", str(out),
                 "--iters", "6", "--steps-per-save", "3", *COMMON]) == 0
    newest = out / "checkpoints" / "step-000006" / "optimizer.safetensors"
    newest.write_bytes(newest.read_bytes()[:1000])
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--iters", "8"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.endswith("optimizer.safetensors is truncated or corrupt; pass an older "
                         f"checkpoint: --resume {out / 'checkpoints' / 'step-000003'}")
    before = train_losses(out)
    assert main(["train", "--resume", str(out / "checkpoints" / "step-000003")]) == 0
    printed = capsys.readouterr().out
    assert f"resumed from {out / 'checkpoints' / 'step-000003'} at step 3" in printed
    # Steps 4..6 again, from the older checkpoint, give the same losses as the first time.
    after = [m for m in read_metrics(out) if m["event"] == "train"][-3:]
    assert [m["step"] for m in after] == [4, 5, 6]
    assert all(abs(m["train_loss"] - before[m["step"]]) < 1e-5 for m in after)
    assert problem(out / "checkpoints" / "step-000006") is None  # replaced by a whole unit


def test_the_cli_says_what_setup_is_doing(tiny_llama, tiny_data, tmp_path, capsys):
    assert main(["train", str(tiny_data), "--model", str(tiny_llama), "--out",
                 str(tmp_path / "run"), "--iters", "2", "--steps-per-report", "10",
                 "--steps-per-eval", "0"]) == 0
    printed = capsys.readouterr().out.splitlines()
    firsts = [next(i for i, line in enumerate(printed) if line.startswith(text))
              for text in (f"loading model {tiny_llama}...", "tokenizing 72 records...",
                           "training on 64 records", "compiling the training step",
                           "step 1/2 ")]
    assert firsts == sorted(firsts)


# -- in subprocesses ------------------------------------------------------------------------
def _spawn(args, cwd=None, script=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    argv = [sys.executable, "-c", script, *args] if script else [sys.executable, "-m", "mlxsft",
                                                                  *args]
    return subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_step(run: Path, proc, step: int, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(m.get("event") == "train" and m["step"] >= step for m in read_metrics(run)):
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    raise AssertionError("no step report in time")


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_save_and_exit_with_a_status(signum, tiny_llama, tiny_data, tmp_path):
    out = tmp_path / "run"
    proc = _spawn(["train", str(tiny_data), "--model", str(tiny_llama), "--out", str(out),
                   "--iters", "100000", *COMMON])
    _wait_for_step(out, proc, 2)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=120)
    name = signal.Signals(signum).name
    assert proc.returncode == 128 + signum, stderr
    assert f"mlxsft: {name}: stopping after this step and saving the adapter" in stderr
    finished = read_metrics(out)[-1]
    assert finished["event"] == "finished" and finished["stopped_early"]
    assert (f"mlxsft: stopped by {name} at step {finished['step']}; `mlxsft train --resume "
            f"{out}` continues") in stderr
    point = resume_point(out)
    assert point.step == finished["step"] >= 2 and problem(point.path) is None
    assert "Traceback" not in stderr


@pytest.mark.slow
def test_two_runs_never_share_a_directory(tiny_llama, tiny_data, tmp_path):
    # (Default names are made with an exclusive mkdir: test_rundir claims three in a second.)
    same = tmp_path / "same"
    args = ["train", str(tiny_data), "--model", str(tiny_llama), "--iters", "2", *COMMON]
    procs = [_spawn([*args, "--out", str(same)]) for _ in range(2)]
    results = [(p.wait(timeout=300), p.communicate()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2], results
    loser = next(err for code, (_, err) in results if code == 2)
    line = _one_error_line(loser)
    assert "another mlxsft run is using it" in line or "already holds files" in line
    assert [m["event"] for m in read_metrics(same)].count("start") == 1
    assert resume_point(same).step == 2


KILL_DURING_SAVE = """
import os, signal, sys
from mlxsft import rundir
from mlxsft.cli import main

real, seen = rundir._write_tensors, []

def write(path, arrays, metadata):
    real(path, arrays, metadata)
    seen.append(path.name)
    if seen.count("optimizer.safetensors") == 2:  # inside the second checkpoint's write
        os.kill(os.getpid(), signal.SIGKILL)

rundir._write_tensors = write
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_kill_9_inside_a_checkpoint_write_resumes_exactly(tiny_llama, tiny_data, tmp_path,
                                                         capsys):
    args = ["--model", str(tiny_llama), "--iters", "9", "--steps-per-save", "3", *COMMON]
    straight = tmp_path / "straight"
    assert main(["train", str(tiny_data), "--out", str(straight), *args]) == 0
    out = tmp_path / "run"
    proc = _spawn(["train", str(tiny_data), "--out", str(out), *args], script=KILL_DURING_SAVE)
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    leftovers = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert leftovers[0].startswith(".tmp-step-000006-") and leftovers[1:] == ["step-000003"]
    capsys.readouterr()
    assert main(["train", "--resume", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"note: removed {out / 'checkpoints' / leftovers[0]} (left by an interrupted save)" in printed
    assert sorted(os.listdir(out / "checkpoints")) == ["step-000003", "step-000006", "step-000009"]
    a, b = train_losses(straight), train_losses(out)
    assert len(a) == 9 and all(abs(a[s] - b[s]) < 1e-5 for s in range(4, 10))
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["step"] == 9
