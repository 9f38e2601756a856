"""`data check`'s padding estimate: bucketed vs packed slots counted by hand."""

from mlxsft.batching import padding_waste
from mlxsft.cli import main


def test_padding_waste_counts_slots_exactly():
    # Batch 2, max 64. Sorted 10, 20 | 30, 40 | 50: buckets 32, 48, 64, tail row filled.
    got = padding_waste([50, 10, 40, 20, 30], 2, 64)
    assert got["tokens"] == 150
    assert got["bucketed_slots"] == 2 * 32 + 2 * 48 + 2 * 64
    # First fit, longest first: 50+10 | 40+20 | 30 -> 3 rows, rounded up to 4 (batch 2).
    assert got["packed_slots"] == 4 * 64
    assert abs(got["bucketed_padding"] - (1 - 150 / 288)) < 1e-12


def test_data_check_reports_padding_and_suggests_packing(tiny_llama, tmp_path, capsys):
    import json
    import random

    from helpers.data import write_jsonl
    from helpers.tiny import WORDS

    rng = random.Random(0)
    records = [{"messages": [
        {"role": "user", "content": " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 90)))},
        {"role": "assistant", "content": "yes"}]} for _ in range(120)]
    data = write_jsonl(tmp_path / "train.jsonl", records)
    assert main(["data", "check", str(data), "--model", str(tiny_llama), "--json",
                 "--max-seq-len", "256"]) == 0
    padding = json.loads(capsys.readouterr().out.splitlines()[-1])["summary"][0]["padding"]
    assert padding["packed_slots"] < 0.95 * padding["bucketed_slots"]
    assert main(["data", "check", str(data), "--model", str(tiny_llama), "--max-seq-len",
                 "256"]) == 0
    out = capsys.readouterr().out
    saved = 1 - padding["packed_slots"] / padding["bucketed_slots"]
    assert (f"padding at batch 4: {100 * padding['bucketed_padding']:.0f}% of the step's "
            f"tokens with length buckets, {100 * padding['packed_padding']:.0f}% with --pack; "
            f"--pack computes {100 * saved:.0f}% fewer tokens per epoch") in out
