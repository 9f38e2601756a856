"""Model preparation and the one compiled training step (with gradient accumulation).

`prepare_model` turns a loaded model into the thing that trains: compute precision, LoRA
adapters (or every weight unfrozen for a full fine-tune), SwiGLU recomputed in the
backward pass, gradient checkpointing.
`TrainStep` owns the optimizer and one `mx.compile`d function

    step(batch, tokens, carried, do_update) -> (sums, carried)

in the shape of mlx-lm's `step(batch, prev_grad, do_update)`: each micro-batch adds its
gradient of the *summed* NLL and its sums (supervised-token count, NLL, tokens) to the
running ones it carries; on the last micro-batch of an optimizer step the summed gradient
is divided by the summed count and applied. So accumulating over micro-batches equals one
big batch, token for token. Sums and counts stay separate until that division:
`all_reduce` (identity here) is the one place where a data-parallel run sums gradients
and sums over processes first (`mlxsft.distributed`), so every rank reports, divides by
and applies the global batch's.

The step knows no run directory, events or UI: `mlxsft.train` runs the loop around it,
`mlxsft.bench` times it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Iterator

from mlxsft.config import TrainConfig
from mlxsft.errors import UserError


@dataclass
class PreparedModel:
    """What `prepare_model` did: the LoRA layout (None for a full fine-tune) and sizes."""

    lora: Any
    trainable: int
    total: int


def prepare_model(loaded, config: TrainConfig) -> PreparedModel:
    """Compute precision, LoRA (or unfreeze for full), gradient checkpointing, in place."""
    import mlx.core as mx

    from mlxsft.lora import apply_lora, apply_neftune, count_parameters, lora_spec
    from mlxsft.models import to_compute_precision

    to_compute_precision(loaded, config.keep_quantized)
    model = loaded.model
    if config.fine_tune == "full":
        if loaded.quantization and not _dequantized(model):
            raise UserError("--fine-tune full needs a full-precision base; drop --quantize "
                            "or use --fine-tune lora (QLoRA)")
        model.unfreeze()
        lora = None
    else:
        lora = lora_spec(model, config.lora_rank, config.lora_alpha, config.lora_dropout,
                         config.lora_layers, config.lora_targets, config.lora_scale,
                         dora=config.fine_tune == "dora")
        # Seeded here, not before loading: building the model draws random numbers that
        # depend on how it was loaded (GGUF, HF, quantized). So a seed gives the same LoRA
        # A matrices whatever the source, and the same as mlx-lm's trainer, which seeds
        # right before inserting its LoRA layers too.
        mx.random.seed(config.seed)
        apply_lora(model, lora)
    apply_neftune(model, config.neftune_alpha)
    recompute_swiglu(model)
    if config.grad_checkpoint:
        for layer in model.layers:
            _checkpointed(layer)
    trainable, total = count_parameters(model)
    return PreparedModel(lora, trainable, total)


def _dequantized(model) -> bool:
    import mlx.nn as nn

    return not any(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))
                   for _, m in model.named_modules())


_SWIGLU: dict = {}  # mlx-lm's swiglu -> its checkpointed version, made once


def recompute_swiglu(model) -> None:
    """Make the SwiGLU of the model's MLPs recompute silu(gate) in the backward pass.

    mlx-lm's MLPs call `swiglu(gate, up)` = silu(gate) * up, imported into their model's
    module. Differentiated as is, the step keeps sigmoid(gate) and silu(gate) for the
    backward pass besides gate and up: two (tokens x MLP width) float32 arrays per layer,
    90 MB of the 57M llama's 4 x 256 step. Checkpointed, it keeps its inputs and output
    only and recomputes the rest: elementwise work, nothing beside the layer's matmuls.
    Values and gradients are the same computation, so the swap (of that module's global,
    shared by every model of the architecture in this process) changes no number.
    """
    import sys

    import mlx.core as mx
    from mlx_lm.models import activations

    original = activations.swiglu
    lighter = _SWIGLU.setdefault("swiglu", mx.checkpoint(original))
    for module in {sys.modules.get(type(m).__module__) for _, m in model.named_modules()}:
        if getattr(module, "swiglu", None) is original:
            module.swiglu = lighter


def swiglu_recomputed(model) -> bool:
    """Whether the model's MLPs call the checkpointed swiglu (`recompute_swiglu`)."""
    import sys

    lighter = _SWIGLU.get("swiglu")
    return lighter is not None and any(
        getattr(sys.modules.get(type(m).__module__), "swiglu", None) is lighter
        for _, m in model.named_modules())


def _checkpointed(layer) -> None:
    """Recompute this layer's activations in the backward pass (this instance only)."""
    import mlx.core as mx

    cls = type(layer)
    call = cls.__call__

    def checkpointed_call(self, *args, **kwargs):
        def inner(params, *args, **kwargs):
            self.update(params)
            return call(self, *args, **kwargs)

        return mx.checkpoint(inner)(self.trainable_parameters(), *args, **kwargs)

    layer.__class__ = type(f"Checkpointed{cls.__name__}", (cls,), {"__call__": checkpointed_call})


