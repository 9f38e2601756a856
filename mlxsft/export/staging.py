"""Staged output: everything an export writes goes into a temporary directory next to
OUT and is renamed to OUT only when complete, so OUT is either whole or absent. Also the
checks made before any work starts (OUT free and writable, enough disk space).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from mlxsft.checkpoints import write_failure
from mlxsft.errors import UserError


def check_out_free(out: Path) -> None:
    if out.exists() and (out.is_file() or any(out.iterdir())):
        raise UserError(f"--out {out}: already exists; choose a new path or remove it "
                        "(nothing was written)")


def check_out_writable(out: Path) -> None:
    """Refuse now, before any work, an OUT whose directory cannot be written (read-only
    file system, no permission, a file in the way)."""
    existing = next(p for p in (out.parent, *out.parent.parents, Path(".")) if p.exists())
    if not existing.is_dir():
        raise UserError(f"--out {out}: {existing} is a file, not a directory; choose another "
                        "path (nothing was written)")
    try:
        os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".mlxsft-probe."))
    except OSError as e:
        raise UserError(f"--out {out}: cannot write in {existing} ({e.strerror or e}); choose "
                        "a writable path (nothing was written)") from None


def check_free_space(out: Path, needed: int) -> None:
    """Refuse before writing when OUT's file system has clearly too little room."""
    existing = next(p for p in (out.parent, *out.parent.parents, Path(".")) if p.exists())
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise UserError(f"--out {out}: needs about {needed / 2**20:,.1f} MiB but {existing} has "
                        f"{free / 2**20:,.1f} MiB free; free some space or choose another path "
                        "(nothing was written)")


@contextmanager
def staged(out: str | Path, single_file: bool = False) -> Iterator[Path]:
    """Yield where to write (a temporary directory next to `out`, or a file inside it when
    `single_file`); rename it to `out` when the block completes, delete it when it fails."""
    out = Path(out)
    check_out_free(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    except OSError as e:
        raise UserError(f"--out {out}: cannot write there ({e.strerror or e}); choose a "
                        "writable path (nothing was written)") from None
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; OUT should look like any directory
    target = tmp / out.name if single_file else tmp
    try:
        try:
            yield target
        except UserError:
            raise
        except Exception as e:
            if (reason := write_failure(e, tmp)) is None:
                raise
            raise UserError(f"--out {out}: writing failed ({reason}); nothing was written "
                            "(free some space or choose another path)") from None
        check_out_free(out)  # something may have appeared there while we worked
        if out.is_dir():
            out.rmdir()  # an empty directory the user made for us
        os.replace(target, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

