"""Hugging Face hub datasets as DATA, through the real cache layout: a dataset snapshot
written into a temporary HF_HOME (refs/main -> snapshots/<commit>/...) and read with
HF_HUB_OFFLINE=1, so nothing is downloaded."""

import json
import os
import subprocess
import sys

import pytest

from mlxsft.data import DataError, DataOptions, load_splits
from mlxsft.errors import UserError
from mlxsft.hub import is_dataset_id

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def chat(q, a):
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


def write_snapshot(hf_home, repo, files: dict, commit=COMMIT, ref="main"):
    """A dataset repo as `huggingface_hub` caches it."""
    root = hf_home / "hub" / f"datasets--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / ref).write_text(commit)
    for name, content in files.items():
        path = root / "snapshots" / commit / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root / "snapshots" / commit


def parquet_bytes(rows):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue()


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    """HF_HOME for this process: huggingface_hub reads its cache path and offline switch
    from constants computed at import, so they are pointed here too."""
    from huggingface_hub import constants

    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return home


def test_dataset_ids_and_local_paths_are_told_apart(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert is_dataset_id("org/name") and is_dataset_id("org/name:validation")
    assert not is_dataset_id("data/train.jsonl") and not is_dataset_id("./org/name")
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "name").write_text("")
    assert not is_dataset_id("org/name")  # an existing local path wins


def test_parquet_splits_from_the_cache(hf_home):
    write_snapshot(hf_home, "acme/qa", {
        "data/train-00000-of-00002.parquet": parquet_bytes([chat("q1", "a1"), chat("q2", "a2")]),
        "data/train-00001-of-00002.parquet": parquet_bytes([chat("q3", "a3")]),
        "data/validation-00000-of-00001.parquet": parquet_bytes([chat("v1", "b1")]),
        "README.md": "---\nlicense: mit\n---\n"})
    splits = load_splits("acme/qa")
    assert sorted(splits) == ["train", "valid"]
    assert [r.messages[1]["content"] for r in splits["train"].records] == ["a1", "a2", "a3"]
    assert [(r.source, r.line) for r in splits["train"].records] == [
        ("acme/qa/data/train-00000-of-00002.parquet", 1),
        ("acme/qa/data/train-00000-of-00002.parquet", 2),
        ("acme/qa/data/train-00001-of-00002.parquet", 1)]
    only = load_splits("acme/qa:validation")
    assert list(only) == ["train"] and only["train"].records[0].messages[0]["content"] == "v1"
    assert load_splits("acme/qa", options=DataOptions(split="validation"))["train"].records[0].line == 1


def test_errors_name_the_file_inside_the_dataset_and_the_row(hf_home):
    write_snapshot(hf_home, "acme/bad", {
        "train.jsonl": json.dumps(chat("q", "a")) + "\n" + '{"prompt": "p"}\n',
        "test.parquet": parquet_bytes([chat("q", "a"), {"messages": [{"role": "user", "content": "q"}]}])})
    with pytest.raises(DataError, match=r"^acme/bad/train.jsonl:2: missing field 'completion'"):
        load_splits("acme/bad")
    with pytest.raises(DataError, match=r"^acme/bad/test.parquet:2: no assistant turn"):
        load_splits("acme/bad:test")
    assert len(load_splits("acme/bad", skip_invalid=True)["train"].skipped) == 1


def test_configs_revisions_and_column_mapping(hf_home):
    write_snapshot(hf_home, "acme/multi", {
        "en/train.jsonl": json.dumps({"question": "q", "answer": "en"}) + "\n",
        "fr/train.jsonl": json.dumps({"question": "q", "answer": "fr"}) + "\n"})
    keys = DataOptions.of(type("A", (), {"prompt_key": "question", "response_key": "answer",
                                         "data_config": "fr"})())
    records = load_splits("acme/multi", options=keys)["train"].records
    assert [r.messages[1]["content"] for r in records] == ["fr"]
    with pytest.raises(UserError, match=r"--data-config de: acme/multi has no such config "
                       r"\(directories: en, fr\)"):
        load_splits("acme/multi", options=DataOptions(config="de"))
    other = "f" * 40
    write_snapshot(hf_home, "acme/multi", {"train.jsonl": json.dumps({"text": "old"}) + "\n"},
                   commit=other, ref="v1")
    records = load_splits("acme/multi", options=DataOptions(revision="v1"))["train"].records
    assert records[0].text == "old"


def test_not_cached_offline_is_one_line_saying_how_to_get_it(hf_home):
    with pytest.raises(UserError) as e:
        load_splits("acme/absent")
    message = str(e.value)
    assert message.startswith("acme/absent: dataset is not in the Hugging Face cache")
    assert "hf download --repo-type dataset acme/absent" in message and "\n" not in message


@pytest.mark.slow
def test_data_check_reads_a_cached_dataset_with_hf_hub_offline(tmp_path, tiny_llama):
    home = tmp_path / "hf"
    write_snapshot(home, "acme/qa", {
        "data/train-00000-of-00001.parquet": parquet_bytes([chat("add 1 2", "sum 3")] * 3),
        "data/test-00000-of-00001.parquet": parquet_bytes([chat("add 2 2", "sum 4")])})
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "mlxsft", "data", "check", "acme/qa", "--model", str(tiny_llama),
           "--json"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])["summary"]
    assert [(s["split"], s["records"], s["duplicates"]) for s in summary] == [
        ("train", 3, 2), ("test", 1, 0)]
    assert summary[0]["path"] == "acme/qa/data/train-00000-of-00001.parquet"
    done = subprocess.run(cmd[:5] + ["acme/missing"] + cmd[6:], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert done.stderr.startswith("mlxsft: error: acme/missing: dataset is not in the Hugging "
                                  "Face cache")
