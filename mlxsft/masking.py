"""Render records with the tokenizer's chat template into (tokens, loss_mask).

`loss_mask[t] == 1` means token t is a supervised target: the loss predicts it from
tokens < t. Token 0 is never a target. Masks are found in character space, which works
for any template without knowing its markup:

1. Render the whole conversation once. For each supervised assistant turn i, render
   ``messages[:i]`` with the generation prompt and ``messages[:i+1]`` without; the turn's
   span is the text between the two. Both must be prefixes of the whole rendering.
2. Trim the span's tail to the end of the first special token after the content (the
   template's end-of-turn token, e.g. ``<|im_end|>``, ``<|eot_id|>``, ``<end_of_turn>``)
   so the model learns to stop, but not the newline the template writes after it.
3. Tokenize the whole text with offsets and mark the tokens inside the spans. Check, as
   TRL does, that the tokens of the text before each boundary are a prefix of the whole
   token list; where the tokenizer merges across a boundary, tokenize the segments
   separately instead (method "segments"), which gives an exact mask.

If a template rewrites earlier turns (a rendered prefix is not a prefix of the whole),
each assistant content is found in the whole rendering instead (method "search"); if
that fails the record gets a `MaskingError`. Nothing is silently mis-masked.

Modes: ``assistant`` (every assistant turn), ``last`` (the final assistant turn),
``all`` (every token, like pretraining). Plain-text records are always all-supervised.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any, Sequence

from mlxsft.data import Record
from mlxsft.errors import UserError

MASK_MODES = ("assistant", "last", "all")

# Used when a tokenizer has no chat template (a base model): ChatML without special
# tokens of its own, so any tokenizer can render it. Documented in the README.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# With the default template the end of a turn is this literal text, not a special token.
_DEFAULT_END_OF_TURN = "<|im_end|>"


class MaskingError(UserError):
    """A record that cannot be rendered or masked exactly with this tokenizer."""


@dataclass
class Tokenized:
    """One record as tokens with its loss mask."""

    tokens: list[int]
    loss_mask: list[int]
    source: str
    line: int
    format: str
    method: str  # "prefix", "segments", "search", "all" or "text"
    truncated: bool = False
    untruncated_length: int = 0

    @property
    def supervised_tokens(self) -> int:
        return sum(self.loss_mask)


def _common_prefix_len(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def hf_tokenizer(tokenizer: Any) -> Any:
    """The Hugging Face tokenizer behind an mlx-lm `TokenizerWrapper` (or itself)."""
    # Checked by name: importing mlx_lm here would import mlx before the BLAS preload.
    if type(tokenizer).__name__ == "TokenizerWrapper":
        return tokenizer._tokenizer
    return tokenizer


class Masker:
    """Turns `Record`s into `Tokenized` for one tokenizer and mask mode."""

    def __init__(self, tokenizer: Any, mode: str = "assistant", max_seq_len: int | None = None):
        if mode not in MASK_MODES:
            raise UserError(f"--mask '{mode}' is not one of {', '.join(MASK_MODES)}")
        self.tokenizer = hf_tokenizer(tokenizer)
        self.mode = mode
        self.max_seq_len = max_seq_len
        self.warnings: list[str] = []
        self.chat_template = getattr(self.tokenizer, "chat_template", None)
        if not self.chat_template:
            self.chat_template = DEFAULT_CHAT_TEMPLATE
            self.warnings.append(
                "the tokenizer has no chat template; using mlxsft's default ChatML-style "
                "template (<|im_start|>role ... <|im_end|>). Pass a model with a chat "
                "template to train in its own format.")
        self.uses_default_template = self.chat_template is DEFAULT_CHAT_TEMPLATE
        # Special tokens are the candidates for a template's end-of-turn marker.
        self._special = sorted(
            {t for t in (getattr(self.tokenizer, "all_special_tokens", None) or []) if t}
            | {t.content for t in getattr(self.tokenizer, "added_tokens_decoder", {}).values()
               if getattr(t, "special", False) and t.content},
            key=len, reverse=True)
        if self.uses_default_template:
            self._special = [_DEFAULT_END_OF_TURN] + self._special

    # -- rendering -------------------------------------------------------------------
    def render(self, messages: list[dict], tools=None, add_generation_prompt=False,
               where: str = "") -> str:
        try:
            return self.tokenizer.apply_chat_template(
                messages, tools=tools, tokenize=False,
                add_generation_prompt=add_generation_prompt,
                chat_template=self.chat_template)
        except Exception as e:  # jinja's TemplateError, or the template's raise_exception
            raise MaskingError(f"{where}: the chat template failed on this record "
                               f"({type(e).__name__}: {e}); fix the record's roles or "
                               "use a model whose template accepts them") from None

    def _encode(self, text: str) -> list[int]:
        # The template writes any BOS itself; adding special tokens again would double it.
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _end_of_turn(self, text: str, start: int, stop: int) -> int:
        """End of the first special token in text[start:stop], else stop."""
        best = None
        for token in self._special:
            i = text.find(token, start, stop)
            if i >= 0 and (best is None or i < best[0]):
                best = (i, i + len(token))
        return best[1] if best else stop

    def _turn_span(self, full: str, lo: int, hi: int, content: str) -> tuple[int, int]:
        """The supervised part of full[lo:hi]: up to the end-of-turn after the content."""
        core = content.strip()
        at = full.find(core, lo, hi) if core else -1
        after = at + len(core) if at >= 0 else lo
        return lo, self._end_of_turn(full, after, hi)

    def _assistant_indices(self, messages: list[dict]) -> list[int]:
        idx = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        return idx[-1:] if self.mode == "last" else idx

    def _spans_by_prefix(self, record: Record, full: str) -> list[tuple[int, int]] | None:
        spans = []
        for i in self._assistant_indices(record.messages):
            before = self.render(record.messages[:i], record.tools, True, record.where)
            upto = self.render(record.messages[:i + 1], record.tools, False, record.where)
            # Some templates close the whole conversation differently from a turn
            # (Phi-3 appends EOS when there is no generation prompt), so `upto` need
            # only agree with the whole rendering through the end of this turn.
            hi = _common_prefix_len(upto, full)
            core = record.messages[i]["content"].strip()
            if not full.startswith(before) or (core and full.find(core, len(before), hi) < 0):
                return None
            spans.append(self._turn_span(full, len(before), hi, record.messages[i]["content"]))
        return spans

    def _spans_by_search(self, record: Record, full: str) -> list[tuple[int, int]]:
        spans, cursor = [], 0
        wanted = set(self._assistant_indices(record.messages))
        for i, message in enumerate(record.messages):
            core = message["content"].strip()
            if not core:
                continue
            at = full.find(core, cursor)
            if at < 0:
                if i in wanted:
                    raise MaskingError(
                        f"{record.where}: the chat template rewrites earlier turns and the "
                        f"content of messages[{i}] does not appear in the rendering, so its "
                        "loss mask cannot be found exactly; use --mask last or another "
                        "template")
                continue
            if i in wanted:
                spans.append((at, self._end_of_turn(full, at + len(core), len(full))))
            cursor = at + len(core)
        return spans

    # -- tokenizing ------------------------------------------------------------------
    def _tokens_for_spans(self, full: str, spans: Sequence[tuple[int, int]]):
        enc = self.tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        tokens, offsets = enc["input_ids"], enc["offset_mapping"]
        starts = [s for s, _ in offsets]
        boundaries = sorted({b for span in spans for b in span if 0 < b < len(full)})
        merged = False
        for b in boundaries:
            k = bisect.bisect_left(starts, b)
            if self._encode(full[:b]) != tokens[:k]:
                merged = True
                break
        if not merged:
            mask = [0] * len(tokens)
            for t, (s, e) in enumerate(offsets):
                if e > s and any(lo <= s and e <= hi for lo, hi in spans):
                    mask[t] = 1
            return tokens, mask, "prefix"
        # The tokenizer merges text across a prompt/response boundary: tokenize each
        # segment on its own so every token is wholly prompt or wholly response.
        tokens, mask, last = [], [], 0
        for lo, hi in spans:
            for piece, flag in ((full[last:lo], 0), (full[lo:hi], 1)):
                ids = self._encode(piece) if piece else []
                tokens += ids
                mask += [flag] * len(ids)
            last = hi
        tail = self._encode(full[last:]) if full[last:] else []
        return tokens + tail, mask + [0] * len(tail), "segments"

    def encode(self, record: Record) -> Tokenized:
        """Tokens and loss mask for one record (truncated to max_seq_len)."""
        if record.format == "text":
            tokens = list(self.tokenizer(record.text, add_special_tokens=True)["input_ids"])
            eos = self.tokenizer.eos_token_id
            if eos is not None and (not tokens or tokens[-1] != eos):
                tokens.append(eos)  # so the model also learns where a document ends
            mask, method = [1] * len(tokens), "text"
        else:
            full = self.render(record.messages, record.tools, False, record.where)
            if self.mode == "all":
                tokens, method = self._encode(full), "all"
                mask = [1] * len(tokens)
            else:
                spans = self._spans_by_prefix(record, full)
                method_override = None
                if spans is None:
                    spans, method_override = self._spans_by_search(record, full), "search"
                tokens, mask, method = self._tokens_for_spans(full, spans)
                method = method_override or method
        if mask:
            mask[0] = 0  # nothing predicts the first token
        n = len(tokens)
        truncated = self.max_seq_len is not None and n > self.max_seq_len
        if truncated:
            tokens, mask = tokens[:self.max_seq_len], mask[:self.max_seq_len]
        return Tokenized(tokens, mask, record.source, record.line, record.format, method,
                         truncated, n)


@dataclass
class EncodedSet:
    """A split's tokenized records, with those that carry no loss set aside."""

    items: list[Tokenized]
    zero_supervised: list[Tokenized]
    failed: list[MaskingError]

    @property
    def truncated(self) -> int:
        return sum(t.truncated for t in self.items + self.zero_supervised)


def encode_records(masker: Masker, records: Sequence[Record],
                   skip_invalid: bool = False) -> EncodedSet:
    """Encode records; records left with zero supervised tokens are excluded, not divided by."""
    items, zero, failed = [], [], []
    for record in records:
        try:
            item = masker.encode(record)
        except MaskingError as e:
            if not skip_invalid:
                raise
            failed.append(e)
            continue
        (items if item.supervised_tokens > 0 else zero).append(item)
    return EncodedSet(items, zero, failed)
