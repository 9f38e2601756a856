"""Response-only mean NLL (and perplexity) of a model, with or without an adapter.

The same masking as training, so base and tuned models are compared on exactly the
tokens the fine-tune supervised: sum of NLL over supervised tokens / their count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import mlx.core as mx

from mlxsft.adapters import load_for_inference
from mlxsft.batching import iterate_batches, pad_id
from mlxsft.checkpoints import read_adapter_config
from mlxsft.data import load_splits
from mlxsft.errors import UserError
from mlxsft.loss import masked_nll_sum
from mlxsft.masking import Masker, Tokenized, encode_records
from mlxsft.templates import TemplateChoice

if TYPE_CHECKING:
    from mlxsft.answers import AnswerScore


def mean_nll(model, items: Sequence[Tokenized], batch_size: int, max_seq_len: int,
             pad_id: int = 0, max_batches: int = -1, loss=None) -> tuple[float, int]:
    """(mean NLL over all supervised tokens, their count), batches in length order.

    `loss` is the training step's `mlxsft.loss.SupervisedLoss` when there is one (the
    same numbers, without logits at every position); otherwise full logits."""
    total, count = nll_sums(model, items, batch_size, max_seq_len, pad_id, max_batches, loss)
    return (total / count if count else float("nan")), count


def nll_sums(model, items: Sequence[Tokenized], batch_size: int, max_seq_len: int,
             pad_id: int = 0, max_batches: int = -1, loss=None,
             shard: tuple[int, int] = (0, 1)) -> tuple[float, int]:
    """(NLL summed over supervised tokens, their count): `mean_nll` before the division;
    with `shard`, over this rank's share of each batch (a data-parallel run sums them)."""
    total, count = 0.0, 0
    for i, batch in enumerate(iterate_batches(items, batch_size, max_seq_len, shuffle=False,
                                              pad_id=pad_id, loop=False, shard=shard)):
        if 0 <= max_batches <= i:
            break
        if loss is not None:
            s, n = loss(model, *loss.arrays(batch), gradient=False)
        else:
            s, n = masked_nll_sum(model, mx.array(batch.tokens), mx.array(batch.loss_mask))
        mx.eval(s, n)
        total += s.item()
        count += int(n.item())
    return total, count


@dataclass
class EvalResult:
    data: str
    model: str
    adapter: str | None
    records: int
    supervised_tokens: int
    loss: float
    answers: AnswerScore | None = None  # generated replies judged, with --answers

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss) if self.loss < 700 else float("inf")

    def to_json(self) -> dict:
        out = {"data": self.data, "model": self.model, "adapter": self.adapter,
               "records": self.records, "supervised_tokens": self.supervised_tokens,
               "loss": self.loss, "perplexity": self.perplexity}
        if self.answers is not None:
            out["answers"] = self.answers.to_json()
        return out


def evaluate_data(data: str, model: str | None = None, adapter: str | None = None,
                  mask: str = "assistant", max_seq_len: int = 1024, batch_size: int = 4,
                  skip_invalid: bool = False, loaded=None, answers: int = 0,
                  match: str = "exact") -> EvalResult:
    """Load the model (+ adapter), mask the data as training does, and average the NLL;
    with `answers`, also generate replies to that many held-out records and judge them
    (`mlxsft.answers`)."""
    loaded = loaded or load_for_inference(model, adapter)
    splits = load_splits(data, skip_invalid)
    # A data directory is evaluated on its held-out split when it has one.
    split = splits.get("valid") or splits.get("test") or splits["train"]
    # An adapter trained with --thinking strip-history/off is evaluated on the same text.
    thinking = read_adapter_config(adapter).get("thinking", "keep") if adapter else "keep"
    masker = Masker(loaded.tokenizer, mask, max_seq_len, TemplateChoice(thinking=thinking))
    encoded = encode_records(masker, split.records, skip_invalid)
    if not encoded.items:
        raise UserError(f"{split.path}: no record has supervised tokens to evaluate")
    loaded.model.eval()
    loss, n = mean_nll(loaded.model, encoded.items, batch_size, max_seq_len,
                       pad_id(loaded.tokenizer))
    if not math.isfinite(loss):
        what = f"{loaded.source} + {adapter}" if adapter else loaded.source
        raise UserError(f"{split.path}: the loss of {what} is {loss} (non-finite): the model "
                        "produces NaN or infinite logits on this data; check its weights")
    result = EvalResult(split.path, loaded.source, adapter, len(encoded.items), n, loss)
    if answers:
        from mlxsft.answers import score_answers

        try:
            result.answers = score_answers(loaded, split.records, match, answers)
        except ValueError as e:
            raise UserError(f"{split.path}: {e}") from None
        if not result.answers.answered:
            raise UserError(f"{split.path}: --answers needs records that end with an "
                            "assistant turn (the reference answer)")
    return result
