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
