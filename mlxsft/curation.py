"""Dataset curation behind `mlxsft data dedupe | split | mix` and `data check --against`.

Each command reads records with `mlxsft.data` (so the same shapes and located errors),
writes new JSONL (each record in its own shape, never modifying the input; written to a
temporary name, then renamed) and returns what it did for the CLI to print. Everything is
deterministic: the same input gives the same output, byte for byte.

- near-duplicates: MinHash over word 3-grams of the normalized text (NFKC, case-folded,
  whitespace collapsed; roles included), 64 permutations banded 16 x 4 to find
  candidates, then the exact Jaccard similarity of the shingle sets against a threshold.
  Written here in numpy rather than taking `datasketch` (and scipy) as a dependency.
- split: a record's bucket is the SHA-256 of its canonical JSON (with a salt), so adding
  records never moves an old one between train, valid and test.
- mix: sources with counts or weights, sampled with a seeded RNG, each record tagged with
  the source it came from.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import tempfile
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from mlxsft.errors import UserError
from mlxsft.records import Record

NUM_PERM = 64
BANDS = 16
_PRIME = (1 << 31) - 1  # a*x + b stays below 2**63 for a, b, x < 2**31


def record_text(record: Record) -> str:
    """The record as one text (roles included), the unit duplicates are judged on."""
    if record.text is not None:
        return record.text
    return "\n".join(f"{m['role']}: {m['content']}" for m in record.messages)


def normalize(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def shingles(text: str, n: int = 3) -> frozenset[str]:
    words = normalize(text).split()
    if len(words) <= n:
        return frozenset([" ".join(words)])
    return frozenset(" ".join(words[i:i + n]) for i in range(len(words) - n + 1))


def jaccard(a: frozenset, b: frozenset) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


class MinHasher:
    """MinHash signatures with fixed permutations (seeded), so results never vary."""

    def __init__(self, num_perm: int = NUM_PERM, seed: int = 0):
        import numpy as np

        rng = random.Random(seed)
        self.a = np.array([rng.randrange(1, _PRIME) for _ in range(num_perm)], dtype=np.uint64)
        self.b = np.array([rng.randrange(0, _PRIME) for _ in range(num_perm)], dtype=np.uint64)

    def signature(self, grams: Iterable[str]):
        import numpy as np

        x = np.array([int.from_bytes(hashlib.blake2b(g.encode("utf-8", "surrogatepass"),
                                                     digest_size=8).digest(), "little") % _PRIME
                      for g in grams] or [0], dtype=np.uint64)
        return ((self.a[:, None] * x[None, :] + self.b[:, None]) % _PRIME).min(axis=1)


def near_duplicate_pairs(texts: Sequence[str], threshold: float,
                         others: Sequence[str] | None = None) -> list[tuple[int, int, float]]:
    """(i, j, similarity) with similarity >= threshold: within `texts` (i < j), or with
    `others` given, between texts[i] and others[j]."""
    hasher = MinHasher()
    sets = [shingles(t) for t in texts]
    other_sets = [shingles(t) for t in others] if others is not None else None
    rows = NUM_PERM // BANDS
    buckets: dict[tuple, list[tuple[int, int]]] = {}
    for side, group in ((0, sets), (1, other_sets or [])):
        for k, grams in enumerate(group):
            sig = hasher.signature(grams)
            for band in range(BANDS):
                key = (band, sig[band * rows:(band + 1) * rows].tobytes())
                buckets.setdefault(key, []).append((side, k))
    candidates = set()
    for members in buckets.values():
        if len(members) < 2:
            continue
        left = [k for side, k in members if side == 0]
        right = [k for side, k in members if side == 1] if others is not None else left
        for i in left:
            for j in right:
                if others is not None or i < j:
                    candidates.add((i, j))
    found = []
    for i, j in sorted(candidates):
        sim = jaccard(sets[i], (other_sets or sets)[j])
        if sim >= threshold:
            found.append((i, j, round(sim, 4)))
    return found


def canonical(record: Record) -> str:
    return json.dumps(record.raw if record.raw is not None else
                      {"messages": record.messages, "text": record.text},
                      sort_keys=True, ensure_ascii=False)


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> int:
    """Write rows as JSONL to a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise UserError(f"--out {path}: the directory {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    n = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                n += 1
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise UserError(f"--out {path}: cannot write it ({e.strerror}); choose another path") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n


def _raw(record: Record) -> Any:
    return record.raw if record.raw is not None else {"messages": record.messages}


# -- dedupe ----------------------------------------------------------------------------
@dataclass
class DedupeResult:
    kept: list[Record]
    total: int
    exact: list[tuple[int, int]] = field(default_factory=list)  # (line, line it copies)
    clusters: list[list[int]] = field(default_factory=list)    # near-duplicate lines

    def render(self, source: str, out: str) -> str:
        removed_near = sum(len(c) - 1 for c in self.clusters)
        lines = [f"{source}: kept {len(self.kept)} of {self.total} records -> {out}",
                 f"  exact duplicates removed: {len(self.exact)}"
                 + (f" (lines {', '.join(f'{a}={b}' for a, b in self.exact[:8])}"
                    f"{' ...' if len(self.exact) > 8 else ''})" if self.exact else ""),
                 f"  near-duplicate clusters: {len(self.clusters)} ({removed_near} removed, "
                 "the first of each kept)"]
        for cluster in self.clusters[:10]:
            lines.append(f"    lines {', '.join(map(str, cluster))}")
        if len(self.clusters) > 10:
            lines.append(f"    ... {len(self.clusters) - 10} more")
        return "\n".join(lines)


def dedupe(records: Sequence[Record], threshold: float = 0.8, near: bool = True) -> DedupeResult:
    """Drop exact copies (same normalized text), then near-duplicates (Jaccard of word
    3-grams >= threshold, by union of pairs); the first record of each cluster stays."""
    if not 0 < threshold <= 1:
        raise UserError(f"--threshold {threshold}: must be in (0, 1]")
    seen: dict[str, int] = {}
    unique, exact = [], []
    for record in records:
        key = normalize(record_text(record))
        if key in seen:
            exact.append((record.line, seen[key]))
        else:
            seen[key] = record.line
            unique.append(record)
    clusters: list[list[int]] = []
    drop: set[int] = set()
    if near and len(unique) > 1:
        parent = list(range(len(unique)))

        def root(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for i, j, _ in near_duplicate_pairs([record_text(r) for r in unique], threshold):
            a, b = root(i), root(j)
            if a != b:
                parent[max(a, b)] = min(a, b)
        groups: dict[int, list[int]] = {}
        for i in range(len(unique)):
            groups.setdefault(root(i), []).append(i)
        for members in groups.values():
            if len(members) > 1:
                clusters.append([unique[i].line for i in members])
                drop.update(members[1:])
        clusters.sort()
    kept = [r for i, r in enumerate(unique) if i not in drop]
    return DedupeResult(kept, len(records), exact, clusters)


# -- split -----------------------------------------------------------------------------
def bucket(record: Record, salt: str = "") -> float:
    """A number in [0, 1) fixed by the record's content (and the salt) alone."""
    digest = hashlib.sha256((salt + "\0" + canonical(record)).encode("utf-8", "surrogatepass"))
    return int.from_bytes(digest.digest()[:8], "big") / 2.0 ** 64


def split(records: Sequence[Record], valid: float, test: float = 0.0,
          salt: str = "") -> dict[str, list[Record]]:
    """train / valid / test by each record's hash bucket: test below `test`, valid below
    `test + valid`, train above."""
    if valid < 0 or test < 0 or valid + test >= 1:
        raise UserError(f"--valid {valid} --test {test}: each must be 0 or more and together "
                        "below 1")
    out: dict[str, list[Record]] = {"train": [], "valid": [], "test": []}
    for record in records:
        b = bucket(record, salt)
        out["test" if b < test else "valid" if b < test + valid else "train"].append(record)
    return out


# -- mix -------------------------------------------------------------------------------
_SPEC = re.compile(r"^(?P<src>.+?)=(?P<amount>\d+(\.\d*)?|\.\d+)$")


def parse_source(spec: str) -> tuple[str, int | float | None]:
    """"PATH" (every record), "PATH=N" (N records) or "PATH=W" with a decimal point
    (W times the source's size: 0.5 halves it, 2.0 repeats it twice)."""
    m = _SPEC.match(spec)
    if not m:
        return spec, None
    amount = m.group("amount")
    return m.group("src"), (float(amount) if "." in amount else int(amount))


def sample(records: Sequence[Record], amount: int | float | None, seed: int) -> list[Record]:
    """`amount` records drawn without replacement (whole copies first when it is more
    than the source holds), in a seeded order."""
    n = len(records) if amount is None else (
        round(amount * len(records)) if isinstance(amount, float) else amount)
    rng = random.Random(seed)
    whole, rest = divmod(n, len(records))
    picked = list(records) * whole + rng.sample(list(records), rest)
    return picked


def mix(sources: Sequence[tuple[str, Sequence[Record], int | float | None]], seed: int = 0,
        tag_key: str = "source") -> tuple[list[Any], dict[str, int]]:
    """(rows, count per source): each source sampled as asked, each row tagged with its
    source under `tag_key`, then shuffled with the seed."""
    rows, counts = [], {}
    for k, (name, records, amount) in enumerate(sources):
        picked = sample(records, amount, seed * 1000 + k)
        counts[name] = len(picked)
        for record in picked:
            raw = _raw(record)
            if not isinstance(raw, dict):
                raw = {"messages": record.messages}
            if tag_key in raw and raw[tag_key] != name:
                raise UserError(f"{record.where}: already has a '{tag_key}' field; choose "
                                "another name for the tag with --tag-key")
            rows.append({**raw, tag_key: name})
    random.Random(seed).shuffle(rows)
    return rows, counts


def raw_rows(records: Iterable[Record]) -> list[Any]:
    return [_raw(r) for r in records]
