"""Response-only cross-entropy: summed over supervised tokens, divided by their count.

The mask is data (see `mlxsft.masking`); the loss only multiplies by it. Sums and
counts are returned separately so gradient accumulation and evaluation can weight by
tokens: the loss of an accumulated batch is the mean over all its supervised tokens,
not the mean of per-micro-batch means.

In SFT most positions carry no loss (a chat prompt is context, not a target), yet the
LM head and its float32 logits over the whole vocabulary are the largest allocation of
a step. `SupervisedLoss` therefore runs the model's body, gathers the final hidden
states at the supervised positions only, and applies the head there (the final norm and
any logit soft-capping act per position, so they commute with the gather). The
cross-entropy is computed in row chunks, each recomputed in the backward pass, so no
rows x vocabulary array exists whole. With a frozen head (LoRA) nothing is recomputed:
each chunk's gradient with respect to its hidden states is taken in the forward pass,
right after its logits (`fused_nll`). Whether a model's head can be separated is not
assumed: it is checked once on the model itself against its own full forward pass, and
a model that fails falls back to full logits (with one note saying so).

Packed rows (`mlxsft.batching`, --pack) carry a segment id per position; attention is
then block-diagonal causal, passed to mlx-lm's models through a cache object's
`make_mask`, so no record attends to another.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

# Rows per cross-entropy chunk are chosen so one chunk's logits hold about this many
# floats (128 MB); a smaller head is computed in one piece, with no recomputation.
CHUNK_ELEMENTS = 1 << 25
# With a frozen head (`fused_nll`) chunks cost nothing extra: 16 MB of logits at a time.
FUSED_CHUNK_ELEMENTS = 1 << 22


def masked_nll_sum(model, tokens: mx.array, loss_mask: mx.array) -> tuple[mx.array, mx.array]:
    """(sum of per-token NLL over supervised targets, number of supervised targets).

    tokens and loss_mask are (B, L); position t of the mask says whether token t is a
    target, predicted from tokens < t, so inputs are tokens[:, :-1] and targets
    tokens[:, 1:]. This is the plain full-logit computation (evaluation, fallback).
    """
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    mask = loss_mask[:, 1:].astype(mx.float32)
    logits = model(inputs).astype(mx.float32)
    nll = nn.losses.cross_entropy(logits, targets)
    return (nll * mask).sum(), mask.sum()


def masked_mean_loss(model, tokens: mx.array, loss_mask: mx.array) -> mx.array:
    """The mean NLL over supervised tokens of one batch (0 when there are none)."""
    total, count = masked_nll_sum(model, tokens, loss_mask)
    return total / mx.maximum(count, 1)


# -- attention masks for packed rows ---------------------------------------------------
class SegmentMask:
    """A stand-in for an mlx-lm KV cache that only supplies the attention mask.

    mlx-lm's models build their mask with `create_attention_mask(h, cache[0])`, which
    asks `cache.make_mask` when there is one; keys and values pass through unchanged and
    positions start at 0, exactly as with no cache.
    """

    offset = 0

    def __init__(self, segments: mx.array):
        self.segments = segments  # (B, L) record id per position

    def update_and_fetch(self, keys, values):
        return keys, values

    def make_mask(self, n: int, return_array: bool = False, window_size: int | None = None):
        return block_causal_mask(self.segments, window_size)


def block_causal_mask(segments: mx.array, window_size: int | None = None) -> mx.array:
    """(B, 1, L, L) bool: query i sees key j when j <= i and both are in one record."""
    n = segments.shape[1]
    i = mx.arange(n)[:, None]
    j = mx.arange(n)[None, :]
    allowed = j <= i
    if window_size:
        allowed = allowed & (i - j < window_size)
    same = segments[:, :, None] == segments[:, None, :]
    return (same & allowed)[:, None]


def _cache_for(model, segments):
    if segments is None:
        return None
    return [SegmentMask(segments) for _ in range(len(model.layers))]


# -- the head, separated from the body -------------------------------------------------
class _Given:
    """Stands in for the model's body inside its own `__call__`: returns given states."""

    def __init__(self, body, hidden):
        self._body, self._hidden = body, hidden

    def __call__(self, *args, **kwargs):
        return self._hidden

    def __getattr__(self, name):
        return getattr(self._body, name)


class _HeadOnly:
    """The model with its body replaced by `_Given`, so `Model.__call__` runs only the
    head (LM head or tied embedding, soft-capping, whatever the architecture does)."""

    def __init__(self, model, body_name, given):
        self.__dict__.update(_model=model, _body_name=body_name, _given=given)

    def __getattr__(self, name):
        if name == self._body_name:
            return self._given
        return getattr(self._model, name)


def _body_name(model) -> str | None:
    for name in ("model", "transformer"):
        try:
            body = getattr(model, name)
        except AttributeError:
            continue
        if isinstance(body, nn.Module) and hasattr(body, "layers"):
            return name
    return None


