"""Read SFT data files into validated `Record`s.

DATA is a JSONL file, a JSON file (an array of records, or JSON lines), a parquet file, a
directory holding ``train.jsonl`` and optionally ``valid.jsonl`` / ``test.jsonl``, or a
Hugging Face dataset id (``org/name``, ``org/name:split``; see `mlxsft.hub`), which is
fetched into the usual cache and then read here like a local file. The record shapes are
`mlxsft.shapes`.

Every problem a user can cause is a `DataError`: one line naming file:line (the row for
parquet and JSON arrays), the field, and what to do. That includes input Python's JSON
reader cannot take (a lone surrogate, nesting ~1000 deep, an integer of more than 4,300
digits), so `--skip-invalid` can skip it. This module does no tokenization (see
`mlxsft.masking`).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from mlxsft.records import ROLES, DataError, Record  # noqa: F401  (re-exported)
from mlxsft.shapes import FORMATS, RecordKeys, parse_record  # noqa: F401  (re-exported)

SPLITS = ("train", "valid", "test")
SUFFIXES = (".jsonl", ".json", ".parquet")
# Deeper than any real conversation or tool schema; far below where json's, jinja's or
# our own recursion would fail, so such a record is a located error, not a traceback.
MAX_NESTING = 64


@dataclass(frozen=True)
class DataOptions:
    """How to read DATA: the column mapping, a hub dataset's split/config/revision, and
    whether to skip invalid records. Built from a `TrainConfig` or CLI flags by `of`."""

    keys: RecordKeys = field(default_factory=RecordKeys)
    split: str | None = None
    config: str | None = None
    revision: str | None = None
    skip_invalid: bool = False

    @classmethod
    def of(cls, options: Any) -> DataOptions:
        get = lambda name: getattr(options, name, None)  # noqa: E731
        return cls(RecordKeys(get("prompt_key"), get("response_key"), get("messages_key")),
                   get("data_split"), get("data_config"), get("data_revision"),
                   bool(get("skip_invalid")))


@dataclass
class DataFile:
    """The records of one data file, with what was skipped and why."""

    path: str
    records: list[Record]
    skipped: list[DataError] = field(default_factory=list)
    local_path: str | None = None  # where the bytes are (a hub file's cache path)

    @property
    def formats(self) -> Counter:
        return Counter(r.format for r in self.records)


def _checked_value(obj: Any, path, line: int) -> Any:
    """Refuse what the rest of the pipeline cannot hold: nesting deeper than
    MAX_NESTING and strings that are not Unicode text (a lone surrogate from a
    "\\ud800" escape cannot be encoded, tokenized or written back)."""
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as e:
                raise DataError(path, line, f"a string holds a lone surrogate "
                                f"(\\u{ord(value[e.start]):04x}), which is not text; fix the "
                                "escape (a pair like \\ud83d\\ude00 is one character)") from None
            continue
        if isinstance(value, (dict, list)):
            if depth > MAX_NESTING:
                raise DataError(path, line, f"nested more than {MAX_NESTING} levels deep; "
                                "flatten the record")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for k, v in items:
                stack.append((v, depth + 1))
                if isinstance(k, str):
                    stack.append((k, depth + 1))
    return obj


def decode_json(text: str, path, line: int) -> Any:
    """One JSON value, or a located `DataError` (never a traceback)."""
    # Without its line ending a cut-off line's error points at the column where it was
    # cut, not at "line 2 column 1" past the newline.
    text = text.rstrip("\r\n")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        at = "" if e.msg.endswith(" at") else " at"  # "Unterminated string starting at"
        raise DataError(path, line, f"invalid JSON ({e.msg}{at} column {e.colno}); "
                        "each line must be one complete JSON object") from None
    except RecursionError:
        raise DataError(path, line, f"JSON nested too deeply to read (more than "
                        f"{MAX_NESTING} levels is refused); flatten the record") from None
    except ValueError as e:  # an integer literal past Python's 4,300-digit limit
        raise DataError(path, line, f"invalid JSON ({str(e).split(':')[0]}); shorten the "
                        "number or write it as a string") from None
    return _checked_value(obj, path, line)


def _jsonl_values(path: Path, name: str) -> Iterator[tuple[int, Any]]:
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield line_no, DataError(name, line_no, f"not valid UTF-8 (byte "
                                         f"0x{raw[e.start]:02x} at column {e.start + 1}); save "
                                         "the file as UTF-8")
                continue
            if line_no == 1:
                text = text.removeprefix("\ufeff")  # tolerate a byte-order mark
            if not text.strip():
                continue
            try:
                yield line_no, decode_json(text, name, line_no)
            except DataError as error:
                yield line_no, error


def _json_values(path: Path, name: str) -> Iterator[tuple[int, Any]]:
    """A .json file: an array of records (row numbers from 1), or JSON lines."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(name, 0, f"not valid UTF-8 (byte 0x{e.object[e.start]:02x} at offset "
                        f"{e.start}); save the file as UTF-8") from None
    if not text.lstrip().startswith("["):
        yield from _jsonl_values(path, name)
        return
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(name, 0, f"invalid JSON ({e.msg} at line {e.lineno} column "
                        f"{e.colno}); give an array of records or one record per line") from None
    except (RecursionError, ValueError) as e:
        raise DataError(name, 0, f"cannot read this JSON ({type(e).__name__}); give one record "
                        "per line (JSONL) so a bad record can be located and skipped") from None
    for row, value in enumerate(rows, start=1):
        try:
            yield row, _checked_value(value, name, row)
        except DataError as error:
            yield row, error


