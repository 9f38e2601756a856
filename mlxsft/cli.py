"""The `mlxsft` command line: argparse subcommands over the library.

Each command parses its flags, calls one library function, and renders the result or
the trainer's events. A `UserError` anywhere becomes `mlxsft: error: <one line>` and
exit code 2, with no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

# transformers prints a PyTorch advisory at import; we use it only for tokenizers.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from mlxsft import __version__  # noqa: E402  (also loads the BLAS before mlx)
from mlxsft.errors import UserError  # noqa: E402
from mlxsft.models import DEFAULT_MODEL  # noqa: E402


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as the one line every other mlxsft error is."""

    def error(self, message: str):
        self.exit(2, f"mlxsft: error: {message}; see `{self.prog} --help`\n")


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value}: must be at least {low}")
        return value
    return parse


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text}: must be 0 or more")
    return value


def _model_flag(parser, required=False, help_extra=""):
    parser.add_argument("--model", default=None if not required else DEFAULT_MODEL,
                        help="base model: a Hugging Face directory, a hub id, a .gguf file, or "
                        f"{DEFAULT_MODEL} (default){help_extra}")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow a model that runs its own Python code")


def _mask_flags(parser):
    from mlxsft.masking import MASK_MODES

    parser.add_argument("--mask", default="assistant", choices=MASK_MODES,
                        help="what carries loss: assistant (every assistant turn with its "
                        "end-of-turn token), last (final assistant turn), all (every token)")
    parser.add_argument("--max-seq-len", type=_int_at_least(2), default=1024,
                        help="truncate longer records to this many tokens (default: 1024)")
    parser.add_argument("--skip-invalid", action="store_true",
                        help="skip invalid records (and count them) instead of stopping")


# -- data check ------------------------------------------------------------------------
def cmd_data_check(args) -> int:
    from mlxsft.data import DataOptions, load_splits, read_records
    from mlxsft.datacheck import check_split, record_json, render_record, render_summary
    from mlxsft.models import load_tokenizer
    from mlxsft.prepare import build_masker

    options = DataOptions.of(args)
    splits = load_splits(args.data, args.skip_invalid, options)
    held_out = (read_records(args.against, True, options.keys) if args.against
                else None)
    tokenizer = load_tokenizer(args.model, args.trust_remote_code)
    masker = build_masker(tokenizer, args)
    if not args.json:
        for warning in masker.warnings:
            print(f"mlxsft: warning: {warning}", file=sys.stderr)
    color = sys.stdout.isatty() if args.color is None else args.color
    reports = [check_split(name, data, masker, held_out if name == "train" else None)
               for name, data in splits.items()]
    if args.json:
        for report in reports:
            for item in report.items:
                print(json.dumps(record_json(item)))
        print(json.dumps({"summary": [r.summary() for r in reports],
                          "warnings": masker.warnings}))
    else:
        for report in reports:
            print(render_summary(report))
            for item in report.items[:args.show]:
                print(render_record(item, tokenizer, color))
    return _train_would_fail(reports, args.skip_invalid)


def _train_would_fail(reports, skip_invalid: bool) -> int:
    """1 (with the reason) where `train` on this data would stop, so the two agree."""
    for report in reports:
        if report.failed_masking and not skip_invalid:
            print(f"mlxsft: error: train would stop at {report.failed_masking[0]} "
                  f"({len(report.failed_masking)} such records; fix them or pass "
                  "--skip-invalid)", file=sys.stderr)
            return 1
        if report.split == "train" and not report.supervised_tokens:
            print(f"mlxsft: error: train would stop: {report.path} has no supervised tokens "
                  "to train on; check --mask and --max-seq-len", file=sys.stderr)
            return 1
    return 0


# -- plan ------------------------------------------------------------------------------
def cmd_plan(args) -> int:
    from mlxsft.config import build_config
    from mlxsft.plan import plan_run

    plan = plan_run(build_config(args, args.config))
    print(json.dumps(plan.to_json()) if args.json else plan.render())
    return 0