def warmup_steps(config: TrainConfig, total_steps: int) -> int:
    """`--warmup` as a number of steps: a fraction (<1) of the run, else a count; always
    leaves at least one step after it."""
    warmup = int(config.warmup * total_steps) if config.warmup < 1 else int(config.warmup)
    return min(warmup, max(total_steps - 1, 0))


def learning_rate_schedule(config: TrainConfig, total_steps: int):
    """The learning rate of optimizer step s (0-based), as an MLX array.

    Warmup: the first W steps ramp linearly up to the peak (step s uses peak * (s+1) / W).
    Then `constant` stays at the peak, and `linear` / `cosine` decay from the peak at step
    W to 10% of it at the last step (total_steps - 1).
    """
    import mlx.core as mx
    import mlx.optimizers as optim

    warmup = warmup_steps(config, total_steps)
    peak = config.learning_rate
    # Step W is the peak and the last step the end: W .. total-1 spans total-1-W intervals.
    decay_steps = max(total_steps - 1 - warmup, 1)
    if config.lr_schedule == "cosine":
        decay = optim.cosine_decay(peak, decay_steps, end=peak * 0.1)
    elif config.lr_schedule == "linear":
        decay = optim.linear_schedule(peak, peak * 0.1, decay_steps)
    else:
        def decay(step):
            # MLX's optimizers call `.astype` on the scheduled value, so a float crashes
            # there; made here, not captured, because the compiled step traces this call.
            return mx.array(peak, dtype=mx.float32)
    if warmup == 0:
        return decay
    ramp = optim.linear_schedule(peak / warmup, peak, warmup - 1) if warmup > 1 else decay
    return optim.join_schedules([ramp, decay], [warmup])


@dataclass
class StepResult:
    """One optimizer step: mean NLL over its supervised tokens, and what it processed."""

    loss: float
    supervised: int
    tokens: int


class TrainStep:
    """The optimizer and the compiled step of one run; call it with a batch iterator."""

    def __init__(self, model, config: TrainConfig, total_steps: int,
                 all_reduce: Callable | None = None):
        import mlx.core as mx
        import mlx.nn as nn
        import mlx.optimizers as optim
        from mlx.utils import tree_map

        from mlxsft.loss import SupervisedLoss, packing_problem
        from mlxsft.optimizers import build_optimizer

        self.model, self.config = model, config
        if config.pack and (why := packing_problem(model)):
            model_type = getattr(getattr(model, "args", None), "model_type", type(model).__name__)
            raise UserError(f"--pack: {model_type} models cannot keep packed records apart "
                            f"({why}); packing needs rotary-position attention that takes a "
                            "per-row mask. Drop --pack")
        self.grad_accum = config.grad_accum
        self.schedule = learning_rate_schedule(config, total_steps)
        self.optimizer = build_optimizer(config, self.schedule)
        self.state = [model.state, self.optimizer.state, mx.random.state]
        self.loss = SupervisedLoss(model)
        # Said once, before training: which loss path this model takes.
        self.notes = [self.loss.note] if self.loss.note else []
        loss_and_grad = nn.value_and_grad(model, self.loss)
        # The sums of all processes' gradients and sums (a data-parallel run sets this).
        reduce = all_reduce or (lambda grads, sums: (grads, sums))
        optimizer = self.optimizer

        @partial(mx.compile, inputs=self.state, outputs=self.state)
        def step(batch, tokens, carried, do_update):
            (total, count), grads = loss_and_grad(model, *batch)
            # [supervised tokens, NLL sum, tokens]: the count is summed once, in the loss
            # (mlx 0.32.4's compiler miscounted a mask summed twice).
            sums = mx.stack([count, total, tokens])
            if carried is not None:
                grads = tree_map(mx.add, grads, carried[0])
                sums = sums + carried[1]
            if not do_update:
                return sums, (grads, sums)
            grads, sums = reduce(grads, sums)
            grads = tree_map(lambda g: g / mx.maximum(sums[0], 1), grads)
            if config.grad_clip > 0:
                grads, _ = optim.clip_grad_norm(grads, config.grad_clip)
            optimizer.update(model, grads)
            return sums, None

        self._step = step

    def __call__(self, batches: Iterator) -> StepResult:
        """One optimizer step over grad_accum micro-batches drawn from `batches`."""
        import mlx.core as mx

        carried = None
        for micro in range(self.grad_accum):
            b = next(batches)
            last = micro == self.grad_accum - 1
            tokens = mx.array(b.tokens_count, mx.float32)
            sums, carried = self._step(self.loss.arrays(b), tokens, carried, last)
            mx.eval(self.state, sums, carried)
        # Summed over the micro-batches (and over the ranks of a data-parallel run).
        supervised, nll, tokens = sums.tolist()
        return StepResult(nll / max(supervised, 1), int(supervised), int(tokens))
