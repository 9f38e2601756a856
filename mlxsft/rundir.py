"""The run directory: the one module that knows its layout and names its files.

    RUN/.mlxsft.lock                       held (flock) by the run using RUN; nothing else
    RUN/config.yaml                        the resolved run config
    RUN/metrics.jsonl                      one JSON object per trainer event
    RUN/checkpoints/step-000100/           a checkpoint: adapters, adapter_config, optimizer
    RUN/best/                              the adapter with the lowest validation loss
    RUN/adapters.safetensors, adapter_config.json
                                           the final adapter (hard links into its checkpoint)

A checkpoint or best/ is saved as one unit: written into a hidden temporary directory
and renamed into place, so it is whole or absent after a kill, a full disk or a power
cut. Every file of a unit carries the same save id and step (safetensors metadata,
adapter_config.json), and loading checks them, so files from two saves are never mixed
without notice. Claiming a directory takes an exclusive lock, so two runs never write
into one directory. Model and optimizer objects are not handled here: the trainer hands
over flat dicts of arrays and gets them back.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from mlxsft.checkpoints import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, SAVE_ID, STEP,
                                atomic_write_text, default_mode, load_safetensors,
                                read_adapter_config, safetensors_metadata, save_mismatch,
                                write_failure)
from mlxsft.errors import UserError

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
LOCK = ".mlxsft.lock"
BEST = "best"
CHECKPOINTS = "checkpoints"
OPTIMIZER_STATE = "optimizer.safetensors"
_TMP, _OLD = ".tmp-", ".old-"


# -- claiming ---------------------------------------------------------------------------
def _unique_default(root: Path) -> Path:
    """runs/<date>-<time>, made here with an exclusive mkdir so two runs started in the
    same second get two directories (the second gets a -2 suffix)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        path = root / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
        except OSError as e:
            raise UserError(f"{path}: cannot create the run directory ({e.strerror}); pass "
                            "--out with a directory you can write to") from None
    raise UserError(f"{root}: cannot find a free run directory name; pass --out")


