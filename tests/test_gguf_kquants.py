"""K-quant GGUF in and out: our Q4_K/Q5_K/Q6_K bytes de-quantized by the gguf package
(llama.cpp's reference Python), llama.cpp's Q4_K_M mix, and a tiny llama and qwen2 written
as Q4_K_M that load, train and fuse back to the same tensor types."""

import json

import mlx.core as mx
import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf import GGUFReader, quants  # noqa: E402

from mlxsft.gguf import kquants  # noqa: E402
from mlxsft.gguf.schemes import TypePlan, use_more_bits  # noqa: E402


def relative_rms(y, x):
    return float(np.sqrt(((y - x) ** 2).mean() / (x ** 2).mean()))


@pytest.mark.parametrize("kind, reference, bound", [
    ("Q4_K", "Q4_1", 0.075), ("Q5_K", "Q5_1", 0.038), ("Q6_K", "Q8_0", 0.019)])
def test_our_k_quant_bytes_dequantize_within_the_formats_error(kind, reference, bound):
    """Normal weights: 4.5/5.5/6.56 bits leave ~7% / ~3.6% / ~1.8% relative RMS error.
    Q4_K and Q5_K (32-weight sub-blocks, 6-bit scales) do at least as well as gguf's own
    Q4_1 / Q5_1 of the same sub-block size; a misplaced nibble or bit would be ~100%."""
    x = np.random.default_rng(0).standard_normal((32, 1024)).astype(np.float32) * 0.02
    x[3, 17] = 0.5  # an outlier, as real weight rows have
    x[5, :256] = 0  # an all-zero super-block
    data = kquants.quantize(x, kind)
    assert data.shape == (32, 1024 // 256 * gguf.GGML_QUANT_SIZES[T[kind]][1])
    y = quants.dequantize(data, T[kind])
    assert np.all(y[5, :256] == 0)
    err = relative_rms(y, x)
    assert err < bound
    if kind != "Q6_K":
        assert err <= relative_rms(quants.dequantize(quants.quantize(x, T[reference]),
                                                     T[reference]), x)
    else:  # two more bits than Q4_K: about a quarter of its error
        assert err < relative_rms(quants.dequantize(kquants.quantize(x, "Q4_K"), T.Q4_K), x) / 3


def test_exactly_representable_q4_k_and_q5_k_weights_come_back_exactly():
    """Weights d * sc * q - dmin * m with 6-bit sc, m and small integer q: the layout of
    every scale, min, nibble and fifth bit is pinned by an exact round trip."""
    rng = np.random.default_rng(1)
    for kind, nmax in (("Q4_K", 15), ("Q5_K", 31)):
        sc = rng.integers(1, 64, (4, 8, 1)).astype(np.float32)
        m = rng.integers(0, 64, (4, 8, 1)).astype(np.float32)
        q = rng.integers(0, nmax + 1, (4, 8, 32)).astype(np.float32)
        q[:, :, 0], q[:, :, 1] = 0, nmax  # each sub-block spans its whole range
        sc[:, 0], m[:, 0] = 63, 63  # d = dmin = 1/4, exactly
        x = ((sc * q - m) / 4).reshape(4, 256)
        got = quants.dequantize(kquants.quantize(x, kind), T[kind])
        np.testing.assert_array_equal(got, x)


def test_q4_k_m_mix_follows_llama_cpp():
    plan = TypePlan("q4_k_m", "F16", n_layers=8, has_output=False)
    more = [i for i in range(8) if use_more_bits(i, 8)]
    assert more == [0, 3, 6, 7]  # first/last eighth, then every third
    shape = (256, 512)
    assert plan.type_for("token_embd.weight", shape) == "Q6_K"  # tied: it is the output
    assert [plan.type_for(f"blk.{i}.attn_v.weight", shape) for i in range(8)] == \
        ["Q6_K" if i in more else "Q4_K" for i in range(8)]
    assert plan.type_for("blk.1.ffn_down.weight", shape) == "Q4_K"
    assert plan.type_for("blk.0.ffn_down.weight", shape) == "Q6_K"
    assert plan.type_for("blk.1.attn_q.weight", (64, 96)) == "Q5_0"  # not whole 256-blocks
    assert plan.type_for("blk.1.attn_q.weight", (64, 40)) == "F16"  # not whole 32-blocks
    assert plan.type_for("blk.1.attn_norm.weight", (256,)) == "F32"
    tied = TypePlan("q4_k_m", "F16", 8, has_output=True)
    assert tied.type_for("token_embd.weight", shape) == "Q4_K"
    assert tied.type_for("output.weight", shape) == "Q6_K"


# -- a tiny llama and qwen2 as Q4_K_M: load, train, fuse back ------------------------------
WIDE = dict(hidden_size=256, intermediate_size=512, num_attention_heads=4,
            num_key_value_heads=2)


def q4_k_m_gguf(tmp_path, arch):
    """A tiny model written as llama.cpp's Q4_K_M (gguf's writer, our K-quant encoder)."""
    from helpers.tiny import save_model_dir

    from mlxsft.gguf.writer import tokenizer_metadata, write_gguf
    from mlxsft.models import load_model

    hf = save_model_dir(tmp_path / f"{arch}-hf", arch=arch, **WIDE)
    loaded = load_model(str(hf))
    path = tmp_path / f"{arch}-Q4_K_M.gguf"
    types = write_gguf(path, loaded.model, loaded.config, tokenizer_metadata(loaded),
                       quant_type="q4_k_m")
    return hf, path, types


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_q4_k_m_model_loads_trains_and_fuses_back_to_the_same_types(tmp_path, tiny_data, arch):
    from test_fuse import train_adapter

    from mlxsft.export.fuse import fuse
    from mlxsft.gguf.reader import load_gguf
    from mlxsft.models import load_model

    hf, path, types = q4_k_m_gguf(tmp_path, arch)
    assert set(types.values()) == {"Q4_K", "Q6_K", "F32"}
    assert types["token_embd.weight"] == "Q6_K" and types["blk.1.ffn_down.weight"] == "Q6_K"
    assert types["blk.0.attn_q.weight"] == "Q4_K"

    # Loading: Q4_K -> MLX 4-bit exactly (a sub-block is an affine group of 32), Q6_K ->
    # MLX 8-bit re-quantized, said in the notes.
    notes = []
    model, _, config = load_gguf(path, notes=notes)
    assert config["quantization"]["bits"] == 4
    assert config["quantization"]["model.embed_tokens"] == {"group_size": 32, "bits": 8}
    assert any("Q6_K tensors re-quantized to MLX 8-bit" in n for n in notes)
    assert not any("Q4_K" in n for n in notes)
    reader = {t.name: t for t in GGUFReader(str(path)).tensors}
    q = model.model.layers[0].self_attn.q_proj
    ours = np.array(mx.dequantize(q.weight, q.scales.astype(mx.float32),
                                  q.biases.astype(mx.float32), group_size=32, bits=4))
    stored = quants.dequantize(reader["blk.0.attn_q.weight"].data, T.Q4_K)
    if arch == "llama":  # llama.cpp keeps llama's q rows permuted; the reader undoes it
        from mlxsft.gguf.writer import llama_cpp_permute

        ours = llama_cpp_permute(ours, 4)
    assert relative_rms(ours, stored) < 2e-3  # float16 scales and biases, nothing else
    floats, _, _ = load_gguf(path, dequantize=True)
    np.testing.assert_allclose(np.array(floats.model.layers[1].mlp.down_proj.weight),
                               quants.dequantize(reader["blk.1.ffn_down.weight"].data, T.Q6_K),
                               rtol=0, atol=1e-7)

    run = train_adapter(path, tiny_data, tmp_path / "run", iters=4)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics and np.isfinite([m.get("loss", 0) for m in metrics]).all()
    out = tmp_path / "tuned.gguf"
    result = fuse(run, out, fmt="gguf", quantize="same")
    written = {t.name: t.tensor_type.name for t in GGUFReader(str(out)).tensors}
    assert written == types
    fields = GGUFReader(str(out)).fields
    assert fields["general.file_type"].parts[-1][0] == gguf.LlamaFileType.MOSTLY_Q4_K_M
    assert result.quantization == "the source GGUF's types"
    assert result.verification.loss_fused < result.verification.loss_base + 0.05
    assert load_model(str(out)).config["quantization"]["bits"] == 4


def test_quantize_option_names_bits_or_a_llama_cpp_scheme():
    from mlxsft.errors import UserError
    from mlxsft.gguf.schemes import parse_quantize

    assert parse_quantize("8", "gguf") == 8 and parse_quantize(4, "mlx") == 4
    assert parse_quantize("Q4_K_M", "gguf") == "q4_k_m" and parse_quantize("same", "gguf") == "same"
    with pytest.raises(UserError, match="llama.cpp's schemes are for --format gguf"):
        parse_quantize("q4_k_m", "mlx")
    with pytest.raises(UserError, match="--quantize q9: use 4 or 8, or for GGUF one of q4_k_m"):
        parse_quantize("q9", "gguf")
