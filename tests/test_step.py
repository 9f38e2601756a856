"""The one compiled step: accumulating micro-batches sums the same gradient and count as
one batch holding all their rows (token-weighted, not a mean of means), and applies the
same update."""

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from mlxsft.batching import Batch
from mlxsft.config import TrainConfig
from mlxsft.models import load_model
from mlxsft.step import TrainStep, prepare_model


def new_step(path, batch_size, grad_accum):
    config = TrainConfig(model=str(path), batch_size=batch_size, grad_accum=grad_accum,
                         learning_rate=1e-2, warmup=0, grad_clip=0, fine_tune="full")
    loaded = load_model(str(path))
    prepare_model(loaded, config)
    return TrainStep(loaded.model, config, total_steps=1), loaded.model


def test_two_micro_batches_update_exactly_like_one_batch_of_their_rows(tiny_llama):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 300, size=(4, 16)).astype(np.int32)
    mask = np.zeros((4, 16), np.float32)
    mask[0, 1:] = 1  # 15 supervised targets
    mask[1, 9:11] = 1  # 2
    mask[2, 4:] = 1  # 12
    mask[3, 15] = 1  # 1: very different counts per micro-batch
    whole = Batch(tokens, mask, np.full(4, 16))
    halves = [Batch(tokens[r], mask[r], np.full(2, 16)) for r in ([0, 1], [2, 3])]

    # The sums the compiled step carries between micro-batches, before any update.
    tokens = mx.array(0.0)  # the processed-token count rides along; not compared here
    one, _ = new_step(tiny_llama, 4, 1)
    sums, (grads, _) = one._step(one.loss.arrays(whole), tokens, None, False)
    two, _ = new_step(tiny_llama, 2, 2)
    _, carried = two._step(two.loss.arrays(halves[0]), tokens, None, False)
    sums2, (grads2, _) = two._step(two.loss.arrays(halves[1]), tokens, carried, False)
    assert sums[0].item() == sums2[0].item() == 30
    for (name, a), (_, b) in zip(tree_flatten(grads), tree_flatten(grads2)):
        assert float(mx.abs(a - b).max().item()) < 1e-5, name

    # And a whole optimizer step through the public call: same loss, same weights.
    one, model_one = new_step(tiny_llama, 4, 1)
    two, model_two = new_step(tiny_llama, 2, 2)
    before = {k: mx.array(v) for k, v in tree_flatten(model_one.trainable_parameters())}
    r1, r2 = one(iter([whole])), two(iter(halves))
    assert (r1.supervised, r1.tokens) == (r2.supervised, r2.tokens) == (30, 64)
    assert abs(r1.loss - r2.loss) < 1e-5
    after_one = dict(tree_flatten(model_one.trainable_parameters()))
    after_two = dict(tree_flatten(model_two.trainable_parameters()))
    # Adam's first step is lr * g / (|g| + eps), which turns float rounding in a
    # near-zero gradient entry into a visible change of that entry: compare the updates
    # as a whole (a mean-of-means gradient would change them by far more).
    for name, value in after_one.items():
        update_one, update_two = value - before[name], after_two[name] - before[name]
        gap = float(mx.linalg.norm((update_one - update_two).reshape(-1)).item())
        size = float(mx.linalg.norm(update_one.reshape(-1)).item())
        assert size > 0 and gap < 1e-3 * size, (name, gap, size)


def test_a_seed_gives_the_lora_init_mlx_lm_gives_whatever_ran_before(tiny_llama):
    """The LoRA A matrices come from --seed alone: random numbers drawn before (building
    the model, which depends on how it was loaded) do not move them, and they equal what
    mlx-lm's trainer inserts for the same seed, keys and layers."""
    from mlx_lm.tuner.utils import linear_to_lora_layers

    from mlxsft.lora import linear_keys

    config = TrainConfig(model=str(tiny_llama), seed=3, lora_rank=4, lora_alpha=8)
    ours = []
    for draws_before in (0, 5):
        loaded = load_model(str(tiny_llama))
        mx.random.uniform(shape=(draws_before,))  # other work that used the generator
        prepare_model(loaded, config)
        ours.append(dict(tree_flatten(loaded.model.trainable_parameters())))
    peer = load_model(str(tiny_llama)).model
    mx.random.seed(3)  # what mlx_lm.lora.train_model does, right before its LoRA layers
    peer.freeze()
    linear_to_lora_layers(peer, len(peer.layers),
                          {"rank": 4, "scale": 2.0, "dropout": 0.0, "keys": linear_keys(peer)})
    theirs = dict(tree_flatten(peer.trainable_parameters()))
    assert set(ours[0]) == set(ours[1]) == set(theirs)
    assert any(name.endswith("lora_a") for name in theirs)
    for name, value in theirs.items():
        assert mx.array_equal(ours[0][name], value), name
        assert mx.array_equal(ours[1][name], value), name


def test_recomputed_swiglu_gives_the_same_loss_and_gradients():
    import importlib

    import mlx.nn as nn
    from mlx_lm.models import activations

    from mlxsft.loss import masked_nll_sum
    from mlxsft.step import recompute_swiglu

    module = importlib.import_module("mlx_lm.models.qwen2")
    config = {"model_type": "qwen2", "hidden_size": 64, "num_hidden_layers": 2,
              "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
              "rms_norm_eps": 1e-5, "vocab_size": 300, "tie_word_embeddings": False}
    mx.random.seed(0)
    model = module.Model(module.ModelArgs.from_dict(config))
    model.freeze()
    for layer in model.layers:
        layer.mlp.unfreeze()
    rng = np.random.default_rng(0)
    tokens = mx.array(rng.integers(0, 300, (2, 17)), mx.int32)
    mask = mx.array(rng.random((2, 17)) < 0.5, mx.float32)

    def grads():
        (total, _), g = nn.value_and_grad(model, masked_nll_sum)(model, tokens, mask)
        return total.item(), dict(tree_flatten(g))

    saved = module.swiglu  # an earlier test's prepare_model may have swapped it already
    try:
        module.swiglu = activations.swiglu
        want_total, want = grads()
        recompute_swiglu(model)
        # the model's module now calls the checkpointed one (which an earlier test's
        # prepare_model may have installed already: `saved` can be it)
        assert module.swiglu is not activations.swiglu
        got_total, got = grads()
    finally:
        module.swiglu = saved
    assert abs(got_total - want_total) <= 1e-6 * abs(want_total)
    assert want.keys() == got.keys() and any("gate_proj" in k for k in got)
    for name in want:
        assert float(mx.abs(want[name] - got[name]).max().item()) <= 1e-6, name