# -- train -----------------------------------------------------------------------------
def cmd_train(args) -> int:
    from mlxsft import events as ev
    from mlxsft.config import build_config
    from mlxsft.progress import ProgressPrinter
    from mlxsft.train import train

    resume_from = None
    if args.resume:
        from mlxsft.rundir import config_file, run_of

        if args.config:
            raise UserError("--resume takes its settings from RUN/config.yaml; drop --config "
                            "(flags still override, e.g. --iters)")
        run_dir = run_of(args.resume)
        resume_from, args.out = args.resume, str(run_dir)
        config = build_config(args, str(config_file(run_dir)))
    else:
        config = build_config(args, args.config)
    stop = {"signal": None}
    printer = ProgressPrinter()

    def say(text: str) -> None:
        try:
            print(text, file=sys.stderr, flush=True)
        except OSError:
            pass  # the terminal is gone (SIGHUP): keep training and saving regardless

    def on_signal(signum, frame):
        # Ctrl-C, `timeout`/`docker stop`/systemd (SIGTERM) and a closed terminal (SIGHUP)
        # all stop the run the same way: finish the step, save, exit with a status.
        if stop["signal"] is not None:
            raise KeyboardInterrupt
        stop["signal"] = signum
        again = "Ctrl-C" if signum == signal.SIGINT else "send it"
        say(f"\nmlxsft: {signal.Signals(signum).name}: stopping after this step and saving "
            f"the adapter ({again} again to quit now)")

    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, on_signal) for s in handled}
    keep_awake()
    status, finished = 0, None
    try:
        for event in train(config, should_stop=lambda: stop["signal"] is not None,
                           resume_from=resume_from, allow_data_change=args.allow_data_change):
            try:
                printer(event)
            except OSError:
                printer = lambda event: None  # noqa: E731 - no terminal left to print to
            if isinstance(event, ev.Failed):
                status = 1
            if isinstance(event, ev.Finished):
                finished = event
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if stop["signal"] is None or status:
        return status
    # Stopped by a signal: the adapter is saved, but a script's `train && fuse` should not
    # go on as if the run had finished; 128 + the signal, as a shell reports it.
    if finished is not None:
        say(f"mlxsft: stopped by {signal.Signals(stop['signal']).name} at step "
            f"{finished.step}; `mlxsft train --resume {finished.adapter_dir}` continues")
    return 128 + stop["signal"]


