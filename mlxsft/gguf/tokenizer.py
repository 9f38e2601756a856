"""The tokenizer a GGUF file describes, rebuilt with the `tokenizers` library.

Byte-level BPE vocabularies (`tokenizer.ggml.model == "gpt2"`): tokens, merges, token
types, BOS/EOS handling and the chat template from the metadata, and the pre-tokenizer
regexes llama.cpp uses for each `tokenizer.ggml.pre` name. SentencePiece vocabularies
(`"llama"`: Llama 2, Mistral 7B, Phi-3, Gemma) are built by transformers' GGUF tokenizer
builders, with llama.cpp's space handling (a "▁" prefix, every space a "▁"). Unknown
pre-tokenizer names and other vocabulary kinds are refused (see `tokenizer_problem`).
"""

from __future__ import annotations

from mlxsft.errors import UserError

_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# llama.cpp's pre-tokenizer regexes (llama-vocab.cpp), applied one after another, for the
# `tokenizer.ggml.pre` names that use them. Other names are refused, not guessed.
PRE_TOKENIZERS = {
    **dict.fromkeys(("default",), (r"[\p{P}\$\+<=>\^~\|]+", _GPT2_SPLIT, r"\p{N}+",
                                   r"[0-9][0-9][0-9]")),
    **dict.fromkeys(("gpt-2", "phi-2", "mpt", "olmo", "jais", "trillion", "mellum",
                     "gigachat", "a.x-4.0"), (_GPT2_SPLIT,)),
    **dict.fromkeys(("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone",
                     "minerva-7b"), (r"\p{N}", _GPT2_SPLIT)),
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral",
                     "midm-2.0", "lfm2", "dbrx", "smaug-bpe"), (_LLAMA3_SPLIT,)),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "kormo", "stablelm2", "megrez"),
                    (_QWEN2_SPLIT,)),
}
# llama.cpp (and Llama 3's tokenizer.json) take a pre-token whole when it is in the vocabulary.
_IGNORE_MERGES = {"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral",
                  "midm-2.0", "lfm2"}
_NFC = {"qwen2", "deepseek-r1-qwen"}  # Qwen2's tokenizer.json normalizes to NFC first
_CONTROL, _USER_DEFINED = 3, 4


def tokenizer_problem(md: dict) -> str | None:
    kind = md.get("tokenizer.ggml.model")
    if kind == "llama":
        return None
    if kind != "gpt2":
        what = {None: "missing"}.get(kind, repr(kind))
        return (f"the tokenizer is {what}; mlxsft reads byte-level BPE ('gpt2') and "
                "SentencePiece ('llama') vocabularies from GGUF files. Use the Hugging Face "
                "model instead")
    pre = md.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        return (f"pre-tokenizer {pre!r} is not one of the {len(PRE_TOKENIZERS)} mlxsft "
                "knows from llama.cpp; use the Hugging Face model instead")
    return None


