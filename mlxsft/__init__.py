"""mlxsft: local instruction tuning (SFT) on MLX.

Importing the package first points MLX's CPU backend at an optimized BLAS on Linux
(see `mlxsft.blas`); that must happen before `mlx.core` is imported anywhere, so it
runs here, at the top of the package, and nothing else is done at import time.
"""

__version__ = "0.1.0"

from mlxsft import blas as _blas

_blas.preload()