def run_body(model, body_name: str, inputs: mx.array, segments=None) -> mx.array:
    cache = _cache_for(model, segments)
    body = getattr(model, body_name)
    return body(inputs) if cache is None else body(inputs, cache=cache)


def run_head(model, body_name: str, hidden: mx.array) -> mx.array:
    """Float32 logits (K, V) for hidden states (K, D) through the model's own head code
    (which sees them as one row of K positions)."""
    proxy = _HeadOnly(model, body_name, _Given(getattr(model, body_name), hidden[None]))
    dummy = mx.zeros((1, hidden.shape[0]), mx.int32)
    # squeeze, not [0]: indexing copies the whole (K, V) logits on MLX's CPU backend.
    logits = type(model).__call__(proxy, dummy).squeeze(0)
    return logits if logits.dtype == mx.float32 else logits.astype(mx.float32)


def separable_head(model) -> tuple[str | None, str | None]:
    """(body attribute name, None) when logits = head(body(x)) position by position on
    this very model, else (None, why not). Checked against the model's full forward on
    a short random input, in eval mode so dropout does not blur the comparison."""
    name = _body_name(model)
    if name is None:
        return None, "no separate transformer body (model.model / model.transformer)"
    was_training = model.training
    model.eval()
    try:
        vocab = getattr(getattr(model, "args", None), "vocab_size", None) or 256
        x = mx.array(np.random.default_rng(0).integers(0, vocab, (2, 9)), mx.int32)
        full = model(x).astype(mx.float32)
        hidden = run_body(model, name, x)
        pick = mx.array([1, 4, 10, 17], mx.int32)
        flat = hidden.reshape(-1, hidden.shape[-1])[pick]
        split = run_head(model, name, flat)
        want = full.reshape(-1, full.shape[-1])[pick]
        if split.shape != want.shape:
            return None, f"its head returned shape {split.shape}, expected {want.shape}"
        scale = float(mx.abs(want).max().item()) or 1.0
        err = float(mx.abs(split - want).max().item())
        if not err <= 1e-4 * max(scale, 1.0):
            return None, f"the head applied to gathered states differs by {err:.2g}"
        return name, None
    except Exception as e:  # any architecture whose __call__ does more than body + head
        return None, f"{type(e).__name__}: {str(e)[:120]}"
    finally:
        model.train(was_training)


def packing_problem(model) -> str | None:
    """None when a record packed after another gets exactly its unpacked logits on this
    model (attention by relative position, nothing carried along the row), else why not.
    Learned absolute positions (GPT-2 style) and recurrent/state-space layers fail."""
    was_training = model.training
    model.eval()
    try:
        vocab = getattr(getattr(model, "args", None), "vocab_size", None) or 256
        rng = np.random.default_rng(1)
        first, second = rng.integers(0, vocab, 5), rng.integers(0, vocab, 7)
        # Two rows with different layouts: a model that broadcasts a per-row mask
        # wrongly (e.g. over grouped-query heads) fails here as well.
        rows = mx.array(np.stack([np.concatenate([first, second, [0, 0]]),
                                  np.concatenate([second, first, [0, 0]])]), mx.int32)
        segments = mx.array([[1] * 5 + [2] * 7 + [0, 0], [1] * 7 + [2] * 5 + [0, 0]], mx.int32)
        packed = model(rows, cache=_cache_for(model, segments)).astype(mx.float32)
        for got, alone in ((packed[0, 5:12], second), (packed[1, 7:12], first)):
            want = model(mx.array(alone[None], mx.int32))[0].astype(mx.float32)
            err = float(mx.abs(got - want).max().item())
            if not err <= 1e-4 * max(float(mx.abs(want).max().item()), 1.0):
                return f"a packed record's logits differ from its own by {err:.2g}"
        return None
    except Exception as e:
        return f"{type(e).__name__}: {str(e)[:120]}"
    finally:
        model.train(was_training)


