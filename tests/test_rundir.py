"""The run directory's owner: claiming, checkpoints saved as one unit, listing, resume
points, leftovers of a killed save, file modes, and damaged adapter configs."""

import errno
import json
import os
import shutil
import stat

import mlx.core as mx
import pytest

from mlxsft import rundir
from mlxsft.checkpoints import ADAPTER_CONFIG, ADAPTER_WEIGHTS, SAVE_ID, safetensors_metadata
from mlxsft.errors import UserError
from mlxsft.rundir import OPTIMIZER_STATE, RunDir, problem, resume_point, saved_adapters


def save(run: RunDir, step: int, value: float = 0.0, optimizer=True):
    weights = {"layer.lora_a": mx.full((2, 3), value)}
    state = {"m": mx.full((4,), value)} if optimizer else None
    return run.save_checkpoint(step, weights, {"fine_tune_type": "lora", "val_loss": 1.0 / step},
                               state)


@pytest.fixture
def run(tmp_path):
    r = RunDir.claim(tmp_path / "run")
    (r.path / "config.yaml").write_text("iters: 10\n")
    yield r
    r.release()


# -- claiming ----------------------------------------------------------------------------
def test_a_claimed_directory_cannot_be_claimed_again_until_released(tmp_path):
    first = RunDir.claim(tmp_path / "run")
    with pytest.raises(UserError, match="another mlxsft run is using it"):
        RunDir.claim(tmp_path / "run")  # a new run on the same --out
    with pytest.raises(UserError, match="another mlxsft run is using it"):
        RunDir.claim(tmp_path / "run", resume=True)  # a --resume of the running run
    (first.path / "metrics.jsonl").write_text("")
    first.release()
    assert os.listdir(tmp_path / "run") == ["metrics.jsonl"]  # the lock file is gone
    with pytest.raises(UserError, match="already holds files"):
        RunDir.claim(tmp_path / "run")
    RunDir.claim(tmp_path / "run", resume=True).release()


def test_a_failed_start_leaves_no_directory_but_keeps_one_the_user_made(tmp_path):
    RunDir.claim(tmp_path / "new").release(remove_if_empty=True)
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()
    RunDir.claim(tmp_path / "mine").release(remove_if_empty=True)
    assert (tmp_path / "mine").is_dir() and not any((tmp_path / "mine").iterdir())


def test_default_names_are_unique_within_one_second(tmp_path):
    runs = [RunDir.claim(None, default_root=tmp_path / "runs") for _ in range(3)]
    names = [r.path.name for r in runs]
    assert len(set(names)) == 3
    # Same second: the later ones get -2, -3 (a run that straddles a second gets a new stamp).
    assert all(n.startswith(names[0]) for n in names) or len({n[:15] for n in names}) > 1
    for r in runs:
        r.release()


# -- saving as one unit -------------------------------------------------------------------
def test_a_checkpoint_is_one_unit_tied_by_a_save_id(run):
    unit = save(run, 3, 0.5)
    assert sorted(os.listdir(unit)) == [ADAPTER_CONFIG, ADAPTER_WEIGHTS, OPTIMIZER_STATE]
    config = json.loads((unit / ADAPTER_CONFIG).read_text())
    assert config["step"] == 3 and len(config["save_id"]) == 32
    for name in (ADAPTER_WEIGHTS, OPTIMIZER_STATE):
        assert safetensors_metadata(unit / name) == {SAVE_ID: config["save_id"], "mlxsft_step": "3"}
    assert problem(unit) is None
    # Saving the same step again replaces the whole unit.
    save(run, 3, 0.25)
    assert mx.load(str(unit / ADAPTER_WEIGHTS))["layer.lora_a"][0, 0].item() == 0.25
    assert [p.name for p in unit.parent.iterdir()] == ["step-000003"]  # nothing left over


