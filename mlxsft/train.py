"""The training run: data -> masked batches -> one compiled step -> adapters on disk.

`train(config)` is a generator of `mlxsft.events` objects; it prints nothing and knows
no UI. It also appends every event to RUN/metrics.jsonl, the stream the TUI and scripts
read. Everything MLX happens on the calling thread (MLX streams are thread-local).

Model preparation and the compiled step (with its token-weighted gradient accumulation)
live in `mlxsft.step`; this module is the loop around them and the run's files.
"""

from __future__ import annotations

import math
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator

from mlxsft import __version__
from mlxsft import events as ev
from mlxsft.checkpoints import (
    MetricsLog,
    atomic_save_safetensors,
    atomic_write_text,
    save_adapter,
)
from mlxsft.config import TrainConfig
from mlxsft.errors import UserError
from mlxsft.prepare import prepare_data, read_data
from mlxsft.step import TrainStep, prepare_model


OPTIMIZER_STATE = "optimizer.safetensors"


def default_run_dir() -> Path:
    return Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


class Trainer:
    """Owns the model, optimizer and compiled step of one run; `run()` yields events."""

    def __init__(self, config: TrainConfig, loaded=None, should_stop: Callable[[], bool] | None = None,
                 resume_from: str | Path | None = None):
        self.config = config
        self.loaded = loaded
        self.should_stop = should_stop or (lambda: False)
        self.run_dir = Path(config.out) if config.out else default_run_dir()
        # A saved adapter directory (with optimizer state) to continue from.
        self.resume_from = Path(resume_from) if resume_from else None

    # -- setup -----------------------------------------------------------------------
    def _setup(self) -> list[str]:
        import mlx.core as mx

        from mlxsft.models import load_model

        config = self.config
        # Everything the user can get wrong that needs no model is checked first, so a typo
        # is reported in a second, not after loading a multi-gigabyte model.
        self._check_run_dir()
        splits = read_data(config)
        mx.random.seed(config.seed)
        if self.loaded is None:
            self.loaded = load_model(config.model, quantize=config.quantize,
                                     trust_remote_code=config.trust_remote_code)
        self.data = prepare_data(config, self.loaded.tokenizer, splits)
        self.prepare_model()
        return self.loaded.notes + self.data.messages

    def _check_run_dir(self) -> None:
        run_dir = self.run_dir
        if run_dir.exists() and not run_dir.is_dir():
            raise UserError(f"--out {run_dir}: is a file; choose a new run directory")
        if self.resume_from is None and run_dir.exists() and any(run_dir.iterdir()):
            raise UserError(f"--out {run_dir}: already holds files; choose a new run "
                            "directory so nothing is overwritten")
        created = not run_dir.exists()
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"--out {run_dir}: cannot create it ({e.strerror}); choose a "
                            "directory you can write to") from None
        self._created_run_dir = created
        if not os.access(run_dir, os.W_OK | os.X_OK):
            raise UserError(f"--out {run_dir}: not writable; choose a directory you can "
                            "write to")

    def _write_config(self) -> None:
        """RUN/config.yaml, with local paths made absolute so --resume works from any
        directory; written only once the run is about to start."""
        import yaml

        resolved = self.config.resolved() | {"out": str(self.run_dir)}
        for key in ("data", "valid", "model"):
            value = resolved.get(key)
            if value and Path(value).expanduser().exists():
                resolved[key] = str(Path(value).expanduser().resolve())
        atomic_write_text(self.run_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))

    def prepare_model(self) -> None:
        """Compute precision, LoRA (or unfreeze for full), gradient checkpointing."""
        prepared = prepare_model(self.loaded, self.config)
        self.lora, self.trainable, self.total = prepared.lora, prepared.trainable, prepared.total

    def adapter_config(self, step: int, val_loss: float | None = None) -> dict:
        loaded, config = self.loaded, self.config
        out = {"fine_tune_type": config.fine_tune}
        if self.lora is not None:
            out.update(num_layers=self.lora.num_layers,
                       lora_parameters=self.lora.mlx_lm_parameters(),
                       lora_alpha=self.lora.alpha)
        out.update(base_model=loaded.source, base_model_path=str(Path(loaded.path).resolve()),
                   base_model_kind=loaded.kind, base_quantization=loaded.quantization,
                   model_type=loaded.config.get("model_type"),
                   hidden_size=loaded.config.get("hidden_size"),
                   num_hidden_layers=loaded.config.get("num_hidden_layers"),
                   data=self.data.files, mask=config.mask, max_seq_len=config.max_seq_len,
                   **self.data.template,  # chat template + kwargs: chat and fuse render alike
                   mlxsft_version=__version__, step=step, val_loss=val_loss)
        return out

    def save(self, directory: Path, step: int, val_loss: float | None = None,
             with_optimizer: bool = True) -> None:
        from mlx.utils import tree_flatten

        weights = dict(tree_flatten(self.loaded.model.trainable_parameters()))
        save_adapter(directory, weights, self.adapter_config(step, val_loss))
        # The optimizer's moments make a resumed run continue exactly where this one was.
        if with_optimizer:
            atomic_save_safetensors(directory / OPTIMIZER_STATE,
                                    dict(tree_flatten(self.optimizer.state)))

    def restore(self, directory: Path) -> int:
        """Load adapter weights and optimizer state saved by `save`; return their step."""
        from mlx.utils import tree_unflatten

        from mlxsft.checkpoints import ADAPTER_WEIGHTS, load_safetensors, read_adapter_config

        saved = read_adapter_config(directory)
        for key in ("model_type", "hidden_size", "num_hidden_layers"):
            want, have = saved.get(key), self.loaded.config.get(key)
            if want is not None and have is not None and want != have:
                raise UserError(f"--resume {directory}: trained on {saved.get('base_model')} "
                                f"({key} {want}), but --model {self.loaded.source} has {key} "
                                f"{have}; drop --model to resume on the run's own base")
        weights = load_safetensors(directory / ADAPTER_WEIGHTS, f"--resume {directory}")
        try:
            self.loaded.model.load_weights(list(weights.items()), strict=False)
        except ValueError as e:
            raise UserError(f"--resume {directory}: the saved adapter does not fit this model "
                            f"({' '.join(str(e).split())[:200]})") from None
        if (directory / OPTIMIZER_STATE).exists():
            # In place: the compiled step holds this very dict as its state.
            self.optimizer.state.update(tree_unflatten(list(load_safetensors(
                directory / OPTIMIZER_STATE, f"--resume {directory}").items())))
        return int(saved.get("step", 0))

    # -- the compiled step -----------------------------------------------------------
    def build_step(self, total_steps: int) -> TrainStep:
        """The optimizer and compiled step (see `mlxsft.step`) for a run of total_steps."""
        self.step = TrainStep(self.loaded.model, self.config, total_steps)
        self.optimizer, self.schedule = self.step.optimizer, self.step.schedule
        return self.step

    def make_plan(self):
        """The memory and step-time prediction for this run (`mlxsft.plan`), kept as
        `self.plan` for front ends; its summary line is printed before training."""
        from mlxsft.bench import matmul_peak_gflops
        from mlxsft.plan import plan_for

        self.plan = plan_for(self.loaded.model, self.config, self.data.train,
                             self.step.loss.gathered, matmul_peak_gflops())
        return self.plan

    def train_step(self, batches) -> tuple[float, int, int]:
        """One optimizer step over grad_accum micro-batches: (loss, supervised, tokens)."""
        result = self.step(batches)
        return result.loss, result.supervised, result.tokens

    def batches(self):
        """Training micro-batches forever: length buckets, or packed rows (--pack)."""
        from mlxsft.batching import iterate_batches, iterate_packed_batches

        config = self.config
        iterate = iterate_packed_batches if config.pack else iterate_batches
        return iterate(self.data.train, config.batch_size, config.max_seq_len,
                       seed=config.seed, pad_id=self._pad_id())

    def _rows_per_epoch(self) -> int:
        from mlxsft.batching import pack_rows

        if self.config.pack:
            return len(pack_rows(self.data.train, self.config.max_seq_len))
        return len(self.data.train)

    def evaluate(self) -> tuple[float, int]:
        from mlxsft.evaluate import mean_nll

        model = self.loaded.model
        model.eval()
        try:
            return mean_nll(model, self.data.valid, self.config.batch_size,
                            self.config.max_seq_len, self._pad_id(), self.config.val_batches,
                            self.step.loss)
        finally:
            model.train()

    def _pad_id(self) -> int:
        tok = self.loaded.tokenizer
        return tok.pad_token_id if getattr(tok, "pad_token_id", None) is not None else 0

    # -- the loop --------------------------------------------------------------------
    def run(self) -> Iterator[ev.Event]:
        from mlxsft.batching import iterate_batches, steps_per_epoch

        start = time.perf_counter()
        config = self.config
        try:
            messages = self._setup()
            per_epoch = steps_per_epoch(self._rows_per_epoch(), config.batch_size,
                                        config.grad_accum)
            total_steps = config.iters or max(1, math.ceil(config.epochs * per_epoch))
            messages += self.build_step(total_steps).notes
            messages.append(self.make_plan().summary())
            start_step = self.restore(self.resume_from) if self.resume_from else 0
            if self.resume_from and start_step >= total_steps:
                raise UserError(f"--resume {self.resume_from}: already at step {start_step} of "
                                f"{total_steps}; pass a larger --iters to train on")
            if start_step:
                messages.append(f"resumed from {self.resume_from} at step {start_step}")
            self._write_config()
        except BaseException:
            # Nothing was written: leave no empty run directory behind.
            if (getattr(self, "_created_run_dir", False) and self.run_dir.is_dir()
                    and not any(self.run_dir.iterdir())):
                self.run_dir.rmdir()
            raise
        log = MetricsLog(self.run_dir / "metrics.jsonl")

        def emit(event):
            log.write(event.to_json())
            return event

        try:
            yield emit(ev.RunStarted(str(self.run_dir), total_steps, self.trainable, self.total,
                                     len(self.data.train), len(self.data.valid), messages))
            yield from self._loop(emit, start, total_steps, per_epoch, iterate_batches, start_step)
        finally:
            log.close()

    def _loop(self, emit, start, total_steps, per_epoch, iterate_batches, start_step=0):
        import mlx.core as mx

        config, model = self.config, self.loaded.model
        model.train()
        batches = self.batches()
        for _ in range(start_step * config.grad_accum):
            next(batches)  # the same data order as an uninterrupted run
        tokens = supervised = 0
        window_loss = window_sup = 0.0
        window_start, window_tokens, window_supervised = time.perf_counter(), 0, 0
        best = last_val = last_train = None
        step = start_step
        stopped = False
        try:
            for step in range(start_step + 1, total_steps + 1):
                if self.should_stop():
                    stopped, step = True, step - 1
                    break
                loss, n_sup, n_tok = self.train_step(batches)
                if not math.isfinite(loss):
                    last_good = self._last_checkpoint()
                    yield emit(ev.Failed(step, f"the training loss became {loss} at step {step}; "
                                         "lower --learning-rate or check the data. The last good "
                                         f"adapter is {last_good or 'not saved (none yet)'}",
                                         last_good))
                    return
                tokens += n_tok
                supervised += n_sup
                window_loss += loss * n_sup
                window_sup += n_sup
                window_tokens += n_tok
                window_supervised += n_sup
                if step % config.steps_per_report == 0 or step == total_steps:
                    now = time.perf_counter()
                    elapsed = max(now - window_start, 1e-9)
                    last_train = window_loss / max(window_sup, 1)
                    yield emit(ev.StepReport(
                        step, total_steps, step / per_epoch, last_train,
                        float(self.schedule(mx.array(step - 1))), tokens, supervised,
                        window_tokens / elapsed, window_supervised / elapsed, now - start,
                        mx.get_peak_memory() / 1e9))
                    window_loss = window_sup = 0.0
                    window_start, window_tokens, window_supervised = now, 0, 0
                eval_due = config.steps_per_eval and step % config.steps_per_eval == 0
                if self.data.valid and (eval_due or step == total_steps):
                    last_val, n_val = self.evaluate()
                    yield emit(ev.EvalReport(step, last_val, n_val, time.perf_counter() - start))
                    if best is None or last_val < best:
                        best = last_val
                        self.save(self.run_dir / "best", step, last_val, with_optimizer=False)
                        yield emit(ev.CheckpointSaved(step, str(self.run_dir / "best"), best=True))
                if config.steps_per_save and step % config.steps_per_save == 0 and step < total_steps:
                    path = self.run_dir / "checkpoints" / f"step-{step:06d}"
                    self.save(path, step, last_val)
                    yield emit(ev.CheckpointSaved(step, str(path)))
        except KeyboardInterrupt:
            stopped = True
        self.save(self.run_dir, step, last_val)
        yield emit(ev.CheckpointSaved(step, str(self.run_dir)))
        yield emit(ev.Finished(step, str(self.run_dir), last_train, last_val, best,
                               time.perf_counter() - start, stopped))

    def _last_checkpoint(self) -> str | None:
        found = sorted((self.run_dir / "checkpoints").glob("step-*"))
        return str(found[-1]) if found else None


def train(config: TrainConfig, loaded=None, should_stop=None,
          resume_from: str | Path | None = None) -> Iterator[ev.Event]:
    """Run a fine-tune, yielding events; see `Trainer`."""
    return Trainer(config, loaded, should_stop, resume_from).run()


def latest_saved(run_dir: str | Path) -> Path:
    """The most advanced adapter saved in a run: the run directory itself or a checkpoint."""
    import json

    from mlxsft.checkpoints import ADAPTER_CONFIG

    run_dir = Path(run_dir)
    candidates = [d for d in [run_dir, *sorted((run_dir / "checkpoints").glob("step-*"))]
                  if (d / ADAPTER_CONFIG).exists() and (d / OPTIMIZER_STATE).exists()]
    if not (run_dir / "config.yaml").exists() or not candidates:
        raise UserError(f"--resume {run_dir}: not a run directory with a saved adapter and "
                        "optimizer state (config.yaml, adapters.safetensors, "
                        f"{OPTIMIZER_STATE})")
    return max(candidates, key=lambda d: json.loads((d / ADAPTER_CONFIG).read_text()).get("step", 0))
