"""Render records with the tokenizer's chat template into (tokens, loss_mask).

`loss_mask[t] == 1` means token t is a supervised target: the loss predicts it from
tokens < t. Token 0 is never a target. Masks are found in character space, which works
for any template without knowing its markup:

1. Render the whole conversation once. For each supervised assistant turn i, render
   ``messages[:i]`` with the generation prompt (it must be a prefix of the whole: the
   turn starts where it ends) and ``messages[:i+1]`` without, or, for a template that
   renders the last message differently (Qwen3's empty think block), ``messages[:i+2]``;
   that rendering must agree with the whole one through the turn's end-of-turn token.
2. The span ends at the template's end-of-turn token after the content (``<|im_end|>``,
   ``<|eot_id|>``, ``<end_of_turn>``, ``</s>``...; learned once by rendering a probe
   reply), so the model learns to stop, but not the newline the template writes after it.
3. Tokenize the whole text with offsets and mark the tokens that start inside the spans
   (an rstrip token such as Phi-3's ``<|end|>`` also covers the newline after it). Check,
   as TRL does, that the tokens of the text before each boundary are a prefix of the whole
   token list; where the tokenizer merges across a boundary, tokenize the segments
   separately instead (method "segments"), and check that this gives back the same text
   and special tokens (a SentencePiece tokenizer that adds "▁" to every piece does not).

If a template rewrites earlier turns so that step 1 fails for a turn, that turn is found
by rendering the conversation again with its reply replaced by a marker: the text around
the marker must match the whole rendering, and the reply is what lies between (method
"search"). A turn that cannot be found either way gets a `MaskingError`. Nothing is
silently mis-masked.

Modes: ``assistant`` (every assistant turn), ``last`` (the final assistant turn),
``all`` (every token, like pretraining). Plain-text records are always all-supervised. An
assistant message's ``"train": true/false`` overrides the mode for that turn (with ``all``,
a ``false`` turn is the one span left out).

A supervised turn that calls tools must have its calls in the rendering: a template that
ignores ``tool_calls`` would train the turn as an empty reply, so it is a `MaskingError`.
The template and its switches come from `mlxsft.templates.TemplateChoice`.

Work is bounded by --max-seq-len: a rendering longer than CHARS_PER_TOKEN_BOUND characters
per token is cut before tokenizing (BPE merges are local, so the first max_seq_len tokens
are unchanged; checked by a margin, else the whole text is tokenized).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any, Sequence

from mlxsft.errors import UserError
from mlxsft.records import Record, escape_controls
from mlxsft.templates import TemplateChoice, apply_thinking

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
# Stands in for a reply when a rewriting template's rendering is searched for it.
_MARKER = "mlxsftReplyMarker"
# No tokenizer we know averages more than 16 characters per token over a long text; a
# record 50 MB long is then cut to 16 x max_seq_len characters before tokenizing instead
# of costing minutes and gigabytes for tokens that truncation throws away.
CHARS_PER_TOKEN_BOUND = 16
# The cut text must give this many tokens past max_seq_len, so a token merged across the
# cut lies beyond what is kept; otherwise the whole text is tokenized.
_CUT_MARGIN = 16


class MaskingError(UserError):
    """A record that cannot be rendered or masked exactly with this tokenizer. The
    message may quote the data or the template's error, so control characters are
    escaped."""

    def __init__(self, message: str):
        super().__init__(escape_controls(message, keep=""))


@dataclass
class Tokenized:
    """One record as tokens with its loss mask."""

    tokens: list[int]
    loss_mask: list[int]
    source: str
    line: int
    format: str
    method: str  # "prefix", "segments", "search", "search+segments", "all" or "text"
    truncated: bool = False
    untruncated_length: int = 0  # at least this many: a capped record was cut first
    capped: bool = False  # cut to CHARS_PER_TOKEN_BOUND * max_seq_len characters first

    @property
    def supervised_tokens(self) -> int:
        return sum(self.loss_mask)


def hf_tokenizer(tokenizer: Any) -> Any:
    """The Hugging Face tokenizer behind an mlx-lm `TokenizerWrapper` (or itself)."""
    # Checked by name: importing mlx_lm here would import mlx before the BLAS preload.
    if type(tokenizer).__name__ == "TokenizerWrapper":
        return tokenizer._tokenizer
    return tokenizer


class Masker:
    """Turns `Record`s into `Tokenized` for one tokenizer and mask mode."""

    def __init__(self, tokenizer: Any, mode: str = "assistant", max_seq_len: int | None = None,
                 template: TemplateChoice | None = None):
        if mode not in MASK_MODES:
            raise UserError(f"--mask '{mode}' is not one of {', '.join(MASK_MODES)}")
        self.tokenizer = hf_tokenizer(tokenizer)
        self.mode = mode
        self.max_seq_len = max_seq_len
        self.warnings: list[str] = []
        self.template = template or TemplateChoice()
        own = getattr(self.tokenizer, "chat_template", None)
        own = own if isinstance(own, str) and own else None
        if own is None and self.template.template is None:
            own = DEFAULT_CHAT_TEMPLATE
            self.warnings.append(
                "the tokenizer has no chat template; using mlxsft's default ChatML-style "
                "template (<|im_start|>role ... <|im_end|>). Pass a model with a chat "
                "template to train in its own format.")
        # The template before --template-kwarg is baked in, for what the adapter saves.
        self._base_template = own
        self.chat_template = self.template.effective(own) or own
        # mlxsft's default (kwargs baked in or not) ends turns with literal text.
        self.uses_default_template = own is DEFAULT_CHAT_TEMPLATE and self.template.template is None
        # Special tokens are the candidates for a template's end-of-turn marker.
        self._special = sorted(
            {t for t in (getattr(self.tokenizer, "all_special_tokens", None) or []) if t}
            | {t.content for t in getattr(self.tokenizer, "added_tokens_decoder", {}).values()
               if getattr(t, "special", False) and t.content},
            key=len, reverse=True)
        if self.uses_default_template:
            self._special = [_DEFAULT_END_OF_TURN] + self._special
        self._eot = self._probe_end_of_turn()

    @property
    def end_of_turn(self) -> str | None:
        """The special token the chat template ends an assistant reply with, if any."""
        return self._eot

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

    def _probe_end_of_turn(self) -> str | None:
        """The special token this template writes right after an assistant reply, found by
        rendering a one-turn probe. A turn that starts with another special token (Mistral
        writes a tool call as "[TOOL_CALLS][...]</s>") still ends at this one."""
        probe = "mlxsft-probe-reply"
        for messages in ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": probe}],
                         [{"role": "system", "content": "hi"}, {"role": "user", "content": "hi"},
                          {"role": "assistant", "content": probe}]):
            try:
                text = self.tokenizer.apply_chat_template(
                    messages, tokenize=False, chat_template=self.chat_template)
            except Exception:
                continue
            at = text.find(probe)
            if at < 0:
                continue
            end = self._first_special_end(text, at + len(probe), len(text))
            if end is not None:
                return next(t for t in self._special if text.endswith(t, 0, end))
        return None

    def _end_of_turn(self, text: str, start: int, stop: int) -> int:
        """End of the template's end-of-turn token in text[start:stop], else of the
        first special token there, else stop."""
        if self._eot:
            i = text.find(self._eot, start, stop)
            if i >= 0:
                return i + len(self._eot)
        end = self._first_special_end(text, start, stop)
        return stop if end is None else end

    def _first_special_end(self, text: str, start: int, stop: int) -> int | None:
        best = None
        for token in self._special:
            i = text.find(token, start, stop)
            if i >= 0 and (best is None or i < best[0]):
                best = (i, i + len(token))
        return best[1] if best else None

    def saved_template(self) -> dict:
        """What adapter_config.json records so chat, eval and fuse render alike."""
        return self.template.saved(self._base_template)

    def supervised_turns(self, messages: list[dict]) -> list[int]:
        """The assistant turns that carry loss: the mode's, then each message's "train"."""
        idx = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        chosen = set(idx if self.mode != "last" else idx[-1:])
        for i in idx:
            if messages[i].get("train") is not None:
                (chosen.add if messages[i]["train"] else chosen.discard)(i)
        return sorted(chosen)

    def prepared(self, record: Record) -> Record:
        """The record as it is rendered: reasoning handled as --thinking says."""
        if not record.messages or self.template.thinking == "keep":
            return record
        return Record(record.source, record.line, record.format,
                      apply_thinking(record.messages, self.template.thinking), record.tools,
                      record.text)

    def tool_calls_not_rendered(self, record: Record) -> list[int]:
        """Indices of messages whose tool calls the template leaves out of the rendering
        (the rendering is the same with the calls removed)."""
        found = []
        full = None
        for i, message in enumerate(record.messages):
            if not message.get("tool_calls"):
                continue
            full = full if full is not None else self.render(record.messages, record.tools,
                                                             False, record.where)
            without = list(record.messages)
            without[i] = {k: v for k, v in message.items() if k != "tool_calls"}
            if self.render(without, record.tools, False, record.where) == full:
                found.append(i)
        return found

    def _check_tool_calls(self, record: Record, turns: Sequence[int]) -> None:
        for i in self.tool_calls_not_rendered(record):
            if i not in turns:
                continue
            names = ", ".join(str(c["function"].get("name")) for c in record.messages[i]["tool_calls"])
            what = "its text alone" if record.messages[i]["content"].strip() else "an empty reply"
            raise MaskingError(
                f"{record.where}: messages[{i}] calls tools ({names}) but the chat template "
                f"does not render tool_calls, so the turn would train as {what}; use a template "
                "that renders tool calls (--chat-template) or mark the turn \"train\": false")

    def spans(self, record: Record, full: str, turns: Sequence[int]):
        """({turn: (start, end) in full}, "search" if any needed the search, else None)."""
        found, how = self._spans_by_prefix(record, full, turns), None
        missing = [i for i, span in found.items() if span is None]
        if missing:  # the turns the prefix method could not find
            found.update(zip(missing, self._spans_by_search(record, full, missing)))
            how = "search"
        return found, how

    def _spans_by_prefix(self, record: Record, full: str,
                         turns: Sequence[int]) -> dict[int, tuple[int, int] | None]:
        """Each wanted turn's span, or None where the prefix method cannot find it."""
        spans = {}
        messages = record.messages
        for i in turns:
            spans[i] = None
            try:
                before = self.render(messages[:i], record.tools, True, record.where)
            except MaskingError:
                if i:
                    raise
                continue  # a template that cannot render an empty conversation: search
            if not full.startswith(before):
                continue
            span = None
            # The turn as the template renders it when it closes the conversation and,
            # failing that, when the next message follows it: some templates render the
            # last message differently (Qwen3 adds an empty <think> block to it, Phi-3
            # appends EOS), so one of the two must agree with the whole rendering through
            # the end-of-turn marker that closes this turn, or the turn is not found here.
            for upto_messages in (messages[:i + 1], messages[:i + 2]):
                upto = self.render(upto_messages, record.tools, False, record.where)
                span = self._turn_in(upto, full, len(before), messages[i]["content"])
                if span or len(upto_messages) == len(messages):
                    break
            spans[i] = span
        return spans

    def _turn_in(self, upto: str, full: str, lo: int, content: str) -> tuple[int, int] | None:
        """The turn starting at `lo` in `upto` (a rendering that ends with or just after
        it), if `full` agrees with `upto` through the turn's end-of-turn marker."""
        core = content.strip()
        at = upto.find(core, lo) if core else lo
        # Not found, or found only after a special token (in a later message).
        if at < 0 or self._end_of_turn(upto, lo, at) < at:
            return None
        end = self._end_of_turn(upto, at + len(core), len(upto))
        if upto[:end] != full[:end]:  # a C comparison: records may be megabytes long
            return None
        return lo, end

    def _spans_by_search(self, record: Record, full: str, turns: Sequence[int]) -> list[tuple[int, int]]:
        """For a template that rewrites earlier turns: each reply is located by rendering
        the conversation again with that reply replaced by a marker. Everything before
        and after the marker must match the whole rendering, and the reply is what lies
        between, however the template rewrote it (a reasoning block cut, a reply
        trimmed) and whatever it contains: no text search that could land on a role
        header or a special token's text equal to the reply."""
        spans = []
        messages = record.messages
        for i in turns:
            marked = list(messages)
            marked[i] = {**messages[i], "content": _MARKER}
            text = self.render(marked, record.tools, False, record.where)
            at = text.find(_MARKER)
            head, tail = text[:at], text[at + len(_MARKER):]
            if (at < 0 or _MARKER in tail or not full.startswith(head) or not full.endswith(tail)
                    or len(head) + len(tail) > len(full)):
                raise MaskingError(
                    f"{record.where}: the chat template rewrites earlier turns and "
                    f"messages[{i}] cannot be located in the rendering (the template renders "
                    "the rest of the conversation differently around it, or does not render "
                    "its content, as for a turn that only calls tools), so its loss mask "
                    "cannot be found exactly; use --mask last or another template")
            start, end = len(head), len(full) - len(tail)
            spans.append((self._reply_start(record, i, full, start),
                          self._end_of_turn(full, end, len(full))))
        return spans

    def _reply_start(self, record: Record, i: int, full: str, at: int) -> int:
        """Where turn i's reply starts, its content being rendered at `at`: after this
        turn's generation prompt, as in the prefix method (Qwen3 writes a think block
        between the two), or, for a template without one, after the special token that
        only whitespace separates from the content (Mistral's "[/INST] reply")."""
        messages = record.messages
        try:
            bare = self.render(messages[:i], record.tools, False, record.where)
            prompt = self.render(messages[:i], record.tools, True, record.where)
        except MaskingError:
            if i:
                raise
            # An assistant-first conversation (transformers renders no empty one): learn
            # the generation prompt from a one-message conversation instead.
            probe = [{"role": "user", "content": "mlxsft-probe"}]
            try:
                bare = self.render(probe, record.tools, False, record.where)
                prompt = self.render(probe, record.tools, True, record.where)
            except MaskingError:
                bare = prompt = ""
        gen = prompt[len(bare):] if prompt.startswith(bare) else ""
        if gen:
            g = full.rfind(gen, 0, at)
            if g >= 0 and self._end_of_turn(full, g + len(gen), at) == at:
                return g + len(gen)
            return at
        j = at
        while j > 0 and full[j - 1].isspace():
            j -= 1
        return j if any(full.endswith(t, 0, j) for t in self._special) else at

    # -- tokenizing ------------------------------------------------------------------
    def _tokens_for_spans(self, full: str, spans: Sequence[tuple[int, int]], where: str = ""):
        enc = self.tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        tokens, offsets = enc["input_ids"], enc["offset_mapping"]
        natural = tokens
        starts = [s for s, _ in offsets]
        boundaries = sorted({b for span in spans for b in span if 0 < b < len(full)})
        merged = False
        for b in boundaries:
            k = bisect.bisect_left(starts, b)
            if self._encode(full[:b]) != tokens[:k]:
                merged = True
                break
        if not merged:
            # A token belongs to the span it starts in. Its end may pass the span's end
            # only as an added token with rstrip=True (Phi-3's <|end|> takes the "\n"
            # after it); a real merge across the boundary failed the check above.
            mask = [0] * len(tokens)
            for t, (s, e) in enumerate(offsets):
                if e > s and any(lo <= s < hi for lo, hi in spans):
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
        tokens, mask = tokens + tail, mask + [0] * len(tail)
        # Exact only if the pieces tokenize to the same text with the same special and
        # added tokens: a SentencePiece tokenizer that prepends "▁" to every piece, or a
        # span edge inside a special token's text, would silently change the sequence.
        added = set(getattr(self.tokenizer, "added_tokens_decoder", {}) or {})
        if ([t for t in tokens if t in added] != [t for t in natural if t in added]
                or self.tokenizer.decode(tokens) != self.tokenizer.decode(natural)):
            raise MaskingError(
                f"{where}: the tokenizer merges text across a prompt/response boundary and "
                "tokenizing the two sides separately does not give back the same text, so "
                "the loss mask cannot be made exact; use --mask all or another template")
        return tokens, mask, "segments"

    def _bounded(self, text: str, tokenize):
        """tokenize(text) -> (tokens, mask, method), on the text cut to
        CHARS_PER_TOKEN_BOUND characters per token of max_seq_len when that provably keeps
        the first max_seq_len tokens; (result, whether it was cut)."""
        if self.max_seq_len is not None:
            limit = CHARS_PER_TOKEN_BOUND * self.max_seq_len
            if len(text) > limit:
                result = tokenize(text[:limit])
                if len(result[0]) >= self.max_seq_len + _CUT_MARGIN:
                    return result, True
        return tokenize(text), False

    def _text_tokens(self, text: str):
        tokens = list(self.tokenizer(text, add_special_tokens=True)["input_ids"])
        eos = self.tokenizer.eos_token_id
        if eos is not None and (not tokens or tokens[-1] != eos):
            tokens.append(eos)  # so the model also learns where a document ends
        return tokens, [1] * len(tokens), "text"

    def _chat_tokens(self, record: Record, full: str, spans: dict, how: str | None,
                     invert: bool):
        def tokenize(text: str):
            clipped = [(lo, min(hi, len(text))) for _, (lo, hi) in sorted(spans.items())
                       if lo < len(text)]
            tokens, mask, method = self._tokens_for_spans(text, clipped, record.where)
            if invert:  # --mask all with "train": false turns: those spans are left out
                mask = [1 - m for m in mask]
                method = "all"
            if how:  # keep "segments" visible: data check reports both
                method = how if method in ("prefix", "all") else f"{how}+{method}"
            return tokens, mask, method
        return self._bounded(full, tokenize)

    def encode(self, record: Record) -> Tokenized:
        """Tokens and loss mask for one record (truncated to max_seq_len)."""
        record = self.prepared(record)
        if record.format == "text":
            (tokens, mask, method), capped = self._bounded(record.text, self._text_tokens)
        else:
            full = self.render(record.messages, record.tools, False, record.where)
            if self.mode == "all":
                off = [i for i, m in enumerate(record.messages)
                       if m["role"] == "assistant" and m.get("train") is False]
                if off:
                    found, how = self.spans(record, full, off)
                    (tokens, mask, method), capped = self._chat_tokens(record, full, found,
                                                                       how, True)
                else:
                    def tokenize(text):
                        ids = self._encode(text)
                        return ids, [1] * len(ids), "all"
                    (tokens, mask, method), capped = self._bounded(full, tokenize)
            else:
                turns = self.supervised_turns(record.messages)
                self._check_tool_calls(record, turns)
                found, how = self.spans(record, full, turns)
                (tokens, mask, method), capped = self._chat_tokens(record, full, found, how,
                                                                   False)
        if mask:
            mask[0] = 0  # nothing predicts the first token
        n = len(tokens)
        truncated = self.max_seq_len is not None and n > self.max_seq_len
        if truncated:
            tokens, mask = tokens[:self.max_seq_len], mask[:self.max_seq_len]
        return Tokenized(tokens, mask, record.source, record.line, record.format, method,
                         truncated, n, capped)


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
