"""--pack: exact row layout, a packed record's loss and gradients equal its unpacked
ones (block-diagonal causal attention), models that cannot isolate records are refused,
and a packed run trains end to end."""

import importlib

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_map

from mlxsft.batching import iterate_packed_batches, make_batch, make_packed_batch, pack_rows
from mlxsft.config import TrainConfig
from mlxsft.errors import UserError
from mlxsft.loss import SupervisedLoss, masked_nll_sum
from mlxsft.masking import Tokenized
from test_supervised_loss import build


def record(tokens, mask):
    return Tokenized(list(tokens), list(mask), "t.jsonl", 1, "messages", "prefix")


def records(seed=0, lengths=(9, 5, 12, 7, 3)):
    rng = np.random.default_rng(seed)
    out = []
    for n in lengths:
        mask = (rng.random(n) < 0.5).astype(int)
        mask[-1] = 1
        out.append(record(rng.integers(0, 300, n), mask))
    return out


def test_rows_are_filled_longest_first_with_exact_segments_and_masks():
    items = records()
    # Longest first (12, 9, 7, 5, 3), each into the first row with room for it.
    assert pack_rows(items, 16) == [[2, 4], [0, 3], [1]]
    b = make_packed_batch([[items[0], items[1]], []], 16, pad_id=99)
    assert b.segments.tolist() == [[1] * 9 + [2] * 5 + [0] * 2, [0] * 16]
    assert b.tokens[0, :14].tolist() == items[0].tokens + items[1].tokens
    assert b.tokens[0, 14:].tolist() == [99, 99] and b.lengths.tolist() == [14, 0]
    # The second record's first token follows the first record: never a target.
    expect = items[0].loss_mask + [0] + items[1].loss_mask[1:] + [0, 0]
    assert b.loss_mask[0].tolist() == expect and b.loss_mask[1].sum() == 0
    batches = list(iterate_packed_batches(items, 2, 16, shuffle=False, loop=False))
    assert [x.tokens.shape for x in batches] == [(2, 16), (2, 16)]
    assert batches[1].lengths.tolist() == [5, 0]  # the tail: record 1 and one empty row


@pytest.mark.parametrize("arch", ["llama", "qwen3", "phi3"])
def test_a_packed_record_has_its_unpacked_loss_and_gradients(arch):
    model = build(arch)
    model.unfreeze()
    items = records(1)
    loss = SupervisedLoss(model)
    packed = make_packed_batch([items[:3], items[3:]], 28)
    (p_total, p_count), p_grads = nn.value_and_grad(model, loss)(model, *loss.arrays(packed))
    # The independent side: each record alone in its own row, full logits, no segments.
    total, count, grads = 0.0, 0.0, None
    for item in items:
        alone = make_batch([item], len(item.tokens))
        (t, n), g = nn.value_and_grad(model, masked_nll_sum)(
            model, mx.array(alone.tokens), mx.array(alone.loss_mask))
        total, count = total + t.item(), count + n.item()
        grads = g if grads is None else tree_map(mx.add, grads, g)
    assert p_count.item() == count
    assert abs(p_total.item() - total) <= 1e-5 * max(1.0, total)
    want, got = dict(tree_flatten(grads)), dict(tree_flatten(p_grads))
    for name in want:
        assert float(mx.abs(want[name] - got[name]).max().item()) <= 1e-5, name
    # Record by record: masking out all but one leaves exactly that record's loss.
    for k, item in enumerate(items[:3], start=1):
        only = make_packed_batch([items[:3]], 28)
        only.loss_mask[only.segments != k] = 0
        alone = make_batch([item], len(item.tokens))
        want_k = masked_nll_sum(model, mx.array(alone.tokens), mx.array(alone.loss_mask))
        got_k = loss(model, *loss.arrays(only))
        assert abs(got_k[0].item() - want_k[0].item()) <= 1e-5 * max(1.0, want_k[0].item())


def test_learned_absolute_positions_are_refused():
    from mlxsft.step import TrainStep

    gpt2 = importlib.import_module("mlx_lm.models.gpt2")
    model = gpt2.Model(gpt2.ModelArgs(model_type="gpt2", n_ctx=64, n_embd=32, n_head=2,
                                      n_layer=1, n_positions=64, layer_norm_epsilon=1e-5,
                                      vocab_size=300))
    with pytest.raises(UserError, match=r"^--pack: gpt2 models cannot keep packed records "
                                        r"apart \(.*\); packing needs rotary-position "
                                        r"attention that takes a per-row mask\. "
                                        r"Drop --pack$"):
        TrainStep(model, TrainConfig(pack=True), total_steps=1)
    TrainStep(build("llama"), TrainConfig(pack=True), total_steps=1)  # RoPE: accepted
    # mlx-lm's gemma2 broadcasts a (B, 1, L, L) mask against its grouped-query scores
    # (B, kv, repeats, L, L) the wrong way: records would leak, so it is refused.
    with pytest.raises(UserError, match="^--pack: gemma2 models cannot"):
        TrainStep(build("gemma2"), TrainConfig(pack=True), total_steps=1)


def test_a_packed_run_trains(tiny_llama, tiny_data, tmp_path):
    import math

    from mlxsft.train import train

    events = list(train(TrainConfig(data=str(tiny_data), model=str(tiny_llama),
                                    out=str(tmp_path / "run"), iters=6, batch_size=2,
                                    max_seq_len=256, pack=True, learning_rate=1e-3,
                                    steps_per_report=3, steps_per_eval=0, steps_per_save=0)))
    reports = [e for e in events if e.kind == "train"]
    assert events[-1].kind == "finished" and math.isfinite(events[-1].final_train_loss)
    # 64 records of 79-81 tokens, three to a row of 256: 22 rows, 11 steps an epoch.
    assert reports[-1].epoch == 6 / 11
    assert reports[-1].tokens >= 6 * 2 * 3 * 79
