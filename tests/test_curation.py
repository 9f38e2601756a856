"""`mlxsft data dedupe | split | mix`, `data check --against` and the text lints: exact
outputs, the same bytes twice, and the input never modified."""

import json
from collections import Counter

import pytest

from helpers.data import write_jsonl
from mlxsft.cli import main
from mlxsft.curation import dedupe, near_duplicate_pairs, shingles, jaccard
from mlxsft.data import parse_record, read_records
from mlxsft import lints

STORY = ("the quick brown fox jumps over the lazy dog while the farmer watches from the "
         "porch and drinks his morning tea before the long day of work in the fields")


def chat(q, a):
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


@pytest.fixture
def data(tmp_path):
    rows = [chat("Tell a story.", STORY),                              # 1
            chat("Tell a story.", STORY.replace("morning", "evening")),  # 2: near 1
            chat("What is 2+2?", "4"),                                  # 3
            chat("what is  2+2?", "4"),                                 # 4: exact (normalized) 3
            chat("Name a colour.", "Blue."),                            # 5
            {"text": STORY + " and then sleeps"},                       # 6: a text record
            chat("Tell a story.", STORY.replace("tea", "coffee"))]      # 7: near 1
    return write_jsonl(tmp_path / "in.jsonl", rows)


def test_dedupe_drops_exact_and_near_duplicates_and_reports_clusters(data, tmp_path, capsys):
    before = data.read_bytes()
    out = tmp_path / "out.jsonl"
    assert main(["data", "dedupe", str(data), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "kept 4 of 7 records" in printed
    assert "exact duplicates removed: 1 (lines 4=3)" in printed
    assert "near-duplicate clusters: 1 (2 removed, the first of each kept)" in printed
    assert "    lines 1, 2, 7" in printed
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert kept == [json.loads(line) for i, line in enumerate(before.decode().splitlines())
                    if i + 1 in (1, 3, 5, 6)]
    first = out.read_bytes()
    assert main(["data", "dedupe", str(data), "--out", str(out)]) == 0
    assert out.read_bytes() == first and data.read_bytes() == before
    assert main(["data", "dedupe", str(data), "--out", str(out), "--exact-only"]) == 0
    assert len(out.read_text().splitlines()) == 6


def test_near_duplicate_similarity_is_the_exact_jaccard(data):
    records = read_records(data).records
    texts = [r.messages[1]["content"] if r.messages else r.text for r in records]
    pairs = near_duplicate_pairs(texts, 0.5)
    for i, j, sim in pairs:
        assert sim == round(jaccard(shingles(texts[i]), shingles(texts[j])), 4) >= 0.5
    assert {(i, j) for i, j, _ in pairs} >= {(0, 1), (0, 6), (1, 6)}
    with pytest.raises(Exception, match="--threshold 0: must be in"):
        dedupe(records, 0)


def test_split_is_deterministic_and_stable_when_data_is_added(tmp_path, capsys):
    rows = [chat(f"add {a} {b}", f"sum {a + b}") for a in range(10) for b in range(10)]
    small = write_jsonl(tmp_path / "small.jsonl", rows[:60])
    big = write_jsonl(tmp_path / "big.jsonl", rows)
    assert main(["data", "split", str(small), "--out", str(tmp_path / "a"), "--valid", "0.2",
                 "--test", "0.1"]) == 0
    assert main(["data", "split", str(small), "--out", str(tmp_path / "b"), "--valid", "0.2",
                 "--test", "0.1"]) == 0
    assert main(["data", "split", str(big), "--out", str(tmp_path / "c"), "--valid", "0.2",
                 "--test", "0.1"]) == 0
    printed = capsys.readouterr().out
    assert "small.jsonl: 60 records -> " in printed
    for name in ("train", "valid", "test"):
        a = (tmp_path / "a" / f"{name}.jsonl").read_text()
        assert a == (tmp_path / "b" / f"{name}.jsonl").read_text()
        c = (tmp_path / "c" / f"{name}.jsonl").read_text().splitlines()
        # Every record of the small set stays in the split it had: adding data moves none.
        assert set(a.splitlines()) <= set(c)
    sizes = [len((tmp_path / "c" / f"{n}.jsonl").read_text().splitlines()) for n in ("train", "valid", "test")]
    assert sum(sizes) == 100 and 0 < sizes[2] < sizes[1] < sizes[0]


def test_mix_samples_counts_and_weights_and_tags_sources(tmp_path, capsys):
    a = write_jsonl(tmp_path / "a.jsonl", [chat(f"a{i}", "x") for i in range(10)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": f"b{i}"} for i in range(4)])
    out = tmp_path / "mix.jsonl"
    assert main(["data", "mix", f"{a}=3", f"{b}=1.5", "--out", str(out), "--seed", "7"]) == 0
    assert f"mixed 9 records -> {out} ({a} 3, {b} 6)" in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["source"] for r in rows) == [str(a)] * 3 + [str(b)] * 6
    # 1.5 x 4 records: one whole copy and two more, drawn without replacement.
    counts = Counter(r["text"] for r in rows if "text" in r)
    assert sorted(counts) == ["b0", "b1", "b2", "b3"] and sorted(counts.values()) == [1, 1, 2, 2]
    assert len({r["messages"][0]["content"] for r in rows if "messages" in r}) == 3
    first = out.read_bytes()
    assert main(["data", "mix", f"{a}=3", f"{b}=1.5", "--out", str(out), "--seed", "7"]) == 0
    assert out.read_bytes() == first
    # The mixed file trains like any other (the tag is an extra field).
    assert len(read_records(out).records) == 9


def test_data_check_against_held_out_reports_leakage(tmp_path, tiny_llama, capsys):
    train = write_jsonl(tmp_path / "train.jsonl", [chat("Tell a story.", STORY), chat("Hi", "Hello there.")])
    valid = write_jsonl(tmp_path / "valid.jsonl", [chat("Name a colour.", "Blue."),
                                                    chat("Tell a story.", STORY.replace("tea", "juice"))])
    assert main(["data", "check", str(train), "--model", str(tiny_llama), "--against", str(valid)]) == 0
    assert "! near-duplicates of held-out records: 1 (lines 1~2)" in capsys.readouterr().out


def test_text_lints():
    rows = [chat("Repeat after me", "repeat after  me"),
            chat("Q", "This answer simply stops in the middle of the"),
            chat("Q", "Donâ€™t worry, cafÃ© is open."),
            chat("Q", "Fine.\u200b"),
            chat("Q", "Привет, как дела у тебя сегодня"),
            chat("Q", "- a list item without a full stop and more words here"),
            chat("Q", "All good."), chat("Q", "All good too."), chat("Q", "Yes.")]
    records = [parse_record(r, "d.jsonl", i + 1) for i, r in enumerate(rows)]
    assert lints.copies_prompt(records) == [1]
    assert lints.cut_off(records) == [2, 5]
    assert lints.encoding_oddities(records) == ["3(mojibake)", "4(invisible characters)"]
    assert lints.other_script(records) == ["5(cyrillic)"]
