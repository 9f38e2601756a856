"""The supervised-only loss (gather before the head, chunked cross-entropy) against the
plain full-logit computation: the same loss and the same gradients on every architecture
family we train, and a model whose head cannot be separated falls back, saying so."""

import importlib

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlxsft import loss as loss_module
from mlxsft.batching import Batch
from mlxsft.loss import SupervisedLoss, masked_nll_sum

BASE = {"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128,
        "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
        "vocab_size": 300, "rope_theta": 10000.0, "max_position_embeddings": 512}
ARCHS = {
    "llama": {"tie_word_embeddings": True},
    "qwen2": {"tie_word_embeddings": False},
    "qwen3": {"head_dim": 16, "tie_word_embeddings": True},
    "gemma": {"head_dim": 16},
    "gemma2": {"head_dim": 16, "query_pre_attn_scalar": 16.0,
               "final_logit_softcapping": 5.0},
    "phi3": {"tie_word_embeddings": False},
    # mlx-lm runs Mistral on its llama module; a sliding window shorter than the rows.
    "mistral": {"tie_word_embeddings": False, "sliding_window": 8},
}


def build(arch, seed=0):
    config = dict(BASE, model_type=arch, **ARCHS[arch])
    module = importlib.import_module(f"mlx_lm.models.{'llama' if arch == 'mistral' else arch}")
    mx.random.seed(seed)
    model = module.Model(module.ModelArgs.from_dict(config))
    mx.eval(model.parameters())
    return model


def batch_of(seed=0, rows=3, width=21):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 300, size=(rows, width)).astype(np.int32)
    mask = (rng.random((rows, width)) < 0.3).astype(np.float32)
    mask[1, :] = 0  # a row with nothing supervised
    mask[2, -1] = 1
    return Batch(tokens, mask, np.full(rows, width))


def grads_of(model, fn, *args):
    (total, count), grads = nn.value_and_grad(model, fn)(model, *args)
    return total.item(), count.item(), dict(tree_flatten(grads))


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("chunked", [False, True])
def test_gathered_loss_and_gradients_equal_the_full_logits(arch, chunked, monkeypatch):
    if chunked:  # 300-token vocabulary: chunks of 16 rows, each recomputed in backward
        monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", 16 * 300)
    model = build(arch)
    model.unfreeze()  # every weight, the head and embedding included, gets a gradient
    batch = batch_of()
    loss = SupervisedLoss(model)
    assert loss.gathered, loss.note
    positions, _, weights = batch.supervised_positions()
    assert len(positions) > weights.sum()  # padded to a bucket with weight-0 dummies
    want_total, want_count, want = grads_of(model, masked_nll_sum, mx.array(batch.tokens),
                                            mx.array(batch.loss_mask))
    got_total, got_count, got = grads_of(model, loss, *loss.arrays(batch))
    assert got_count == want_count == batch.loss_mask[:, 1:].sum()
    assert abs(got_total - want_total) <= 1e-5 * max(1.0, abs(want_total))
    assert want.keys() == got.keys()
    for name in want:
        diff = float(mx.abs(want[name] - got[name]).max().item())
        assert diff <= 1e-5, (name, diff)


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("chunked", [False, True])
def test_with_a_frozen_head_the_fused_loss_has_the_full_logit_gradients(arch, chunked,
                                                                         monkeypatch):
    if chunked:  # 300-token vocabulary: chunks of 16 rows, run one after another
        monkeypatch.setattr(loss_module, "FUSED_CHUNK_ELEMENTS", 16 * 300)
    model = build(arch)
    model.freeze()
    for layer in model.layers:  # the layers train, the head and embedding do not (as LoRA)
        layer.unfreeze()
    batch = batch_of()
    loss = SupervisedLoss(model)
    assert loss_module.head_is_frozen(model, loss.body_name)
    calls = []
    fused = loss_module.fused_nll
    monkeypatch.setattr(loss_module, "fused_nll", lambda *a: calls.append(1) or fused(*a))
    want_total, want_count, want = grads_of(model, masked_nll_sum, mx.array(batch.tokens),
                                            mx.array(batch.loss_mask))
    got_total, got_count, got = grads_of(model, loss, *loss.arrays(batch))
    assert calls  # the fused path is the one measured
    assert got_count == want_count
    assert abs(got_total - want_total) <= 1e-5 * max(1.0, abs(want_total))
    assert want.keys() == got.keys() and len(got) > 0
    for name in want:
        diff = float(mx.abs(want[name] - got[name]).max().item())
        assert diff <= 1e-5, (name, diff)
    # Evaluation takes no gradient: the plain chunks, the same loss.
    calls.clear()
    total, count = loss(model, *loss.arrays(batch), gradient=False)
    assert not calls and abs(total.item() - want_total) <= 1e-5 * max(1.0, abs(want_total))


def test_a_trainable_head_is_not_fused():
    model = build("qwen2")
    model.freeze()
    model.lm_head.unfreeze()
    assert not loss_module.head_is_frozen(model, "model")
    model.freeze()
    model.layers[0].unfreeze()
    assert loss_module.head_is_frozen(model, "model")


def test_a_head_that_is_not_per_position_falls_back_to_full_logits():
    llama = importlib.import_module("mlx_lm.models.llama")

    class Centred(llama.Model):
        """Logits minus their mean over positions: the head mixes positions."""

        def __call__(self, inputs, cache=None, input_embeddings=None):
            logits = super().__call__(inputs, cache, input_embeddings)
            return logits - logits.mean(axis=1, keepdims=True)

    mx.random.seed(0)
    model = Centred(llama.ModelArgs.from_dict(dict(BASE, model_type="llama")))
    loss = SupervisedLoss(model)
    assert not loss.gathered
    assert loss.note.startswith("loss: computing logits at every position")
    batch = batch_of()
    want = masked_nll_sum(model, mx.array(batch.tokens), mx.array(batch.loss_mask))
    got = loss(model, *loss.arrays(batch))
    assert abs(got[0].item() - want[0].item()) < 1e-5 and got[1].item() == want[1].item()


def test_supervised_positions_index_the_shifted_targets():
    tokens = np.arange(12, dtype=np.int32).reshape(2, 6)
    mask = np.zeros((2, 6), np.float32)
    mask[0, 2] = mask[1, 5] = 1
    positions, targets, weights = Batch(tokens, mask, np.full(2, 6)).supervised_positions()
    # Input position p of the flattened (2, 5) inputs predicts tokens[:, 1:].flat[p].
    assert positions[:2].tolist() == [1, 9] and targets[:2].tolist() == [2, 11]
    assert weights.tolist() == [1, 1] + [0] * (len(weights) - 2)
    assert len(positions) == 10  # the smallest bucket covering the rows (10 < 32)
