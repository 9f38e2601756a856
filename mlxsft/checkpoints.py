"""Files that must never be half-written, and the adapter directory format.

Atomic writes (a temporary name in the same directory, then a rename) with the
permissions the user's umask gives ordinary files; the adapter directory
(adapters.safetensors + adapter_config.json, mlx-lm's layout) read with every field
checked, so a damaged or hand-edited file is one line naming the field. Where adapters
sit inside a run directory is `mlxsft.rundir`'s business, not this module's.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any

from mlxsft.errors import UserError

# heavy: mlx.core is imported inside the functions that read or write tensors; the TUI
# loads this module when it opens, before any model is needed.

ADAPTER_WEIGHTS = "adapters.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
# Safetensors metadata keys (and adapter_config.json's "save_id") tying the files of one
# save together, so files of two saves are never loaded as one adapter.
SAVE_ID, STEP = "mlxsft_save_id", "mlxsft_step"


def _umask() -> int:
    # /proc reads it without changing it (os.umask can only read by setting, which races
    # with a thread creating files meanwhile); elsewhere the set-and-restore is brief.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode(directory: bool = False) -> int:
    """The mode a plain open() or mkdir() would give: tempfile makes files 0600 and
    directories 0700, which would hide a run's files from the user's group."""
    return (0o777 if directory else 0o666) & ~_umask()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, default_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_adapter_config(directory: str | Path, check_weights: bool = True) -> dict[str, Any]:
    """adapter_config.json of an adapter directory, its fields checked, and (with
    `check_weights`) the weights checked to come from the same save; one-line errors."""
    directory = Path(directory)
    config_path = directory / ADAPTER_CONFIG
    if not directory.exists():
        raise UserError(f"--adapter {directory}: no such directory")
    if not config_path.exists() or not (directory / ADAPTER_WEIGHTS).exists():
        raise UserError(f"--adapter {directory}: expected {ADAPTER_CONFIG} and "
                        f"{ADAPTER_WEIGHTS} (a run directory, or its best/ or a checkpoint)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{config_path}: not UTF-8 text; the adapter is damaged, use another "
                        "checkpoint or train again") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{config_path}:{e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(config, dict):
        raise UserError(f"{config_path}: expected a JSON object, found "
                        f"{type(config).__name__}; the adapter is damaged, use another "
                        "checkpoint or train again")
    _check_fields(config, config_path)
    if check_weights and config.get("save_id") is not None:
        mismatch = save_mismatch(directory / ADAPTER_WEIGHTS, config)
        if mismatch:
            raise UserError(f"--adapter {directory}: {mismatch}; use another checkpoint "
                            "(RUN/checkpoints/step-N) or train again")
    return config


def save_mismatch(path: Path, config: dict) -> str | None:
    """Why the tensors in `path` are not those `config` was saved with, or None."""
    metadata = safetensors_metadata(path)
    if metadata is None:
        return f"{path.name} is truncated or corrupt"
    if metadata.get(SAVE_ID) != config.get("save_id"):
        return (f"{path.name} is from another save than {ADAPTER_CONFIG} (step "
                f"{metadata.get(STEP, '?')} vs {config.get('step')}; a save was interrupted)")
    return None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# field -> (test, what it must be); None is allowed for every optional field.
_FIELDS = {
    "fine_tune_type": (lambda v: v in ("lora", "dora", "full"), "lora, dora or full"),
    "num_layers": (lambda v: _is_int(v) and v != 0, "a whole number (-1: all layers)"),
    "step": (lambda v: _is_int(v) and v >= 0, "a whole number of at least 0"),
    "val_loss": (_is_number, "a number"),
    "lora_alpha": (_is_number, "a number"),
    "lora_parameters": (lambda v: isinstance(v, dict), "an object"),
    "lora_parameters.rank": (lambda v: _is_int(v) and v >= 1, "a whole number of at least 1"),
    "lora_parameters.scale": (_is_number, "a number"),
    "lora_parameters.dropout": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "lora_parameters.keys": (lambda v: isinstance(v, list) and all(isinstance(k, str) for k in v),
                             "a list of module names"),
}


def _check_fields(config: dict, config_path: Path) -> None:
    for name, (ok, what) in _FIELDS.items():
        outer, _, inner = name.partition(".")
        value = config.get(outer)
        if inner:
            value = value.get(inner) if isinstance(value, dict) else None
        if value is not None and not ok(value):
            raise UserError(f"{config_path}: '{name}' must be {what}, found "
                            f"{json.dumps(value)[:40]}; the file was damaged or edited: fix "
                            "it, or use another checkpoint")


def safetensors_metadata(path: str | Path) -> dict[str, str] | None:
    """The `__metadata__` of a .safetensors file when its header is valid and the file
    is as long as the header says, else None: a cheap check for truncation, without
    reading the tensors."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8 or n > 100 << 20:
                return None
            header = json.loads(f.read(n))
    except (OSError, struct.error, ValueError):
        return None
    if not isinstance(header, dict):
        return None
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2):
            return None
        end = max(end, offsets[1])
    if 8 + n + end != size:
        return None
    metadata = header.get("__metadata__") or {}
    return metadata if isinstance(metadata, dict) else {}


def adapter_stamp(adapter_dir: str | Path) -> int:
    """Changes whenever an adapter directory's weights are replaced (for reloading)."""
    try:
        return (Path(adapter_dir) / ADAPTER_WEIGHTS).stat().st_mtime_ns
    except OSError:
        return 0


# Errors of the file system (not of our code) while writing: reported in one line.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EIO}


def write_failure(e: BaseException, where: Path) -> str | None:
    """A one-line reason when `e` is the file system refusing a write, else None. Only
    OSError carries an errno; MLX ("[write] Unable to write ..."), tokenizers ("os error
    28") and NumPy's tofile report a full disk in their own words, so look at the disk."""
    if isinstance(e, OSError) and e.errno in _WRITE_ERRNOS:
        return e.strerror
    if not isinstance(e, Exception):
        return None
    try:
        full = shutil.disk_usage(where if where.exists() else where.parent).free < 2**20
    except OSError:
        full = False
    return "no space left on the device" if full else None


def load_safetensors(path: str | Path, what: str) -> dict:
    """mx.load of a .safetensors file, a damaged or truncated one as a `UserError`."""
    import mlx.core as mx

    try:
        return mx.load(str(path))
    except (RuntimeError, ValueError, OSError) as e:
        detail = " ".join(str(e).split())
        raise UserError(f"{what}: {path} is unreadable ({detail}); it is truncated or corrupt, "
                        "use another checkpoint or copy it again") from None


def __getattr__(name: str):
    # The metrics log moved to mlxsft.rundir (the run directory's owner); old imports
    # keep working without a second copy.
    if name in ("MetricsLog", "read_metrics"):
        from mlxsft import rundir

        return getattr(rundir, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
