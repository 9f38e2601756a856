"""LoRA on an mlx-lm model, in the adapter format mlx-lm reads.

The layers themselves are mlx-lm's (`mlx_lm.tuner.lora.LoRALinear`: it wraps both
`nn.Linear` and `nn.QuantizedLinear`, so QLoRA needs nothing more), applied with
`linear_to_lora_layers`, so `mlx_lm.load(model, adapter_path=DIR)` loads what we
write unchanged. The update is y = W x + scale * B A x with scale = alpha / rank, the
PEFT convention, or alpha / sqrt(rank) with rsLoRA (Kalajdzievski 2023: the update's
size then stops shrinking as the rank grows); A starts random and B at zero, so
training starts from the base.

DoRA (Liu et al. 2024) is mlx-lm's `DoRALinear`: the adapted weight W + scale * B A is
normalised per output row and rescaled by a learned magnitude m (initialised to the
row norms of W), y = m * (W + s B A) x / ||W + s B A||.

NEFTune (Jain et al. 2023) adds uniform noise of size alpha / sqrt(L * d) to the input
embeddings while training (never in eval or generation).
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.tuner.utils import linear_to_lora_layers

from mlxsft.errors import UserError


@dataclass
class LoraSpec:
    rank: int
    alpha: float
    dropout: float
    num_layers: int  # the last N transformer layers
    keys: list[str]  # module paths relative to a layer, e.g. "self_attn.q_proj"
    scaling: str = "alpha"  # "alpha": alpha / rank; "rs": alpha / sqrt(rank) (rsLoRA)
    dora: bool = False

    @property
    def scale(self) -> float:
        return self.alpha / (self.rank ** 0.5 if self.scaling == "rs" else self.rank)

    def mlx_lm_parameters(self) -> dict:
        return {"rank": self.rank, "scale": self.scale, "dropout": self.dropout,
                "keys": self.keys}


def linear_keys(model) -> list[str]:
    """Every linear projection inside a transformer layer (attention and MLP)."""
    keys = set()
    for layer in model.layers:
        for name, module in layer.named_modules():
            if isinstance(module, (nn.Linear, nn.QuantizedLinear)):
                keys.add(name)
    return sorted(keys)


def lora_spec(model, rank: int, alpha: float, dropout: float, layers: int,
              targets: list[str] | None, scaling: str = "alpha", dora: bool = False) -> LoraSpec:
    available = linear_keys(model)
    n_layers = len(model.layers)
    if rank < 1:
        raise UserError(f"--lora-rank {rank}: must be at least 1")
    if layers == -1:
        layers = n_layers
    if not 1 <= layers <= n_layers:
        raise UserError(f"--lora-layers {layers}: this model has {n_layers} layers; use "
                        f"1..{n_layers} (the last N) or -1 (all)")
    keys = available
    if targets:
        # Accept short names ("q_proj") as well as layer-relative paths.
        keys = sorted({k for t in targets for k in available if k == t or k.endswith("." + t)})
        unknown = [t for t in targets if not any(k == t or k.endswith("." + t) for k in available)]
        if unknown:
            raise UserError(f"--lora-targets: no module named {unknown[0]!r} in this model; "
                            f"choose from {', '.join(available)}")
    return LoraSpec(rank, alpha, dropout, layers, keys, scaling, dora)


def apply_lora(model, spec: LoraSpec) -> None:
    """Freeze the base and insert LoRA layers (in place)."""
    model.freeze()
    linear_to_lora_layers(model, spec.num_layers, spec.mlx_lm_parameters(), use_dora=spec.dora)


def apply_neftune(model, alpha: float) -> None:
    """Add NEFTune noise to the embedding of `model` (in place; training mode only)."""
    import mlx.core as mx

    if alpha <= 0:
        return
    embed = _token_embedding(model)
    if embed is None:
        raise UserError("--neftune-alpha: this model's token embedding was not found "
                        "(expected model.embed_tokens or similar); drop the option")
    cls = type(embed)
    call = cls.__call__

    def noisy_call(self, x):
        out = call(self, x)
        if self.training:
            # Uniform noise scaled by alpha / sqrt(L * d), as in the NEFTune paper.
            length, dims = out.shape[-2], out.shape[-1]
            bound = alpha / (length * dims) ** 0.5
            out = out + mx.random.uniform(-bound, bound, out.shape).astype(out.dtype)
        return out

    embed.__class__ = type(f"NEFTune{cls.__name__}", (cls,), {"__call__": noisy_call})


def _token_embedding(model):
    for name, module in model.named_modules():
        if name.endswith("embed_tokens") or name.endswith("wte") or name.endswith("tok_embeddings"):
            return module
    return None


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts; quantized weights count as unpacked values."""
    params = dict(tree_flatten(model.parameters()))
    total = 0
    for path, module in model.named_modules():
        if isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            prefix = f"{path}." if path else ""
            for leaf in ("weight", "scales", "biases"):
                params.pop(prefix + leaf, None)
            total += module.weight.size * 32 // module.bits
    total += sum(p.size for p in params.values())
    trainable = sum(p.size for _, p in tree_flatten(model.trainable_parameters()))
    return trainable, total
