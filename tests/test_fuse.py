"""Fusing: W' = W + scale * B A checked in NumPy against the files written, the fused
model against base + adapter (mlxsft eval, mlx-lm, transformers), quantized bases and
re-quantized exports, and failures that leave nothing behind."""

import json
import os
import shutil

import mlx.core as mx
import numpy as np
import pytest
from helpers.tiny import save_model_dir
from safetensors.numpy import load_file

from mlxsft.errors import UserError

FILES = ["README.md", "chat_template.jinja", "config.json", "model.safetensors",
         "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json"]


def train_adapter(model, data, out, **overrides):
    from mlxsft.config import TrainConfig
    from mlxsft.train import train

    config = dict(data=str(data), model=str(model), out=str(out), iters=20, batch_size=8,
                  learning_rate=1e-3, steps_per_eval=0)
    for _ in train(TrainConfig(**{**config, **overrides})):
        pass
    return out


def lora_deltas(adapter_dir):
    """{module: scale * B A} in float64 from the adapter's files (lora_a is A^T, lora_b B^T)."""
    weights = load_file(str(adapter_dir / "adapters.safetensors"))
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    scale = config["lora_parameters"]["scale"]
    assert scale == config["lora_alpha"] / config["lora_parameters"]["rank"]
    modules = {k.rsplit(".", 1)[0] for k in weights}
    return {m: scale * (weights[f"{m}.lora_b"].T.astype(np.float64) @ weights[f"{m}.lora_a"].T)
            for m in modules}


def logits_of(model, tokens):
    return np.array(model(mx.array(tokens)[None]).astype(mx.float32))[0]


def reference_logits(base, adapter, tokens):
    from mlxsft.adapters import load_for_inference

    return logits_of(load_for_inference(str(base), adapter).model, tokens)


@pytest.fixture(scope="module")
def adapter(tiny_llama, tiny_data, tmp_path_factory):
    return train_adapter(tiny_llama, tiny_data, tmp_path_factory.mktemp("runs") / "run")


@pytest.fixture(scope="module")
def fused_hf(adapter, tmp_path_factory):
    from mlxsft.export.fuse import fuse

    out = tmp_path_factory.mktemp("fused") / "model"
    return fuse(adapter, out, fmt="hf", dtype="float32")


def test_fused_weights_are_w_plus_scale_b_a(tiny_llama, adapter, fused_hf):
    out = fused_hf.out
    assert sorted(os.listdir(out)) == FILES
    assert os.listdir(out.parent) == ["model"]  # no staging directory left behind
    base = load_file(str(tiny_llama / "model.safetensors"))
    fused = load_file(str(out / "model.safetensors"))
    assert fused.keys() == base.keys()
    deltas = lora_deltas(adapter)
    assert len(deltas) == 14  # 7 projections x 2 layers
    for name, w in base.items():
        expected = w.astype(np.float64) + deltas.get(name.removesuffix(".weight"), 0)
        assert fused[name].dtype == np.float32
        np.testing.assert_allclose(fused[name], expected, rtol=0, atol=2e-6, err_msg=name)
    assert sum(not np.array_equal(fused[n], base[n]) for n in base) == 14
    config = json.loads((out / "config.json").read_text())
    base_config = json.loads((tiny_llama / "config.json").read_text())
    assert config == {**base_config, "architectures": ["LlamaForCausalLM"],
                      "torch_dtype": "float32"}


