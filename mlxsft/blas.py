"""Placeholder: the optimized-BLAS preload (filled in by the BLAS work)."""


def preload() -> None:
    return None
