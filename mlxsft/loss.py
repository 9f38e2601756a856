"""Response-only cross-entropy: summed over supervised tokens, divided by their count.

The mask is data (see `mlxsft.masking`); the loss only multiplies by it. Sums and
counts are returned separately so gradient accumulation and evaluation can weight by
tokens: the loss of an accumulated batch is the mean over all its supervised tokens,
not the mean of per-micro-batch means.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn


def masked_nll_sum(model, tokens: mx.array, loss_mask: mx.array) -> tuple[mx.array, mx.array]:
    """(sum of per-token NLL over supervised targets, number of supervised targets).

    tokens and loss_mask are (B, L); position t of the mask says whether token t is a
    target, predicted from tokens < t, so inputs are tokens[:, :-1] and targets
    tokens[:, 1:].
    """
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    mask = loss_mask[:, 1:].astype(mx.float32)
    logits = model(inputs).astype(mx.float32)
    nll = nn.losses.cross_entropy(logits, targets)
    return (nll * mask).sum(), mask.sum()


def batch_nll_sum(model, tokens: mx.array, loss_mask: mx.array) -> tuple[mx.array, mx.array]:
    """The training step's loss over one `Batch.arrays()`: (NLL sum, supervised count)."""
    return masked_nll_sum(model, tokens, loss_mask)


def masked_mean_loss(model, tokens: mx.array, loss_mask: mx.array) -> mx.array:
    """The mean NLL over supervised tokens of one batch (0 when there are none)."""
    total, count = masked_nll_sum(model, tokens, loss_mask)
    return total / mx.maximum(count, 1)
