"""Real ranks: `mlx.launch -n 2 --backend ring` on loopback runs `mlxsft train`.

Two ranks with --batch-size B train exactly like one process with --batch-size 2B (the
same global batch): the loss at every step and the final adapter agree to 1e-5 in
float32, with gradient accumulation on and off; a run started on two ranks resumes on
one; and a rank killed mid-run stops the other with a message, not a hang.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import pytest

from mlxsft.rundir import read_metrics

BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (BIN / "mlx.launch").exists(), reason="no mlx.launch")]


def free_port_pair() -> int:
    """A port p with p and p+1 free (the ring backend listens on one per rank)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no two free ports")


def train_args(model, data, out, batch_size, grad_accum=1, iters=6, *extra):
    return ["train", str(data), "--model", str(model), "--out", str(out),
            "--batch-size", str(batch_size), "--grad-accum", str(grad_accum),
            "--iters", str(iters), "--steps-per-report", "1", "--steps-per-eval", "3",
            "--steps-per-save", "3", "--samples", "0", "--warmup", "0",
            "--learning-rate", "1e-3", *extra]


def launched(args, ranks=2) -> list[str]:
    return [str(BIN / "mlx.launch"), "-n", str(ranks), "--backend", "ring",
            "-p", str(free_port_pair()), "--", str(BIN / "mlxsft"), *args]


def launch(args, ranks=2, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(launched(args, ranks), capture_output=True, text=True, timeout=timeout)


def start(args, **popen) -> subprocess.Popen:
    return subprocess.Popen(launched(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **popen)


def wait_for(out: Path, proc: subprocess.Popen, seen, timeout=180) -> None:
    """Until an event of the run satisfies `seen` (the launch still running)."""
    deadline = time.monotonic() + timeout
    while not any(seen(e) for e in read_metrics(out)):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never got there"
        time.sleep(0.5)


def alone(args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "mlxsft"), *args], capture_output=True, text=True,
                          timeout=timeout)


def losses(run: Path) -> dict[int, float]:
    """Train loss per step (the last report of a step wins: a resumed run appends)."""
    return {e["step"]: e["train_loss"] for e in read_metrics(run) if e["event"] == "train"}


def val_losses(run: Path) -> dict[int, float]:
    return {e["step"]: e["val_loss"] for e in read_metrics(run) if e["event"] == "eval"}


def assert_same_adapter(a: Path, b: Path):
    wa, wb = mx.load(str(a / "adapters.safetensors")), mx.load(str(b / "adapters.safetensors"))
    assert wa.keys() == wb.keys()
    for key in wa:
        assert mx.abs(wa[key] - wb[key]).max().item() < 1e-5, key


@pytest.fixture(scope="module")
def runs(tiny_llama, tiny_data, tmp_path_factory):
    """One process with --batch-size 4 and two ranks with --batch-size 2, each with and
    without gradient accumulation."""
    root = tmp_path_factory.mktemp("dp")
    done = {}
    for accum in (1, 2):
        one, two = root / f"one-{accum}", root / f"two-{accum}"
        result = alone(train_args(tiny_llama, tiny_data, one, 4, accum))
        assert result.returncode == 0, result.stderr
        result = launch(train_args(tiny_llama, tiny_data, two, 2, accum))
        assert (two / "adapters.safetensors").exists(), result.stdout + result.stderr
        done[accum] = (one, two, result)
    return done


@pytest.mark.parametrize("accum", [1, 2])
def test_two_ranks_train_exactly_like_one_process_with_their_global_batch(runs, accum):
    one, two, result = runs[accum]
    a, b = losses(one), losses(two)
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for step in a:
        assert abs(a[step] - b[step]) < 1e-5, (step, a[step], b[step])
    va, vb = val_losses(one), val_losses(two)
    assert sorted(va) == sorted(vb) == [3, 6]
    assert all(abs(va[s] - vb[s]) < 1e-5 for s in va)
    assert_same_adapter(one, two)
    # The run says what it is, once (rank 1 prints nothing), and records it.
    start = next(e for e in read_metrics(two) if e["event"] == "start")
    assert (start["world_size"], start["global_batch_size"]) == (2, 4)
    reports = [e for e in read_metrics(two) if e["event"] == "train"]
    assert {e["world_size"] for e in reports} == {2}
    # Tokens are the whole group's: the same count as the one process.
    assert [e["tokens"] for e in reports] == [
        e["tokens"] for e in read_metrics(one) if e["event"] == "train"]
    assert result.stdout.count("finished at step 6") == 1
    assert "global batch of 4 records = --batch-size 2 per rank x 2 ranks" in result.stdout
    saved = (two / "config.yaml").read_text()
    assert "world_size: 2\n" in saved and "global_batch_size: 4\n" in saved


