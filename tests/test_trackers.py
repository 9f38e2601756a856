"""`--report-to tensorboard,wandb`: the trackers get what metrics.jsonl gets, read back from
their own files with independent readers (TFRecord framing + protobuf; W&B's record log)."""

import glob
import json
import struct

import pytest

from mlxsft.checkpoints import read_metrics
from mlxsft.config import TrainConfig
from mlxsft.errors import UserError
from mlxsft.train import train


def _train(tiny_llama, tiny_data, out, report_to):
    return list(train(TrainConfig(data=str(tiny_data), model=str(tiny_llama), out=str(out),
                                  batch_size=8, iters=4, steps_per_report=2, steps_per_eval=2,
                                  samples=1, sample_max_tokens=3, report_to=report_to)))


def _tfrecords(path):
    """Records of a TFRecord file: uint64 length, uint32 crc, data, uint32 crc."""
    data = open(path, "rb").read()
    at = 0
    while at < len(data):
        (length,) = struct.unpack("<Q", data[at:at + 8])
        yield data[at + 12:at + 12 + length]
        at += 12 + length + 4


def test_tensorboard_event_file_holds_losses_rate_and_samples(tiny_llama, tiny_data, tmp_path):
    pytest.importorskip("tensorboardX")
    from tensorboardX.proto.event_pb2 import Event

    out = tmp_path / "run"
    _train(tiny_llama, tiny_data, out, ["tensorboard"])
    files = glob.glob(str(out / "tensorboard" / "events.out.tfevents.*"))
    assert len(files) == 1
    scalars, texts = {}, []
    for record in _tfrecords(files[0]):
        event = Event()
        event.ParseFromString(record)
        for value in event.summary.value:
            if value.HasField("simple_value"):
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
            elif value.metadata.plugin_data.plugin_name == "text":
                texts.append((value.tag, event.step))
    metrics = read_metrics(out)
    train_losses = [(m["step"], m["train_loss"]) for m in metrics if m["event"] == "train"]
    assert [s for s, _ in scalars["train/loss"]] == [s for s, _ in train_losses]
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([v for _, v in train_losses])
    evals = [(m["step"], m["val_loss"]) for m in metrics if m["event"] == "eval"]
    assert [s for s, _ in scalars["eval/loss"]] == [s for s, _ in evals] == [2, 4]
    assert [v for _, v in scalars["eval/loss"]] == pytest.approx([v for _, v in evals])
    assert {"train/learning_rate", "train/tokens_per_second", "train/peak_memory_gb",
            "samples/ended"} <= set(scalars)
    assert ("samples/text_summary", 2) in texts and ("samples/text_summary", 4) in texts


def _wandb_records(path):
    """Records of a W&B run log: a 7-byte header, then LevelDB-log blocks of 32 KiB with
    7-byte chunk headers (crc32, uint16 length, type: 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    at, pending = 7, b""
    while at + 7 <= len(data):
        left_in_block = 32768 - at % 32768
        if left_in_block < 7:
            at += left_in_block
            continue
        length, kind = struct.unpack("<HB", data[at + 4:at + 7])
        chunk = data[at + 7:at + 7 + length]
        at += 7 + length
        if kind in (1, 2):
            pending = chunk
        else:
            pending += chunk
        if kind in (1, 4):
            record = Record()
            record.ParseFromString(pending)
            yield record


def test_wandb_offline_run_holds_the_history(tiny_llama, tiny_data, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    _train(tiny_llama, tiny_data, out, ["wandb"])
    logs = glob.glob(str(out / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(logs) == 1
    history, config = [], {}
    for record in _wandb_records(logs[0]):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({(i.key or "/".join(i.nested_key)): i.value_json
                            for i in record.history.item})
        elif kind == "run":
            config.update({i.key: i.value_json for i in record.run.config.update})
    losses = [(int(h["_step"]), json.loads(h["train/loss"])) for h in history if "train/loss" in h]
    metrics = read_metrics(out)
    want = [(m["step"], m["train_loss"]) for m in metrics if m["event"] == "train"]
    assert [s for s, _ in losses] == [s for s, _ in want]
    assert [v for _, v in losses] == pytest.approx([v for _, v in want])
    assert any("eval/loss" in h for h in history)
    assert any(k.startswith("samples/table/") for h in history for k in h)
    assert json.loads(config["iters"]) == 4 and json.loads(config["report_to"]) == ["wandb"]


def test_a_missing_tracker_package_is_a_one_line_error_before_loading(tiny_data, tmp_path,
                                                                     monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(UserError, match=r"wandb package is not installed; pip install "
                                        r"'mlxsft\[wandb\]'"):
        list(train(TrainConfig(data=str(tiny_data), model=str(tmp_path / "no-such-model"),
                               out=str(tmp_path / "r"), report_to=["wandb"])))
    assert not (tmp_path / "r").exists()