def test_files_of_two_saves_are_refused_and_an_older_checkpoint_is_named(run):
    save(run, 2, 0.1)
    newer = save(run, 4, 0.2)
    # What a kill between per-file writes used to leave: weights of one save, config of another.
    shutil.copy(run.checkpoint_dir(2) / ADAPTER_WEIGHTS, newer / ADAPTER_WEIGHTS)
    assert "from another save" in problem(newer)
    with pytest.raises(UserError, match=r"adapters.safetensors is from another save .*step 2 "
                       r"vs 4.*pass an older checkpoint: --resume .*step-000002"):
        resume_point(run.path)
    assert resume_point(run.checkpoint_dir(2)).step == 2  # the older one, named explicitly
    assert [a.key for a in saved_adapters(run.path)] == ["checkpoints/step-000002"]
    # A truncated optimizer state of the only checkpoint: no silent resume either.
    shutil.rmtree(newer)
    state = run.checkpoint_dir(2) / OPTIMIZER_STATE
    state.write_bytes(state.read_bytes()[:-10])
    with pytest.raises(UserError, match="optimizer.safetensors is truncated or corrupt; no "
                       "older checkpoint is intact"):
        resume_point(run.path)


def test_a_kill_during_a_best_save_leaves_the_previous_best_whole(run, monkeypatch):
    weights = {"w": mx.zeros((2,))}
    run.save_best(5, weights, {"val_loss": 2.0})
    real = rundir._write_tensors

    def killed(path, arrays, metadata):
        real(path, arrays, metadata)
        raise KeyboardInterrupt  # stands for the kill: after the weights, before the config

    monkeypatch.setattr(rundir, "_write_tensors", killed)
    with pytest.raises(KeyboardInterrupt):
        run.save_best(9, {"w": mx.ones((2,))}, {"val_loss": 1.0})
    best = run.best_dir()
    config = json.loads((best / ADAPTER_CONFIG).read_text())
    assert config["step"] == 5 and problem(best, need_optimizer=False) is None
    assert mx.load(str(best / ADAPTER_WEIGHTS))["w"].tolist() == [0.0, 0.0]
    assert sorted(os.listdir(run.path)) == [".mlxsft.lock", "best", "config.yaml"]


def test_leftovers_of_a_kill_are_cleaned_and_a_moved_unit_restored(run):
    save(run, 2)
    kept = save(run, 4)
    # Killed between moving step-4 away to replace it and renaming the new one in:
    os.rename(kept, run.path / "checkpoints" / ".old-step-000004-1a2b3c4d")
    (run.path / "checkpoints" / ".tmp-step-000004-xyz").mkdir()
    (run.path / ".tmp-adapters.safetensors-1234").write_bytes(b"partial")
    (run.path / ".config.yaml.abcd.tmp").write_text("partial")
    incomplete = run.checkpoint_dir(6)  # an older mlxsft's half-written checkpoint
    incomplete.mkdir()
    (incomplete / ADAPTER_WEIGHTS).write_bytes(b"")
    notes = run.clean_leftovers()
    assert len(notes) == 5 and any("restored" in n for n in notes)
    assert sorted(os.listdir(run.path / "checkpoints")) == ["step-000002", "step-000004"]
    assert sorted(os.listdir(run.path)) == [".mlxsft.lock", "checkpoints", "config.yaml"]
    assert resume_point(run.path).step == 4


def test_the_final_adapter_is_linked_and_listed_with_step_and_loss(run):
    run.publish_final(save(run, 7))
    final = run.path / ADAPTER_WEIGHTS
    assert os.path.samefile(final, run.checkpoint_dir(7) / ADAPTER_WEIGHTS)
    listed = {a.key: a for a in saved_adapters(run.path)}
    assert listed["final"].step == 7 and listed["final"].val_loss == pytest.approx(1 / 7)
    assert listed["checkpoints/step-000007"].resumable and not listed["final"].resumable
    assert rundir.pick_adapter(run.path, "latest").key == "final"  # a tie goes to final


