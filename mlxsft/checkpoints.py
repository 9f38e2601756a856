"""The run directory on disk: adapters, checkpoints, the resolved config, metrics.

Layout (what `mlxsft train` writes)::

    RUN/adapters.safetensors, RUN/adapter_config.json   final adapter (mlx-lm format)
    RUN/best/...                                         lowest validation loss so far
    RUN/checkpoints/step-000100/...                      every --steps-per-save steps
    RUN/config.yaml                                      the resolved run config
    RUN/metrics.jsonl                                    one JSON object per event

Every file is written to a temporary name in the same directory and renamed, so a
crash or Ctrl-C never leaves a half-written adapter where a good one was.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from mlxsft.errors import UserError

# heavy: mlx.core is imported inside the functions that read or write tensors; the TUI
# loads this module when it opens, before any model is needed.

ADAPTER_WEIGHTS = "adapters.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
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


def atomic_save_safetensors(path: Path, arrays: dict, metadata: dict | None = None) -> None:
    import mlx.core as mx

    path.parent.mkdir(parents=True, exist_ok=True)
    # mx.save_safetensors adds the suffix itself when it is missing: keep it.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".safetensors")
    os.close(fd)
    try:
        mx.save_safetensors(tmp, arrays, metadata=metadata or {})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_adapter(directory: Path, weights: dict, adapter_config: dict) -> None:
    """Write adapters.safetensors then adapter_config.json (each atomically)."""
    atomic_save_safetensors(directory / ADAPTER_WEIGHTS, weights)
    atomic_write_text(directory / ADAPTER_CONFIG, json.dumps(adapter_config, indent=2) + "\n")


def read_adapter_config(directory: str | Path) -> dict[str, Any]:
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
    return config


def load_safetensors(path: str | Path, what: str) -> dict:
    """mx.load of a .safetensors file, a damaged or truncated one as a `UserError`."""
    import mlx.core as mx

    try:
        return mx.load(str(path))
    except (RuntimeError, ValueError, OSError) as e:
        detail = " ".join(str(e).split())
        raise UserError(f"{what}: {path} is unreadable ({detail}); it is truncated or corrupt, "
                        "use another checkpoint or copy it again") from None


class MetricsLog:
    """Appends one JSON object per event to RUN/metrics.jsonl (line-buffered)."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", encoding="utf-8", buffering=1)

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        self._file.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The events of a run so far; a partly written last line is ignored."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    out = []
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