def _parquet_values(path: Path, name: str) -> Iterator[tuple[int, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(name, 0, "reading parquet needs pyarrow; `pip install pyarrow`") from None
    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow's ArrowInvalid and friends
        raise DataError(name, 0, f"not a readable parquet file ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}); download it again") from None
    row = 0
    # Row groups one at a time, so a large file is not held twice in memory.
    for batch in parquet.iter_batches(batch_size=1024):
        for value in batch.to_pylist():
            row += 1
            try:
                yield row, _checked_value(value, name, row)
            except DataError as error:
                yield row, error


def read_records(path: str | Path, skip_invalid: bool = False, keys: RecordKeys | None = None,
                 name: str | None = None) -> DataFile:
    """Read one data file (JSONL, JSON or parquet). Raise the first `DataError`, or
    collect them with skip_invalid. `name` is how errors call the file (a hub file is
    named inside its dataset, not by its cache path)."""
    path = Path(path)
    name = name or str(path)
    if not path.exists():
        raise DataError(name, 0, "no such file; check the path")
    if path.is_dir():
        raise DataError(name, 0, "is a directory; pass a .jsonl file, or a directory "
                        "holding train.jsonl")
    values = {".parquet": _parquet_values, ".json": _json_values}.get(path.suffix.lower(),
                                                                      _jsonl_values)
    records: list[Record] = []
    skipped: list[DataError] = []
    for line_no, value in values(path, name):
        try:
            if isinstance(value, DataError):
                raise value
            record = parse_record(value, name, line_no, keys)
            record.raw = value
            records.append(record)
        except DataError as error:
            if not skip_invalid:
                raise
            skipped.append(error)
    if not records and not skipped:
        raise DataError(name, 0, "empty file (no records); add one JSON object per line")
    if not records:
        raise DataError(name, 0, f"no valid records ({len(skipped)} invalid; first: "
                        f"{skipped[0]})")
    return DataFile(name, records, skipped, local_path=str(path))


def read_jsonl(path: str | Path, skip_invalid: bool = False,
               keys: RecordKeys | None = None) -> DataFile:
    """Read one local data file (the name kept for the callers that read JSONL)."""
    return read_records(path, skip_invalid, keys)


def resolve_data_files(data: str | Path) -> dict[str, Path]:
    """Map split name -> file for a local data file (train only) or a data directory."""
    data = Path(data)
    if data.is_dir():
        files = {}
        for split in SPLITS:
            found = [data / f"{split}{suffix}" for suffix in SUFFIXES
                     if (data / f"{split}{suffix}").is_file()]
            if found:
                files[split] = found[0]
        if "train" not in files:
            raise DataError(data, 0, "data directory has no train.jsonl; name the training "
                            "file train.jsonl (and optionally valid.jsonl, test.jsonl; "
                            ".json and .parquet files too)")
        return files
    if not data.exists():
        raise DataError(data, 0, "no such file or directory; check the path (or give a "
                        "Hugging Face dataset id such as org/name)")
    return {"train": data}


def _merged(files: list[DataFile], name: str) -> DataFile:
    if len(files) == 1:
        return files[0]
    return DataFile(name, [r for f in files for r in f.records],
                    [e for f in files for e in f.skipped])


def load_splits(data: str | Path, skip_invalid: bool = False,
                options: DataOptions | None = None) -> dict[str, DataFile]:
    """Read every split of a local data file or directory, or of a hub dataset."""
    from mlxsft import hub

    options = options or DataOptions()
    skip = skip_invalid or options.skip_invalid
    if hub.is_dataset_id(data):
        found = hub.dataset_files(str(data), options.split, options.config, options.revision)
        return {split: _merged([read_records(p, skip, options.keys, name) for name, p in files],
                               f"{data}:{split}")
                for split, files in found.items()}
    if options.split or options.config or options.revision:
        raise DataError(data, 0, "--data-split, --data-config and --data-revision are for "
                        "Hugging Face dataset ids; a local DATA is read as it is")
    return {split: read_records(path, skip, options.keys)
            for split, path in resolve_data_files(data).items()}
