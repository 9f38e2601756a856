"""Throughput and memory of `mlxsft train` against `python -m mlx_lm lora --mask-prompt`.

Both trainers get the same model, the same chat records (a user prompt and an assistant
reply that is about --supervised of the tokens; the loss only on the reply), the same
batch size, sequence length, LoRA rank 8 on every linear projection of every layer, the
same number of steps, and the same BLAS: Debian's OpenBLAS (`apt-get install
libopenblas0-pthread`) through LD_PRELOAD with --blas-threads threads in both processes
(mlxsft's own OpenBLAS loader is switched off so nothing else differs). The two run one
after the other in their own processes, alternating which goes first, --repeats times;
the machine's load (`uptime`) is printed with each run because it moves the figures.

Speed is steps per second over the report windows after the first (the first holds
compilation), also given as non-padding tokens per second (every record has about the
same length, so both tools see the same tokens per step). Memory is the peak resident
set of each process (the kernel's ru_maxrss).

Cases:
  llama55m  a 57M llama shaped like SmolLM2 (hidden 576, 9 query / 3 KV heads, MLP
            1536, 49,152-token vocabulary, tied embeddings), 8 layers; batch 4 x 256
  vocab152k a tiny llama (hidden 64, 2 layers) with a Qwen2.5/Qwen3-sized 151,936-token
            vocabulary; batch 2 x 1024
  llama50m  the README's BLAS model (11 layers, hidden 640, 512-token vocabulary)

    python examples/bench_vs_mlx_lm.py [--case llama55m|vocab152k|llama50m] [--iters 12] [--repeats 2]
    python examples/bench_vs_mlx_lm.py --write-model DIR   # keep model + data for `mlxsft bench`

The token ids come from a small byte-level BPE tokenizer (the model's vocabulary is larger
than the tokenizer's: the LM head, its logits and their gradient cost what they cost at
that vocabulary size). Not part of the test suite: it takes minutes and its figures depend
on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from need_mlxsft import require_mlxsft

require_mlxsft(__file__)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

CASES = {
    "llama55m": dict(hidden=576, layers=8, heads=9, kv_heads=3, intermediate=1536,
                     vocab=49152, batch=4, seq=256),
    "vocab152k": dict(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128,
                      vocab=151936, batch=2, seq=1024),
    # The model of the README's BLAS figures: 11 layers, hidden 640, the tokenizer's own
    # 512-entry vocabulary (so the LM head is negligible there).
    "llama50m": dict(hidden=640, layers=11, heads=10, kv_heads=5, intermediate=1728,
                     vocab=None, batch=4, seq=256),
}
OPENBLAS = "/usr/lib/x86_64-linux-gnu/libopenblas.so.0"

# mlx_lm's own trainer, unchanged, with a callback that prints its reports as JSON.
PEER = """
import json, sys
import mlx_lm.lora as lora
from mlx_lm.tuner.callbacks import TrainingCallback

class Report(TrainingCallback):
    def on_train_loss_report(self, info):
        print("REPORT " + json.dumps({k: float(v) for k, v in info.items()}), flush=True)

train_model = lora.train_model
lora.train_model = lambda args, model, train, valid, callback=None: train_model(
    args, model, train, valid, Report())
