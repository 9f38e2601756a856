"""Small JSONL data for the training, CLI and TUI tests."""

from __future__ import annotations

import json
import random
from pathlib import Path


def arithmetic_records(n: int, seed: int) -> list[dict]:
    """`add a b` -> `sum a+b` chats: a task a tiny model learns in a few steps."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        x, y = rng.randint(1, 9), rng.randint(1, 9)
        out.append({"messages": [{"role": "user", "content": f"add {x} {y}"},
                                 {"role": "assistant", "content": f"sum {x + y}"}]})
    return out


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path
