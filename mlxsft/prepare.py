"""Training data ready for the step: read and validated JSONL, tokenized with loss masks.

`read_data` needs no model (so a bad file is reported before one is loaded);
`prepare_data` tokenizes and masks with the model's tokenizer (and the chat template the
options choose: `build_masker`) and records each file's path and SHA-256 for the
adapter's provenance, and the template for `adapter_config.json`. Nothing here batches or
trains.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mlxsft.checkpoints import file_sha256
from mlxsft.config import TrainConfig
from mlxsft.data import DataOptions, load_splits, read_records
from mlxsft.errors import UserError
from mlxsft.masking import CHARS_PER_TOKEN_BOUND, Masker, encode_records
from mlxsft.templates import template_choice


@dataclass
class PreparedData:
    train: list
    valid: list
    files: list[dict]
    messages: list[str] = field(default_factory=list)
    # The chat template and thinking mode trained with, for adapter_config.json.
    template: dict = field(default_factory=dict)


def build_masker(tokenizer, options) -> Masker:
    """The Masker a `TrainConfig` (or data-check / eval flags) asks for: mask mode,
    max_seq_len, chat template override, template kwargs and thinking mode."""
    return Masker(tokenizer, getattr(options, "mask", "assistant"),
                  getattr(options, "max_seq_len", None), template_choice(options))


def read_data(config: TrainConfig) -> dict:
    """Read and validate the data files (no tokenizer needed): split name -> DataFile."""
    if not config.data:
        raise UserError("no training data: pass DATA (a .jsonl file or a directory with "
                        "train.jsonl)")
    options = DataOptions.of(config)
    splits = load_splits(config.data, config.skip_invalid, options)
    if config.valid:
        splits["valid"] = read_records(config.valid, config.skip_invalid, options.keys)
    return splits


def prepare_data(config: TrainConfig, tokenizer, splits: dict | None = None) -> PreparedData:
    """Read, validate, tokenize and mask the training and validation data."""
    splits = splits if splits is not None else read_data(config)
    train_file = splits["train"]
    valid_file = splits.get("valid")
    masker = build_masker(tokenizer, config)
    messages = list(masker.warnings)
    out = {}
    files = []
    for name, data in (("train", train_file), ("valid", valid_file)):
        if data is None:
            continue
        encoded = encode_records(masker, data.records, config.skip_invalid)
        # Absolute: `mlxsft fuse` re-reads the validation split from wherever it runs. A
        # hub split is named as in its dataset; a one-file split also by its cache path.
        local = data.local_path
        entry = {"split": name, "path": str(Path(local).resolve()) if local else data.path,
                 "sha256": file_sha256(local) if local else None, "records": len(data.records)}
        if local and data.path != local:
            entry["name"] = data.path
        files.append(entry)
        if data.skipped:
            messages.append(f"{data.path}: skipped {len(data.skipped)} invalid records "
                            f"(first: {data.skipped[0]})")
        if encoded.failed:
            messages.append(f"{data.path}: skipped {len(encoded.failed)} records that cannot "
                            f"be masked (first: {encoded.failed[0]})")
        if encoded.truncated:
            capped = sum(t.capped for t in encoded.items + encoded.zero_supervised)
            note = (f" ({capped} over {CHARS_PER_TOKEN_BOUND * config.max_seq_len:,} "
                    "characters were cut to that before tokenizing)" if capped else "")
            messages.append(f"{data.path}: truncated {encoded.truncated} records to "
                            f"--max-seq-len {config.max_seq_len}{note}")
        if encoded.zero_supervised:
            lines = ", ".join(str(t.line) for t in encoded.zero_supervised[:5])
            messages.append(f"{data.path}: excluded {len(encoded.zero_supervised)} records with "
                            f"no supervised tokens (lines {lines})")
        out[name] = encoded.items
    if not out["train"]:
        raise UserError(f"{train_file.path}: no record has supervised tokens to train on; "
                        "check --mask and --max-seq-len (`mlxsft data check` shows the masks)")
    return PreparedData(out["train"], out.get("valid", []), files, messages,
                        masker.saved_template())