def keep_awake():
    """On macOS, keep the machine from idle sleep while this process trains (`caffeinate
    -i -w PID` ends by itself when the process does); elsewhere nothing. Returns the
    caffeinate process, or None."""
    import shutil
    import subprocess

    if sys.platform != "darwin" or not (caffeinate := shutil.which("caffeinate")):
        return None
    try:
        return subprocess.Popen([caffeinate, "-i", "-w", str(os.getpid())],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        return None  # sleeping is a nuisance, not a reason to refuse to train


# -- eval ------------------------------------------------------------------------------
def cmd_eval(args) -> int:
    from mlxsft.evaluate import evaluate_data

    result = evaluate_data(args.data, args.model, args.adapter, args.mask, args.max_seq_len,
                           args.batch_size, args.skip_invalid)
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        label = f"{result.model} + {result.adapter}" if result.adapter else result.model
        print(f"{label} on {result.data}: loss {result.loss:.4f} nats/token, perplexity "
              f"{result.perplexity:.2f} ({result.supervised_tokens} supervised tokens in "
              f"{result.records} records)")
    return 0


# -- chat ------------------------------------------------------------------------------
def cmd_chat(args) -> int:
    from mlxsft.chat import answer_all, interactive, load_chat_models, read_prompts

    prompts = read_prompts(args.prompt, args.prompts)
    models = load_chat_models(args.model, args.adapter, args.compare)
    if prompts:
        answer_all(models, prompts, args.system, args.max_tokens, args.temperature, args.json)
    else:
        interactive(models, args.system, args.max_tokens, args.temperature)
    return 0


# -- fuse / export-adapter ------------------------------------------------------------
def cmd_fuse(args) -> int:
    from mlxsft.export.fuse import fuse

    result = fuse(args.adapter, args.out, args.model, args.format, args.dtype, args.quantize)
    if args.json:
        print(json.dumps(result.to_json()))
        return 0
    print(result.render())
    for warning in result.warnings:
        print(f"mlxsft: warning: {warning}", file=sys.stderr)
    return 0


def cmd_export_adapter(args) -> int:
    from mlxsft.export.peft import export_peft

    result = export_peft(args.adapter, args.out, args.base)
    print(f"wrote a PEFT LoRA adapter to {result.out}: {result.modules} modules, r "
          f"{result.rank}, lora_alpha {result.lora_alpha:g}, base "
          f"{result.base_model_name_or_path}")
    for note in result.notes:
        print(f"mlxsft: note: {note}", file=sys.stderr)
    return 0


# -- bench -----------------------------------------------------------------------------
def cmd_bench(args) -> int:
    from mlxsft.bench import run_bench

    result = run_bench(args.model, args.batch_size, args.seq_len, args.steps, args.warmup,
                       args.fine_tune, args.lora_rank, args.quantize, args.keep_quantized,
                       args.grad_checkpoint, args.data)
    print(json.dumps(result.to_json()) if args.json else result.render())
    return 0


# -- env -------------------------------------------------------------------------------
def cmd_compare(args) -> int:
    import json

    from mlxsft.compare import compare, render, to_json
    from mlxsft.rundir import check_run_dir

    run_dir = check_run_dir(args.run)
    table = compare(run_dir, args.prompts, args.include, args.limit, args.max_tokens,
                    progress=None if args.json else lambda m: print(m, file=sys.stderr))
    print(json.dumps(to_json(table), indent=2) if args.json else render(table))
    return 0


def cmd_env(args) -> int:
    from mlxsft import doctor

    report = doctor.collect()
    print(json.dumps(report, indent=2) if args.json else doctor.render(report))
    return 0


# -- tui -------------------------------------------------------------------------------
def cmd_tui(args) -> int:
    from mlxsft.config import load_yaml
    from mlxsft.tui.app import create_app  # the only place the library reaches the TUI

    # A mistyped path is refused here, in one line, rather than after the app has opened;
    # what can only go wrong later (loading the model) is shown in the app.
    if args.run and not Path(args.run).is_dir():
        raise UserError(f"--run {args.run}: no such run directory; pass the directory "
                        "`mlxsft train --out` wrote")
    if args.data and not Path(args.data).exists():
        raise UserError(f"{args.data}: no such file or directory; pass a .jsonl file or a "
                        "directory with train.jsonl")
    if args.config:
        load_yaml(args.config)
    create_app(data=args.data, model=args.model, config_path=args.config,
               run_dir=args.run).run()
    return 0


def build_parser() -> argparse.ArgumentParser:
    from mlxsft.config import DATA_FIELDS, add_arguments

    parser = _Parser(
        prog="mlxsft", description="Local instruction tuning (SFT) on MLX: response-only "
        "loss masks, LoRA/QLoRA, a compiled training step.")
    parser.add_argument("--version", action="version", version=f"mlxsft {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("train", help="fine-tune a model on a JSONL file of demonstrations",
                       description="Fine-tune with LoRA (or QLoRA, or full) on response-only "
                       "masked cross-entropy. Every option can also come from --config "
                       "run.yaml (keys are the option names); flags override the file.")
    p.add_argument("--config", help="YAML file of options (flags given here override it)")
    p.add_argument("--resume", metavar="RUN", help="continue a stopped run in RUN from its last "
                   "saved adapter and optimizer state (pass --iters to extend it), or from an "
                   "older checkpoint: --resume RUN/checkpoints/step-N")
    p.add_argument("--allow-data-change", action="store_true", help="with --resume: continue "
                   "even though the data files changed since the checkpoint (their SHA-256 "
                   "differs)")
    add_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("plan", help="predict a run's peak memory and step time, and what fits",
                       description="Load the model and data as `mlxsft train` would (same "
                       "flags) and predict the step's peak memory and time, against Metal's "
                       "recommended working set (macOS) or available RAM (Linux); when it "
                       "will not fit, name a change that does.")
    p.add_argument("--config", help="YAML file of options (flags given here override it)")
    p.add_argument("--json", action="store_true", help="the plan as one JSON object")
    add_arguments(p)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("data", help="inspect and curate training data")
    data_sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    c = data_sub.add_parser("check", help="lint a dataset and show its loss masks",
                            description="Tokenize DATA with the model's chat template exactly "
                            "as training will, and report formats, lengths, supervised share, "
                            "truncation, duplicates and other problems.")
    c.add_argument("data", help="a .jsonl/.json/.parquet file, a directory with train.jsonl / "
                   "valid.jsonl, or a Hugging Face dataset id (org/name, org/name:split)")
    _model_flag(c)
    _mask_flags(c)
    c.add_argument("--show", type=_int_at_least(0), default=0, metavar="N",
                   help="print N records with masked (dim) and supervised (bold green) tokens")
    c.add_argument("--json", action="store_true",
                   help="one JSON object per record (line, tokens, loss_mask) and a summary")
    c.add_argument("--color", action=argparse.BooleanOptionalAction, default=None,
                   help="colour for --show (default: when writing to a terminal)")
    c.add_argument("--against", metavar="HELD_OUT", default=None,
                   help="also report training records that (nearly) repeat a record of this "
                   "held-out file (leakage)")
    add_arguments(c, only=DATA_FIELDS)
    c.set_defaults(func=cmd_data_check)
    from mlxsft.datacli import add_curation_parsers

    add_curation_parsers(data_sub)

    p = sub.add_parser("eval", help="response-only loss of a model (with an adapter) on data",
                       description="Mean NLL and perplexity over supervised tokens only, "
                       "masked exactly as in training; compare a base and its adapter.")
    p.add_argument("data", help="a .jsonl file, or a data directory (its valid.jsonl)")
    p.add_argument("--model", default=None, help="base model (default: the adapter's base, "
                   f"else {DEFAULT_MODEL})")
    p.add_argument("--adapter", default=None, help="adapter directory (a run directory, its "
                   "best/ or a checkpoint)")
    _mask_flags(p)
    p.add_argument("--batch-size", type=_int_at_least(1), default=4,
                   help="records per forward pass (default: 4)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("chat", help="chat with a model; --compare answers with base and tuned",
                       description="Interactive chat with streaming tokens and the model's chat "
                       "template, or one answer per --prompt. --compare answers every prompt "
                       "with the base and then with the adapter, labelled [base] and [tuned].")
    p.add_argument("--model", default=None, help="base model (default: the adapter's base, "
                   f"else {DEFAULT_MODEL})")
    p.add_argument("--adapter", default=None, help="adapter directory (a run directory, its "
                   "best/ or a checkpoint)")
    p.add_argument("--compare", action="store_true", help="answer with base and tuned")
    p.add_argument("--prompt", action="append", metavar="TEXT",
                   help="answer this prompt and exit (repeatable)")
    p.add_argument("--prompts", metavar="FILE", help="a file of prompts, one per line (or "
                   "JSON lines with a 'prompt' field)")
    p.add_argument("--system", default=None, help="a system message for every conversation")
    p.add_argument("--max-tokens", type=_int_at_least(1), default=256,
                   help="longest answer in tokens (default: 256)")
    p.add_argument("--temperature", type=_non_negative_float, default=0.0,
                   help="0 is greedy (default)")
    p.add_argument("--json", action="store_true", help="with --prompt: one JSON object per "
                   "prompt with each model's answer")
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("fuse", help="fuse an adapter into its base and save a model "
                       "(MLX/HF safetensors or GGUF), verified",
                       description="W' = W + scale * B A into the base (de-quantized first), "
                       "saved in full precision or re-quantized; then the saved model is "
                       "loaded back and compared with base + adapter on held-out records "
                       "(max |logit diff|, response-only loss). OUT appears only when done.")
    p.add_argument("--adapter", required=True, help="adapter directory (a run directory, "
                   "its best/ or a checkpoint)")
    p.add_argument("--out", required=True, help="the model directory (or .gguf file) to write")
    p.add_argument("--model", default=None, help="base model (default: the adapter's base)")
    p.add_argument("--format", default="mlx", choices=("mlx", "hf", "gguf"),
                   help="mlx: directory for mlx-lm (may be quantized); hf: full-precision "
                   "directory for transformers and mlx-lm; gguf: one llama.cpp file "
                   "(llama, mistral, qwen2, qwen3) (default: mlx)")
    p.add_argument("--dtype", default=None, choices=("float16", "bfloat16", "float32"),
                   help="float type written (default: the base's; float16 for a quantized "
                   "base)")
    p.add_argument("--quantize", type=int, choices=(4, 8), default=None, metavar="BITS",
                   help="re-quantize: 4 or 8 bits (MLX affine, the base's group size or 64; "
                   "GGUF Q4_1 / Q8_0); the loss change is reported")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_fuse)

    p = sub.add_parser("export-adapter", help="write the adapter for other tools (PEFT)",
                       description="Write adapter_model.safetensors and adapter_config.json "
                       "in PEFT's layout (lora_A [r, in], lora_B [out, r], lora_alpha = "
                       "scale * r) for peft.PeftModel.from_pretrained on the transformers "
                       "version of the base.")
    p.add_argument("--adapter", required=True, help="adapter directory")
    p.add_argument("--format", default="peft", choices=("peft",), help="peft (the only one so far)")
    p.add_argument("--out", required=True, help="the directory to write")
    p.add_argument("--base", default=None, help="base_model_name_or_path to record (default: "
                   "the adapter's base; give the Hugging Face id when it was a GGUF file)")
    p.set_defaults(func=cmd_export_adapter)

    p = sub.add_parser("bench", help="time the training step: tokens/s, memory, %% of peak",
                       description="Run the real compiled training step on fixed-shape batches "
                       "(synthetic, or cut from --data) and print tokens/s, supervised "
                       "tokens/s, seconds/step, peak memory, and model FLOPs/token against a "
                       "measured fp32 matmul peak. Use it to pick a batch size.")
    p.add_argument("--model", default=None, help=f"base model (default: {DEFAULT_MODEL})")
    p.add_argument("--batch-size", type=_int_at_least(1), default=4,
                   help="records per step (default: 4)")
    p.add_argument("--seq-len", type=_int_at_least(2), default=256,
                   help="tokens per record (default: 256)")
    p.add_argument("--steps", type=_int_at_least(1), default=10,
                   help="timed steps (default: 10)")
    p.add_argument("--warmup", type=_int_at_least(0), default=2,
                   help="untimed steps first, for compilation (default: 2)")
    p.add_argument("--fine-tune", default="lora", choices=("lora", "full"),
                   help="lora (default) or full (every weight trains)")
    p.add_argument("--lora-rank", type=_int_at_least(1), default=8, help="LoRA rank (default: 8)")
    p.add_argument("--quantize", type=int, choices=(4, 8), default=None,
                   help="quantize the base on load to 4 or 8 bits (QLoRA)")
    p.add_argument("--keep-quantized", action="store_true",
                   help="on Linux, time quantized compute instead of de-quantized float32")
    p.add_argument("--grad-checkpoint", action="store_true",
                   help="recompute activations in the backward pass: less memory, more compute")
    p.add_argument("--data", default=None, help="cut batches from this data instead of "
                   "synthetic tokens")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("compare", help="answer held-out prompts with the base, every checkpoint "
                       "and exports, and score them",
                       description="Which checkpoint behaves best, and did tuning break "
                       "anything? Answers a probe set (greedy) with the base, every adapter "
                       "the run saved and each --include model, and prints each answer and, "
                       "per model, the loss of the reference answers, exact matches, answers "
                       "that ended with the end-of-turn token, mean length and JSON parses.")
    p.add_argument("run", metavar="RUN", help="a run directory (the --out of mlxsft train)")
    p.add_argument("--prompts", default=None, metavar="FILE", help="a .jsonl of prompts with "
                   "reference answers (default: the run's validation data)")
    p.add_argument("--include", nargs="+", default=[], metavar="PATH", help="also a fused "
                   "model directory or .gguf file")
    p.add_argument("--limit", type=_int_at_least(1), default=8, help="prompts to answer "
                   "(default: 8)")
    p.add_argument("--max-tokens", type=_int_at_least(1), default=64,
                   help="longest answer, in tokens (default: 64)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("env", help="this machine: MLX, BLAS, threads, the default model",
                       description="Report versions, MLX's device, whether the optimized BLAS "
                       "is in use (with a measured matmul rate), and the default model.")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_env)

    p = sub.add_parser("tui", help="the terminal app: live loss curves, base-vs-tuned chat",
                       description="Set up and run a fine-tune with a live Loss chart, "
                       "compare the base and tuned models side by side, and inspect the "
                       "data's loss masks.")
    p.add_argument("data", nargs="?", default=None, help="training data (.jsonl or a dir)")
    p.add_argument("--model", default=None, help=f"base model (default: {DEFAULT_MODEL})")
    p.add_argument("--config", default=None, help="YAML file of run options")
    p.add_argument("--run", default=None, metavar="DIR", help="open this run directory")
    p.set_defaults(func=cmd_tui)
    return parser


def _terminated(signum, frame):
    raise KeyboardInterrupt  # so a staged OUT's temporary directory is removed


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.func in (cmd_fuse, cmd_export_adapter):
        signal.signal(signal.SIGTERM, _terminated)
    try:
        return args.func(args)
    except UserError as e:
        print(f"mlxsft: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("\nmlxsft: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
