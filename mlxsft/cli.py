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

# heavy: each command imports its own modules (mlx, mlx_lm, transformers) inside its cmd_*
# function, so `mlxsft --help` and a mistyped flag answer at once.
from mlxsft import __version__  # noqa: E402  (also loads the BLAS before mlx)
from mlxsft import events as ev  # noqa: E402
from mlxsft.config import (  # noqa: E402
    BenchConfig, ChatConfig, DataCheckConfig, EnvConfig, EvalConfig, ExportAdapterConfig,
    CompareConfig, FuseConfig, PushConfig, TuiConfig, add_arguments, build_config, load_yaml)
from mlxsft.datacli import add_curation_parsers  # noqa: E402
from mlxsft.errors import UserError  # noqa: E402
from mlxsft.progress import ProgressPrinter  # noqa: E402


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as the one line every other mlxsft error is."""

    def error(self, message: str):
        self.exit(2, f"mlxsft: error: {message}; see `{self.prog} --help`\n")


# -- data check ------------------------------------------------------------------------
def cmd_data_check(args) -> int:
    from mlxsft.data import DataOptions, load_splits, read_records
    from mlxsft.datacheck import check_split, record_json, render_record, render_summary
    from mlxsft.models import load_tokenizer
    from mlxsft.prepare import build_masker

    args = build_config(args, cls=DataCheckConfig)
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
    from mlxsft.distributed import RunStopped, join

    # Under mlx.launch this process is one rank of several (rank 0 of 1 otherwise).
    world = join()
    try:
        return _train(args, world)
    except RunStopped as e:
        if world.leader:
            raise
        return e.exit_code  # rank 0 says why; the other ranks end quietly
    except UserError as e:
        if not world.distributed:
            raise
        raise UserError(world.said(str(e)), e.exit_code) from None  # which host's files...


def _train(args, world) -> int:
    from mlxsft.distributed import join, resumed_batch_size
    from mlxsft.train import train

    resume_from, notes = None, []
    if args.resume:
        from mlxsft.rundir import config_file, run_of, run_settings

        if args.config:
            raise UserError("--resume takes its settings from RUN/config.yaml; drop --config "
                            "(flags still override, e.g. --iters)")
        run_dir = run_of(args.resume)
        resume_from, args.out = args.resume, str(run_dir)
        config = build_config(args, str(config_file(run_dir)))
        if args.batch_size is None:  # keep the run's global batch on any number of ranks
            batch, note = resumed_batch_size(run_settings(run_dir), world, args.resume)
            config.batch_size = batch or config.batch_size
            notes += [note] if note else []
    else:
        config = build_config(args, args.config)
    join(config.peer_timeout)
    stop = {"signal": None}
    printer = ProgressPrinter() if world.leader else _own_failures(world)
    if world.leader:
        for note in notes:
            print(f"note: {note}", flush=True)

    def say(text: str) -> None:
        if not world.leader:
            return  # rank 0 speaks for the run
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
    if world.distributed:
        # mlx.launch ends the other ranks (SIGTERM) once one has ended; a rank that is done
        # ignores that, so rank 0's last writes are never cut short.
        previous[signal.SIGTERM] = signal.SIG_IGN
    keep_awake()
    status, finished = 0, None
    try:
        for event in train(config, should_stop=lambda: stop["signal"],
                           resume_from=resume_from, allow_data_change=args.allow_data_change,
                           world=world):
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


def _own_failures(world):
    """The printer of a rank other than 0: silent, except for failures this rank saw."""
    def printer(event) -> None:
        if isinstance(event, ev.Failed) and event.rank == world.rank:
            print(f"mlxsft: error: {event.message}", file=sys.stderr, flush=True)
    return printer


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

    args = build_config(args, cls=EvalConfig)
    result = evaluate_data(args.data, args.model, args.adapter, args.mask, args.max_seq_len,
                           args.batch_size, args.skip_invalid, answers=args.answers,
                           match=args.match)
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        label = f"{result.model} + {result.adapter}" if result.adapter else result.model
        print(f"{label} on {result.data}: loss {result.loss:.4f} nats/token, perplexity "
              f"{result.perplexity:.2f} ({result.supervised_tokens} supervised tokens in "
              f"{result.records} records)")
        if result.answers is not None:
            print(result.answers.summary())
            for example in result.answers.examples[:args.show]:
                marks = ", ".join(f"{k.replace('_', ' ')}: {'yes' if example[k] else 'no'}"
                                  for k in ("right", "in_shape", "exact"))
                print(f"  >>> {example['prompt']!r}\n      {example['reply']!r}  ({marks})")
    return 0


# -- chat ------------------------------------------------------------------------------
def cmd_chat(args) -> int:
    from mlxsft.chat import answer_all, interactive, load_chat_models, read_prompts

    args = build_config(args, cls=ChatConfig)
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

    args = build_config(args, cls=FuseConfig)
    result = fuse(args.adapter, args.out, args.model, args.format, args.dtype, args.quantize,
                  lmstudio_dir=args.lmstudio_dir)
    if args.json:
        print(json.dumps(result.to_json()))
        return 0
    print(result.render())
    for warning in result.warnings:
        print(f"mlxsft: warning: {warning}", file=sys.stderr)
    return 0


def cmd_export_adapter(args) -> int:
    from mlxsft.export.peft import export_peft

    args = build_config(args, cls=ExportAdapterConfig)
    if args.format == "gguf":
        from mlxsft.gguf.adapter import export_gguf_adapter

        done = export_gguf_adapter(args.adapter, args.out, args.base)
        print(f"wrote a llama.cpp LoRA adapter GGUF to {done.out}: {done.tensors} tensors, r "
              f"{done.rank}, alpha {done.alpha:g}, base {done.base} (llama-cli -m BASE.gguf "
              f"--lora {done.out}; Ollama: ADAPTER {done.out})")
        return 0
    result = export_peft(args.adapter, args.out, args.base)
    print(f"wrote a PEFT LoRA adapter to {result.out}: {result.modules} modules, r "
          f"{result.rank}, lora_alpha {result.lora_alpha:g}, base "
          f"{result.base_model_name_or_path}")
    for note in result.notes:
        print(f"mlxsft: note: {note}", file=sys.stderr)
    return 0


def cmd_push(args) -> int:
    from mlxsft.export.push import push

    args = build_config(args, cls=PushConfig)
    result = push(args.source, args.repo, args.private)
    print(f"pushed the {result.kind} in {args.source} to {result.url} ({len(result.files)} "
          f"files: {', '.join(result.files)})")
    return 0


# -- compare ---------------------------------------------------------------------------
def cmd_compare(args) -> int:
    from mlxsft.compare import compare, render, to_json
    from mlxsft.rundir import check_run_dir

    args = build_config(args, cls=CompareConfig)
    run_dir = check_run_dir(args.run)
    table = compare(run_dir, args.prompts, args.include or [], args.limit, args.max_tokens,
                    progress=None if args.json else lambda m: print(m, file=sys.stderr))
    print(json.dumps(to_json(table), indent=2) if args.json else render(table))
    return 0


# -- bench -----------------------------------------------------------------------------
def cmd_bench(args) -> int:
    from mlxsft.bench import run_bench
    from mlxsft.distributed import join

    config = build_config(args, cls=BenchConfig)
    # Under mlx.launch: time the data-parallel step; rank 0 prints. The others wait while
    # rank 0 times the step alone, which may take longer than a training step's timeout.
    world = join(timeout=3600)
    result = run_bench(config, world)
    if world.leader:
        print(json.dumps(result.to_json()) if config.json else result.render())
    return 0


# -- env -------------------------------------------------------------------------------
def cmd_env(args) -> int:
    from mlxsft import env

    report = env.collect()
    print(json.dumps(report, indent=2) if args.json else env.render(report))
    return 0


# -- tui -------------------------------------------------------------------------------
def cmd_tui(args) -> int:
    from mlxsft.tui.app import create_app  # the only place the library reaches the TUI

    args = build_config(args, cls=TuiConfig)
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


def _command(sub, name, func, config_cls, **kwargs) -> argparse.ArgumentParser:
    """A subcommand whose flags are the fields of `config_cls` (see mlxsft.config)."""
    p = sub.add_parser(name, **kwargs)
    add_arguments(p, config_cls)
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:

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
    _command(data_sub, "check", cmd_data_check, DataCheckConfig,
             help="lint a dataset and show its loss masks",
             description="Tokenize DATA with the model's chat template exactly as training "
             "will, and report formats, lengths, supervised share, truncation, duplicates and "
             "other problems.")
    add_curation_parsers(data_sub)
    _command(sub, "eval", cmd_eval, EvalConfig,
             help="response-only loss of a model (with an adapter) on data",
             description="Mean NLL and perplexity over supervised tokens only, masked exactly "
             "as in training; compare a base and its adapter.")
    _command(sub, "chat", cmd_chat, ChatConfig,
             help="chat with a model; --compare answers with base and tuned",
             description="Interactive chat with streaming tokens and the model's chat "
             "template, or one answer per --prompt. --compare answers every prompt with the "
             "base and then with the adapter, labelled [base] and [tuned].")
    _command(sub, "fuse", cmd_fuse, FuseConfig,
             help="fuse an adapter into its base and save a model (MLX/HF safetensors or "
             "GGUF), verified",
             description="W' = W + scale * B A into the base (de-quantized first), saved in "
             "full precision or re-quantized; then the saved model is loaded back and "
             "compared with base + adapter on held-out records (max |logit diff|, "
             "response-only loss). OUT appears only when done.")
    _command(sub, "export-adapter", cmd_export_adapter, ExportAdapterConfig,
             help="write the adapter for other tools (PEFT, llama.cpp GGUF)",
             description="Write adapter_model.safetensors and adapter_config.json in PEFT's "
             "layout (lora_A [r, in], lora_B [out, r], lora_alpha = scale * r) for "
             "peft.PeftModel.from_pretrained on the transformers version of the base.")
    _command(sub, "push", cmd_push, PushConfig,
             help="upload an adapter, fused model or GGUF to the Hugging Face hub with a "
             "model card",
             description="SOURCE: a run or adapter directory (uploaded in mlx-lm's and PEFT's "
             "layouts), a fused model directory, or a .gguf file. Needs a token (`hf auth "
             "login`); nothing is staged without one.")
    _command(sub, "compare", cmd_compare, CompareConfig,
             help="answer held-out prompts with the base, every checkpoint and exports, and "
             "score them",
             description="Which checkpoint behaves best, and did tuning break anything? "
             "Answers a probe set (greedy) with the base, every adapter the run saved and "
             "each --include model, and prints each answer and, per model, the loss of the "
             "reference answers, exact matches, answers that ended with the end-of-turn "
             "token, mean length and JSON parses.")
    _command(sub, "bench", cmd_bench, BenchConfig,
             help="time the training step: tokens/s, memory, %% of peak",
             description="Run the real compiled training step on fixed-shape batches "
             "(synthetic, or cut from --data) and print tokens/s, supervised tokens/s, "
             "seconds/step, peak memory, and model FLOPs/token against a measured fp32 "
             "matmul peak. Use it to pick a batch size.")
    _command(sub, "env", cmd_env, EnvConfig,
             help="this machine: MLX, BLAS, threads, the default model",
             description="Report versions, MLX's device, whether the optimized BLAS is in "
             "use (with a measured matmul rate), and the default model.")
    _command(sub, "tui", cmd_tui, TuiConfig,
             help="the terminal app: live loss curves, base-vs-tuned chat",
             description="Set up and run a fine-tune with a live Loss chart, compare the base "
             "and tuned models side by side, and inspect the data's loss masks.")
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
