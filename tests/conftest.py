"""Fixtures shared by the tests, and the `slow` marker's policy. Helpers (tiny models and
tokenizers, templates, data) live in the `helpers` package, not here.

Tests marked `@pytest.mark.slow` (more than ~10 s) are skipped by a local `pytest` and run
when the environment says CI (`CI=true`, as `.ci/run` sets) or when asked for (`-m slow`,
or `--run-slow`). Every run prints the slowest durations (`--durations` in pyproject).
"""

import os

# mlxsft first: it must point MLX at the optimized BLAS before mlx.core is imported
# (helpers.tiny imports mlx.core; an import sorter must leave this line above it).
import mlxsft  # noqa: F401, I001  # isort: skip

import pytest
from helpers.data import arithmetic_records, write_jsonl
from helpers.tiny import save_model_dir


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true",
                     help="run the tests marked slow (the default when CI=true)")


def _run_slow(config) -> bool:
    return (os.environ.get("CI", "").lower() in ("1", "true", "yes")
            or config.getoption("--run-slow") or "slow" in (config.option.markexpr or ""))


def pytest_report_header(config):
    return ("slow tests: run" if _run_slow(config) else
            "slow tests: skipped (CI=true or --run-slow runs them)")


def pytest_collection_modifyitems(config, items):
    if _run_slow(config):
        return
    skip = pytest.mark.skip(reason="slow: CI=true or --run-slow runs it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    return save_model_dir(tmp_path_factory.mktemp("models") / "llama")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A data directory: train.jsonl (64 records) and valid.jsonl (8) of a learnable task."""
    d = tmp_path_factory.mktemp("data")
    write_jsonl(d / "train.jsonl", arithmetic_records(64, 0))
    write_jsonl(d / "valid.jsonl", arithmetic_records(8, 1))
    return d