class RunDir:
    """A run directory this process has claimed (holds its lock until `release`)."""

    def __init__(self, path: Path, lock_fd: int, created: bool):
        self.path, self._lock_fd, self._created = path, lock_fd, created

    @classmethod
    def claim(cls, path: str | Path | None, resume: bool = False, flag: str = "--out",
              default_root: str | Path = "runs") -> "RunDir":
        """Lock RUN for this process. A new run needs RUN absent or empty; a resumed one
        needs it to exist. Another process holding the lock is a one-line error."""
        created = False
        if path is None:
            path, created = _unique_default(Path(default_root)), True
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise UserError(f"{flag} {path}: is a file; choose a new run directory")
        if not path.exists():
            if resume:
                raise UserError(f"{flag} {path}: no such run directory")
            try:
                path.mkdir(parents=True)
                created = True
            except FileExistsError:
                pass  # made a moment ago by another run: the lock below decides
            except OSError as e:
                raise UserError(f"{flag} {path}: cannot create it ({e.strerror}); choose a "
                                "directory you can write to") from None
        if not os.access(path, os.W_OK | os.X_OK):
            raise UserError(f"{flag} {path}: not writable; choose a directory you can write to")
        fd = _lock(path, flag)
        run = cls(path, fd, created)
        others = [p.name for p in path.iterdir() if p.name != LOCK]
        if not resume and others:
            run.release(remove_if_empty=False)
            raise UserError(f"{flag} {path}: already holds files; choose a new run "
                            "directory so nothing is overwritten")
        return run

    def release(self, remove_if_empty: bool = False) -> None:
        """Drop the lock; with `remove_if_empty`, remove what claiming made when nothing
        else was written (a run that failed before starting leaves no directory)."""
        if self._lock_fd is None:
            return
        # Unlink before unlocking: a waiting run then re-checks the inode (see `_lock`).
        (self.path / LOCK).unlink(missing_ok=True)
        os.close(self._lock_fd)
        self._lock_fd = None
        if remove_if_empty and self._created and self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()

    # -- files --------------------------------------------------------------------------
    def write_config(self, resolved: dict) -> None:
        import yaml

        with self._refused_write(CONFIG):
            atomic_write_text(self.path / CONFIG, yaml.safe_dump(resolved, sort_keys=False))

    def open_metrics(self) -> "MetricsLog":
        with self._refused_write(METRICS):
            return MetricsLog(self.path / METRICS)

    @contextmanager
    def _refused_write(self, name: str):
        """A write the file system refuses before training starts: one line, not a
        traceback (nothing has been trained yet, so nothing is lost)."""
        try:
            yield
        except Exception as e:
            reason = write_failure(e, self.path)
            if reason is None:
                raise
            raise UserError(f"cannot write {self.path / name} ({reason}); free some space or "
                            "choose another run directory") from None

    def checkpoint_dir(self, step: int) -> Path:
        return self.path / CHECKPOINTS / f"step-{step:06d}"

    def best_dir(self) -> Path:
        return self.path / BEST

    def save_checkpoint(self, step: int, weights: dict, adapter_config: dict,
                        optimizer_state: dict | None) -> Path:
        """Save a resumable checkpoint (adapter + optimizer) as one unit; return its path."""
        return _save_unit(self.checkpoint_dir(step), step, weights, adapter_config,
                          optimizer_state)

    def save_best(self, step: int, weights: dict, adapter_config: dict) -> Path:
        return _save_unit(self.best_dir(), step, weights, adapter_config, None)

    def publish_final(self, unit: Path) -> None:
        """Make `unit` the run's final adapter: RUN/adapters.safetensors and
        adapter_config.json, hard-linked (no extra space) and each renamed into place."""
        for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):  # the config names the weights: last
            tmp = self.path / f"{_TMP}{name}-{uuid.uuid4().hex[:8]}"
            try:
                os.link(unit / name, tmp)
            except OSError:  # a file system without hard links: copy
                shutil.copyfile(unit / name, tmp)
            os.replace(tmp, self.path / name)
        # An older mlxsft kept the optimizer here; it would now be stale.
        (self.path / OPTIMIZER_STATE).unlink(missing_ok=True)

    def clean_leftovers(self) -> list[str]:
        """Remove what a killed save left (hidden temporary files and directories,
        checkpoint directories without their files); return what was done, as notes."""
        notes = []
        for parent in (self.path, self.path / CHECKPOINTS):
            if not parent.is_dir():
                continue
            for entry in sorted(parent.iterdir()):
                name = entry.name
                if name.startswith(_OLD):
                    # Killed between moving the old unit away and renaming the new one in.
                    original = parent / name[len(_OLD):].rsplit("-", 1)[0]
                    if not original.exists():
                        entry.rename(original)
                        notes.append(f"restored {original} (a save was interrupted)")
                        continue
                if name.startswith((_TMP, _OLD)) or (name.startswith(".") and name.endswith(".tmp")):
                    _remove(entry)
                    notes.append(f"removed {entry} (left by an interrupted save)")
        for unit in _step_dirs(self.path):
            if not (unit / ADAPTER_CONFIG).exists() or not (unit / ADAPTER_WEIGHTS).exists():
                _remove(unit)
                notes.append(f"removed the incomplete checkpoint {unit}")
        return notes

    def resume_point(self, given: str | Path | None = None) -> "SavedAdapter":
        return resume_point(given or self.path)


def _lock(path: Path, flag: str) -> int:
    lock = path / LOCK
    for _ in range(10):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, default_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"{flag} {path}: another mlxsft run is using it; wait for it to "
                            "finish or choose another directory") from None
        # The holder may have unlinked the file between our open and flock: retry on the
        # file that is there now, or two runs would each hold a lock on a different inode.
        try:
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
    raise UserError(f"{flag} {path}: cannot take its lock; try again")


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a directory; the rename still orders writes
    finally:
        os.close(fd)


def _write_tensors(path: Path, arrays: dict, metadata: dict) -> None:
    import mlx.core as mx

    mx.save_safetensors(str(path), arrays, metadata=metadata)
    os.chmod(path, default_mode())