def test_verification_matches_independent_evaluation(tiny_llama, tiny_data, adapter, fused_hf):
    from mlxsft.evaluate import evaluate_data

    v = fused_hf.verification
    assert (v.source, v.records, v.tokenizer_matches) == ("valid.jsonl", 8, True)
    assert v.max_logit_diff < 1e-4 and v.compared_positions > 100
    base = evaluate_data(str(tiny_data), str(tiny_llama))
    tuned = evaluate_data(str(tiny_data), str(tiny_llama), str(adapter))
    fused = evaluate_data(str(tiny_data), str(fused_hf.out))
    assert v.supervised_tokens == tuned.supervised_tokens
    assert v.loss_base == pytest.approx(base.loss, rel=1e-5)
    assert v.loss_tuned == pytest.approx(tuned.loss, rel=1e-5)
    assert v.loss_fused == pytest.approx(fused.loss, rel=1e-5)
    assert v.loss_fused == pytest.approx(v.loss_tuned, abs=1e-5) and v.loss_tuned < v.loss_base - 1
    assert fused_hf.warnings == [] and fused_hf.notes == []
    card = (fused_hf.out / "README.md").read_text()
    valid_sha = json.loads((adapter / "adapter_config.json").read_text())["data"][1]["sha256"]
    for text in (f"`{tiny_llama.name}`", f"`{adapter.name}`", "LoRA rank 8, alpha 16", valid_sha,
                 "`valid.jsonl`", f"| base | {v.loss_base:.4f} |",
                 f"| this model | {v.loss_fused:.4f} |"):
        assert text in card
    assert "/tmp" not in card and str(tiny_llama.parent) not in card  # names, not paths


def test_mlx_lm_loads_the_fused_model(tiny_llama, adapter, fused_hf):
    from mlx_lm import load

    model, tokenizer = load(str(fused_hf.out))
    tokens = tokenizer.encode("hello world, the answer is 42")
    np.testing.assert_allclose(logits_of(model, tokens),
                               reference_logits(tiny_llama, adapter, tokens), atol=1e-4)


def test_transformers_loads_the_hf_export(tiny_llama, adapter, fused_hf):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(fused_hf.out))
    assert model.dtype == torch.float32
    tokens = [5, 17, 99, 3, 250, 7]
    with torch.no_grad():
        logits = model(torch.tensor([tokens])).logits[0].numpy()
    np.testing.assert_allclose(logits, reference_logits(tiny_llama, adapter, tokens), atol=1e-4)


def unpack_affine(packed, scales, biases, group_size, bits):
    """MLX's affine quantization undone in NumPy: element k of a row is bit field k of the
    little-endian uint32 stream; value = scale * q + bias per group."""
    per_word = 32 // bits
    shifts = np.arange(per_word, dtype=np.uint32) * bits
    q = (packed[..., None] >> shifts) & ((1 << bits) - 1)
    q = q.reshape(packed.shape[0], -1).astype(np.float64)
    groups = q.reshape(q.shape[0], -1, group_size)
    return (groups * scales[..., None] + biases[..., None]).reshape(q.shape)


@pytest.mark.slow
def test_a_quantized_base_is_dequantized_and_fused_in_float16(tiny_data, tmp_path):

    from mlxsft.export.fuse import fuse

    base = save_model_dir(tmp_path / "q4", quantize_bits=4)
    run = train_adapter(base, tiny_data, tmp_path / "run")
    result = fuse(run, tmp_path / "fused")
    assert (result.dtype, result.quantization) == ("float16", None)
    config = json.loads((tmp_path / "fused" / "config.json").read_text())
    assert "quantization" not in config and "quantization_config" not in config
    stored = load_file(str(base / "model.safetensors"))
    fused = load_file(str(tmp_path / "fused" / "model.safetensors"))
    assert not any(k.endswith((".scales", ".biases")) for k in fused)
    deltas = lora_deltas(run)
    for name, w in fused.items():
        module = name.removesuffix(".weight")
        assert w.dtype == np.float16, name
        expected = stored[name]
        if f"{module}.scales" in stored:
            expected = unpack_affine(stored[name], stored[f"{module}.scales"],
                                     stored[f"{module}.biases"], 32, 4)
        expected = expected + deltas.get(module, 0)
        # One rounding to float16 (half an ulp, 2^-11 relative) of the float32 sum.
        np.testing.assert_allclose(w, expected, rtol=1e-3, atol=1e-6, err_msg=name)
    assert result.verification.max_logit_diff < 0.05
    assert abs(result.verification.loss_fused - result.verification.loss_tuned) < 1e-3


