"""`mlxsft plan`: predict a run's peak memory and step time before training.

The prediction adds up what a step holds at its largest batch shape:

  weights          every parameter as the step computes with it (float32 on Linux)
  training state   trainable parameters x (gradient + AdamW's two moments, + the
                   accumulated gradient with --grad-accum > 1)
  activations      per layer, what the backward pass keeps for each token (the inputs of
                   the projections, the MLP's hidden activations) and the attention
                   probabilities (heads x length x length); with --grad-checkpoint only
                   each layer's input plus one layer's worth
  loss             the logits of the supervised positions (bounded by one cross-entropy
                   chunk, see `mlxsft.loss`), or of every position when the head does not
                   separate

The per-token coefficients were measured on mlx-lm llamas with MLX's CPU backend (see
tests/test_plan.py, which checks the prediction against a measured peak). Step time is
the model FLOPs of the padded tokens (`mlxsft.bench.flops_per_token`) at a third of this
machine's measured float32 matmul rate, the share `mlxsft bench` typically reaches. The
budget is MLX's recommended working set on a Mac (Metal), available RAM on Linux.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, replace

from mlxsft.config import TrainConfig

# Floats kept for the backward pass per token and layer: x hidden width, x MLP width
# (3 when SwiGLU's silu is recomputed in the backward pass, `mlxsft.step`).
HIDDEN_FLOATS = 14
MLP_FLOATS = 5
MLP_FLOATS_RECOMPUTED = 3
# Attention: probabilities and their gradient, per head and key.
SCORE_FLOATS = 2
# Logits: the float32 logits, their softmax and their gradient, per row and entry.
LOGIT_FLOATS = 3
# The share of the measured matmul peak a training step reaches (mlxsft bench: ~30%).
STEP_EFFICIENCY = 0.33
GB = 1e9


@dataclass
class MemoryPlan:
    """Predicted peak memory (bytes) by part, step time, and the machine's budget."""

    weights: float
    training_state: float
    activations: float
    logits: float
    batch_shape: tuple[int, int]  # (rows, tokens) of the largest micro-batch
    seconds_per_step: float | None
    budget: float | None
    budget_source: str
    suggestion: str | None = None

    @property
    def peak(self) -> float:
        return self.weights + self.training_state + self.activations + self.logits

    @property
    def fits(self) -> bool:
        return self.budget is None or self.peak <= 0.9 * self.budget

    def to_json(self) -> dict:
        return asdict(self) | {"peak": self.peak, "fits": self.fits}

    def summary(self) -> str:
        """One line: what training will print before it starts."""
        rows, width = self.batch_shape
        line = f"plan: peak memory ~{self.peak / GB:.2f} GB at batch {rows} x {width}"
        if self.budget:
            line += f" of {self.budget / GB:.1f} GB {self.budget_source}"
        if self.seconds_per_step:
            line += f", ~{self.seconds_per_step:.1f} s/step"
        if not self.fits:
            line += "; will not fit" + (f": {self.suggestion}" if self.suggestion else "")
        return line

    def render(self) -> str:
        rows, width = self.batch_shape
        lines = [f"largest micro-batch: {rows} x {width} tokens",
                 f"  weights           {self.weights / GB:7.3f} GB",
                 f"  training state    {self.training_state / GB:7.3f} GB",
                 f"  activations       {self.activations / GB:7.3f} GB",
                 f"  logits            {self.logits / GB:7.3f} GB",
                 f"  predicted peak    {self.peak / GB:7.3f} GB"]
        if self.budget:
            lines.append(f"  budget            {self.budget / GB:7.3f} GB ({self.budget_source})")
        if self.seconds_per_step:
            lines.append(f"  step time         ~{self.seconds_per_step:.2f} s (at "
                         f"{100 * STEP_EFFICIENCY:.0f}% of this machine's matmul peak)")
        if self.fits:
            lines.append("fits")
        else:
            lines.append("will not fit" + (f"; {self.suggestion}" if self.suggestion else
                                           "; no single change found that fits"))
        return "\n".join(lines)


def memory_budget() -> tuple[float | None, str]:
    """(bytes, what they are): Metal's recommended working set, or MemAvailable."""
    if sys.platform == "darwin":
        import mlx.core as mx

        info = mx.device_info() if hasattr(mx, "device_info") else mx.metal.device_info()
        size = info.get("max_recommended_working_set_size")
        return (float(size), "Metal recommended working set") if size else (None, "unknown")
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024, "available RAM"
    except OSError:
        pass
    return None, "unknown"


