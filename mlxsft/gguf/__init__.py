"""llama.cpp's GGUF files: reading them as mlx-lm models (`reader`), rebuilding their
tokenizer from the metadata (`tokenizer`), and writing a fused model as GGUF (`writer`).
"""
