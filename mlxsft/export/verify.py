"""Verify a fused model: held-out records, base / tuned / fused losses, logit differences.

The records are the run's validation split when adapter_config.json names one that is
still on disk, else a few built-in conversations; they are tokenized and masked as
training did (`mlxsft.masking.Masker`, the run's --mask), and the loss is
`mlxsft.evaluate.mean_nll`, so "tuned" here is what `mlxsft eval` reports. The fused model
is loaded from the files written, as a user would load it. What to say about the numbers
is the caller's (`mlxsft.export.fuse`).
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

from mlxsft.batching import pad_id
from mlxsft.checkpoints import file_sha256
from mlxsft.data import parse_record, read_jsonl
from mlxsft.errors import UserError
from mlxsft.evaluate import mean_nll
from mlxsft.masking import Masker, encode_records
from mlxsft.models import load_model, to_compute_precision
from mlxsft.provenance import local_data_file

MAX_RECORDS = 8  # held-out records verified: a few seconds even on a 1B model
MAX_TOKENS = 256  # per record, for the loss
LOGIT_RECORDS, LOGIT_TOKENS = 4, 64  # logits kept in memory to compare (vocab-sized rows)
# Warn when the fused model loses more than this share of the loss improvement tuning
# made, and more than LOSS_FLOOR nats/token (differences below that are rounding noise).
LOST_SHARE, LOSS_FLOOR = 0.05, 0.01
# ...or more than LOSS_CAP nats/token outright (~5% perplexity), however large the gain was:
# a tuning that gained 4 nats/token otherwise hides a 0.2 nats/token loss from quantizing.
LOSS_CAP = 0.05

BUILTIN_CONVERSATIONS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Explain recursion in one sentence.",
     "Recursion is when a function solves a problem by calling itself on a smaller part "
     "of the same problem."),
    ("What is 12 times 7?", "12 times 7 is 84."),
    ("Write a short greeting for a new colleague.",
     "Welcome to the team! We are glad to have you here."),
]


@dataclass
class Verification:
    """The fused model (as written) against base + adapter on held-out records."""
    source: str  # where the records came from
    records: int
    supervised_tokens: int
    compared_positions: int
    max_logit_diff: float
    loss_base: float
    loss_tuned: float
    loss_fused: float
    tokenizer_matches: bool  # the written tokenizer gives the same tokens

    @property
    def gain(self) -> float:
        return self.loss_base - self.loss_tuned

    @property
    def kept(self) -> float | None:
        """The share of the base -> tuned loss improvement the fused model keeps."""
        return (self.loss_base - self.loss_fused) / self.gain if self.gain > LOSS_FLOOR else None

    @property
    def lost_too_much(self) -> bool:
        change = self.loss_fused - self.loss_tuned
        return change > min(LOSS_CAP, max(LOSS_FLOOR, LOST_SHARE * max(self.gain, 0.0)))


# -- held-out records--------------------------------------------------------------------
@dataclass
class HeldOut:
    """The records verification runs on, tokenized and masked as training did."""
    records: list
    items: list  # Tokenized, with supervised tokens
    source: str
    masker: object  # mlxsft.masking.Masker with the base's tokenizer and the run's --mask
    notes: list[str]

    @classmethod
    def of(cls, adapter_dir: Path, adapter_config: dict, tokenizer,
           limit: int = MAX_RECORDS) -> HeldOut:
        """The run's validation split if it is still on disk, else built-in conversations."""
        records, source, notes = _held_out_records(adapter_dir, adapter_config, limit)
        masker = Masker(tokenizer, adapter_config.get("mask", "assistant"), MAX_TOKENS)
        items = encode_records(masker, records, skip_invalid=True).items
        if not items:
            raise UserError(f"{source}: no held-out record has supervised tokens to verify on")
        return cls(records, items, source, masker, notes)

    def texts(self) -> list[str]:
        """The records as rendered text, for checking a rebuilt tokenizer."""
        return [self.masker.render(r.messages) for r in self.records if r.messages]


def _held_out_records(adapter_dir: Path, adapter_config: dict, limit: int):
    """(records, the file's name (it goes into the published card), notes)."""
    notes = []
    for entry in adapter_config.get("data") or []:
        if entry.get("split") != "valid":
            continue
        path = local_data_file(adapter_dir, entry)
        if path is None or not path.is_file():
            notes.append(f"the run's validation data {path or entry.get('name')} is gone; "
                         "verifying on built-in prompts instead")
            break
        if entry.get("sha256") and file_sha256(path) != entry["sha256"]:
            notes.append(f"{path} has changed since training; verifying on it anyway")
        return read_jsonl(path, skip_invalid=True).records[:limit], path.name, notes
    records = [parse_record({"messages": [{"role": "user", "content": q},
                                          {"role": "assistant", "content": a}]},
                            "built-in", i + 1)
               for i, (q, a) in enumerate(BUILTIN_CONVERSATIONS)]
    return records, "built-in prompts", notes


def response_loss(model, items, tokenizer) -> float:
    """Mean NLL over the supervised tokens of `items`, as `mlxsft eval` computes it."""
    return mean_nll(model, items, 4, MAX_TOKENS, pad_id(tokenizer))[0]


def logits_on(model, items) -> list:
    """float32 logits (NumPy) of the first records' first tokens: enough positions to see a
    difference, few enough to hold one model's in memory while the next one loads."""
    out = []
    for item in items[:LOGIT_RECORDS]:
        logits = model(mx.array(item.tokens[:LOGIT_TOKENS])[None]).astype(mx.float32)
        out.append(np.array(logits[0]))
    return out


def release_model(loaded) -> None:
    loaded.model = None
    gc.collect()
    mx.clear_cache()


def _max_abs_diff(tuned_logits: list, fused_logits: list) -> float:
    import numpy as np

    # np.max, not max(): Python's max() can pass over a NaN, and a NaN must show.
    return float(np.max([np.abs(a - b).max() for a, b in zip(tuned_logits, fused_logits)]))


def verify_written(target: Path, held_out: HeldOut, loss_base: float, loss_tuned: float,
                   tuned_logits: list) -> Verification:
    """Load what was written, as a user would, and compare it with base + adapter."""
    written = load_model(str(target))
    to_compute_precision(written)
    written.model.eval()
    again = encode_records(Masker(written.tokenizer, held_out.masker.mode, MAX_TOKENS),
                           held_out.records, skip_invalid=True).items
    items = held_out.items  # the base's tokens, so the weights are compared on equal input
    fused_logits = logits_on(written.model, items)
    verification = Verification(
        held_out.source, len(items), sum(i.supervised_tokens for i in items),
        sum(len(x) for x in fused_logits),
        _max_abs_diff(tuned_logits, fused_logits),
        loss_base, loss_tuned, response_loss(written.model, items, written.tokenizer),
        [i.tokens for i in again] == [i.tokens for i in items])
    release_model(written)
    return verification
