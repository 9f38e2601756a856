"""Cost of one very long record before truncation to --max-seq-len: seconds and peak
memory of `Masker.encode`, with the character cap (what training does) and without it
(the whole text tokenized, then truncated, as before the cap). Each side runs in its own
process so peak RSS is its own.

    python examples/bench_long_record.py MODEL_DIR [--mb 50] [--max-seq-len 1024]
"""

import argparse
import json
import resource
import subprocess
import sys
import time

from need_mlxsft import require_mlxsft

require_mlxsft(__file__)


def one(model: str, mb: float, max_seq_len: int, capped: bool) -> dict:
    import mlxsft  # noqa: F401  (BLAS before mlx)
    from mlxsft import masking
    from mlxsft.data import parse_record
    from mlxsft.models import load_tokenizer

    words = "the quick brown fox jumps over the lazy dog and keeps running far away "
    reply = (words * int(mb * 1e6 / len(words) + 1))[: int(mb * 1e6)]
    record = parse_record({"messages": [{"role": "user", "content": "Tell me a story."},
                                        {"role": "assistant", "content": reply}]}, "long", 1)
    if not capped:
        masking.CHARS_PER_TOKEN_BOUND = 10**12  # no cap: the old behaviour
    masker = masking.Masker(load_tokenizer(model), "assistant", max_seq_len)
    start = time.perf_counter()
    item = masker.encode(record)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"capped": capped, "seconds": round(seconds, 2), "peak_rss_mb": round(peak_mb),
            "tokens": len(item.tokens), "supervised": item.supervised_tokens,
            "tokens_digest": hash(tuple(item.tokens)), "mask_digest": hash(tuple(item.loss_mask))}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--mb", type=float, default=50)
    ap.add_argument("--max-seq-len", type=int, default=1024)
    ap.add_argument("--side", choices=("capped", "uncapped"))
    a = ap.parse_args()
    if a.side:
        print(json.dumps(one(a.model, a.mb, a.max_seq_len, a.side == "capped")))
        sys.exit(0)
    rows = []
    for side in ("capped", "uncapped"):
        out = subprocess.run([sys.executable, __file__, a.model, "--mb", str(a.mb),
                              "--max-seq-len", str(a.max_seq_len), "--side", side],
                             capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    for r in rows:
        print(f"{a.mb:g} MB record, max_seq_len {a.max_seq_len}: "
              f"{'capped  ' if r['capped'] else 'uncapped'} {r['seconds']:8.2f} s, "
              f"peak RSS {r['peak_rss_mb']:6d} MB, {r['tokens']} tokens, "
              f"{r['supervised']} supervised")
    same = rows[0]["tokens_digest"] == rows[1]["tokens_digest"] and \
        rows[0]["mask_digest"] == rows[1]["mask_digest"]
    print(f"same tokens and loss mask: {same}")
