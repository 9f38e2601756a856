import sys
from pathlib import Path

# mlxsft first: it must point MLX at the optimized BLAS before mlx.core is imported.
import mlxsft  # noqa: F401

sys.path.insert(0, str(Path(__file__).parent))

import json
import random

import pytest


def _arithmetic_records(n, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        out.append({"messages": [{"role": "user", "content": f"add {a} {b}"},
                                 {"role": "assistant", "content": f"sum {a + b}"}]})
    return out


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    from tiny import save_model_dir

    return save_model_dir(tmp_path_factory.mktemp("models") / "llama")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A data directory: train.jsonl (64 records) and valid.jsonl (8) of a learnable task."""
    d = tmp_path_factory.mktemp("data")
    write_jsonl(d / "train.jsonl", _arithmetic_records(64, 0))
    write_jsonl(d / "valid.jsonl", _arithmetic_records(8, 1))
    return d
