"""The masked loss against NumPy, and token-weighted gradient accumulation."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_map

from mlxsft.loss import masked_mean_loss, masked_nll_sum
from mlxsft.models import load_model


def numpy_masked_nll(logits, tokens, mask):
    """Independent computation: log-softmax in float64, gather, mask, average."""
    logits = np.asarray(logits, dtype=np.float64)[:, :-1]
    targets, m = tokens[:, 1:], mask[:, 1:]
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    picked = np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    nll = logz - picked
    return (nll * m).sum() / m.sum()


def test_masked_loss_equals_numpy(tiny_llama):
    model = load_model(str(tiny_llama)).model
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 300, size=(3, 17)).astype(np.int32)
    mask = (rng.random((3, 17)) < 0.4).astype(np.float32)
    mask[:, 0] = 0
    logits = np.array(model(mx.array(tokens)))
    expected = numpy_masked_nll(logits, tokens, mask)
    got = masked_mean_loss(model, mx.array(tokens), mx.array(mask)).item()
    assert abs(got - expected) < 1e-5
    total, count = masked_nll_sum(model, mx.array(tokens), mx.array(mask))
    assert count.item() == mask[:, 1:].sum()
    # A masked target does not count: the last token is only ever a target, so changing
    # it where the mask is 0 leaves the loss exactly as it was.
    mask[:, -1] = [0, 1, 0]
    before = masked_mean_loss(model, mx.array(tokens), mx.array(mask)).item()
    changed = tokens.copy()
    changed[[0, 2], -1] = (changed[[0, 2], -1] + 7) % 300
    assert masked_mean_loss(model, mx.array(changed), mx.array(mask)).item() == before
    changed[1, -1] = (changed[1, -1] + 7) % 300
    assert masked_mean_loss(model, mx.array(changed), mx.array(mask)).item() != before


def test_accumulated_gradient_equals_one_big_batch(tiny_llama):
    """Sum-of-NLL grads over micro-batches / total supervised tokens == big-batch grads,
    even when micro-batches hold very different numbers of supervised tokens."""
    model = load_model(str(tiny_llama)).model
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 300, size=(4, 12)).astype(np.int32)
    mask = np.zeros((4, 12), np.float32)
    mask[0, 1:] = 1  # 11 supervised
    mask[1, 5:7] = 1  # 2
    mask[2, 3:] = 1  # 9
    mask[3, 11] = 1  # 1

    grad_fn = nn.value_and_grad(model, masked_nll_sum)
    (big_total, big_count), big_grads = grad_fn(model, mx.array(tokens), mx.array(mask))
    big = tree_map(lambda g: g / big_count, big_grads)

    acc, count = None, 0
    for rows in ([0, 1], [2, 3]):
        (t, n), g = grad_fn(model, mx.array(tokens[rows]), mx.array(mask[rows]))
        acc = g if acc is None else tree_map(mx.add, acc, g)
        count += n.item()
    accumulated = tree_map(lambda g: g / count, acc)
    for (name, a), (_, b) in zip(tree_flatten(big), tree_flatten(accumulated)):
        assert np.allclose(np.array(a), np.array(b), atol=1e-6), name
    # The mean of micro-batch means would differ (11+2 vs 9+1 tokens): the test can fail.
    means = []
    for rows in ([0, 1], [2, 3]):
        means.append(masked_mean_loss(model, mx.array(tokens[rows]), mx.array(mask[rows])).item())
    assert abs(np.mean(means) - (big_total / big_count).item()) > 1e-4