def test_requantized_export_says_how_much_tuning_it_lost(tiny_llama, tiny_data, adapter,
                                                         tmp_path, monkeypatch, capsys):
    from mlx_lm import load

    import mlxsft.export.verify
    from mlxsft.cli import main
    from mlxsft.evaluate import evaluate_data

    # At 4 bits the tiny model keeps ~99% of its (large) improvement: lower the bar so
    # the warning shows, and check its numbers against independent evaluations.
    monkeypatch.setattr(mlxsft.export.verify, "LOST_SHARE", 0.001)
    out = tmp_path / "q4"
    assert main(["fuse", "--adapter", str(adapter), "--out", str(out), "--quantize", "4"]) == 0
    stdout, stderr = capsys.readouterr()
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"] == config["quantization_config"] == {"group_size": 64,
                                                                        "bits": 4}
    load(str(out))
    base = evaluate_data(str(tiny_data), str(tiny_llama)).loss
    tuned = evaluate_data(str(tiny_data), str(tiny_llama), str(adapter)).loss
    fused = evaluate_data(str(tiny_data), str(out)).loss
    kept = (base - fused) / (base - tuned)
    assert 0.9 < kept < 1 and fused > tuned
    assert stdout.splitlines()[0] == (f"fused {adapter} into {tiny_llama.name} -> {out} (mlx, "
                                      "float32, quantized 4-bit (group size 64))")
    assert f"loss base {base:.4f}, tuned {tuned:.4f}, fused {fused:.4f} nats/token " \
           f"(keeps {kept:.1%} of the tuning's improvement)" in stdout
    assert stderr == (f"mlxsft: warning: quantizing to 4-bit (group size 64) moved the loss "
                      f"on 8 held-out records: base {base:.4f}, tuned {tuned:.4f}, fused "
                      f"{fused:.4f} nats/token; it keeps {kept:.0%} of the improvement "
                      f"tuning made, losing {1 - kept:.0%}; export in full precision (drop "
                      "--quantize) or try --quantize 8\n")


@pytest.mark.parametrize("overrides, message", [
    ({"hidden_size": 96}, "(hidden_size 64), but --model"),
    ({"intermediate_size": 96}, "does not fit --model"),
])
def test_a_mismatched_base_is_one_line_and_writes_nothing(adapter, tmp_path, overrides,
                                                           message):

    from mlxsft.export.fuse import fuse

    other = save_model_dir(tmp_path / "other", **overrides)
    with pytest.raises(UserError) as e:
        fuse(adapter, tmp_path / "out", model=str(other))
    assert message in str(e.value) and "\n" not in str(e.value)
    assert os.listdir(tmp_path) == ["other"]


def test_refusals_before_any_work(adapter, tmp_path):
    from mlxsft.export.fuse import fuse

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("")
    with pytest.raises(UserError, match="already exists; choose a new path"):
        fuse(adapter, tmp_path / "taken")
    with pytest.raises(UserError, match="transformers cannot read MLX's quantized"):
        fuse(adapter, tmp_path / "out", fmt="hf", quantize=4)
    assert os.listdir(tmp_path) == ["taken"]


def test_a_crash_while_writing_leaves_nothing(adapter, tmp_path, monkeypatch):
    import mlxsft.export.hf
    import mlxsft.export.staging
    from mlxsft.export.fuse import fuse

    def crash(directory, *args, **kwargs):
        (directory / "model.safetensors").write_bytes(b"half a file")
        raise OSError("No space left on device")

    monkeypatch.setattr(mlxsft.export.hf, "write_model_dir", crash)
    with pytest.raises(OSError):
        fuse(adapter, tmp_path / "out")
    assert os.listdir(tmp_path) == []


