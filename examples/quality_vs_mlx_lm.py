"""Tuning quality of `mlxsft train` against `python -m mlx_lm lora` at equal settings.

Both trainers tune the same model on the same data for the same number of steps, batch
size, LoRA rank, scale (alpha / rank), targets (every linear projection of every layer),
dropout, optimizer (Adam, no weight decay) and learning-rate schedule, with the loss on the
response tokens only (mlx_lm's --mask-prompt). Both adapters are then scored the same way,
by `mlxsft eval` (response-only mean NLL on held-out records), next to the base:

    python examples/quality_vs_mlx_lm.py [--iters 40] [--learning-rate 1e-4]
        [--schedule constant|cosine] [--warmup 0] [--seeds 0 1 2] [--only mlxsft]

Adapters already in --work are reused, so a longer --seeds list only trains what is new.

Model: the default SmolLM2-135M-Instruct. mlx_lm reads only Hugging Face / MLX model
directories and the default model is a GGUF, so it is written once as a float32 MLX
directory (mlxsft's GGUF reader, mlx_lm's save functions) and both trainers use that.

Data: the ChatterBot corpus (BSD-3, `pip install --no-deps chatterbot-corpus==1.3.3`),
a public English question -> answer corpus (trivia, AI, science, literature, small talk):
the first answer to each distinct question, code answers left out, shuffled with a fixed
seed; 300 records train, 60 are held out.

Not part of the test suite: it takes minutes and the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from pathlib import Path

from need_mlxsft import require_mlxsft

require_mlxsft(__file__)

TRAIN_RECORDS, HELD_OUT = 300, 60


def write_model(out: Path) -> Path:
    """The default model as a float32 MLX/HF directory that mlx_lm can load."""
    if (out / "config.json").exists():
        return out
    from mlx_lm.utils import save_config, save_model

    from mlxsft.models import load_model, to_compute_precision

    loaded = load_model(None, dequantize=True)
    to_compute_precision(loaded)
    config = {k: v for k, v in loaded.config.items() if k != "quantization"}
    tmp = out.with_name(out.name + ".partial")
    save_model(tmp, loaded.model)
    save_config(config, tmp / "config.json")
    loaded.tokenizer.save_pretrained(tmp)
    tmp.rename(out)
    return out


def write_data(out: Path) -> Path:
    if (out / "valid.jsonl").exists():
        return out
    try:
        import chatterbot_corpus
    except ModuleNotFoundError:
        sys.exit("quality_vs_mlx_lm.py: error: the data comes from the ChatterBot corpus; "
                 "`pip install --no-deps chatterbot-corpus==1.3.3` into this venv first")
    import yaml

    english = Path(chatterbot_corpus.__file__).parent / "data" / "english"
    pairs: dict[str, tuple[str, str]] = {}
    for path in sorted(english.glob("*.yml")):
        if path.stem == "coding":  # long code listings: another task, another length
            continue
        for turns in yaml.safe_load(path.read_text(encoding="utf-8"))["conversations"]:
            if len(turns) >= 2 and all(isinstance(t, str) and t.strip() for t in turns[:2]):
                pairs.setdefault(turns[0].strip().lower(), (turns[0].strip(), turns[1].strip()))
    records = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
               for q, a in pairs.values()]
    random.Random(0).shuffle(records)
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", records[:TRAIN_RECORDS]),
                       ("valid", records[TRAIN_RECORDS:TRAIN_RECORDS + HELD_OUT])):
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return out


def run(cmd: list[str], log: Path) -> None:
    with open(log, "w") as f:
        status = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT,
                                env=os.environ | {"NO_COLOR": "1"}).returncode
    if status != 0:
        sys.exit(f"{cmd[0]} {' '.join(cmd[1:3])} failed; see {log}\n" + log.read_text()[-2000:])


def held_out_nll(data: Path, model: Path, adapter: Path | None, log: Path) -> float:
    cmd = [str(Path(sys.executable).parent / "mlxsft"), "eval", str(data), "--model", str(model),
           "--json"] + (["--adapter", str(adapter)] if adapter else [])
    run(cmd, log)
    return json.loads(log.read_text().strip().splitlines()[-1])["loss"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("runs/quality-vs-mlx-lm"),
                    help="where the model, data, adapters and logs go (model and data are reused)")
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--learning-rate", type=float, default=1e-4)
    ap.add_argument("--schedule", choices=("constant", "cosine"), default="constant",
                    help="cosine decays to 10%% of the peak at the last step in both trainers")
    ap.add_argument("--warmup", type=int, default=0, help="warmup steps (linear, from ~0)")
    ap.add_argument("--lora-rank", type=int, default=8)
    ap.add_argument("--lora-alpha", type=float, default=16.0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                    help="one run of each trainer per seed (LoRA init and data order); the "
                         "table gives each and their mean, since one seed's difference between "
                         "the trainers is within seed-to-seed spread")
    ap.add_argument("--only", choices=("mlxsft", "mlx_lm"),
                    help="run one trainer (e.g. to try mlxsft settings); the other is skipped")
    args = ap.parse_args()

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    model, data = write_model(work / "model"), write_data(work / "data")
    from mlxsft.lora import linear_keys
    from mlxsft.models import load_model

    keys = linear_keys(load_model(str(model)).model)
    scale = args.lora_alpha / args.lora_rank
    base = held_out_nll(data, model, None, work / "eval-base.log")
    trainers = [t for t in ("mlxsft train", "mlx_lm lora")
                if args.only is None or t.startswith(args.only + " ")]
    results: dict[str, list[float]] = {t: [] for t in trainers}
    for seed in args.seeds:
        for trainer in trainers:
            tune = train_mlxsft if trainer.startswith("mlxsft") else train_mlx_lm
            adapter = tune(args, model, data, work, keys, scale, seed)
            tag = adapter.name
            results[trainer].append(held_out_nll(data, model, adapter, work / f"eval-{tag}.log"))
            print(f"  seed {seed} {trainer}: {results[trainer][-1]:.4f}", file=sys.stderr,
                  flush=True)

    print(f"SmolLM2-135M-Instruct (float32), ChatterBot corpus: {TRAIN_RECORDS} train / "
          f"{HELD_OUT} held-out records; {args.iters} steps x batch {args.batch_size}, "
          f"LoRA rank {args.lora_rank} scale {scale:g} on {len(keys)} projections x every layer, "
          f"Adam, lr {args.learning_rate:g} {args.schedule}, warmup {args.warmup}; "
          f"seeds {' '.join(map(str, args.seeds))}")
    seeds = "".join(f"  seed {s:<3}" for s in args.seeds)
    print(f"{'':14} held-out NLL (nats/token, response only){seeds}    mean   change vs base")
    print(f"{'base':14} {base:.4f}")
    for name, nlls in results.items():
        mean = sum(nlls) / len(nlls)
        per_seed = "".join(f"  {x:<8.4f}" for x in nlls)
        print(f"{name:14} {'':39}{per_seed}  {mean:.4f}  {100 * (mean - base) / base:+.1f}%")


def tag_of(args, seed: int) -> str:
    return (f"{args.schedule}-w{args.warmup}-lr{args.learning_rate:g}-{args.iters}x"
            f"{args.batch_size}-seed{seed}")


def train_mlxsft(args, model: Path, data: Path, work: Path, keys, scale, seed: int) -> Path:
    ours = work / f"mlxsft-{tag_of(args, seed)}"
    if not (ours / "adapters.safetensors").exists():
        run([str(Path(sys.executable).parent / "mlxsft"), "train", str(data), "--model",
             str(model), "--out", str(ours), "--iters", str(args.iters), "--batch-size",
             str(args.batch_size), "--learning-rate", str(args.learning_rate), "--lr-schedule",
             args.schedule, "--warmup", str(args.warmup), "--lora-rank", str(args.lora_rank),
             "--lora-alpha", str(args.lora_alpha), "--lora-dropout", "0", "--lora-layers", "-1",
             "--weight-decay", "0", "--grad-clip", "0", "--seed", str(seed),
             "--steps-per-eval", "0", "--steps-per-save", "0", "--max-seq-len", "1024"],
            work / f"{ours.name}.log")
    return ours


def train_mlx_lm(args, model: Path, data: Path, work: Path, keys, scale, seed: int) -> Path:
    peer = work / f"mlx_lm-{tag_of(args, seed)}"
    if (peer / "adapters.safetensors").exists():
        return peer
    schedule = None
    if args.schedule == "cosine":
        # mlx_lm's warmup runs from 0 over `warmup` steps, then the decay starts.
        schedule = {"name": "cosine_decay",
                    "arguments": [args.learning_rate, max(args.iters - args.warmup - 1, 1),
                                  args.learning_rate * 0.1],
                    "warmup": args.warmup}
    elif args.warmup:
        schedule = {"name": "linear_schedule",
                    "arguments": [args.learning_rate, args.learning_rate, 1],
                    "warmup": args.warmup}
    config = {"model": str(model), "train": True, "data": str(data), "iters": args.iters,
              "batch_size": args.batch_size, "learning_rate": args.learning_rate,
              "lr_schedule": schedule, "optimizer": "adam", "num_layers": -1,
              "lora_parameters": {"rank": args.lora_rank, "scale": scale, "dropout": 0.0,
                                  "keys": keys},
              "mask_prompt": True, "max_seq_length": 1024, "seed": seed,
              "steps_per_report": 10, "steps_per_eval": 10 * args.iters,
              "val_batches": 1, "save_every": 10 * args.iters, "adapter_path": str(peer)}
    config_path = work / f"{peer.name}.yaml"
    config_path.write_text(json.dumps(config, indent=1))  # JSON is YAML
    # The same OpenBLAS as mlxsft (imported first), so neither trainer is slowed by
    # MLX's bundled reference BLAS on Linux; the numbers do not depend on it.
    run([sys.executable, "-c", "import mlxsft, sys; from mlx_lm.lora import main; "
         "sys.argv[0] = 'mlx_lm.lora'; main()", "--config", str(config_path)],
        work / f"{peer.name}.log")
    return peer


if __name__ == "__main__":
    main()
