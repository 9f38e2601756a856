"""Everything that takes a trained adapter out of mlxsft: fusing it into the base weights
(`fuse`, checked by `verify`), Hugging Face model directories (`hf`), the adapter in PEFT's
layout (`peft`), model cards (`card`) and staged, all-or-nothing output (`staging`).
GGUF files are read and written by `mlxsft.gguf`.
"""