def _shape(model) -> dict:
    args = model.args
    width = args.hidden_size
    heads = getattr(args, "num_attention_heads", 1)
    return {"width": width, "heads": heads, "layers": len(model.layers),
            "mlp": getattr(args, "intermediate_size", 4 * width),
            "vocab": getattr(args, "vocab_size", 0)}


def batch_shapes(lengths: list[int], supervised: list[int], config: TrainConfig):
    """(rows, width, supervised positions) of every micro-batch of the first epoch."""
    from mlxsft.batching import bucket_for, bucket_sizes, epoch_groups, first_fit

    rows = config.batch_size
    sizes = bucket_sizes(max(config.max_seq_len, 2))
    if config.pack:
        packed = first_fit(lengths, config.max_seq_len)
        groups = [sum((r for r in packed[i:i + rows]), []) for i in range(0, len(packed), rows)]
        return [(rows, config.max_seq_len, sum(supervised[i] for i in g)) for g in groups]
    groups = next(epoch_groups(lengths, rows, config.group_by_length, seed=config.seed))
    out = []
    for group in groups:
        width = bucket_for(max(lengths[j] for j in group), sizes)
        out.append((rows, width, sum(supervised[j] for j in group)))
    return out


def estimate(model, config: TrainConfig, lengths: list[int], supervised: list[int],
             gathered: bool = True, matmul_gflops: float | None = None) -> MemoryPlan:
    """The plan for a prepared model (`mlxsft.step.prepare_model`) and tokenized data:
    record lengths and supervised-token counts (after truncation)."""
    from mlx.utils import tree_flatten

    from mlxsft.batching import position_bucket
    from mlxsft.bench import flops_per_token
    from mlxsft.loss import CHUNK_ELEMENTS, FUSED_CHUNK_ELEMENTS
    from mlxsft.step import swiglu_recomputed

    s = _shape(model)
    weights = float(sum(p.nbytes for _, p in tree_flatten(model.parameters())))
    trainable = float(sum(p.nbytes for _, p in tree_flatten(model.trainable_parameters())))
    state = trainable * (3 + (config.grad_accum > 1))
    shapes = batch_shapes(lengths, supervised, config) or [(config.batch_size, 2, 1)]
    rows, width, _ = max(shapes, key=lambda b: b[0] * b[1])
    tokens = rows * width
    mlp_floats = MLP_FLOATS_RECOMPUTED if swiglu_recomputed(model) else MLP_FLOATS
    per_layer = tokens * (HIDDEN_FLOATS * s["width"] + mlp_floats * s["mlp"])
    scores = rows * s["heads"] * width * width * SCORE_FLOATS
    if config.grad_checkpoint:
        # Each layer's input, and one layer recomputed with its gradient in flight.
        activations = 4.0 * (tokens * s["width"] * s["layers"] + 2 * (per_layer + scores))
    else:
        activations = 4.0 * s["layers"] * (per_layer + scores)
    if gathered:
        most = max(b[2] for b in shapes)
        k = position_bucket(most, rows * (width - 1))
        # A frozen head (LoRA, DoRA) takes its gradient chunk by chunk in the forward pass.
        chunk = FUSED_CHUNK_ELEMENTS if config.fine_tune != "full" else CHUNK_ELEMENTS
        logits = 4.0 * LOGIT_FLOATS * min(k * s["vocab"], chunk)
    else:
        logits = 4.0 * LOGIT_FLOATS * tokens * s["vocab"]
    seconds = None
    if matmul_gflops:
        flops = sum(b[0] * b[1] * flops_per_token(model, b[1], config.fine_tune) for b in shapes)
        seconds = flops / len(shapes) * config.grad_accum / (matmul_gflops * 1e9 * STEP_EFFICIENCY)
    budget, source = memory_budget()
    return MemoryPlan(weights, state, activations, logits, (rows, width), seconds, budget, source)


