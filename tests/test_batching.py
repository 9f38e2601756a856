"""Batches padded to buckets: few shapes, every record once per epoch, reshuffled every
epoch; shuffled membership by default, length-grouped with --group-by-length."""

import numpy as np

from mlxsft.batching import (bucket_for, bucket_sizes, epoch_groups, iterate_batches,
                             steps_per_epoch)
from mlxsft.masking import Tokenized


def item(n, line):
    return Tokenized(list(range(1, n + 1)), [0] + [1] * (n - 1), "d", line, "chat", "prefix")


def test_bucket_sizes_bound_padding_and_cap_at_max_len():
    assert bucket_sizes(1024) == [32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024]
    assert bucket_sizes(100) == [32, 48, 64, 96, 100]
    assert bucket_for(33, bucket_sizes(1024)) == 48 and bucket_for(32, bucket_sizes(1024)) == 32
    sizes = bucket_sizes(4096)
    assert all(bucket_for(n, sizes) < 1.5 * n + 32 for n in range(1, 4097))


def epochs_of(batches, per_epoch, epochs=2):
    """Each epoch's batches as tuples of row fingerprints (the sum of a row's tokens)."""
    out = []
    for _ in range(epochs):
        out.append([tuple(int(r[0:n].sum()) for r, n in zip(b.tokens, b.lengths) if n > 0)
                    for b in (next(batches) for _ in range(per_epoch))])
    return out


def test_default_batches_are_shuffled_records_new_each_epoch():
    rng = np.random.default_rng(0)
    lengths = [int(n) for n in rng.integers(3, 300, size=37)]
    items = [item(n, i) for i, n in enumerate(lengths)]
    fingerprint = [n * (n + 1) // 2 for n in lengths]
    got = epochs_of(iterate_batches(items, 4, 512, seed=1), 10)
    # Exactly the index lists epoch_groups draws (the plan predicts shapes from them).
    expected = epoch_groups(lengths, 4, seed=1)
    for epoch in got:
        assert epoch == [tuple(fingerprint[i] for i in g) for g in next(expected)]
        assert sorted(sum(epoch, ())) == sorted(fingerprint)
    # New memberships each epoch, not only a new order of the same batches.
    assert sorted(got[0]) != sorted(got[1])
    # Not length-sorted: some batch mixes a record under 100 tokens with one over 200.
    assert any(min(b) < 100 * 101 // 2 and max(b) > 200 * 201 // 2 for b in got[0])


def test_epochs_cover_every_record_once_in_a_new_order():
    rng = np.random.default_rng(0)
    items = [item(int(n), i) for i, n in enumerate(rng.integers(3, 300, size=37))]
    batches = iterate_batches(items, 4, 512, seed=1, group_by_length=True)
    per_epoch = -(-37 // 4)
    epochs = []
    for _ in range(2):
        seen, order = [], []
        for _ in range(per_epoch):
            b = next(batches)
            assert b.tokens.shape[1] in bucket_sizes(512) and b.tokens.shape[0] == 4
            rows = [int(r[0:n].sum()) for r, n in zip(b.tokens, b.lengths) if n > 0]
            seen += rows
            order.append(tuple(rows))
            # Padding carries no loss; real tokens keep their mask.
            assert b.loss_mask.sum() == sum(n - 1 for n in b.lengths if n > 0)
        epochs.append(order)
        assert sorted(seen) == sorted(sum(range(1, len(i.tokens) + 1)) for i in items)
    assert epochs[0] != epochs[1] and sorted(epochs[0]) == sorted(epochs[1])
    assert steps_per_epoch(37, 4, 2) == 5


def test_similar_lengths_share_a_batch_when_grouped_and_in_evaluation():
    items = [item(n, i) for i, n in enumerate([10, 200, 11, 190, 12, 210, 9, 205])]
    widths = sorted(b.tokens.shape[1] for b in iterate_batches(items, 4, 512, loop=False, shuffle=False))
    assert widths == [32, 256]
    for seed in range(5):
        grouped = iterate_batches(items, 4, 512, seed=seed, loop=False, group_by_length=True)
        assert sorted(b.tokens.shape[1] for b in grouped) == [32, 256]