def _save_unit(final: Path, step: int, weights: dict, adapter_config: dict,
               optimizer_state: dict | None) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    save_id = uuid.uuid4().hex
    metadata = {SAVE_ID: save_id, STEP: str(step)}
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f"{_TMP}{final.name}-"))
    try:
        os.chmod(tmp, default_mode(directory=True))
        _write_tensors(tmp / ADAPTER_WEIGHTS, weights, metadata)
        if optimizer_state is not None:
            _write_tensors(tmp / OPTIMIZER_STATE, optimizer_state, metadata)
        config = {**adapter_config, "step": step, "save_id": save_id}
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        os.chmod(tmp / ADAPTER_CONFIG, default_mode())
        for f in tmp.iterdir():
            _fsync(f)
        old = None
        if final.exists():  # the same step saved again, or a new best
            old = final.parent / f"{_OLD}{final.name}-{save_id[:8]}"
            os.rename(final, old)
        os.rename(tmp, final)
        _fsync(final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def unit_bytes(*states: dict | None) -> int:
    """About how many bytes a checkpoint of these arrays takes on disk."""
    return sum(v.nbytes for s in states if s for v in s.values()) + (16 << 10)


def save_failure(e: BaseException, where: Path, needed: int) -> str | None:
    """The one-line reason a save failed when the file system refused it, else None."""
    reason = write_failure(e, where)
    if reason is None:
        return None
    try:
        free = shutil.disk_usage(where if where.exists() else where.parent).free
        room = f"; a checkpoint needs about {needed / 2**20:,.1f} MiB, {free / 2**20:,.1f} MiB are free"
    except OSError:
        room = f"; a checkpoint needs about {needed / 2**20:,.1f} MiB"
    return f"cannot save to {where} ({reason}){room}"


# -- reading ----------------------------------------------------------------------------
@dataclass
class SavedAdapter:
    """One adapter a run saved: the final one, best/ or a checkpoint."""

    key: str  # "final", "best" or "checkpoints/step-000100": the path under RUN
    path: Path
    step: int
    val_loss: float | None
    train_loss: float | None = None
    resumable: bool = False  # has optimizer state

    @property
    def label(self) -> str:
        name = {"final": "final", "best": "best"}.get(self.key, "checkpoint")
        val = f", val {self.val_loss:.3f}" if isinstance(self.val_loss, (int, float)) else ""
        return f"{name} (step {self.step}{val})"


def _step_dirs(run_dir: Path) -> list[Path]:
    return sorted(d for d in (run_dir / CHECKPOINTS).glob("step-*") if d.is_dir())


def _listed(key: str, path: Path) -> SavedAdapter | None:
    """The adapter in `path` when its files are there and agree, else None (quietly:
    listing must not fail on a directory another process is writing)."""
    if not (path / ADAPTER_WEIGHTS).is_file() or not (path / ADAPTER_CONFIG).is_file():
        return None
    try:
        config = json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    if config.get("save_id") is not None and problem(path, need_optimizer=False):
        return None
    step = config.get("step")
    step = step if isinstance(step, int) and not isinstance(step, bool) else 0
    val, train = config.get("val_loss"), config.get("train_loss")
    return SavedAdapter(key, path, step, val if isinstance(val, (int, float)) else None,
                        train if isinstance(train, (int, float)) else None,
                        (path / OPTIMIZER_STATE).is_file())


def saved_adapters(run_dir: str | Path | None) -> list[SavedAdapter]:
    """The adapters saved in a run so far, in the order final, best, checkpoints."""
    if run_dir is None:
        return []
    run_dir = Path(run_dir)
    candidates = [("final", run_dir), ("best", run_dir / BEST)]
    candidates += [(f"{CHECKPOINTS}/{d.name}", d) for d in _step_dirs(run_dir)]
    return [a for a in (_listed(k, p) for k, p in candidates) if a is not None]


def newest(adapters: list[SavedAdapter]) -> SavedAdapter | None:
    """The most advanced of these adapters (the final one wins a tie)."""
    return max(adapters, key=lambda a: (a.step, a.key == "final")) if adapters else None


def latest_adapter(run_dir: str | Path | None) -> SavedAdapter | None:
    return newest(saved_adapters(run_dir))


def pick_adapter(run_dir: str | Path | None, choice: str) -> SavedAdapter | None:
    """The adapter for a choice: "latest", "best", "final" or "checkpoints/step-N"."""
    if choice == "latest":
        return latest_adapter(run_dir)
    return next((a for a in saved_adapters(run_dir) if a.key == choice), None)


def problem(unit: Path, need_optimizer: bool = True) -> str | None:
    """Why the adapter (and optimizer) in `unit` cannot be trusted, or None when its
    files are whole and come from one save."""
    files = [ADAPTER_WEIGHTS] + ([OPTIMIZER_STATE] if need_optimizer else [])
    for name in [ADAPTER_CONFIG, *files]:
        if not (unit / name).is_file():
            return f"{name} is missing"
    try:
        config = read_adapter_config(unit, check_weights=False)
    except UserError as e:
        message = str(e)
        return message.split(": ", 1)[1] if message.startswith("--adapter ") else message
    for name in files:
        if config.get("save_id") is not None:
            mismatch = save_mismatch(unit / name, config)
        else:  # saved by an older mlxsft (no save id): at least refuse a truncated file
            mismatch = None if safetensors_metadata(unit / name) else f"{name} is truncated or corrupt"
        if mismatch:
            return mismatch
    return None


def run_of(given: str | Path, flag: str = "--resume") -> Path:
    """The run directory of RUN or of RUN/checkpoints/step-N."""
    path = Path(given).expanduser()
    if (path / CONFIG).is_file():
        return path
    if path.parent.name == CHECKPOINTS and (path.parent.parent / CONFIG).is_file():
        return path.parent.parent
    raise UserError(f"{flag} {given}: not a run directory (no {CONFIG}) or one of its "
                    f"{CHECKPOINTS}/step-N directories")


def config_file(run_dir: str | Path) -> Path:
    return Path(run_dir) / CONFIG


def _step_of(directory: Path) -> int:
    if directory.name.startswith("step-") and directory.name[5:].isdigit():
        return int(directory.name[5:])
    listed = _listed("final", directory)
    return listed.step if listed else 0


def resume_point(given: str | Path) -> SavedAdapter:
    """The checkpoint to resume from: the one given, else the run's newest. A damaged
    one is a one-line error naming an intact older checkpoint to pass instead (never a
    quiet fall-back: the user should know the run goes back)."""
    run_dir, given = run_of(given), Path(given).expanduser()
    units = _step_dirs(run_dir)
    if (run_dir / OPTIMIZER_STATE).is_file():  # a run saved by an older mlxsft
        units.append(run_dir)
    units.sort(key=_step_of)
    if given != run_dir:
        chosen = given
    elif units:
        chosen = units[-1]
    else:
        raise UserError(f"--resume {run_dir}: no saved adapter with optimizer state to "
                        f"continue from (expected {CHECKPOINTS}/step-N with "
                        f"{OPTIMIZER_STATE}); start a new run")
    why = problem(chosen)
    if why is None:
        key = "final" if chosen == run_dir else f"{CHECKPOINTS}/{chosen.name}"
        return _listed(key, chosen)
    older = [u for u in units if _step_of(u) < _step_of(chosen) and problem(u) is None]
    hint = (f"pass an older checkpoint: --resume {older[-1]}" if older
            else "no older checkpoint is intact; start a new run")
    raise UserError(f"--resume {chosen}: {why}; {hint}")


def read_checkpoint(unit: Path) -> tuple[dict, dict, dict]:
    """(adapter_config, weights, optimizer state) of a checked checkpoint."""
    what = f"--resume {unit}"
    config = read_adapter_config(unit)
    weights = load_safetensors(unit / ADAPTER_WEIGHTS, what)
    optimizer = (load_safetensors(unit / OPTIMIZER_STATE, what)
                 if (unit / OPTIMIZER_STATE).exists() else {})
    return config, weights, optimizer


def changed_data(recorded: list, files: dict[str, Path], sha256: Callable) -> list[str]:
    """Lines naming each data split whose file differs from the one a checkpoint
    recorded (by SHA-256)."""
    out = []
    for entry in recorded if isinstance(recorded, list) else []:
        if not isinstance(entry, dict) or entry.get("split") not in files:
            continue
        path = files[entry["split"]]
        now = sha256(path)
        if entry.get("sha256") and now != entry["sha256"]:
            out.append(f"{path} ({entry['split']}) changed since the checkpoint (sha256 "
                       f"{str(entry['sha256'])[:12]}... then, {now[:12]}... now)")
    return out


def check_run_dir(run_dir: str | Path) -> Path:
    """The run directory, or a UserError saying why it is not one."""
    path = Path(run_dir).expanduser()
    if not path.is_dir():
        raise UserError(f"run directory {path}: no such directory; pass the --out of a run "
                        "(e.g. runs/20250101-120000)")
    if not (path / METRICS).exists():
        raise UserError(f"run directory {path}: no {METRICS}; it is not a run directory "
                        "written by mlxsft train")
    return path


def find_runs(root: str | Path = "runs") -> list[Path]:
    """Run directories under `root`, oldest first by name."""
    root = Path(root)
    return sorted(p.parent for p in root.glob(f"*/{METRICS}")) if root.is_dir() else []


def run_settings(run_dir: str | Path) -> dict:
    """The resolved options of a run (RUN/config.yaml), or {} when missing or damaged."""
    import yaml

    path = Path(run_dir) / CONFIG
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError, OSError):
        return {}
    return data if isinstance(data, dict) else {}


class MetricsLog:
    """Appends one JSON object per event to RUN/metrics.jsonl (line-buffered). A write
    the file system refuses (a full disk) is dropped, not raised: losing a log line must
    not stop training; the next checkpoint save reports the disk."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", encoding="utf-8", buffering=1)
        self.dropped = 0

    def write(self, record: dict[str, Any]) -> None:
        try:
            self._file.write(json.dumps(record) + "\n")
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO):
                raise
            self.dropped += 1

    def close(self) -> None:
        try:
            self._file.close()
        except OSError:
            pass


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The events of a run so far (RUN or its metrics file); a partly written last
    line is ignored."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS
    out = []
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out
