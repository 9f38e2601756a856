"""Helpers shared by the tests, imported as a package (`from helpers.masks import ...`).

- `helpers.tiny`: tiny tokenizers (real `tokenizers` BPE) and tiny model directories.
- `helpers.chat_templates`: chat templates of real model families, trimmed to roles.
- `helpers.masks`: records to encode and the supervised / masked text of an encoding.
- `helpers.data`: JSONL files of a small learnable task.

pytest puts tests/ on sys.path (tests/ has no __init__.py), which is what makes
`helpers` importable; conftest.py holds fixtures only.
"""
