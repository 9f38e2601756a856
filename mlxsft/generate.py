"""Chat generation for `mlxsft chat`, the TUI's compare pane and fuse verification.

Prompts are rendered with the model's chat template (or mlxsft's documented default
when it has none, the same as training used), and tokens stream from mlx-lm's
`stream_generate`. Call on the thread that loaded the model: MLX streams are
thread-local.
"""

from __future__ import annotations

from typing import Iterator

import mlx.core as mx
from mlx_lm import stream_generate
from mlx_lm.sample_utils import make_sampler

from mlxsft.masking import DEFAULT_CHAT_TEMPLATE, hf_tokenizer


def chat_prompt_tokens(tokenizer, messages: list[dict]) -> list[int]:
    """The conversation so far plus the assistant's generation prompt, as token ids."""
    tok = hf_tokenizer(tokenizer)
    template = getattr(tok, "chat_template", None) or DEFAULT_CHAT_TEMPLATE
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                   chat_template=template)
    return tok(text, add_special_tokens=False)["input_ids"]


def stream_reply(loaded, messages: list[dict], max_tokens: int = 256,
                 temperature: float = 0.0, seed: int = 0) -> Iterator[str]:
    """Text pieces of the assistant's reply as they are generated (greedy by default)."""
    mx.random.seed(seed)
    prompt = mx.array(chat_prompt_tokens(loaded.tokenizer, messages))
    for response in stream_generate(loaded.model, loaded.tokenizer, prompt,
                                     max_tokens=max_tokens,
                                     sampler=make_sampler(temp=temperature)):
        if response.text:
            yield response.text


def reply(loaded, messages: list[dict], **kwargs) -> str:
    return "".join(stream_reply(loaded, messages, **kwargs))
