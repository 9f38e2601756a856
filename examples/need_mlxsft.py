"""One line, not a traceback, when an example runs with a Python that cannot import mlxsft.

Every example starts with `require_mlxsft(__file__)` before importing anything else of
mlxsft's (mlxsft must come before mlx: it points MLX at the fast BLAS).
"""

import sys
from pathlib import Path


def require_mlxsft(script: str) -> None:
    try:
        import mlxsft  # noqa: F401
    except ModuleNotFoundError as e:
        name = Path(script).name
        sys.exit(f"{name}: error: cannot import {e.name} with {sys.executable}; run "
                 f"`source .venv/bin/activate` first (or `.venv/bin/python examples/{name}`) "
                 "after `bash examples/quickstart.sh` or `pip install -e .`")