def test_a_run_started_on_two_ranks_resumes_on_one(runs, tmp_path):
    one, two, _ = runs[1]
    copy = tmp_path / "resumed"
    shutil.copytree(two, copy)
    result = alone(["train", "--resume", str(copy / "checkpoints" / "step-000003")])
    assert result.returncode == 0, result.stderr
    assert ("resumed on 1 rank (the run started on 2): --batch-size 4 per rank keeps the "
            "global batch of 4") in result.stdout
    a, b = losses(one), losses(copy)
    for step in (4, 5, 6):
        assert abs(a[step] - b[step]) < 1e-5, (step, a[step], b[step])
    assert_same_adapter(one, copy)


def _rank_pid(out: Path, rank: int) -> int | None:
    """The pid of the rank training into `out` (from /proc: the launcher's MLX_RANK)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(out).encode() in cmdline and f"MLX_RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_a_killed_rank_stops_the_other_with_a_message(tiny_llama, tiny_data, tmp_path):
    out = tmp_path / "killed"
    proc = start(train_args(tiny_llama, tiny_data, out, 2, 1, 100000, "--peer-timeout", "30"))
    try:
        wait_for(out, proc, lambda e: e["event"] == "checkpoint" and "checkpoints" in e["path"])
        victim = _rank_pid(out, 1)
        assert victim is not None
        killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    # Rank 0 ended by itself, well before the 30 s peer timeout: MLX reports a lost peer.
    assert time.monotonic() - killed < 30
    assert "mlxsft: error: rank 0 (" in stderr and "lost the connection to another rank" in stderr
    failed = [e for e in read_metrics(out) if e["event"] == "failed"]
    assert len(failed) == 1 and failed[0]["last_good_checkpoint"]
    last = Path(failed[0]["last_good_checkpoint"])
    assert last.parent.name == "checkpoints" and (last / "adapters.safetensors").exists()
    assert not (out / "adapters.safetensors").exists()  # no final adapter from a broken step


def test_ctrl_c_stops_every_rank_after_the_same_step_and_rank_0_saves(
        tiny_llama, tiny_data, tmp_path):
    """Ctrl-C reaches every process of the terminal's group: the launcher and each rank."""
    out = tmp_path / "interrupted"
    proc = start(train_args(tiny_llama, tiny_data, out, 2, 1, 100000), start_new_session=True)
    try:
        wait_for(out, proc, lambda e: e["event"] == "train" and e["step"] >= 4)
        os.killpg(proc.pid, signal.SIGINT)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    events = read_metrics(out)
    finished = [e for e in events if e["event"] == "finished"]
    assert len(finished) == 1 and finished[0]["stopped_early"]
    step = finished[0]["step"]
    assert any(e["event"] == "warning" and "got SIGINT: every rank stops after step "
               f"{step}" in e["message"] for e in events)
    assert max(e["step"] for e in events if e["event"] == "train") == step
    assert json.loads((out / "adapter_config.json").read_text())["step"] == step


def test_bench_under_mlx_launch_prints_the_group_and_its_scaling(tiny_llama):
    done = launch(["bench", "--model", str(tiny_llama), "--batch-size", "2", "--seq-len", "32",
                   "--steps", "2", "--warmup", "1", "--json"])
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(results) == 1, done.stdout + done.stderr  # rank 0 alone prints
    result = results[0]
    assert result["world_size"] == 2 and result["solo_tokens_per_second"] > 0
    # Two ranks process 2 x 2 rows of 32 tokens a step: the group's count, not one rank's.
    assert result["tokens_per_second"] * result["seconds_per_step"] == pytest.approx(128)
    assert result["scaling"] == pytest.approx(
        result["tokens_per_second"] / result["solo_tokens_per_second"])


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_a_hanging_rank_is_given_up_after_the_peer_timeout(tiny_llama, tiny_data, tmp_path):
    out = tmp_path / "hung"
    proc = start(train_args(tiny_llama, tiny_data, out, 2, 1, 100000, "--peer-timeout", "5"))
    try:
        wait_for(out, proc, lambda e: e["event"] == "checkpoint" and "checkpoints" in e["path"])
        leader, hung = _rank_pid(out, 0), _rank_pid(out, 1)
        os.kill(hung, signal.SIGSTOP)  # alive, holding its sockets, answering nothing
        stopped = time.monotonic()
        while Path(f"/proc/{leader}").exists() and time.monotonic() - stopped < 60:
            time.sleep(0.2)
        waited = time.monotonic() - stopped
        os.kill(hung, signal.SIGCONT)
        _, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert 5 <= waited < 30
    assert "mlxsft: error: rank 0 (" in stderr and "waited 5s for the other ranks" in stderr
    assert "the last good adapter is " + str(out / "checkpoints") in stderr
