"""`mlxsft data dedupe | split | mix`: the curation subcommands (`mlxsft.curation` does
the work; this module parses their flags, reads the inputs and prints what was done).
`data check` stays in `mlxsft.cli` with the other commands that load a tokenizer.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mlxsft.config import DATA_FIELDS, add_arguments
from mlxsft.errors import UserError


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not 0 <= value < 1:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text}: must be in [0, 1)")
    return value


def _read_one(spec: str, args):
    """The training split of a data file, directory or hub dataset, for curation."""
    from mlxsft.data import DataOptions, load_splits

    return load_splits(spec, args.skip_invalid, DataOptions.of(args))["train"]


def cmd_data_dedupe(args) -> int:
    from mlxsft.curation import dedupe, raw_rows, write_jsonl

    data = _read_one(args.data, args)
    result = dedupe(data.records, args.threshold, near=not args.exact_only)
    write_jsonl(args.out, raw_rows(result.kept))
    print(result.render(data.path, args.out))
    return 0


def cmd_data_split(args) -> int:
    from mlxsft.curation import raw_rows, split, write_jsonl

    data = _read_one(args.data, args)
    parts = split(data.records, args.valid, args.test, args.salt)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file; give a directory for train/valid/test.jsonl")
    out.mkdir(parents=True, exist_ok=True)
    for name, records in parts.items():
        if records or name != "test":
            write_jsonl(out / f"{name}.jsonl", raw_rows(records))
    counts = ", ".join(f"{name} {len(r)}" for name, r in parts.items())
    print(f"{data.path}: {len(data.records)} records -> {out}/ ({counts}); a record's split "
          "depends only on its content, so adding records does not move old ones")
    return 0


def cmd_data_mix(args) -> int:
    from mlxsft.curation import mix, parse_source, write_jsonl

    sources = []
    for spec in args.sources:
        path, amount = parse_source(spec)
        sources.append((path, _read_one(path, args).records, amount))
    rows, counts = mix(sources, args.seed, args.tag_key)
    write_jsonl(args.out, rows)
    shown = ", ".join(f"{name} {n}" for name, n in counts.items())
    print(f"mixed {len(rows)} records -> {args.out} ({shown}); each tagged with "
          f"'{args.tag_key}'")
    return 0


def add_curation_parsers(data_sub) -> None:
    """`data dedupe`, `data split` and `data mix` under `mlxsft data`."""
    reading = [f for f in DATA_FIELDS if f not in ("chat_template", "template_kwarg", "thinking")]

    def common(c):
        add_arguments(c, only=[*reading, "skip_invalid"])

    c = data_sub.add_parser("dedupe", help="drop exact and near-duplicate records",
                            description="Write DATA without exact copies and near-duplicates "
                            "(MinHash over word 3-grams, then exact Jaccard >= --threshold); "
                            "the first record of each cluster is kept and the clusters are "
                            "reported. The input is never modified.")
    c.add_argument("data", help="a .jsonl/.json/.parquet file or a hub dataset id")
    c.add_argument("--out", required=True, help="the .jsonl file to write")
    c.add_argument("--threshold", type=float, default=0.8,
                   help="Jaccard similarity at which records are near-duplicates (default: 0.8)")
    c.add_argument("--exact-only", action="store_true", help="only drop exact copies")
    common(c)
    c.set_defaults(func=cmd_data_dedupe)

    c = data_sub.add_parser("split", help="deterministic train/valid/test split",
                            description="Split DATA into OUT/train.jsonl, valid.jsonl and "
                            "test.jsonl by a hash of each record, so adding data never "
                            "reshuffles the held-out set.")
    c.add_argument("data", help="a .jsonl/.json/.parquet file or a hub dataset id")
    c.add_argument("--out", required=True, help="directory to write the splits into")
    c.add_argument("--valid", type=_share, default=0.1,
                   help="share of records for valid.jsonl (default: 0.1)")
    c.add_argument("--test", type=_share, default=0.0,
                   help="share of records for test.jsonl (default: 0)")
    c.add_argument("--salt", default="", help="text mixed into the hash: another salt, "
                   "another split")
    common(c)
    c.set_defaults(func=cmd_data_split)

    c = data_sub.add_parser("mix", help="mix several sources into one file",
                            description="Mix SOURCE files into OUT, each record tagged with "
                            "its source. SOURCE is PATH (all of it), PATH=N (N records) or "
                            "PATH=W with a decimal point (W times its size: 0.5 or 2.0).")
    c.add_argument("sources", nargs="+", metavar="SOURCE")
    c.add_argument("--out", required=True, help="the .jsonl file to write")
    c.add_argument("--seed", type=int, default=0, help="sampling and shuffling seed (default: 0)")
    c.add_argument("--tag-key", default="source",
                   help="field that names each record's source (default: source)")
    common(c)
    c.set_defaults(func=cmd_data_mix)
