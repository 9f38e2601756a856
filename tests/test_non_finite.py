"""Non-finite numbers are failures, never results: an adapter with NaN weights, a model
whose loss is NaN, and a fused model whose verification is NaN each stop the command
with one line and a non-zero exit, and nothing is written."""

import json
import os
import shutil

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from mlxsft.cli import main


def one_error_line(capsys):
    err = capsys.readouterr().err
    assert err.startswith("mlxsft: error: ") and err.count("\n") == 1, err
    return err


@pytest.fixture(scope="module")
def adapter(tiny_llama, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", str(tiny_data), "--model", str(tiny_llama), "--out", str(out),
                 "--iters", "2", "--batch-size", "4", "--steps-per-eval", "0"]) == 0
    return out


@pytest.fixture
def nan_adapter(adapter, tmp_path):
    broken = tmp_path / "nan-adapter"
    shutil.copytree(adapter, broken)
    weights = load_file(str(broken / "adapters.safetensors"))
    # Keep the save id and step: the file must look like a whole save, only diverged.
    with safe_open(str(broken / "adapters.safetensors"), "np") as f:
        metadata = f.metadata()
    name = sorted(k for k in weights if k.endswith("lora_b"))[0]
    weights[name] = weights[name].copy()
    weights[name].flat[3] = np.nan
    weights[name].flat[5] = np.inf
    save_file(weights, str(broken / "adapters.safetensors"), metadata=metadata)
    return broken, name


@pytest.fixture
def nan_base(tiny_llama, tmp_path):
    base = tmp_path / "nan-base"
    shutil.copytree(tiny_llama, base)
    weights = load_file(str(base / "model.safetensors"))
    name = sorted(k for k in weights if k.endswith("mlp.down_proj.weight"))[0]
    weights[name] = weights[name].copy()
    weights[name][:] = np.nan
    save_file(weights, str(base / "model.safetensors"), metadata={"format": "mlx"})
    return base


def test_an_adapter_with_nan_weights_is_refused_by_fuse_eval_and_export(
        nan_adapter, tiny_data, tmp_path, capsys):
    broken, name = nan_adapter
    capsys.readouterr()
    expected = (f"mlxsft: error: {broken / 'adapters.safetensors'}: {name} has 2 NaN or "
                "infinite values: the run diverged; use an earlier checkpoint or train again "
                "with a lower --learning-rate\n")
    assert main(["fuse", "--adapter", str(broken), "--out", str(tmp_path / "fused")]) == 2
    assert one_error_line(capsys) == expected
    assert main(["eval", str(tiny_data), "--adapter", str(broken)]) == 2
    assert one_error_line(capsys) == expected
    assert main(["export-adapter", "--adapter", str(broken), "--out",
                 str(tmp_path / "peft")]) == 2
    assert one_error_line(capsys) == expected
    assert sorted(os.listdir(tmp_path)) == ["nan-adapter"]


def test_a_nan_loss_is_an_error_not_a_result(nan_base, tiny_data, capsys):
    capsys.readouterr()
    assert main(["eval", str(tiny_data), "--model", str(nan_base), "--json"]) == 2
    err = one_error_line(capsys)
    assert f"{tiny_data / 'valid.jsonl'}: the loss of {nan_base} is nan (non-finite)" in err


def test_fuse_refuses_to_publish_a_model_whose_verification_is_nan(
        adapter, nan_base, tmp_path, capsys):
    capsys.readouterr()
    out = tmp_path / "fused"
    assert main(["fuse", "--adapter", str(adapter), "--model", str(nan_base), "--out",
                 str(out)]) == 2
    err = one_error_line(capsys)
    assert f"--out {out}: verification on" in err and "base loss nan" in err
    assert "nothing was written" in err
    assert sorted(os.listdir(tmp_path)) == ["nan-base"]


def test_fuse_refuses_a_fused_model_that_alone_is_nan(adapter, tmp_path, monkeypatch, capsys):
    # Base and base + adapter are finite; only the written model is not (as when float16
    # overflows): still nothing is published.
    import mlxsft.export.fuse as fuse_module

    real = fuse_module.verify_written

    def nan_fused(*args, **kwargs):
        v = real(*args, **kwargs)
        v.loss_fused, v.max_logit_diff = float("nan"), float("inf")
        return v

    monkeypatch.setattr(fuse_module, "verify_written", nan_fused)
    capsys.readouterr()
    out = tmp_path / "fused"
    assert main(["fuse", "--adapter", str(adapter), "--out", str(out), "--json"]) == 2
    err = one_error_line(capsys)
    assert "(fused loss nan, max |logit diff| inf)" in err
    assert os.listdir(tmp_path) == []


def test_a_nan_logit_difference_is_not_hidden_by_max():
    from mlxsft.export.verify import _max_abs_diff

    tuned = [np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32)]
    fused = [np.ones((2, 3), np.float32), np.full((2, 3), np.nan, np.float32)]
    assert np.isnan(_max_abs_diff(tuned, fused))
    assert _max_abs_diff(tuned, [fused[0], fused[0]]) == 1.0