def build_tokenizer(header):
    """A `PreTrainedTokenizerFast` from a parsed GGUF header's tokenizer metadata."""
    md = header.metadata
    if (problem := tokenizer_problem(md)) is not None:
        raise UserError(f"{header.path}: {problem}")
    if md.get("tokenizer.ggml.model") == "llama":
        return _sentencepiece(md)
    pre = md.get("tokenizer.ggml.pre", "default")
    from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers,
                            pre_tokenizers, processors)
    from transformers import PreTrainedTokenizerFast

    tokens = md["tokenizer.ggml.tokens"]
    types = md.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    vocab: dict[str, int] = {}
    for i, token in enumerate(tokens):
        vocab.setdefault(token, i)
    # llama.cpp splits a merge at the first space after its first character.
    merges = [(m[:i], m[i + 1:]) for m in md.get("tokenizer.ggml.merges", [])
              if (i := m.find(" ", 1)) > 0]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=pre in _IGNORE_MERGES))
    if pre in _NFC:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in PRE_TOKENIZERS[pre]]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    # Control tokens are special (dropped by skip_special_tokens); user-defined ones are
    # plain added tokens. llama.cpp matches both whole in text, and so does this.
    tok.add_tokens([AddedToken(tokens[i], special=t == _CONTROL, normalized=False)
                    for i, t in enumerate(types) if t in (_CONTROL, _USER_DEFINED)])

    def token(key):
        i = md.get(f"tokenizer.ggml.{key}")
        return tokens[i] if i is not None and 0 <= i < len(tokens) else None

    bos, eos = token("bos_token_id"), token("eos_token_id")
    post = [processors.ByteLevel(trim_offsets=False)]
    add_bos = md.get("tokenizer.ggml.add_bos_token", pre in _IGNORE_MERGES) and bos
    add_eos = md.get("tokenizer.ggml.add_eos_token", False) and eos
    if add_bos or add_eos:
        first, last = (f"{bos} " if add_bos else ""), (f" {eos}" if add_eos else "")
        post.append(processors.TemplateProcessing(
            single=f"{first}$A{last}", pair=f"{first}$A{last} {first}$B{last}",
            special_tokens=[(t, vocab[t]) for t in dict.fromkeys(
                ([bos] if add_bos else []) + ([eos] if add_eos else []))]))
    tok.post_processor = processors.Sequence(post)
    specials = {"bos_token": bos, "eos_token": eos, "unk_token": token("unknown_token_id"),
                "pad_token": token("padding_token_id")}
    context = md.get(f"{md.get('general.architecture')}.context_length")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, chat_template=md.get("tokenizer.chat_template"),
        clean_up_tokenization_spaces=False,  # decode(encode(s)) == s
        **({"model_max_length": context} if isinstance(context, int) else {}),
        **{k: v for k, v in specials.items() if v is not None})


_GEMMA = ("gemma", "gemma2", "gemma3")


def _sentencepiece(md: dict):
    """A SentencePiece vocabulary (tokens + scores, byte tokens) as llama.cpp tokenizes it."""
    from tokenizers import normalizers, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer

    arch = md.get("general.architecture")
    tokens = md["tokenizer.ggml.tokens"]
    spec = {"tokenizer_type": "llama", "tokens": tokens,
            "scores": md.get("tokenizer.ggml.scores") or [0.0] * len(tokens),
            "token_type": md.get("tokenizer.ggml.token_type") or [1] * len(tokens)}
    # Gemma has its own builder; for the rest, transformers' Phi-3 builder is llama.cpp's
    # SPM: a "▁" in front (unless add_space_prefix is false) and every space a "▁".
    backend, _ = convert_gguf_tokenizer(arch if arch in _GEMMA else "phi3", spec)
    if arch not in _GEMMA and md.get("tokenizer.ggml.add_space_prefix") is False:
        backend.normalizer = normalizers.Replace(" ", "\u2581")

    def token(key):
        i = md.get(f"tokenizer.ggml.{key}")
        return tokens[i] if isinstance(i, int) and 0 <= i < len(tokens) else None

    bos, eos = token("bos_token_id"), token("eos_token_id")
    add_bos = md.get("tokenizer.ggml.add_bos_token", True) and bos
    add_eos = md.get("tokenizer.ggml.add_eos_token", False) and eos
    ids = {t: i for i, t in enumerate(tokens)}
    if add_bos or add_eos:
        first, last = (f"{bos} " if add_bos else ""), (f" {eos}" if add_eos else "")
        backend.post_processor = processors.TemplateProcessing(
            single=f"{first}$A{last}", pair=f"{first}$A{last} {first}$B{last}",
            special_tokens=[(t, ids[t]) for t in dict.fromkeys(
                ([bos] if add_bos else []) + ([eos] if add_eos else []))])
    else:
        backend.post_processor = None
    specials = {"bos_token": bos, "eos_token": eos, "unk_token": token("unknown_token_id"),
                "pad_token": token("padding_token_id")}
    context = md.get(f"{arch}.context_length")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, chat_template=md.get("tokenizer.chat_template"),
        clean_up_tokenization_spaces=False,
        **({"model_max_length": context} if isinstance(context, int) else {}),
        **{k: v for k, v in specials.items() if v is not None})