def test_built_in_prompts_when_the_validation_data_is_gone(tiny_llama, adapter, tmp_path):
    from mlxsft.export.fuse import fuse

    moved = tmp_path / "adapter"
    moved.mkdir()
    shutil.copy(adapter / "adapters.safetensors", moved)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["data"][1]["path"] = str(tmp_path / "gone.jsonl")
    (moved / "adapter_config.json").write_text(json.dumps(config))
    # Without its run's config.yaml the adapter knows its base by name only.
    result = fuse(moved, tmp_path / "out", model=str(tiny_llama), dtype="float32")
    v = result.verification
    assert (v.source, v.records) == ("built-in prompts", 4)
    assert result.notes == [f"the run's validation data {tmp_path / 'gone.jsonl'} is gone; "
                            "verifying on built-in prompts instead"]
    assert v.max_logit_diff < 1e-4


def test_an_unwritable_out_is_refused_before_any_work(adapter, tmp_path, capsys):
    from mlxsft.cli import main

    (tmp_path / "afile").write_text("")
    assert main(["fuse", "--adapter", str(adapter), "--out", str(tmp_path / "afile" / "m")]) == 2
    assert capsys.readouterr().err == (f"mlxsft: error: --out {tmp_path / 'afile' / 'm'}: "
                                       f"{tmp_path / 'afile'} is a file, not a directory; "
                                       "choose another path (nothing was written)\n")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert main(["fuse", "--adapter", str(adapter), "--out", str(locked / "m")]) == 2
        assert "cannot write in" in capsys.readouterr().err
        assert os.listdir(locked) == []


def test_a_full_disk_is_one_line_and_leaves_nothing(adapter, tmp_path, monkeypatch, capsys):
    import errno

    import mlxsft.export.hf
    import mlxsft.export.staging
    from mlxsft.cli import main

    def full(directory, *args, **kwargs):
        (directory / "model.safetensors").write_bytes(b"half a file")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(mlxsft.export.hf, "write_model_dir", full)
    assert main(["fuse", "--adapter", str(adapter), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == (f"mlxsft: error: --out {tmp_path / 'out'}: writing "
                                       "failed (No space left on device); nothing was written "
                                       "(free some space or choose another path)\n")
    assert os.listdir(tmp_path) == []
    monkeypatch.setattr(mlxsft.export.staging.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(
        10**6, 10**6 - 1000, 1000))
    with pytest.raises(UserError, match="MiB free; free some space"):
        from mlxsft.export.fuse import fuse

        fuse(adapter, tmp_path / "out")
    assert os.listdir(tmp_path) == []


def test_float16_scales_are_dequantized_exactly(tiny_data, tmp_path):
    """mx.dequantize computes in the scales' dtype: float16 scales (as in real quantized
    models and GGUF Q4_1/Q8_0) must be widened first, or each weight is rounded to float16."""

    from mlxsft.export.fuse import fuse

    base = save_model_dir(tmp_path / "q4", quantize_bits=4)
    stored = load_file(str(base / "model.safetensors"))
    stored = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in stored.items()}
    mx.save_safetensors(str(base / "model.safetensors"),
                        {k: mx.array(v) for k, v in stored.items()}, metadata={"format": "mlx"})
    run = train_adapter(base, tiny_data, tmp_path / "run", iters=2)
    fuse(run, tmp_path / "fused", dtype="float32")
    fused = load_file(str(tmp_path / "fused" / "model.safetensors"))
    deltas = lora_deltas(run)
    for name, w in fused.items():
        module = name.removesuffix(".weight")
        if f"{module}.scales" in stored:
            exact = unpack_affine(stored[name], stored[f"{module}.scales"].astype(np.float64),
                                  stored[f"{module}.biases"].astype(np.float64), 32, 4)
            np.testing.assert_allclose(w, exact + deltas.get(module, 0), rtol=1e-6, atol=1e-6,
                                       err_msg=name)
