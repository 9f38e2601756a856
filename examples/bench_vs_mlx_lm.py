"""Throughput and memory of `mlxsft train` against `python -m mlx_lm lora` on the same work.

Builds a random ~50M-parameter llama (mlx-lm's own architecture) with a small byte-level
BPE tokenizer in a temporary directory, writes plain-text records that fill the sequence
length, and runs both trainers on the same model, data, batch size, sequence length,
LoRA rank (8, every layer, every linear projection) and number of steps, one after the
other, each in its own process. It prints each tool's tokens/s (non-padding tokens per
second of training, the first report window, which includes compilation, left out) and
the peak resident memory of its process, and their ratio.

    python examples/bench_vs_mlx_lm.py [--iters 30] [--batch-size 4] [--seq-len 256]
    python examples/bench_vs_mlx_lm.py --write-model llama50m   # keep the model for `mlxsft bench`

Not part of the test suite: it takes minutes and its figures depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from need_mlxsft import require_mlxsft

require_mlxsft(__file__)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def build(workdir: Path, seq_len: int, records: int, layers: int, hidden: int, inter: int):
    import mlxsft  # noqa: F401  (BLAS before mlx)
    from helpers.tiny import build_template_tokenizer, corpus, save_model_dir

    tokenizer = build_template_tokenizer("chatml")
    model = save_model_dir(workdir / "model", tokenizer=tokenizer, hidden_size=hidden,
                           num_hidden_layers=layers, intermediate_size=inter,
                           num_attention_heads=hidden // 64, num_key_value_heads=hidden // 128,
                           max_position_embeddings=4 * seq_len)
    data = workdir / "data"
    data.mkdir()
    lines = corpus(4000)
    for split, n in (("train", records), ("valid", 4)):
        with open(data / f"{split}.jsonl", "w") as f:
            i = 0
            for _ in range(n):
                text = ""
                while len(tokenizer(text)["input_ids"]) < seq_len + 8:
                    text += lines[i % len(lines)] + " "
                    i += 1
                f.write(json.dumps({"text": text}) + "\n")
    return model, data


def run(cmd: list[str], env=None) -> tuple[str, float]:
    """Run cmd; return its output and the peak resident memory of its process in GB."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        print(out[-3000:])
        raise SystemExit(f"{cmd[0]} {cmd[1:3]} failed")
    return out, usage.ru_maxrss * 1024 / 1e9  # Linux reports KiB


def mlx_lm_tokens_per_second(out: str) -> float:
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out)
    rows = re.findall(r"^\s*(\d+)\s+([\d.]+)\s*\S?\s+([\d,]+)\s+[\d.]+k?\s*$", plain, re.M)
    rates = [float(r[2].replace(",", "")) for r in rows]
    if len(rates) < 2:
        print(plain[-2000:])
        raise SystemExit("could not read mlx_lm's tokens/s")
    return sum(rates[1:]) / len(rates[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--layers", type=int, default=11)
    ap.add_argument("--hidden", type=int, default=640)
    ap.add_argument("--intermediate", type=int, default=1728)
    ap.add_argument("--peer-as-installed", action="store_true",
                    help="run plain `python -m mlx_lm lora` (MLX's bundled BLAS on Linux)")
    ap.add_argument("--write-model", type=Path, metavar="DIR",
                    help="only write the model (DIR/model) and data (DIR/data), for "
                    "`mlxsft bench --model DIR/model`, and exit")
    args = ap.parse_args()
    if args.write_model:
        if args.write_model.exists():
            raise SystemExit(f"{args.write_model} exists; name a new directory")
        args.write_model.mkdir(parents=True)
        model, data = build(args.write_model, args.seq_len, 4 * args.batch_size * 4,
                            args.layers, args.hidden, args.intermediate)
        print(f"wrote {model} and {data}\n  mlxsft bench --model {model} --batch-size "
              f"{args.batch_size} --seq-len {args.seq_len}\n  MLXSFT_NO_BLAS=1 mlxsft bench "
              f"--model {model} --batch-size {args.batch_size} --seq-len {args.seq_len} --steps 2")
        return
    report = max(2, args.iters // 5)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model, data = build(tmp, args.seq_len, 4 * args.batch_size * 4, args.layers,
                            args.hidden, args.intermediate)
        common = dict(batch=str(args.batch_size), iters=str(args.iters), seq=str(args.seq_len))
        bin_dir = Path(sys.executable).parent
        ours_out, ours_mem = run([
            str(bin_dir / "mlxsft"), "train", str(data), "--model", str(model),
            "--out", str(tmp / "ours"), "--iters", common["iters"], "--batch-size", common["batch"],
            "--max-seq-len", common["seq"], "--lora-rank", "8", "--steps-per-eval", "0",
            "--steps-per-report", str(report), "--steps-per-save", "0", "--learning-rate", "1e-5"])
        reports = [json.loads(l) for l in (tmp / "ours" / "metrics.jsonl").read_text().splitlines()]
        rates = [r["tokens_per_second"] for r in reports if r["event"] == "train"][1:]
        ours = sum(rates) / len(rates)
        # By default mlx_lm runs with the same OpenBLAS mlxsft loads, so the two training
        # steps are compared on equal terms; --peer-as-installed runs plain
        # `python -m mlx_lm lora`, which on Linux gets MLX's bundled reference BLAS.
        launcher = ([sys.executable, "-m", "mlx_lm", "lora"] if args.peer_as_installed else
                    [sys.executable, "-c", "import mlxsft, sys; from mlx_lm.lora import main; "
                     "sys.argv[0] = 'mlx_lm.lora'; main()"])
        peer_out, peer_mem = run([
            *launcher, "--model", str(model), "--train",
            "--data", str(data), "--iters", common["iters"], "--batch-size", common["batch"],
            "--max-seq-length", common["seq"], "--num-layers", "-1", "--steps-per-report",
            str(report), "--steps-per-eval", str(10 * args.iters), "--val-batches", "1",
            "--adapter-path", str(tmp / "peer"), "--learning-rate", "1e-5"],
            env=os.environ | {"NO_COLOR": "1"})
        peer = mlx_lm_tokens_per_second(peer_out)
    params = args.layers * (2 * args.hidden ** 2 + args.hidden * args.hidden + 3 * args.hidden * args.intermediate)
    print(f"model: llama, {params / 1e6:.0f}M parameters in its layers; batch {args.batch_size} x "
          f"{args.seq_len}, {args.iters} steps, LoRA rank 8 on every linear of every layer")
    print(f"mlxsft train     {ours:9.1f} tokens/s   peak RSS {ours_mem:.2f} GB")
    blas = "its bundled BLAS" if args.peer_as_installed else "the same OpenBLAS"
    print(f"mlx_lm lora      {peer:9.1f} tokens/s   peak RSS {peer_mem:.2f} GB   ({blas})")
    print(f"ratio (mlxsft / mlx_lm): {ours / peer:.2f}x tokens/s, {ours_mem / peer_mem:.2f}x memory")


if __name__ == "__main__":
    main()
