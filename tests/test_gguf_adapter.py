"""The LoRA adapter as llama.cpp's adapter GGUF: applying it as llama.cpp does
(W + alpha / r * B A, on the base GGUF's tensors) gives the fused GGUF's weights."""

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def adapter(tiny_llama, tiny_data, tmp_path_factory):
    from test_fuse import train_adapter

    return train_adapter(tiny_llama, tiny_data, tmp_path_factory.mktemp("runs") / "run",
                         iters=6, lora_layers=2)


@pytest.mark.slow
def test_adapter_gguf_applied_as_llama_cpp_does_gives_the_fused_weights(tiny_llama, adapter,
                                                                          tmp_path, capsys):
    from gguf import GGUFReader

    from mlxsft.cli import main
    from mlxsft.export.fuse import fuse
    from mlxsft.gguf.writer import tokenizer_metadata, write_gguf
    from mlxsft.models import load_model

    out = tmp_path / "lora.gguf"
    assert main(["export-adapter", "--adapter", str(adapter), "--format", "gguf",
                 "--out", str(out)]) == 0
    assert "llama.cpp LoRA adapter GGUF" in capsys.readouterr().out
    reader = GGUFReader(str(out))
    fields = {k: f.contents() for k, f in reader.fields.items()}
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    assert fields["general.architecture"] == "llama"
    lora = {t.name: np.array(t.data) for t in reader.tensors}
    assert "blk.1.attn_q.weight.lora_a" in lora and "blk.1.attn_v.weight.lora_b" in lora
    rank = lora["blk.1.attn_q.weight.lora_a"].shape[0]
    scale = fields["adapter.lora.alpha"] / rank

    base = load_model(str(tiny_llama))
    base_gguf = tmp_path / "base.gguf"
    write_gguf(base_gguf, base.model, base.config, tokenizer_metadata(base), "F32")
    fused_gguf = tmp_path / "fused.gguf"
    fuse(adapter, fused_gguf, fmt="gguf", dtype="float32")
    before = {t.name: np.array(t.data) for t in GGUFReader(str(base_gguf)).tensors}
    after = {t.name: np.array(t.data) for t in GGUFReader(str(fused_gguf)).tensors}
    adapted = {n.removesuffix(".lora_a") for n in lora if n.endswith(".lora_a")}
    assert adapted and all(n in before for n in adapted)
    for name in before:
        if name in adapted:
            delta = scale * lora[f"{name}.lora_b"] @ lora[f"{name}.lora_a"]
            np.testing.assert_allclose(before[name] + delta, after[name], atol=2e-6)
            assert np.abs(delta).max() > 1e-4  # the adapter did something to check
        else:
            np.testing.assert_array_equal(before[name], after[name])
