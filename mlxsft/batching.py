"""Batches of similar-length records, padded to a few bucket sizes, or packed rows.

Each epoch the records are shuffled and cut into batches, as most trainers do; each
batch is padded to the next bucket size (32, 48, 64, 96, 128, ... up to the longest
record), so the compiled step sees a handful of shapes instead of a new one every step.
With --group-by-length the records are instead sorted by token length and cut into
batches once (membership fixed, batch order shuffled each epoch): far less padding, but
every batch then holds records of one length, which in a short run tuned the default
model measurably worse (README, "Tuning quality"). Evaluation always groups by length:
there the order changes nothing but the padding.

With packing (--pack) several records share one max-seq-len row (first-fit, longest
first) and each position carries its record's id, from which the loss builds a
block-diagonal causal attention mask: one shape, almost no padding, no record seeing
another. A record's first token is never a target in its row (it would be predicted
from the previous record), exactly as it is not when the record has a row of its own.

A data-parallel run (`shard=(rank, ranks)`) cuts the same global batches of
batch_size x ranks records in the same order as one process would, and gives each rank
every ranks-th record of each (`shard_of`): the shards are disjoint, cover the global
batch, and the global step's loss and gradient are those of one process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from mlxsft.masking import Tokenized


def bucket_sizes(max_len: int) -> list[int]:
    """32, 48, 64, 96, 128, 192, ...: padding waste stays under a third."""
    sizes, base = [], 32
    while True:
        for size in (base, base * 3 // 2):
            if size >= max_len:
                sizes.append(max_len)
                return sorted(set(sizes))
            sizes.append(size)
        base *= 2


def bucket_for(length: int, sizes: Sequence[int]) -> int:
    for size in sizes:
        if size >= length:
            return size
    return sizes[-1]


def position_bucket(count: int, limit: int) -> int:
    """The number of supervised positions a batch is padded to: 32, then steps of a
    quarter octave (at most 19% dummies, one compiled shape per step of the ladder)."""
    size, k = 32, 0
    while size < count:
        k += 1
        size = -(-int(32 * 2 ** (k / 4)) // 16) * 16
    return min(size, limit)


@dataclass
class Batch:
    """Padded arrays (numpy) for one micro-batch."""

    tokens: np.ndarray  # (B, L) int32
    loss_mask: np.ndarray  # (B, L) float32; 1 where the token is a supervised target
    lengths: np.ndarray  # (B,) true lengths
    # (B, L) int32 record id per position in a packed row (attention stays inside a
    # record); None for one record per row.
    segments: np.ndarray | None = None

    @property
    def tokens_count(self) -> int:
        return int(self.lengths.sum())

    def supervised_positions(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(positions, targets, weights) of the supervised targets, for the gathered loss.

        positions index the flattened (B, L-1) inputs: the hidden state at input
        position p predicts target tokens[:, 1:].flat[p]. Their number is padded to a
        bucket size with weight-0 dummies, so the compiled step sees a few shapes only.
        """
        mask = self.loss_mask[:, 1:].reshape(-1)
        real = np.flatnonzero(mask)
        size = position_bucket(len(real), mask.size)
        positions = np.zeros(size, np.int32)
        positions[:len(real)] = real
        weights = np.zeros(size, np.float32)
        weights[:len(real)] = mask[real]
        targets = self.tokens[:, 1:].reshape(-1)[positions].astype(np.int32)
        return positions, targets, weights


def pad_id(tokenizer) -> int:
    """The token that fills a row past its record: the tokenizer's pad token, else 0.
    Any id would do (padded positions carry loss mask 0 and come after the record, so
    causal attention never lets a real token see them); this keeps batches readable."""
    pad = getattr(tokenizer, "pad_token_id", None)
    return pad if pad is not None else 0


def make_batch(items: Sequence[Tokenized], width: int, pad_id: int = 0) -> Batch:
    tokens = np.full((len(items), width), pad_id, dtype=np.int32)
    mask = np.zeros((len(items), width), dtype=np.float32)
    for row, item in enumerate(items):
        n = min(len(item.tokens), width)
        tokens[row, :n] = item.tokens[:n]
        mask[row, :n] = item.loss_mask[:n]
    return Batch(tokens, mask, np.array([min(len(i.tokens), width) for i in items]))


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Index lists of records sorted by length and cut into batches."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def epoch_groups(lengths: Sequence[int], batch_size: int, group_by_length: bool = False,
                 shuffle: bool = True, seed: int = 0) -> Iterator[list[list[int]]]:
    """The batches (index lists) of each epoch in turn, forever.

    Shuffled records cut into batches (the default), or length-sorted batches in a
    shuffled order (group_by_length); without shuffle, length-sorted batches in order.
    """
    rng = np.random.default_rng(seed)
    n = len(lengths)
    fixed = (length_sorted_batches(lengths, batch_size) if group_by_length or not shuffle
             else None)
    while True:
        if fixed is None:
            order = rng.permutation(n).tolist()
            yield [order[i:i + batch_size] for i in range(0, n, batch_size)]
        elif shuffle:
            yield [fixed[g] for g in rng.permutation(len(fixed))]
        else:
            yield fixed


def shard_of(group: Sequence, shard: tuple[int, int]) -> list:
    """Rank r's part of a global batch: every ranks-th member from the r-th (shorter and
    longer records alike, so the ranks' rows are about as wide)."""
    rank, ranks = shard
    return list(group[rank::ranks])