# -- file modes ---------------------------------------------------------------------------
@pytest.mark.parametrize("umask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_run_files_follow_the_umask(tmp_path, umask, file_mode, dir_mode):
    old = os.umask(umask)
    try:
        r = RunDir.claim(tmp_path / "run")
        r.write_config({"iters": 1})
        r.publish_final(save(r, 1))
        r.release()
    finally:
        os.umask(old)
    for path in (tmp_path / "run" / "config.yaml", tmp_path / "run" / ADAPTER_WEIGHTS,
                 tmp_path / "run" / "checkpoints" / "step-000001" / OPTIMIZER_STATE):
        assert stat.S_IMODE(path.stat().st_mode) == file_mode, path
    assert stat.S_IMODE((tmp_path / "run" / "checkpoints" / "step-000001").stat().st_mode) == dir_mode


# -- damaged or hand-edited adapter configs ---------------------------------------------------
@pytest.mark.parametrize("edit,field", [
    ({"lora_parameters": {"rank": "eight", "scale": 2.0, "dropout": 0.0}}, "lora_parameters.rank"),
    ({"lora_parameters": {"rank": 8, "scale": [2], "dropout": 0.0}}, "lora_parameters.scale"),
    ({"lora_parameters": {"rank": 8, "scale": 2.0, "dropout": 0.0, "keys": "q_proj"}},
     "lora_parameters.keys"),
    ({"lora_parameters": [8]}, "lora_parameters"),
    ({"num_layers": "all"}, "num_layers"),
    ({"step": -3}, "step"),
    ({"fine_tune_type": "qlora"}, "fine_tune_type"),
])
def test_wrong_types_in_adapter_config_are_one_line(run, edit, field):
    unit = save(run, 1)
    config = json.loads((unit / ADAPTER_CONFIG).read_text())
    (unit / ADAPTER_CONFIG).write_text(json.dumps({**config, **edit}))
    from mlxsft.checkpoints import read_adapter_config

    with pytest.raises(UserError, match=f"adapter_config.json: '{field}' must be .*fix it, or "
                       "use another checkpoint"):
        read_adapter_config(unit)
    with pytest.raises(UserError, match=f"'{field}' must be"):
        resume_point(run.path)


def test_resume_point_of_a_damaged_config_json_is_one_line(run):
    unit = save(run, 1)
    (unit / ADAPTER_CONFIG).write_text("{not json")
    with pytest.raises(UserError, match="invalid JSON"):
        resume_point(run.path / "checkpoints" / "step-000001")
    with pytest.raises(UserError, match=r"step-000001/adapter_config.json:1: invalid JSON .*; "
                       "no older checkpoint is intact; start a new run"):
        resume_point(run.path)
    shutil.rmtree(unit)
    with pytest.raises(UserError, match="no saved adapter with optimizer state"):
        resume_point(run.path)
    with pytest.raises(UserError, match="not a run directory"):
        resume_point(run.path / "best")


def test_a_full_disk_while_saving_leaves_no_partial_unit(run, monkeypatch):
    save(run, 2)

    def full(path, arrays, metadata):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rundir, "_write_tensors", full)
    with pytest.raises(OSError) as raised:
        save(run, 4)
    reason = rundir.save_failure(raised.value, run.checkpoint_dir(4), 3 << 20)
    assert reason.startswith(f"cannot save to {run.checkpoint_dir(4)} (No space left on device)"
                             "; a checkpoint needs about 3.0 MiB")
    assert os.listdir(run.path / "checkpoints") == ["step-000002"]
    assert rundir.save_failure(ValueError("a bug"), run.path, 1) is None  # not the disk: raised


def test_a_full_disk_before_training_is_one_line(run, monkeypatch):
    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rundir, "atomic_write_text", full)
    with pytest.raises(UserError, match=r"cannot write .*config.yaml \(No space left on device\); "
                       "free some space or choose another run directory"):
        run.write_config({"iters": 1})
