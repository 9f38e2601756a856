"""Tokens/s and peak memory of one process against two data-parallel ranks on one machine.

Runs `mlxsft bench --json` twice, one BLAS thread per process (MLXSFT_BLAS_THREADS=1):
once alone, then as two ranks under `mlx.launch -n 2 --backend ring` on loopback, each
rank with the same --batch-size (so the group does twice the work per step). The
launched bench also times rank 0 alone before the group (the others waiting) and prints
that scaling too. The machine's load (`uptime`) is printed before and after: other work
on the machine moves the figures.

    python examples/bench_data_parallel.py [--model smollm2-135m] [--batch-size 4]
        [--seq-len 256] [--steps 10] [--repeats 1]

Not part of the test suite: it takes minutes and its figures depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from need_mlxsft import require_mlxsft

require_mlxsft(__file__)  # the venv's mlxsft and mlx.launch are run beside this Python
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def bench(args, ranks: int) -> dict:
    command = [str(BIN / "mlxsft"), "bench", "--json", "--model", args.model,
               "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
               "--steps", str(args.steps), "--warmup", str(args.warmup)]
    env = os.environ | {"MLXSFT_BLAS_THREADS": "1"}
    if ranks > 1:
        command = [str(BIN / "mlx.launch"), "-n", str(ranks), "--backend", "ring",
                   "-p", str(free_port()), "--env", "MLXSFT_BLAS_THREADS=1", "--", *command]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        sys.exit(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch-size", type=int, default=4, help="records per step per process")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores; {args.model}, batch {args.batch_size} x {args.seq_len} "
          f"per process, {args.steps} timed steps, 1 BLAS thread per process")
    for repeat in range(args.repeats):
        print(f"load before: {load()}")
        one, two = bench(args, 1), bench(args, 2)
        print(f"load after:  {load()}")
        print(f"  1 process  x 1 thread: {one['tokens_per_second']:8.1f} tokens/s, peak "
              f"memory {one['peak_memory_gb']:.2f} GB")
        print(f"  2 ranks    x 1 thread: {two['tokens_per_second']:8.1f} tokens/s (the group), "
              f"peak memory {two['peak_memory_gb']:.2f} GB per rank")
        print(f"  scaling: {two['tokens_per_second'] / one['tokens_per_second']:.2f}x against "
              f"the separate single process; {two['scaling']:.2f}x against rank 0 timed alone "
              f"({two['solo_tokens_per_second']:.1f} tokens/s) inside the launch")


if __name__ == "__main__":
    main()
