"""`mlxsft bench`: time the real training step and put it against this machine's peak.

It builds the same compiled step `mlxsft train` runs (same precision choice, LoRA
layers, loss and optimizer) and feeds it fixed-shape batches, synthetic or cut from a
data file, so users can pick a batch size and we can track performance. Timings wrap
`mx.eval` (the synchronisation point); warm-up steps (compilation) are not counted.
Model FLOPs per token follow the usual accounting: a forward pass costs 2 FLOPs per
matmul weight plus attention's 4 * context * width per layer; a full fine-tune step costs
3x the forward (activation and weight gradients), LoRA 2x (the frozen base needs no
weight gradients; the adapters' own FLOPs are small and ignored).

Under `mlx.launch` every rank times the data-parallel step on its own batches and the
figures are the whole group's; rank 0 first times the same step alone (one process,
no all-sum) while the others wait, and prints the scaling against it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from mlxsft.config import BenchConfig
from mlxsft.distributed import OK, World


@dataclass
class BenchResult:
    model: str
    fine_tune: str
    batch_size: int
    seq_len: int
    steps: int
    seconds_per_step: float
    tokens_per_second: float
    supervised_tokens_per_second: float
    peak_memory_gb: float
    flops_per_token: float
    achieved_gflops: float
    matmul_peak_gflops: float
    blas: str
    world_size: int = 1  # ranks under mlx.launch; the rates are the whole group's
    # rank 0's rate for the same step alone (no all-sum), timed before the group's
    solo_tokens_per_second: float | None = None

    @property
    def scaling(self) -> float | None:
        if not self.solo_tokens_per_second:
            return None
        return self.tokens_per_second / self.solo_tokens_per_second

    @property
    def peak_fraction(self) -> float:
        return self.achieved_gflops / self.matmul_peak_gflops if self.matmul_peak_gflops else 0.0

    def to_json(self) -> dict:
        return asdict(self) | {"peak_fraction": self.peak_fraction, "scaling": self.scaling}

    def render(self) -> str:
        group = []
        if self.world_size > 1:
            group = [f"  ranks                 {self.world_size} (rates of the whole group; "
                     "memory of rank 0)"]
        if self.scaling is not None:
            group.append(f"  one process alone     {self.solo_tokens_per_second:.1f} tokens/s "
                         f"-> {self.world_size} ranks are {self.scaling:.2f}x")
        return "\n".join([
            f"model {self.model} ({self.fine_tune}), batch {self.batch_size} x {self.seq_len} "
            f"tokens, {self.steps} timed steps, BLAS: {self.blas}",
            f"  seconds/step          {self.seconds_per_step:.3f}",
            f"  tokens/s              {self.tokens_per_second:.1f}",
            f"  supervised tokens/s   {self.supervised_tokens_per_second:.1f}",
            f"  peak memory           {self.peak_memory_gb:.2f} GB",
            f"  model FLOPs/token     {self.flops_per_token / 1e6:.1f} MFLOP",
            f"  achieved              {self.achieved_gflops:.1f} GFLOP/s = "
            f"{100 * self.peak_fraction:.1f}% of a measured fp32 matmul peak of "
            f"{self.matmul_peak_gflops:.1f} GFLOP/s",
            *group,
        ])


def flops_per_token(model, seq_len: int, fine_tune: str) -> float:
    """Training FLOPs per token (see the module docstring)."""
    import mlx.nn as nn

    matmul_weights = 0
    for _, module in model.named_modules():
        if isinstance(module, nn.QuantizedLinear):
            matmul_weights += module.weight.size * 32 // module.bits
        elif isinstance(module, nn.Linear) and "lora" not in type(module).__name__.lower():
            matmul_weights += module.weight.size
    args = getattr(model, "args", None)
    width = getattr(args, "hidden_size", 0)
    layers = len(model.layers)
    vocab = getattr(args, "vocab_size", 0)
    if getattr(args, "tie_word_embeddings", False):
        matmul_weights += vocab * width  # the tied embedding is also the output projection
    # Causal attention: on average a token attends to half the sequence.
    forward = 2 * matmul_weights + 4 * layers * width * (seq_len / 2)
    return forward * (3 if fine_tune == "full" else 2)


def synthetic_batches(batch_size: int, seq_len: int, vocab: int, seed: int = 0):
    """Random tokens; the second half of each row supervised, like a prompt + response."""
    from mlxsft.batching import Batch

    rng = np.random.default_rng(seed)
    while True:
        tokens = rng.integers(0, vocab, size=(batch_size, seq_len)).astype(np.int32)
        mask = np.zeros((batch_size, seq_len), np.float32)
        mask[:, seq_len // 2:] = 1
        yield Batch(tokens, mask, np.full(batch_size, seq_len))


def run_bench(bench: BenchConfig | None = None, world: World | None = None) -> BenchResult:
    """Time the step `mlxsft train` would run with `bench`'s options (see BenchConfig),
    data-parallel over `world`'s ranks when there are several."""
    import mlx.core as mx

    from mlxsft import blas
    from mlxsft.batching import iterate_batches
    from mlxsft.config import TrainConfig
    from mlxsft.models import load_model
    from mlxsft.prepare import prepare_data
    from mlxsft.step import TrainStep
    from mlxsft.train import Trainer

    bench, world = bench or BenchConfig(), world or World()
    model, batch_size, seq_len, steps, warmup = (bench.model, bench.batch_size, bench.seq_len,
                                                 bench.steps, bench.warmup)
    fine_tune, lora_rank, quantize, data = (bench.fine_tune, bench.lora_rank, bench.quantize,
                                            bench.data)
    keep_quantized, grad_checkpoint = bench.keep_quantized, bench.grad_checkpoint
    config = TrainConfig(data=data, model=model or TrainConfig.model, fine_tune=fine_tune,
                         batch_size=batch_size, max_seq_len=seq_len, lora_rank=lora_rank,
                         quantize=quantize, keep_quantized=keep_quantized,
                         grad_checkpoint=grad_checkpoint, iters=warmup + steps)
    trainer = Trainer(config, load_model(config.model, quantize=quantize), world=world)
    trainer.prepare_model()
    if data:
        items = prepare_data(config, trainer.loaded.tokenizer).train
        # One fixed width, so the timing measures the step and not recompilation.
        batches = _fixed_width(iterate_batches(items, batch_size, seq_len, seed=0,
                                               shard=(world.rank, world.size)), seq_len)
    else:
        vocab = trainer.loaded.config.get("vocab_size") or 32000
        batches = synthetic_batches(batch_size, seq_len, vocab, seed=world.rank)
    solo = None
    if world.distributed:
        if world.leader:  # one process alone, the others waiting: the scaling's baseline
            alone = TrainStep(trainer.loaded.model, config, warmup + steps)
            seconds, tokens, _ = _timed(alone, batches, warmup, steps)
            solo = tokens / seconds
        world.agree(OK, "rank 0 timing one process")
    step = trainer.build_step(warmup + steps)
    seconds, tokens, supervised = _timed(step, batches, warmup, steps)
    fpt = flops_per_token(trainer.loaded.model, seq_len, fine_tune)
    status = blas.status() if hasattr(blas, "status") else "unknown"
    return BenchResult(
        model=trainer.loaded.source, fine_tune=fine_tune, batch_size=batch_size,
        seq_len=seq_len, steps=steps, seconds_per_step=seconds / steps,
        tokens_per_second=tokens / seconds, supervised_tokens_per_second=supervised / seconds,
        peak_memory_gb=mx.get_peak_memory() / 1e9, flops_per_token=fpt,
        achieved_gflops=fpt * tokens / seconds / 1e9,
        matmul_peak_gflops=blas.matmul_gflops(1024),
        blas=_blas_label(status), world_size=world.size, solo_tokens_per_second=solo)


