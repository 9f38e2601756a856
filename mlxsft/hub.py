"""Hugging Face hub datasets as DATA: ``org/name`` (or ``org/name:split``) -> the local
files of each split, fetched with `huggingface_hub` into the usual cache (``HF_HOME``).

Only the data files are fetched (``*.jsonl``, ``*.json``, ``*.parquet``). Splits are
found the way the hub's viewer finds them in a repo without a loading script: by file and
directory names (``train``, ``validation``/``valid``/``dev``, ``test``), optionally inside
a config's directory (``--data-config``); a repo whose files name no split is all
training data. Reading the files is `mlxsft.data`'s job: a hub file is read by the same
code as a local one, and its errors name ``org/name/path/in/repo:row``.

Offline (``HF_HUB_OFFLINE=1``) or without network, a cached snapshot is used; a dataset
that is not cached is a one-line error saying how to get it.
"""

from __future__ import annotations

import re
from pathlib import Path

from mlxsft.errors import UserError

DATA_PATTERNS = ["*.jsonl", "*.json", "*.parquet"]
_SUFFIXES = (".jsonl", ".json", ".parquet")
# Metadata the `datasets` library writes beside the data; not records.
_METADATA = {"dataset_info.json", "dataset_infos.json", "dataset_dict.json", "state.json"}
_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.-]+)?$")
# The hub's own split names, and the words that name them in file and directory names.
_SPLIT_WORDS = {"train": ("train", "training"),
                "valid": ("validation", "valid", "val", "dev", "eval"),
                "test": ("test", "testing")}
_USER_SPLITS = {"train": "train", "validation": "valid", "valid": "valid", "val": "valid",
                "dev": "valid", "eval": "valid", "test": "test"}


def is_dataset_id(data) -> bool:
    """True when DATA names a hub dataset rather than a local path."""
    text = str(data)
    if Path(text).expanduser().exists() or text.startswith((".", "/", "~")):
        return False
    return bool(_ID.match(text)) and not text.lower().endswith(_SUFFIXES)


def parse_id(data: str, split: str | None) -> tuple[str, str | None]:
    """(repo id, split) from ``org/name`` or ``org/name:split``; the two forms agree."""
    repo, _, from_id = data.partition(":")
    if from_id and split and from_id != split:
        raise UserError(f"{data}: names split '{from_id}' but --data-split is '{split}'; "
                        "give one")
    return repo, from_id or split


def snapshot(repo: str, revision: str | None = None) -> Path:
    """The dataset's data files in the local cache: the cache first, then the hub."""
    from huggingface_hub import snapshot_download

    kwargs = dict(repo_type="dataset", revision=revision, allow_patterns=DATA_PATTERNS)
    try:  # no network round trip when the dataset is already here
        return Path(snapshot_download(repo, local_files_only=True, **kwargs))
    except Exception:
        pass
    try:
        return Path(snapshot_download(repo, **kwargs))
    except Exception as e:
        at = f" at revision {revision}" if revision else ""
        rev = f" --revision {revision}" if revision else ""
        # A local path with a typo looks like an id too: the message says both.
        raise UserError(
            f"{repo}: dataset{at} is not in the Hugging Face cache and the hub could not be "
            f"reached ({type(e).__name__}); run `hf download --repo-type dataset {repo}{rev}` "
            "on a connected machine (same HF_HOME), or, if you meant a local file or "
            "directory, check the path") from None


def _split_of(relative: str) -> str | None:
    words = [w for w in re.split(r"[/_.\-]+", relative.lower()) if w]
    for split, names in _SPLIT_WORDS.items():
        if any(w in names for w in words):
            return split
    return None


def dataset_files(data: str, split: str | None = None, config: str | None = None,
                  revision: str | None = None) -> dict[str, list[tuple[str, Path]]]:
    """split -> [(name inside the dataset, local path)] for a hub dataset id; with a
    split (``--data-split`` or ``org/name:split``) that split alone, read as training data."""
    repo, split = parse_id(data, split)
    if split is not None and split not in _USER_SPLITS:
        raise UserError(f"--data-split {split}: not a split mlxsft knows; use train, "
                        "validation or test")
    root = snapshot(repo, revision)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                   if p.is_file() and p.suffix.lower() in _SUFFIXES and p.name not in _METADATA)
    if config:
        inside = [f for f in files if f.startswith((f"{config}/", f"data/{config}/"))]
        if not inside:
            configs = sorted({f.split("/")[1] if f.startswith("data/") else f.split("/")[0]
                              for f in files if "/" in f})
            raise UserError(f"--data-config {config}: {repo} has no such config (directories: "
                            f"{', '.join(configs) or 'none'})")
        files = inside
    if not files:
        raise UserError(f"{repo}: no .jsonl, .json or .parquet files in the dataset; mlxsft "
                        "reads those (a dataset with a loading script is not supported)")
    by_split: dict[str, list[tuple[str, Path]]] = {}
    for f in files:
        by_split.setdefault(_split_of(f) or "", []).append((f"{repo}/{f}", root / f))
    if set(by_split) == {""}:  # no file names a split: all of it is training data
        by_split = {"train": by_split[""]}
    by_split.pop("", None)
    if split is not None:
        want = _USER_SPLITS[split]
        if want not in by_split:
            raise UserError(f"{repo}: no '{split}' split (found {', '.join(sorted(by_split))})")
        return {"train": by_split[want]}
    if "train" not in by_split:
        raise UserError(f"{repo}: no train split (found {', '.join(sorted(by_split))}); "
                        f"choose one with --data-split or {repo}:SPLIT")
    return {name: by_split[name] for name in _SPLIT_WORDS if name in by_split}
