"""Build tiny tokenizers and models in Hugging Face layout, for tests and examples.

Nothing is downloaded: the tokenizer is a byte-level BPE trained with `tokenizers` on a
small built-in corpus, the model is an `mlx_lm.models.<arch>.Model` with random weights.
Both are saved the way a user's model directory looks, so tests load them through the
same path a real model takes.
"""

from __future__ import annotations

import importlib
import json
import random
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from helpers.chat_templates import TEMPLATES

WORDS = (
    "the a an of to and in is it that for on with as was he she they be at by this "
    "have from or one had not but what all were when we there can your which their "
    "said if do will each about how up out them then many some so these would other "
    "into has more her two like him see time could no make than first been its who now "
    "people my made over did down only way find use may water long little very after "
    "words called just where most know get through back much go good new write our "
    "hello world question answer assistant user system please thank you capital France "
    "Paris number yes sure here explain why because python code list sum add"
).split()


def corpus(n: int = 400) -> list[str]:

    rng = random.Random(0)
    lines = []
    for _ in range(n):
        k = rng.randint(3, 14)
        s = " ".join(rng.choice(WORDS) for _ in range(k))
        lines.append(s.capitalize() + rng.choice([".", "?", "!", ":", ","]) + rng.choice(["", "\n", " 42", " 3.14"]))
    return lines


def build_tokenizer(special_tokens, chat_template=None, bos=None, eos=None, vocab_size=512):
    """A `PreTrainedTokenizerFast` (byte-level BPE) with the given special tokens."""

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(special_tokens), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer)
    kwargs = {}
    if bos:
        kwargs["bos_token"] = bos
    if eos:
        kwargs["eos_token"] = eos
        kwargs["pad_token"] = eos
    return PreTrainedTokenizerFast(tokenizer_object=tok, chat_template=chat_template, **kwargs)


def build_template_tokenizer(name: str):

    template, specials, bos, eos, _ = TEMPLATES[name]
    return build_tokenizer(specials, template, bos, eos)


def save_model_dir(path, arch: str = "llama", tokenizer=None, quantize_bits: int | None = None,
                   seed: int = 0, **overrides) -> Path:
    """Write a tiny random `arch` model + tokenizer in Hugging Face layout to `path`."""


    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if tokenizer is None:
        tokenizer = build_template_tokenizer("chatml")
    config = {
        "model_type": arch,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "vocab_size": len(tokenizer),
        "rope_theta": 10000.0,
        "max_position_embeddings": 512,
        "tie_word_embeddings": True,
    }
    config.update(overrides)
    module = importlib.import_module(f"mlx_lm.models.{arch}")
    mx.random.seed(seed)
    model = module.Model(module.ModelArgs.from_dict(config))
    if quantize_bits:
        # Group size 32 divides the tiny model's widths (64, 128).
        nn.quantize(model, group_size=32, bits=quantize_bits)
        config["quantization"] = {"group_size": 32, "bits": quantize_bits}
    mx.eval(model.parameters())
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(path / "model.safetensors"), weights, metadata={"format": "mlx"})
    (path / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer.save_pretrained(str(path))
    return path
