"""Training data ready for the step: read and validated JSONL, tokenized with loss masks.

`read_data` needs no model (so a bad file is reported before one is loaded);
`prepare_data` tokenizes and masks with the model's tokenizer and records each file's
path and SHA-256 for the adapter's provenance. Nothing here batches or trains.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mlxsft.checkpoints import file_sha256
from mlxsft.config import TrainConfig
from mlxsft.data import load_splits, read_jsonl
from mlxsft.errors import UserError
from mlxsft.masking import Masker, encode_records


@dataclass
class PreparedData:
    train: list
    valid: list
    files: list[dict]
    messages: list[str] = field(default_factory=list)


def read_data(config: TrainConfig) -> dict:
    """Read and validate the data files (no tokenizer needed): split name -> DataFile."""
    if not config.data:
        raise UserError("no training data: pass DATA (a .jsonl file or a directory with "
                        "train.jsonl)")
    splits = load_splits(config.data, config.skip_invalid)
    if config.valid:
        splits["valid"] = read_jsonl(config.valid, config.skip_invalid)
    return splits


def prepare_data(config: TrainConfig, tokenizer, splits: dict | None = None) -> PreparedData:
    """Read, validate, tokenize and mask the training and validation data."""
    splits = splits if splits is not None else read_data(config)
    train_file = splits["train"]
    valid_file = splits.get("valid")
    masker = Masker(tokenizer, config.mask, config.max_seq_len)
    messages = list(masker.warnings)
    out = {}
    files = []
    for name, data in (("train", train_file), ("valid", valid_file)):
        if data is None:
            continue
        encoded = encode_records(masker, data.records, config.skip_invalid)
        # Absolute: `mlxsft fuse` re-reads the validation split from wherever it runs.
        files.append({"split": name, "path": str(Path(data.path).resolve()),
                      "sha256": file_sha256(data.path), "records": len(data.records)})
        if data.skipped:
            messages.append(f"{data.path}: skipped {len(data.skipped)} invalid records "
                            f"(first: {data.skipped[0]})")
        if encoded.failed:
            messages.append(f"{data.path}: skipped {len(encoded.failed)} records that cannot "
                            f"be masked (first: {encoded.failed[0]})")
        if encoded.truncated:
            messages.append(f"{data.path}: truncated {encoded.truncated} records to "
                            f"--max-seq-len {config.max_seq_len}")
        if encoded.zero_supervised:
            lines = ", ".join(str(t.line) for t in encoded.zero_supervised[:5])
            messages.append(f"{data.path}: excluded {len(encoded.zero_supervised)} records with "
                            f"no supervised tokens (lines {lines})")
        out[name] = encoded.items
    if not out["train"]:
        raise UserError(f"{train_file.path}: no record has supervised tokens to train on; "
                        "check --mask and --max-seq-len (`mlxsft data check` shows the masks)")
    return PreparedData(out["train"], out.get("valid", []), files, messages)
