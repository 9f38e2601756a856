"""The OpenBLAS preload: it takes effect, stays numerically identical, can be turned off,
and fails soft. Each case runs in a fresh interpreter so the import order is controlled."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

PROBE = """
import json, sys
{before}
import mlxsft
from mlxsft import blas
import mlx.core as mx, numpy as np
rng = np.random.default_rng(0)
a, b = rng.standard_normal((257, 129)).astype(np.float32), rng.standard_normal((129, 65)).astype(np.float32)
m = rng.standard_normal((40, 40)).astype(np.float32) + 40 * np.eye(40, dtype=np.float32)
print(json.dumps({{
    "status": blas.status().to_json(),
    "gflops": blas.matmul_gflops(512),
    "matmul_err": float(np.abs(np.array(mx.array(a) @ mx.array(b)) - a.astype(np.float64) @ b).max()),
    "inv_err": float(np.abs(np.array(mx.linalg.inv(mx.array(m), stream=mx.cpu)) - np.linalg.inv(m.astype(np.float64))).max()),
}}))
"""


def probe(env_extra=None, before="", tmp_path=None):
    import os

    env = dict(os.environ)
    env.pop("MLXSFT_NO_BLAS", None)
    env.update(env_extra or {})
    proc = subprocess.run([sys.executable, "-c", PROBE.format(before=before)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def test_openblas_takes_effect_and_matches_numpy(tmp_path):
    cache = {"MLXSFT_CACHE_DIR": str(tmp_path / "cache")}
    fast, err = probe(cache)
    assert fast["status"]["active"] and fast["status"]["backend"] == "openblas", err
    assert fast["status"]["library"].startswith(str(tmp_path / "cache"))
    assert fast["matmul_err"] < 1e-3 and fast["inv_err"] < 1e-5
    slow, _ = probe(cache | {"MLXSFT_NO_BLAS": "1"})
    assert not slow["status"]["active"] and slow["status"]["reason"] == "disabled by MLXSFT_NO_BLAS"
    assert slow["matmul_err"] < 1e-3 and slow["inv_err"] < 1e-5
    # The point of it: a much faster matmul (loose factor: the machine may be busy).
    assert fast["gflops"] > 3 * slow["gflops"], (fast["gflops"], slow["gflops"])


def test_importing_mlx_first_is_too_late_but_not_fatal(tmp_path):
    result, err = probe({"MLXSFT_CACHE_DIR": str(tmp_path)}, before="import mlx.core")
    assert not result["status"]["active"]
    assert "too late" in result["status"]["reason"]
    assert "mlxsft: warning: mlx.core was imported before mlxsft" in err


def test_a_damaged_cache_file_is_rebuilt(tmp_path):
    cache = {"MLXSFT_CACHE_DIR": str(tmp_path)}
    first, _ = probe(cache)
    library = first["status"]["library"]
    with open(library, "r+b") as f:  # same size, garbage inside: dlopen fails
        f.write(b"\0" * 4096)
    second, err = probe(cache)
    assert second["status"]["active"] and second["status"]["library"] == library, err


def test_thread_count_can_be_set(tmp_path):
    result, _ = probe({"MLXSFT_CACHE_DIR": str(tmp_path), "MLXSFT_BLAS_THREADS": "2"})
    assert result["status"]["threads"] == 2


@pytest.mark.slow
def test_env_command_reports_it(capsys):
    from mlxsft.cli import main

    assert main(["env", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["blas"]["backend"] in ("openblas", "reference")
    assert report["matmul_gflops_fp32_1024"] > 0
    assert main(["env"]) == 0
    assert "BLAS" in capsys.readouterr().out


def test_the_cached_copy_is_reused_without_copying_or_patching(tmp_path, monkeypatch):
    from mlxsft import blas

    monkeypatch.setenv("MLXSFT_CACHE_DIR", str(tmp_path))
    built = blas.renamed_library()
    inode = built.stat().st_ino
    assert built.stat().st_size != blas._source_library().stat().st_size  # patchelf resized it

    def refuse(*args, **kwargs):
        raise AssertionError("rebuilt a cached library")

    monkeypatch.setattr(blas.shutil, "copyfile", refuse)
    monkeypatch.setattr(blas.subprocess, "run", refuse)
    assert blas.renamed_library() == built
    assert built.stat().st_ino == inode
    assert sorted(p.name for p in built.parent.iterdir()) == [blas.LIBRARY_NAME, blas.STAMP_NAME]


def test_a_stale_or_missing_stamp_rebuilds(tmp_path, monkeypatch):
    from mlxsft import blas

    monkeypatch.setenv("MLXSFT_CACHE_DIR", str(tmp_path))
    built = blas.renamed_library()
    stamp = built.with_name(blas.STAMP_NAME)
    recorded = json.loads(stamp.read_text())
    for damage in ({**recorded, "library_size": 1}, None):
        if damage is None:
            stamp.unlink()
        else:
            stamp.write_text(json.dumps(damage))
        inode = built.stat().st_ino
        assert blas.renamed_library() == built
        assert built.stat().st_ino != inode  # a fresh copy was renamed into place
        assert json.loads(stamp.read_text()) == recorded


def test_later_starts_leave_the_cache_untouched(tmp_path):
    cache = {"MLXSFT_CACHE_DIR": str(tmp_path)}
    first, _ = probe(cache)
    library = first["status"]["library"]
    import os

    before = os.stat(library)
    second, err = probe(cache)
    after = os.stat(library)
    assert second["status"]["active"] and second["status"]["library"] == library, err
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_failing_to_prepare_the_fast_blas_is_a_visible_warning(tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    result, err = probe({"MLXSFT_CACHE_DIR": str(blocked / "cache")})
    assert not result["status"]["active"]
    warning = [line for line in err.splitlines() if line.startswith("mlxsft: warning:")]
    assert len(warning) == 1, err
    assert str(blocked / "cache") in warning[0] and "MLXSFT_CACHE_DIR" in warning[0]
    assert "30x slower" in warning[0]


def test_a_full_disk_is_a_visible_warning(tmp_path):
    import os

    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(disk)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        result, err = probe({"MLXSFT_CACHE_DIR": str(disk / "cache")})
        assert not result["status"]["active"]
        assert "No space left on device" in result["status"]["reason"]
        assert "mlxsft: warning: could not prepare OpenBLAS in" in err
        assert os.listdir(disk / "cache" / "blas")  # the key directory, but no half files
        assert not [p for p in (disk / "cache").rglob("*") if p.is_file()]
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_the_tui_shows_why_training_will_be_slow(monkeypatch):
    pytest.importorskip("textual")
    import asyncio

    from mlxsft import blas
    from mlxsft.tui.app import create_app

    reason = "could not prepare OpenBLAS in /x (No space left on device)"
    monkeypatch.setattr(blas, "_status", blas.BlasStatus("reference", False, reason=reason))

    async def scenario():
        app = create_app(train_fn=lambda *a, **k: iter(()))
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause()
            return list(app.event_log.entries)

    entries = asyncio.run(scenario())
    assert ("warning", f"warning: MLX uses its reference BLAS (~30x slower training): "
                       f"{reason}") in entries