sys.argv[0] = "mlx_lm.lora"
lora.main()
"""


def build(workdir: Path, case: dict, supervised: float, records: int):
    """A random llama (mlx-lm's architecture) and chat records of about `seq` tokens."""
    from helpers.tiny import WORDS, build_template_tokenizer, save_model_dir

    from mlxsft.masking import Masker

    tokenizer = build_template_tokenizer("chatml")
    model = save_model_dir(workdir / "model", tokenizer=tokenizer, hidden_size=case["hidden"],
                           num_hidden_layers=case["layers"], intermediate_size=case["intermediate"],
                           num_attention_heads=case["heads"],
                           num_key_value_heads=case["kv_heads"],
                           vocab_size=case["vocab"] or len(tokenizer),
                           max_position_embeddings=4 * case["seq"])
    data = workdir / "data"
    data.mkdir()
    rng = random.Random(0)
    masker = Masker(tokenizer, "assistant", case["seq"])
    share = []

    def words(n):
        return " ".join(rng.choice(WORDS) for _ in range(n))

    for split, n in (("train", records), ("valid", 4)):
        with open(data / f"{split}.jsonl", "w") as f:
            for _ in range(n):
                # Word counts tuned for this tokenizer: records of 90-100% of seq tokens.
                total = int(case["seq"] * rng.uniform(0.9, 0.97) * 0.52)
                # The template's own tokens are prompt-side: the reply gets more words.
                reply = int(total * min(0.95, supervised * 1.42))
                record = {"messages": [{"role": "user", "content": words(total - reply)},
                                       {"role": "assistant", "content": words(reply)}]}
                item = masker.encode(record_of(record))
                share.append((sum(item.loss_mask), len(item.tokens)))
                f.write(json.dumps(record) + "\n")
    sup, tok = map(sum, zip(*share))
    return model, data, sup / tok, tok / len(share)


def record_of(raw: dict):
    from mlxsft.data import Record

    return Record("bench.jsonl", 1, "chat", raw["messages"])


def run(cmd: list[str], env: dict) -> tuple[str, float]:
    """Run cmd; return its output and the peak resident memory of its process in GB."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        print(out[-3000:])
        raise SystemExit(f"{cmd[:3]} failed")
    return out, usage.ru_maxrss * 1024 / 1e9  # Linux reports KiB


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def ours(tmp: Path, model: Path, data: Path, case: dict, iters: int, report: int, env,
         k: int, extra: list[str]) -> tuple[float, float]:
    out = tmp / f"ours{k}"
    _, mem = run([str(Path(sys.executable).parent / "mlxsft"), "train", str(data),
                  "--model", str(model), "--out", str(out), "--iters", str(iters),
                  "--batch-size", str(case["batch"]), "--max-seq-len", str(case["seq"]),
                  "--lora-rank", "8", "--steps-per-eval", "0", "--val-batches", "1",
                  "--steps-per-report", str(report), "--steps-per-save", "0",
                  "--learning-rate", "1e-5", *extra], env)
    reports = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in reports if r["event"] == "train"]
    steps = train[-1]["step"] - train[0]["step"]
    return steps / (train[-1]["seconds"] - train[0]["seconds"]), mem


def peer(tmp: Path, model: Path, data: Path, case: dict, iters: int, report: int, env,
         k: int) -> tuple[float, float]:
    out, mem = run([sys.executable, "-c", PEER, "--model", str(model), "--train",
                    "--data", str(data), "--iters", str(iters), "--batch-size",
                    str(case["batch"]), "--max-seq-length", str(case["seq"]),
                    "--num-layers", "-1", "--mask-prompt", "--steps-per-report", str(report),
                    "--steps-per-eval", str(10 * iters), "--val-batches", "1",
                    "--adapter-path", str(tmp / f"peer{k}"), "--learning-rate", "1e-5"],
                   env | {"NO_COLOR": "1"})
    rates = [json.loads(line[7:])["iterations_per_second"] for line in out.splitlines()
             if line.startswith("REPORT ")][1:]
    if not rates:
        print(out[-2000:])
        raise SystemExit("no mlx_lm reports")
    return len(rates) / sum(1 / r for r in rates), mem


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", choices=CASES, default="llama55m")
    ap.add_argument("--iters", type=int, default=12)
    ap.add_argument("--report", type=int, default=3, help="steps per report window")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--supervised", type=float, default=0.3,
                    help="share of each record's tokens in the assistant reply")
    ap.add_argument("--blas-threads", type=int, default=2)
    ap.add_argument("--openblas", default=OPENBLAS, help="the OpenBLAS both trainers preload")
    ap.add_argument("--ours-flags", default="", help="extra `mlxsft train` flags, e.g. --pack")
    ap.add_argument("--write-model", type=Path, metavar="DIR",
                    help="only write the case's model (DIR/model) and data (DIR/data) and exit")
    args = ap.parse_args()
    case = CASES[args.case]
    records = 8 * case["batch"] * 4
    if args.write_model:
        if args.write_model.exists():
            raise SystemExit(f"{args.write_model} exists; name a new directory")
        args.write_model.mkdir(parents=True)
        model, data, share, _ = build(args.write_model, case, args.supervised, records)
        print(f"wrote {model} and {data} ({100 * share:.0f}% supervised)\n  mlxsft bench "
              f"--model {model} --data {data} --batch-size {case['batch']} --seq-len "
              f"{case['seq']}")
        return
    if not Path(args.openblas).exists():
        raise SystemExit(f"{args.openblas} not found: apt-get install libopenblas0-pthread")
    threads = str(args.blas_threads)
    env = os.environ | {"LD_PRELOAD": args.openblas, "OPENBLAS_NUM_THREADS": threads,
                        "MLXSFT_NO_BLAS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model, data, share, mean_tokens = build(tmp, case, args.supervised, records)
        print(f"case {args.case}: {case}; {args.iters} steps, LoRA rank 8 on every linear of "
              f"every layer; records {mean_tokens:.0f} tokens on average, "
              f"{100 * share:.1f}% supervised; OpenBLAS {args.openblas} with {threads} "
              "threads in both", flush=True)
        figures = {"mlxsft": [], "mlx_lm": []}
        for k in range(args.repeats):
            order = ("mlxsft", "mlx_lm") if k % 2 == 0 else ("mlx_lm", "mlxsft")
            for tool in order:
                load = uptime()
                if tool == "mlxsft":
                    rate, mem = ours(tmp, model, data, case, args.iters, args.report, env, k,
                                     args.ours_flags.split())
                else:
                    rate, mem = peer(tmp, model, data, case, args.iters, args.report, env, k)
                figures[tool].append((rate, mem))
                print(f"  run {k + 1} {tool:7s} {rate:6.3f} steps/s "
                      f"({rate * case['batch'] * mean_tokens:7.1f} tokens/s)  peak RSS "
                      f"{mem:.2f} GB   [{load}]", flush=True)
        for k in range(args.repeats):
            (a, am), (b, bm) = figures["mlxsft"][k], figures["mlx_lm"][k]
            print(f"repeat {k + 1}: mlxsft / mlx_lm = {a / b:.2f}x speed, {am / bm:.2f}x peak RSS")
        print(f"after: [{uptime()}]")


if __name__ == "__main__":
    main()
