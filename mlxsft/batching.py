"""Batches of similar-length records, padded to a few bucket sizes.

Records are sorted by true token length and cut into batches, so a batch pads little;
each batch is padded to the next bucket size (32, 48, 64, 96, 128, ... up to the
longest record), so the compiled step sees a handful of shapes instead of a new one
every step. Batch order is shuffled each epoch; membership stays length-sorted.
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


@dataclass
class Batch:
    """Padded arrays (numpy) for one micro-batch."""

    tokens: np.ndarray  # (B, L) int32
    loss_mask: np.ndarray  # (B, L) float32; 1 where the token is a supervised target
    lengths: np.ndarray  # (B,) true lengths

    @property
    def tokens_count(self) -> int:
        return int(self.lengths.sum())



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


def length_sorted_batches(items: Sequence[Tokenized], batch_size: int) -> list[list[int]]:
    """Index lists of records sorted by length and cut into batches."""
    order = sorted(range(len(items)), key=lambda i: len(items[i].tokens))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def iterate_batches(items: Sequence[Tokenized], batch_size: int, max_seq_len: int,
                    seed: int = 0, shuffle: bool = True, pad_id: int = 0,
                    loop: bool = True) -> Iterator[Batch]:
    """Batches forever (loop) or one pass; the batch order is reshuffled every epoch.

    A batch smaller than batch_size (the dataset's tail) is padded with copies of its
    records whose loss mask is zeroed, so every step has the same batch dimension.
    """
    if not items:
        return
    sizes = bucket_sizes(max(max_seq_len, 2))
    groups = length_sorted_batches(items, batch_size)
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(groups)) if shuffle else range(len(groups))
        for g in order:
            group = [items[i] for i in groups[g]]
            width = bucket_for(max(len(i.tokens) for i in group), sizes)
            batch = make_batch(group, width, pad_id)
            missing = batch_size - len(group)
            if missing > 0 and shuffle:
                fill = make_batch([group[k % len(group)] for k in range(missing)], width, pad_id)
                fill.loss_mask[:] = 0
                fill.lengths[:] = 0  # filler rows are not counted as processed tokens
                batch = Batch(np.concatenate([batch.tokens, fill.tokens]),
                              np.concatenate([batch.loss_mask, fill.loss_mask]),
                              np.concatenate([batch.lengths, fill.lengths]))
            yield batch
        if not loop:
            return


def steps_per_epoch(n_items: int, batch_size: int, grad_accum: int) -> int:
    batches = -(-n_items // batch_size)
    return max(1, -(-batches // grad_accum))