def suggest(plan: MemoryPlan, model, config: TrainConfig, lengths, supervised,
            gathered: bool = True) -> str | None:
    """The first single change (in the order a user would try them) whose plan fits."""
    if plan.fits:
        return None
    tries = []
    if not config.grad_checkpoint:
        tries.append(("--grad-checkpoint", {"grad_checkpoint": True}))
    batch = config.batch_size
    while batch > 1:
        batch //= 2
        accum = config.grad_accum * config.batch_size // batch
        tries.append((f"--batch-size {batch} --grad-accum {accum} (same tokens per step)",
                      {"batch_size": batch, "grad_accum": accum}))
    ordered = sorted(lengths)
    for q in (0.95, 0.75, 0.5):
        cut = ordered[int(q * (len(ordered) - 1))] if ordered else config.max_seq_len
        if cut < config.max_seq_len:
            tries.append((f"--max-seq-len {cut} (truncates {100 * (1 - q):.0f}% of records)",
                          {"max_seq_len": cut}))
    for name, change in tries:
        changed = replace(config, **change)
        cut_lengths = [min(n, changed.max_seq_len) for n in lengths]
        trial = estimate(model, changed, cut_lengths, supervised, gathered)
        if trial.fits:
            return f"{name}: predicted {trial.peak / GB:.2f} GB"
    if config.fine_tune == "full":
        return "--fine-tune lora (only the adapters get gradients and optimizer state)"
    if not config.quantize:
        return "--quantize 4 --keep-quantized (QLoRA: a quarter of the weight memory; slow on Linux CPUs)"
    return None


# What MLX and Metal say when memory runs out or a command buffer is killed by the GPU
# watchdog (the two ways a too-large step fails on a Mac), and C++'s bad_alloc on Linux.
_OUT_OF_MEMORY = ("out of memory", "outofmemory", "insufficient memory", "unable to allocate",
                  "failed to allocate", "bad_alloc", "[malloc]")
_GPU_TIMEOUT = ("gpu timeout", "errortimeout", "impacting interactivity")


def step_failure(e: BaseException) -> str | None:
    """"out of memory" or "a GPU timeout" when an error of the step is one, else None."""
    if isinstance(e, MemoryError):
        return "out of memory"
    text = str(e).lower().replace(" ", "")
    if any(sign.replace(" ", "") in text for sign in _OUT_OF_MEMORY):
        return "out of memory"
    if any(sign.replace(" ", "") in text for sign in _GPU_TIMEOUT):
        return "a GPU timeout"
    return None


def memory_advice(config: TrainConfig, num_layers: int | None = None) -> str:
    """The memory-saving options that would shrink the step, smallest change first."""
    tries = []
    if config.batch_size > 1:
        half = config.batch_size // 2
        tries.append(f"--batch-size {half} --grad-accum "
                     f"{config.grad_accum * config.batch_size // half}")
    if not config.grad_checkpoint:
        tries.append("--grad-checkpoint")
    if config.max_seq_len > 256:
        tries.append(f"--max-seq-len {config.max_seq_len // 2}")
    if config.fine_tune != "full" and config.lora_layers == -1 and num_layers and num_layers > 2:
        tries.append(f"--lora-layers {num_layers // 2}")
    if not config.quantize and config.fine_tune != "full":
        tries.append("--quantize 4")
    return "try " + (", or ".join(tries) if tries else "a smaller model")


def plan_run(config: TrainConfig, loaded=None) -> MemoryPlan:
    """Load the model and data as `mlxsft train` would, and plan (with a suggestion)."""
    from mlxsft.blas import matmul_gflops
    from mlxsft.loss import separable_head
    from mlxsft.models import load_model
    from mlxsft.prepare import prepare_data
    from mlxsft.step import prepare_model

    if loaded is None:
        loaded = load_model(config.model, quantize=config.quantize,
                            trust_remote_code=config.trust_remote_code)
    items = prepare_data(config, loaded.tokenizer).train
    prepare_model(loaded, config)
    return plan_for(loaded.model, config, items, separable_head(loaded.model)[0] is not None,
                    matmul_gflops(1024))


def plan_for(model, config: TrainConfig, items, gathered: bool = True,
             matmul_gflops: float | None = None) -> MemoryPlan:
    """The plan (with a suggestion when it does not fit) for tokenized training items."""
    lengths = [len(i.tokens) for i in items]
    supervised = [i.supervised_tokens for i in items]
    plan = estimate(model, config, lengths, supervised, gathered, matmul_gflops)
    plan.suggestion = suggest(plan, model, config, lengths, supervised, gathered)
    return plan