def iterate_batches(items: Sequence[Tokenized], batch_size: int, max_seq_len: int,
                    seed: int = 0, shuffle: bool = True, pad_id: int = 0,
                    loop: bool = True, group_by_length: bool = False,
                    shard: tuple[int, int] = (0, 1)) -> Iterator[Batch]:
    """Batches forever (loop) or one pass, reshuffled every epoch (see `epoch_groups`).

    A batch smaller than batch_size (the dataset's tail) is padded with copies of its
    records whose loss mask is zeroed, so every step has the same batch dimension.
    With `shard=(rank, ranks)`, batch_size is per rank: this rank's share of each global
    batch of batch_size x ranks records (filled the same way, even when it is empty).
    """
    if not items:
        return
    sizes = bucket_sizes(max(max_seq_len, 2))
    epochs = epoch_groups([len(i.tokens) for i in items], batch_size * shard[1],
                          group_by_length, shuffle, seed)
    while True:
        for indices in next(epochs):
            whole = [items[i] for i in indices]
            mine = shard_of(whole, shard)
            group = mine or whole[:1]
            width = bucket_for(max(len(i.tokens) for i in group), sizes)
            batch = make_batch(group, width, pad_id)
            if not mine:  # no record of this (tail) batch is this rank's: a filler row
                batch.loss_mask[:] = 0
                batch.lengths[:] = 0
            missing = batch_size - len(group)
            if missing > 0 and (shuffle or shard[1] > 1):
                fill = make_batch([group[k % len(group)] for k in range(missing)], width, pad_id)
                fill.loss_mask[:] = 0
                fill.lengths[:] = 0  # filler rows are not counted as processed tokens
                batch = Batch(np.concatenate([batch.tokens, fill.tokens]),
                              np.concatenate([batch.loss_mask, fill.loss_mask]),
                              np.concatenate([batch.lengths, fill.lengths]))
            yield batch
        if not loop:
            return


def pack_rows(items: Sequence[Tokenized], width: int) -> list[list[int]]:
    """Index lists of records that fill rows of `width` tokens (first-fit decreasing)."""
    return first_fit([len(i.tokens) for i in items], width)


def first_fit(lengths: Sequence[int], width: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = min(lengths[i], width)
        for r, room in enumerate(free):
            if room >= n:
                rows[r].append(i)
                free[r] -= n
                break
        else:
            rows.append([i])
            free.append(width - n)
    return rows


def padding_waste(lengths: Sequence[int], batch_size: int, max_seq_len: int,
                  seed: int = 0) -> dict:
    """Token slots the step computes for one epoch of these record lengths: shuffled
    batches (the default; the first epoch of `seed`), length-grouped batches
    (--group-by-length), each padded to its bucket with the tail batch filled, and
    packed rows (--pack: rows of max_seq_len, the tail filled with empty rows); and the
    share of each that is padding."""
    lengths = [min(n, max_seq_len) for n in lengths]
    real = sum(lengths)
    sizes = bucket_sizes(max(max_seq_len, 2))

    def slots(group_by_length: bool) -> int:
        groups = next(epoch_groups(lengths, batch_size, group_by_length, seed=seed))
        return sum(batch_size * bucket_for(max(lengths[i] for i in g), sizes) for g in groups)

    shuffled, grouped = (slots(False), slots(True)) if lengths else (0, 0)
    rows = len(first_fit(lengths, max_seq_len))
    packed = -(-rows // batch_size) * batch_size * max_seq_len
    share = lambda slots: 1 - real / slots if slots else 0.0  # noqa: E731
    return {"tokens": real, "shuffled_slots": shuffled, "grouped_slots": grouped,
            "packed_slots": packed, "shuffled_padding": share(shuffled),
            "grouped_padding": share(grouped), "packed_padding": share(packed)}


def make_packed_batch(rows: Sequence[Sequence[Tokenized]], width: int, pad_id: int = 0) -> Batch:
    """Rows of concatenated records; segment ids 1, 2, ... per record, 0 for padding."""
    tokens = np.full((len(rows), width), pad_id, dtype=np.int32)
    mask = np.zeros((len(rows), width), dtype=np.float32)
    segments = np.zeros((len(rows), width), dtype=np.int32)
    lengths = np.zeros(len(rows), dtype=np.int64)
    for r, row in enumerate(rows):
        at = 0
        for k, item in enumerate(row, start=1):
            n = min(len(item.tokens), width - at)
            tokens[r, at:at + n] = item.tokens[:n]
            mask[r, at:at + n] = item.loss_mask[:n]
            mask[r, at] = 0  # predicted from the previous record: never a target
            segments[r, at:at + n] = k
            at += n
        lengths[r] = at
    return Batch(tokens, mask, lengths, segments)


def iterate_packed_batches(items: Sequence[Tokenized], batch_size: int, max_seq_len: int,
                           seed: int = 0, shuffle: bool = True, pad_id: int = 0,
                           loop: bool = True, shard: tuple[int, int] = (0, 1)
                           ) -> Iterator[Batch]:
    """Batches of `batch_size` packed rows of max_seq_len tokens; row order reshuffled
    every epoch, a short tail filled with empty (all-padding, unsupervised) rows. With
    `shard`, this rank's rows of each global batch of batch_size x ranks rows."""
    if not items:
        return
    rows = pack_rows(items, max_seq_len)
    step = batch_size * shard[1]
    groups = [rows[i:i + step] for i in range(0, len(rows), step)]
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(groups)) if shuffle else range(len(groups))
        for g in order:
            group = [[items[i] for i in row] for row in shard_of(groups[g], shard)]
            yield make_packed_batch(group + [[]] * (batch_size - len(group)), max_seq_len,
                                    pad_id)
        if not loop:
            return


def steps_per_epoch(n_items: int, batch_size: int, grad_accum: int) -> int:
    batches = -(-n_items // batch_size)
    return max(1, -(-batches // grad_accum))
