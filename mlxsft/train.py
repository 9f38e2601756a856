"""The training run: data -> masked batches -> one compiled step -> adapters on disk.

`train(config)` is a generator of `mlxsft.events` objects; it prints nothing and knows
no UI. It also appends every event to RUN/metrics.jsonl, the stream the TUI and scripts
read. Everything MLX happens on the calling thread (MLX streams are thread-local).

Model preparation and the compiled step (with its token-weighted gradient accumulation)
live in `mlxsft.step`; this module is the loop around them and the run's files.

Under `mlx.launch` every rank runs this loop on its shard of each global batch (see
`mlxsft.distributed`); the ranks agree before every step whether to go on, and rank 0
alone claims and writes the run directory, saves, answers sample prompts and reports to
trackers.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Iterator

from mlxsft import __version__
from mlxsft import events as ev
from mlxsft.adapters import base_mismatch
from mlxsft.batching import pad_id
from mlxsft.checkpoints import file_sha256, read_adapter_config
from mlxsft.config import TrainConfig
from mlxsft.distributed import (FAILED, OK, World, agreement_outcome, check_setup,
                                data_fingerprint, peer_lost, stop_code)
from mlxsft.errors import UserError
from mlxsft.optimizers import optimizer_record
from mlxsft.plan import memory_advice, step_failure
from mlxsft.prepare import prepare_data, read_data
from mlxsft.provenance import public_data, public_name, public_template
from mlxsft.rundir import (RunDir, changed_data, newest, read_checkpoint, resume_point,
                           run_of, save_failure, saved_adapters, unit_bytes)
from mlxsft.step import TrainStep, prepare_model
from mlxsft.trackers import check_trackers, open_trackers


class Trainer:
    """Owns the model, optimizer and compiled step of one run; `run()` yields events."""

    def __init__(self, config: TrainConfig, loaded=None, should_stop: Callable[[], bool] | None = None,
                 resume_from: str | Path | None = None, allow_data_change: bool = False,
                 world: World | None = None):
        self.config = config
        # This process's rank in a data-parallel run (rank 0 of 1 otherwise).
        self.world = world or World()
        self.loaded = loaded
        self.should_stop = should_stop or (lambda: False)
        # RUN or RUN/checkpoints/step-N to continue from (adapter and optimizer state).
        self.resume_from = Path(resume_from) if resume_from else None
        self.allow_data_change = allow_data_change
        self.rundir: RunDir | None = None
        # Set when claimed; a resumed run writes into the run its checkpoint belongs to.
        self.run_dir = (run_of(resume_from) if resume_from else
                        Path(config.out) if config.out else None)

    # -- setup -----------------------------------------------------------------------
    def _setup(self) -> Iterator[ev.Setup]:
        """Claim the run directory, read the data, load the model, tokenize, prepare the
        model; yields a `Setup` event before each slow stage."""
        import mlx.core as mx

        from mlxsft.models import load_model

        config = self.config
        # Everything the user can get wrong that needs no model is checked first, so a typo
        # is reported in a second, not after loading a multi-gigabyte model.
        resuming = self.resume_from is not None
        leader = self.world.leader
        if leader:  # the other ranks of a data-parallel run only read (a checkpoint)
            self.rundir = RunDir.claim(self.run_dir, resume=resuming,
                                       flag="--resume" if resuming else "--out")
            self.run_dir = self.rundir.path
        notes = []
        if resuming:
            if leader:
                notes += self.rundir.clean_leftovers()  # we hold the lock: nobody is writing
            self.resume_point = resume_point(self.resume_from)
        splits = read_data(config)
        self.probes = self._probes(splits) if leader else []
        if leader:
            check_trackers(config.report_to)
        if resuming:
            notes += self._check_data(splits)
        mx.random.seed(config.seed)
        if self.loaded is None:
            yield ev.Setup("load", f"loading model {config.model}")
            self.loaded = load_model(config.model, quantize=config.quantize,
                                     trust_remote_code=config.trust_remote_code)
        records = sum(len(splits[k].records) for k in ("train", "valid") if splits.get(k))
        yield ev.Setup("tokenize", f"tokenizing {records} records")
        self.data = prepare_data(config, self.loaded.tokenizer, splits)
        self.prepare_model()
        if self.world.rank:
            # The LoRA init above is every rank's (one seed); dropout and NEFTune noise
            # from here on differ per rank, as their batches do.
            mx.random.seed(config.seed + self.world.rank)
        self.messages = notes + self.loaded.notes + self.data.messages

    def _probes(self, splits) -> list:
        """The held-out prompts answered at every evaluation (`SampleAnswers`)."""
        from mlxsft.probes import probes_from_records, read_probes

        if not self.config.samples:
            return []
        if self.config.sample_prompts:
            return read_probes(self.config.sample_prompts, self.config.samples)
        valid = splits.get("valid")
        return probes_from_records(valid.records, self.config.samples) if valid else []

    def _check_data(self, splits: dict) -> list[str]:
        """A resumed run must see the data its checkpoint was trained on (same order,
        same records); a changed file is refused unless allowed."""
        recorded = read_adapter_config(self.resume_point.path).get("data")
        # A hub split has its bytes in the cache (local_path); a streamed one has none.
        files = {k: Path(splits[k].local_path) for k in ("train", "valid")
                 if splits.get(k) and splits[k].local_path}
        changed = changed_data(recorded, files, file_sha256)
        if changed and not self.allow_data_change:
            raise UserError(f"--resume {self.run_dir}: {changed[0]}; restore it, or pass "
                            "--allow-data-change to continue on the new data")
        return [f"continuing on changed data: {line}" for line in changed]

    def _write_config(self) -> None:
        """RUN/config.yaml, with local paths made absolute so --resume works from any
        directory; written only once the run is about to start."""
        ranks = self.world.size
        resolved = self.config.resolved() | {"out": str(self.run_dir), "world_size": ranks,
                                             "global_batch_size": self.global_batch}
        for key in ("data", "valid", "model"):
            value = resolved.get(key)
            if value and Path(value).expanduser().exists():
                resolved[key] = str(Path(value).expanduser().resolve())
        self.rundir.write_config(resolved)

    def prepare_model(self) -> None:
        """Compute precision, LoRA (or unfreeze for full), gradient checkpointing."""
        prepared = prepare_model(self.loaded, self.config)
        self.lora, self.trainable, self.total = prepared.lora, prepared.trainable, prepared.total

    def adapter_config(self, step: int, val_loss: float | None = None,
                       train_loss: float | None = None) -> dict:
        loaded, config = self.loaded, self.config
        out = {"fine_tune_type": config.fine_tune}
        if self.lora is not None:
            out.update(num_layers=self.lora.num_layers,
                       lora_parameters=self.lora.mlx_lm_parameters(),
                       lora_alpha=self.lora.alpha)
        # Names and hashes only: this file is shared with the adapter; the local paths a
        # later command needs are in RUN/config.yaml (see mlxsft.provenance).
        out.update(base_model=public_name(loaded.source), base_model_kind=loaded.kind, base_quantization=loaded.quantization,
                   model_type=loaded.config.get("model_type"),
                   hidden_size=loaded.config.get("hidden_size"),
                   num_hidden_layers=loaded.config.get("num_hidden_layers"),
                   data=public_data(self.data.files), mask=config.mask,
                   max_seq_len=config.max_seq_len,
                   # chat template + kwargs: chat and fuse render alike
                   **public_template(self.data.template),
                   mlxsft_version=__version__, step=step, val_loss=val_loss,
                   train_loss=train_loss, optimizer=optimizer_record(config))
        return out

    @property
    def global_batch(self) -> int:
        """Records per micro-batch over every rank (--batch-size is per rank)."""
        return self.config.batch_size * self.world.size

    def save(self, kind: str, step: int, val_loss: float | None = None,
             train_loss: float | None = None) -> tuple[Path | None, ev.Failed | None]:
        """Save the "best" adapter, a "checkpoint", or the "final" one (a checkpoint that
        becomes RUN's adapter). A write the file system refuses (a full disk) is returned
        as a `Failed` event naming the last complete checkpoint, not raised. Only rank 0
        saves; the other ranks of a data-parallel run hold the same weights."""
        from mlx.utils import tree_flatten

        if not self.world.leader:
            return None, None
        weights = dict(tree_flatten(self.loaded.model.trainable_parameters()))
        config = self.adapter_config(step, val_loss, train_loss)
        # The optimizer's moments make a resumed run continue exactly where this one was.
        optimizer = None if kind == "best" else dict(tree_flatten(self.optimizer.state))
        rundir = self.rundir
        where = rundir.best_dir() if kind == "best" else rundir.checkpoint_dir(step)
        try:
            if kind == "best":
                return rundir.save_best(step, weights, config), None
            unit = rundir.save_checkpoint(step, weights, config, optimizer)
            if kind == "final":
                rundir.publish_final(unit)
            return unit, None
        except Exception as e:
            reason = save_failure(e, where, unit_bytes(weights, optimizer))
            if reason is None:
                raise
        last = self._last_checkpoint()
        then = (f"free some space, then `mlxsft train --resume {self.run_dir}` continues from "
                f"{last}" if last else "no complete checkpoint was saved before this one")
        return None, ev.Failed(step, f"{reason}; {then}", last)

    def restore(self, unit: Path) -> int:
        """Load the adapter weights and optimizer state of a checkpoint; return its step."""
        from mlx.utils import tree_unflatten

        saved, weights, optimizer = read_checkpoint(unit)
        why = base_mismatch(saved, self.loaded.config, f"--model {self.loaded.source}")
        if why:
            raise UserError(f"--resume {unit}: {why}; drop --model to resume on the run's own "
                            "base")
        try:
            self.loaded.model.load_weights(list(weights.items()), strict=False)
        except ValueError as e:
            raise UserError(f"--resume {unit}: the saved adapter does not fit this model "
                            f"({' '.join(str(e).split())[:200]})") from None
        if optimizer:
            from mlxsft.optimizers import check_resumable, load_state

            check_resumable(saved.get("optimizer"), self.config, str(unit))
            # In place: the compiled step holds the optimizer's own state dicts.
            load_state(self.optimizer, tree_unflatten(list(optimizer.items())))
        return int(saved.get("step", 0))

    # -- the compiled step -----------------------------------------------------------
    def build_step(self, total_steps: int) -> TrainStep:
        """The optimizer and compiled step (see `mlxsft.step`) for a run of total_steps."""
        world = self.world
        self.step = TrainStep(self.loaded.model, self.config, total_steps,
                              all_reduce=world.all_reduce if world.distributed else None)
        self.optimizer, self.schedule = self.step.optimizer, self.step.schedule
        return self.step

    def make_plan(self):
        """The memory and step-time prediction for this run (`mlxsft.plan`), kept as
        `self.plan` for front ends; its summary line is printed before training."""
        from mlxsft.blas import matmul_gflops
        from mlxsft.plan import plan_for

        self.plan = plan_for(self.loaded.model, self.config, self.data.train,
                             self.step.loss.gathered, matmul_gflops(1024))
        return self.plan

    def train_step(self, batches) -> tuple[float, int, int]:
        """One optimizer step over grad_accum micro-batches: (loss, supervised, tokens)."""
        result = self.step(batches)
        return result.loss, result.supervised, result.tokens

    def batches(self):
        """Training micro-batches forever: shuffled (or length-grouped) batches padded to
        buckets, or packed rows (--pack)."""
        from mlxsft.batching import iterate_batches, iterate_packed_batches

        config = self.config
        shard = (self.world.rank, self.world.size)
        if config.pack:
            return iterate_packed_batches(self.data.train, config.batch_size,
                                          config.max_seq_len, seed=config.seed,
                                          pad_id=pad_id(self.loaded.tokenizer), shard=shard)
        return iterate_batches(self.data.train, config.batch_size, config.max_seq_len,
                               seed=config.seed, pad_id=pad_id(self.loaded.tokenizer),
                               group_by_length=config.group_by_length, shard=shard)

    def _rows_per_epoch(self) -> int:
        from mlxsft.batching import pack_rows

        if self.config.pack:
            return len(pack_rows(self.data.train, self.config.max_seq_len))
        return len(self.data.train)

    def evaluate(self) -> tuple[float, int]:
        """(mean validation NLL, supervised tokens): every rank sums its share of each
        batch and the sums are added over the ranks before the one division."""
        from mlxsft.evaluate import nll_sums

        model, world = self.loaded.model, self.world
        model.eval()
        try:
            total, count = nll_sums(model, self.data.valid, self.config.batch_size,
                                    self.config.max_seq_len, pad_id(self.loaded.tokenizer),
                                    self.config.val_batches, self.step.loss,
                                    shard=(world.rank, world.size))
        finally:
            model.train()
        total, count = world.sum([total, count], "evaluation")
        return (total / count if count else float("nan")), int(count)

    # -- the loop --------------------------------------------------------------------
    def run(self) -> Iterator[ev.Event]:
        from mlxsft.batching import iterate_batches, steps_per_epoch

        start = time.perf_counter()
        config, world = self.config, self.world
        try:
            try:
                yield from self._setup()
                messages = self.messages
                per_epoch = steps_per_epoch(self._rows_per_epoch(), self.global_batch,
                                            config.grad_accum)
                total_steps = config.iters or max(1, math.ceil(config.epochs * per_epoch))
                messages += self.build_step(total_steps).notes
                messages.append(self.make_plan().summary())
                resumed = self.resume_point.path if self.resume_from else None
                start_step = self.restore(resumed) if resumed else 0
                if resumed and start_step >= total_steps:
                    raise UserError(f"--resume {resumed}: already at step {start_step} of "
                                    f"{total_steps}; pass a larger --iters to train on")
                if start_step:
                    messages.append(f"resumed from {resumed} at step {start_step}")
            except UserError:
                try:
                    check_setup(world, None)  # tell the other ranks, then stop with the reason
                except UserError:
                    pass  # they are gone: this rank's own reason is still the one to say
                raise
            # Every rank set up, on the same data and from the same step, or none trains.
            check_setup(world, [start_step, *data_fingerprint(self.data.train),
                                len(self.data.valid), total_steps])
            if world.distributed:
                messages.append(world.describe(config.batch_size, config.grad_accum))
                if world.watchdog is not None and world.leader:
                    world.watchdog.last_good = self._last_checkpoint
            if world.leader:
                self._write_config()
        except BaseException:
            # A new run that wrote nothing leaves no run directory behind.
            if self.rundir is not None:
                self.rundir.release(remove_if_empty=self.resume_from is None)
            raise
        # Rank 0 writes metrics and trackers; the other ranks' events go nowhere.
        log = self.rundir.open_metrics() if world.leader else None
        trackers = (open_trackers(config.report_to, self.run_dir, config.resolved())
                    if world.leader else [])

        def emit(event):
            if log is not None:
                log.write(event.to_json())
            for tracker in trackers:
                tracker(event)
            return event

        try:
            yield emit(ev.RunStarted(str(self.run_dir), total_steps, self.trainable, self.total,
                                     len(self.data.train), len(self.data.valid), messages,
                                     world.size, self.global_batch))
            yield from self._loop(emit, start, total_steps, per_epoch, iterate_batches, start_step)
        finally:
            if log is not None:
                log.close()
            for tracker in trackers:
                tracker.close()
            if self.rundir is not None:
                self.rundir.release()

    def _loop(self, emit, start, total_steps, per_epoch, iterate_batches, start_step=0):
        import mlx.core as mx

        config, model, world = self.config, self.loaded.model, self.world
        model.train()
        batches = self.batches()
        for _ in range(start_step * config.grad_accum):
            next(batches)  # the same data order as an uninterrupted run
        tokens = supervised = 0
        window_loss = window_sup = 0.0
        window_start, window_tokens, window_supervised = time.perf_counter(), 0, 0
        best = last_val = last_train = None
        best_step, stale, stop_reason = 0, 0, ""
        eval_every = eval_interval(config, per_epoch)
        step = start_step
        stopped = False
        # Compilation happens inside the first step; say so rather than go quiet.
        yield ev.Setup("compile", "compiling the training step (the first step takes longer)")
        try:
            for step in range(start_step + 1, total_steps + 1):
                # Every rank goes on, or all stop at this same step (one collective).
                codes = world.agree(stop_code(self.should_stop()), f"before step {step}")
                if any(code != OK for code in codes):
                    stopped, step = True, step - 1
                    failure, note = agreement_outcome(world, codes, step)
                    if failure:
                        last_good = self._last_checkpoint()
                        yield emit(ev.Failed(step, f"{failure}. The last good adapter is "
                                             f"{last_good or 'not saved (none yet)'}",
                                             last_good))
                        return
                    if note:
                        yield emit(ev.RunWarning(note, step))
                    break
                try:
                    with world.waiting(f"step {step}"):
                        loss, n_sup, n_tok = self.train_step(batches)
                except (RuntimeError, MemoryError) as e:
                    if (what := step_failure(e)) is None:
                        raise
                    last_good = self._last_checkpoint()
                    yield emit(ev.Failed(step, world.said(
                        f"{what} at step {step} ({_first_line(e)}); "
                        f"{memory_advice(config, len(model.layers))}. The last good adapter "
                        f"is {last_good or 'not saved (none yet)'}"), last_good, world.rank))
                    return
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
                # The first step is reported too, so a chart and the ETA start at once.
                if (step % config.steps_per_report == 0 or step == total_steps
                        or step == start_step + 1):
                    now = time.perf_counter()
                    elapsed = max(now - window_start, 1e-9)
                    last_train = window_loss / max(window_sup, 1)
                    yield emit(ev.StepReport(
                        step, total_steps, step / per_epoch, last_train,
                        float(self.schedule(mx.array(step - 1))), tokens, supervised,
                        window_tokens / elapsed, window_supervised / elapsed, now - start,
                        mx.get_peak_memory() / 1e9, world.size))
                    window_loss = window_sup = 0.0
                    window_start, window_tokens, window_supervised = now, 0, 0
                eval_due = eval_every and step % eval_every == 0
                if self.data.valid and (eval_due or step == total_steps):
                    last_val, n_val = self.evaluate()
                    yield emit(ev.EvalReport(step, last_val, n_val, time.perf_counter() - start))
                    if self.probes:
                        yield emit(ev.SampleAnswers(step, self.sample_answers()))
                    if best is None or last_val < best:
                        best, best_step, stale = last_val, step, 0
                        path, failed = self.save("best", step, last_val, last_train)
                        if failed:
                            yield emit(failed)
                            self._tell_peers_failed()
                            return
                        yield emit(ev.CheckpointSaved(step, str(path), best=True))
                    else:
                        stale += 1
                    if config.patience and stale >= config.patience and step < total_steps:
                        stop_reason = (f"early stopping: {stale} evaluations without a lower "
                                       f"validation loss; the best adapter is "
                                       f"{self.rundir.best_dir()} (step {best_step}, validation "
                                       f"loss {best:.4f})")
                        break
                if config.steps_per_save and step % config.steps_per_save == 0 and step < total_steps:
                    path, failed = self.save("checkpoint", step, last_val, last_train)
                    if failed:
                        yield emit(failed)
                        self._tell_peers_failed()
                        return
                    yield emit(ev.CheckpointSaved(step, str(path)))
        except KeyboardInterrupt:
            if world.distributed:
                # A second signal: a peer may be inside a collective, so neither save nor
                # agree; the last checkpoint stays the run's newest.
                last_good = self._last_checkpoint()
                yield emit(ev.Failed(step, world.said(
                    f"stopped at once by a second signal after step {step}, without saving; "
                    f"the last good adapter is {last_good or 'not saved (none yet)'}"),
                    last_good, world.rank))
                return
            stopped = True
        except RuntimeError as e:
            if not (world.distributed and peer_lost(e)):
                raise
            yield emit(self._lost_peer(step, e))
            return
        if stopped:
            stop_reason = "interrupted"
        path, failed = self.save("final", step, last_val, last_train)
        if failed:
            yield emit(failed)
            self._tell_peers_failed()
            return
        # No rank ends before rank 0 has saved: the launcher stops the others when one ends.
        try:
            codes = world.agree(OK, "saving the final adapter")
        except RuntimeError as e:
            if not peer_lost(e):
                raise
            yield emit(self._lost_peer(step, e))
            return
        failure, _ = agreement_outcome(world, codes, step)
        if failure:
            yield emit(ev.Failed(step, failure, None))
            return
        yield emit(ev.CheckpointSaved(step, str(self.run_dir)))
        yield emit(ev.Finished(step, str(self.run_dir), last_train, last_val, best,
                               time.perf_counter() - start, stopped or bool(stop_reason),
                               stop_reason))

    def sample_answers(self) -> list[dict]:
        """Greedy answers to the held-out probes, in eval mode (no dropout, no NEFTune)."""
        from mlxsft.probes import answer

        model = self.loaded.model
        model.eval()
        try:
            out = []
            for probe in self.probes:
                a = answer(self.loaded, probe, self.config.sample_max_tokens)
                out.append({"prompt": probe.prompt, "answer": a.text,
                            "reference": probe.reference, "where": probe.where,
                            **a.scores(probe.reference)})
            return out
        finally:
            model.train()

    def _tell_peers_failed(self) -> None:
        """Rank 0 could not save: the other ranks learn it at their next agreement."""
        if self.world.distributed:
            try:
                self.world.agree(FAILED, "telling the other ranks")
            except RuntimeError:
                pass  # they are gone already

    def _lost_peer(self, step: int, e: BaseException) -> ev.Failed:
        last_good = self._last_checkpoint()
        return ev.Failed(step, self.world.said(
            f"lost the connection to another rank at step {step} ({_first_line(e)}); "
            f"every rank stops. The last good adapter is {last_good or 'not saved (none yet)'}"),
            last_good, self.world.rank)

    def _last_checkpoint(self) -> str | None:
        """The newest complete checkpoint a run can be resumed from."""
        found = newest([a for a in saved_adapters(self.run_dir) if a.resumable])
        return str(found.path) if found else None


def _first_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:160] or type(e).__name__


def eval_interval(config: TrainConfig, per_epoch: float) -> int:
    """Steps between evaluations: --eval-every (steps, or a fraction of an epoch) when
    given, else --steps-per-eval; 0 means only at the end."""
    every = config.eval_every
    if every is None:
        return config.steps_per_eval
    if every >= 1:
        return int(every)
    return max(1, round(every * per_epoch))


def train(config: TrainConfig, loaded=None, should_stop=None,
          resume_from: str | Path | None = None, allow_data_change: bool = False,
          world: World | None = None) -> Iterator[ev.Event]:
    """Run a fine-tune, yielding events; see `Trainer`."""
    return Trainer(config, loaded, should_stop, resume_from, allow_data_change, world).run()