def _timed(step, batches, warmup: int, steps: int) -> tuple[float, int, int]:
    """(seconds, tokens, supervised tokens) of `steps` steps after `warmup` untimed ones;
    peak memory is counted from after the warmup."""
    import mlx.core as mx

    for _ in range(warmup):
        step(batches)
    mx.reset_peak_memory()
    tokens = supervised = 0
    start = time.perf_counter()
    for _ in range(steps):
        result = step(batches)
        tokens += result.tokens
        supervised += result.supervised
    return time.perf_counter() - start, tokens, supervised


def _fixed_width(batches, width: int):
    """Pad (or cut) every batch to `width` columns."""
    from mlxsft.batching import Batch

    for b in batches:
        tokens = np.zeros((b.tokens.shape[0], width), np.int32)
        mask = np.zeros((b.tokens.shape[0], width), np.float32)
        n = min(width, b.tokens.shape[1])
        tokens[:, :n], mask[:, :n] = b.tokens[:, :n], b.loss_mask[:, :n]
        yield Batch(tokens, mask, np.minimum(b.lengths, width))


def _blas_label(status) -> str:
    if isinstance(status, dict):
        return str(status.get("backend") or status.get("name") or status)
    for attr in ("backend", "name"):
        if hasattr(status, attr):
            value = getattr(status, attr)
            active = getattr(status, "active", getattr(status, "took_effect", None))
            return f"{value}" + ("" if active in (None, True) else " (not active)")
    return str(status)