def chunk_rows(vocab: int, rows: int, elements: int | None = None) -> int:
    return max(1, min(rows, (elements or CHUNK_ELEMENTS) // max(vocab, 1)))


def head_is_frozen(model, body_name: str) -> bool:
    """True when every trainable parameter is inside the body's layers (LoRA, DoRA): the
    head (LM head, tied embedding, final norm) then takes no gradient."""
    inside = f"{body_name}.layers."
    return all(name.startswith(inside) for name, _ in tree_flatten(model.trainable_parameters()))


class SupervisedLoss:
    """The training step's loss: `loss(model, *loss.arrays(batch))` -> (NLL sum, count).

    Gathers supervised positions before the head when the model's head separates (see
    the module docstring), otherwise computes full logits; `note` says which, once.
    With a frozen head (LoRA) the head's cross-entropy gradient is computed in the
    forward pass (`fused_nll`); pass `gradient=False` when none is taken (evaluation).
    """

    def __init__(self, model):
        self.body_name, why = separable_head(model)
        self.vocab = getattr(getattr(model, "args", None), "vocab_size", None) or 0
        self.note = (None if self.body_name else
                     f"loss: computing logits at every position (the LM head of "
                     f"{type(model).__module__.split('.')[-1]} could not be separated: {why})")

    @property
    def gathered(self) -> bool:
        return self.body_name is not None

    def arrays(self, batch) -> tuple:
        """What the compiled step passes to `__call__` for one `Batch`."""
        segments = None if batch.segments is None else mx.array(batch.segments)
        if not self.gathered:
            return mx.array(batch.tokens), mx.array(batch.loss_mask), segments
        positions, targets, weights = batch.supervised_positions()
        return (mx.array(batch.tokens), mx.array(positions), mx.array(targets),
                mx.array(weights), segments)

    def __call__(self, model, *arrays, gradient: bool = True):
        if not self.gathered:
            tokens, loss_mask, segments = arrays
            inputs, targets = tokens[:, :-1], tokens[:, 1:]
            mask = loss_mask[:, 1:].astype(mx.float32)
            cache = _cache_for(model, None if segments is None else segments[:, :-1])
            logits = (model(inputs) if cache is None else model(inputs, cache=cache))
            nll = nn.losses.cross_entropy(logits.astype(mx.float32), targets)
            return (nll * mask).sum(), mask.sum()
        tokens, positions, targets, weights, segments = arrays
        hidden = run_body(model, self.body_name, tokens[:, :-1],
                          None if segments is None else segments[:, :-1])
        picked = hidden.reshape(-1, hidden.shape[-1])[positions]
        if gradient and head_is_frozen(model, self.body_name):
            nll = fused_nll(model, self.body_name, picked, targets, self.vocab)
        else:
            nll = self._chunked_nll(model, picked, targets)
        # The count is summed once: mlx 0.32.4's compiler miscounted a mask summed twice.
        return (nll * weights).sum(), weights.sum()

    def _chunked_nll(self, model, hidden: mx.array, targets: mx.array) -> mx.array:
        rows = hidden.shape[0]
        step = chunk_rows(self.vocab, rows)
        name = self.body_name

        def nll(h, t):
            return nn.losses.cross_entropy(run_head(model, name, h), t)

        if step >= rows:
            return nll(hidden, targets)

        # Each chunk's logits are recomputed in the backward pass instead of being kept,
        # so at most one chunk of rows x vocabulary is alive. The trainable parameters
        # are passed explicitly: a checkpointed function differentiates its inputs only.
        def chunk(params, h, t):
            model.update(params)
            return nll(h, mx.stop_gradient(t))  # token ids: nothing to differentiate

        checkpointed = mx.checkpoint(chunk)
        params = model.trainable_parameters()
        parts = [checkpointed(params, hidden[i:i + step], targets[i:i + step])
                 for i in range(0, rows, step)]
        return mx.concatenate(parts)


def fused_nll(model, body_name: str, hidden: mx.array, targets: mx.array,
              vocab: int) -> mx.array:
    """Per-row NLL of hidden states (K, D) through a frozen head, whose gradient with
    respect to `hidden` is computed in the forward pass, one chunk of rows at a time.

    Row i's gradient is (softmax(z_i) - onehot(t_i)) pulled back through the head (its
    own vjp: W for a linear head); it needs only that chunk's logits z, so it is taken
    while they exist and the backward pass just scales the stored (K, D) gradient by each
    row's cotangent. No logits are kept for the backward pass and none are recomputed
    (the head's matmuls are the ones the plain backward does). Each chunk waits for the
    previous one (`mx.depends`): MLX would otherwise run them side by side, all their
    logits alive at once. The head's parameters get no gradient: only for a frozen head.
    """
    rows = hidden.shape[0]
    step = chunk_rows(vocab, rows, FUSED_CHUNK_ELEMENTS)

    def head(h):
        return run_head(model, body_name, h)

    @mx.custom_function
    def nll_and_gradient(h, t):
        nlls, grads = [], []
        for i in range(0, rows, step):
            h_i, t_i = h[i:i + step], t[i:i + step]
            if grads:
                h_i = mx.depends(h_i, grads[-1])
            logits = head(h_i)
            lse = mx.logsumexp(logits, axis=-1, keepdims=True)
            nlls.append((lse - mx.take_along_axis(logits, t_i[:, None], -1))[:, 0])
            # softmax - onehot in one fused elementwise pass (the step is compiled).
            d_logits = mx.exp(logits - lse) - (mx.arange(logits.shape[-1]) == t_i[:, None])
            grads.append(mx.vjp(head, [h_i], [d_logits])[1][0])
        return mx.concatenate(nlls), mx.concatenate(grads)

    @nll_and_gradient.vjp
    def _scaled(primals, cotangents, outputs):
        return cotangents[0][:, None] * outputs[1], mx.zeros_like(primals[1])

    return nll_and_gradient(hidden, mx.stop_gradient(targets))[0]
