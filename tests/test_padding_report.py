"""`data check`'s padding estimate: shuffled, length-grouped and packed slots counted
by hand."""

from mlxsft.batching import padding_waste
from mlxsft.cli import main


def test_padding_waste_counts_slots_exactly():
    from mlxsft.batching import epoch_groups

    lengths = [50, 10, 40, 20, 30]
    got = padding_waste(lengths, 2, 64, seed=3)
    assert got["tokens"] == 150
    # Grouped: sorted 10, 20 | 30, 40 | 50: buckets 32, 48, 64, tail row filled.
    assert got["grouped_slots"] == 2 * 32 + 2 * 48 + 2 * 64
    assert abs(got["grouped_padding"] - (1 - 150 / 288)) < 1e-12
    # Shuffled: the first epoch training would draw with this seed, each batch padded to
    # the bucket of its longest record.
    bucket = {10: 32, 20: 32, 30: 32, 40: 48, 50: 64}
    groups = next(epoch_groups(lengths, 2, seed=3))
    assert got["shuffled_slots"] == sum(2 * max(bucket[lengths[i]] for i in g) for g in groups)
    assert got["shuffled_slots"] >= got["grouped_slots"]
    # First fit, longest first: 50+10 | 40+20 | 30 -> 3 rows, rounded up to 4 (batch 2).
    assert got["packed_slots"] == 4 * 64


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
    assert padding["packed_slots"] < 0.95 * padding["shuffled_slots"]
    assert main(["data", "check", str(data), "--model", str(tiny_llama), "--max-seq-len",
                 "256"]) == 0
    out = capsys.readouterr().out
    saved = 1 - padding["packed_slots"] / padding["shuffled_slots"]
    assert (f"padding at batch 4: {100 * padding['shuffled_padding']:.0f}% of the step's "
            f"tokens in shuffled batches, {100 * padding['grouped_padding']:.0f}% with "
            f"--group-by-length, {100 * padding['packed_padding']:.0f}% with --pack; "
            f"--pack computes {100 * saved:.0f}% fewer tokens per epoch") in out
