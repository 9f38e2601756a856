"""Exports for other tools: the adapter in PEFT's layout (names, shapes and the alpha / r
convention against mlx-lm's LoRA math in NumPy, then loaded by peft where installed),
and GGUF files read back by the gguf package's reader and by mlxsft's own loader."""

import json
import os
import shutil

import numpy as np
import pytest
from helpers.tiny import corpus, save_model_dir
from safetensors import safe_open
from safetensors.numpy import load_file
from test_fuse import logits_of, lora_deltas, reference_logits, train_adapter

from mlxsft.errors import UserError


@pytest.fixture(scope="module")
def adapter(tiny_llama, tiny_data, tmp_path_factory):
    return train_adapter(tiny_llama, tiny_data, tmp_path_factory.mktemp("runs") / "run")


@pytest.fixture(scope="module")
def last_layer_adapter(tiny_llama, tiny_data, tmp_path_factory):
    """LoRA on q and v of the last layer only: PEFT must be told which layers."""
    return train_adapter(tiny_llama, tiny_data, tmp_path_factory.mktemp("runs") / "last",
                         lora_layers=1, lora_targets=["q_proj", "v_proj"])


# -- PEFT ---------------------------------------------------------------------------------
def test_peft_layout_reproduces_mlx_lm_lora_math():
    from mlxsft.export.peft import peft_config, peft_tensors

    rng = np.random.default_rng(0)
    rank, scale, n_in, n_out = 4, 2.5, 24, 40
    module = "model.layers.3.mlp.up_proj"
    lora_a = rng.standard_normal((n_in, rank)).astype(np.float32)
    lora_b = rng.standard_normal((rank, n_out)).astype(np.float32)
    tensors = peft_tensors({f"{module}.lora_a": lora_a, f"{module}.lora_b": lora_b})
    a = tensors[f"base_model.model.{module}.lora_A.weight"]
    b = tensors[f"base_model.model.{module}.lora_B.weight"]
    assert len(tensors) == 2 and a.shape == (rank, n_in) and b.shape == (n_out, rank)
    config = peft_config({"lora_parameters": {"rank": rank, "scale": scale, "dropout": 0.0},
                          "num_hidden_layers": 4}, [module], "org/base")
    x = rng.standard_normal((5, n_in))
    mlx_lm_update = scale * (x @ lora_a) @ lora_b  # mlx_lm LoRALinear.__call__
    peft_update = (x @ a.T) @ b.T * (config["lora_alpha"] / config["r"])  # peft Linear.forward
    np.testing.assert_allclose(peft_update, mlx_lm_update, rtol=1e-6)
    assert (config["r"], config["lora_alpha"]) == (4, 10)
    assert (config["target_modules"], config["layers_to_transform"]) == (["mlp.up_proj"], [3])


def test_export_adapter_writes_the_peft_layout(tiny_llama, last_layer_adapter, tmp_path, capsys):
    from mlxsft.cli import main

    out = tmp_path / "peft"
    assert main(["export-adapter", "--adapter", str(last_layer_adapter), "--format", "peft",
                 "--out", str(out)]) == 0
    assert capsys.readouterr().out == (f"wrote a PEFT LoRA adapter to {out}: 2 modules, r 8, "
                                       f"lora_alpha 16, base {tiny_llama.name}\n")
    assert sorted(os.listdir(out)) == ["README.md", "adapter_config.json",
                                       "adapter_model.safetensors"]
    assert json.loads((out / "adapter_config.json").read_text()) == {
        "base_model_name_or_path": tiny_llama.name, "peft_type": "LORA",
        "task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16, "lora_dropout": 0.0,
        "target_modules": ["self_attn.q_proj", "self_attn.v_proj"],
        "layers_to_transform": [1], "layers_pattern": "layers", "bias": "none",
        "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
        "modules_to_save": None, "init_lora_weights": True, "inference_mode": True,
        "rank_pattern": {}, "alpha_pattern": {}, "revision": None}
    mlx = load_file(str(last_layer_adapter / "adapters.safetensors"))
    peft = load_file(str(out / "adapter_model.safetensors"))
    prefix = "base_model.model.model.layers.1.self_attn"
    assert sorted(peft) == [f"{prefix}.{m}.{p}.weight" for m in ("q_proj", "v_proj")
                            for p in ("lora_A", "lora_B")]
    for m, out_features in (("q_proj", 64), ("v_proj", 32)):  # 2 KV heads of 16
        a, b = peft[f"{prefix}.{m}.lora_A.weight"], peft[f"{prefix}.{m}.lora_B.weight"]
        assert a.shape == (8, 64) and b.shape == (out_features, 8)
        np.testing.assert_array_equal(a, mlx[f"model.layers.1.self_attn.{m}.lora_a"].T)
        np.testing.assert_array_equal(b, mlx[f"model.layers.1.self_attn.{m}.lora_b"].T)
    with safe_open(str(out / "adapter_model.safetensors"), "np") as f:
        assert f.metadata() == {"format": "pt"}


def test_peft_loads_the_export_on_transformers(tiny_llama, last_layer_adapter, adapter,
                                               tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("peft")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from mlxsft.export.peft import export_peft

    tokens = [5, 17, 99, 3, 250, 7, 42]
    for run in (last_layer_adapter, adapter):
        export_peft(run, tmp_path / run.name)
        base = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32)
        model = PeftModel.from_pretrained(base, str(tmp_path / run.name))
        with torch.no_grad():
            logits = model(torch.tensor([tokens])).logits[0].numpy()
        np.testing.assert_allclose(logits, reference_logits(tiny_llama, run, tokens),
                                   atol=1e-4)


def test_peft_export_refusals(adapter, tmp_path):
    from mlxsft.export.peft import export_peft

    full = tmp_path / "full"
    full.mkdir()
    shutil.copy(adapter / "adapters.safetensors", full)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (full / "adapter_config.json").write_text(json.dumps({**config, "fine_tune_type": "full"}))
    with pytest.raises(UserError, match="a full fine-tune, not LoRA"):
        export_peft(full, tmp_path / "out")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("")
    with pytest.raises(UserError, match="already exists"):
        export_peft(adapter, tmp_path / "taken")
    assert sorted(os.listdir(tmp_path)) == ["full", "taken"]


# -- GGUF ---------------------------------------------------------------------------------
def gguf_fields(reader):
    return {name: field.contents() for name, field in reader.fields.items()}


def test_gguf_export_round_trips_through_our_loader(tiny_llama, tiny_data, adapter, tmp_path):
    from gguf import GGUFReader
    from mlx_lm.gguf import permute_weights

    from mlxsft.export.fuse import fuse
    from mlxsft.gguf.reader import load_gguf
    from mlxsft.models import load_tokenizer

    out = tmp_path / "tuned.gguf"
    result = fuse(adapter, out, fmt="gguf")
    assert os.listdir(tmp_path) == ["tuned.gguf"] and result.dtype == "float32"
    reader = GGUFReader(str(out))
    md = gguf_fields(reader)
    tokenizer = load_tokenizer(str(tiny_llama))
    assert (md["general.architecture"], md["general.file_type"]) == ("llama", 0)
    assert (md["tokenizer.ggml.model"], md["tokenizer.ggml.pre"]) == ("gpt2", "gpt-2")
    assert md["tokenizer.chat_template"] == tokenizer.chat_template
    assert md["tokenizer.ggml.tokens"] == tokenizer.convert_ids_to_tokens(list(range(512)))
    assert md["tokenizer.ggml.eos_token_id"] == tokenizer.eos_token_id
    assert md["llama.attention.head_count_kv"] == 2 and md["llama.rope.dimension_count"] == 16
    blocks = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down",
              "attn_norm", "ffn_norm"]
    tensors = {t.name: t for t in reader.tensors}
    assert sorted(tensors) == sorted(["token_embd.weight", "output_norm.weight"] + [
        f"blk.{i}.{b}.weight" for i in (0, 1) for b in blocks])  # tied: no output.weight
    assert {t.tensor_type.name for t in reader.tensors} == {"F32"}
    # q and k rows as llama.cpp's converter permutes them (mlx-lm's copy of its permute).
    base, deltas = load_file(str(tiny_llama / "model.safetensors")), lora_deltas(adapter)
    for proj, gguf_name, heads in (("q_proj", "attn_q", 4), ("k_proj", "attn_k", 2)):
        module = f"model.layers.1.self_attn.{proj}"
        fused = base[f"{module}.weight"] + deltas[module]
        np.testing.assert_allclose(tensors[f"blk.1.{gguf_name}.weight"].data,
                                   permute_weights(fused, 4, heads), atol=2e-6)
    # Our loader gives back the model and tokenizer: outputs and tokens match.
    model, hf_tokenizer, _ = load_gguf(out)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "add 2 3"},
                                          {"role": "assistant", "content": "sum 5"}],
                                         tokenize=False)
    tokens = tokenizer.encode(text, add_special_tokens=False)
    assert hf_tokenizer.encode(text, add_special_tokens=False) == tokens
    np.testing.assert_allclose(logits_of(model, tokens),
                               reference_logits(tiny_llama, adapter, tokens), atol=1e-4)
    assert result.verification.max_logit_diff < 1e-4 and result.verification.tokenizer_matches


def test_gguf_q8_0_export(tiny_llama, adapter, tmp_path):
    from gguf import GGUFReader, quants

    from mlxsft.export.fuse import fuse

    out = tmp_path / "tuned-q8_0.gguf"
    result = fuse(adapter, out, fmt="gguf", quantize=8)
    assert result.quantization == "Q8_0"
    reader = GGUFReader(str(out))
    assert gguf_fields(reader)["general.file_type"] == 7  # MOSTLY_Q8_0
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    norms = {f"blk.{i}.{b}_norm.weight" for i in (0, 1) for b in ("attn", "ffn")}
    assert {n for n, t in types.items() if t == "F32"} == {"output_norm.weight", *norms}
    assert set(types.values()) == {"F32", "Q8_0"}
    down = {t.name: t for t in reader.tensors}["blk.0.ffn_down.weight"]
    module = "model.layers.0.mlp.down_proj"
    fused = load_file(str(tiny_llama / "model.safetensors"))[f"{module}.weight"] + \
        lora_deltas(adapter)[module]
    values = quants.dequantize(down.data, down.tensor_type)
    # Q8_0: 32 weights share a scale d = max|w| / 127, rounded to float16 after rounding
    # w / d: each weight is off by at most d / 2 + 127 * |d - fp16(d)| <= d * (1/2 + 127/2048).
    step = np.abs(fused.reshape(-1, 32)).max(axis=1, keepdims=True) / 127
    error = np.abs(values - fused).reshape(-1, 32)
    assert np.all(error <= step * (0.5 + 127 / 2048)) and error.max() > 0.4 * step.min()
    v = result.verification
    assert 1e-4 < v.max_logit_diff < 0.5 and abs(v.loss_fused - v.loss_tuned) < 0.01


@pytest.mark.slow
def test_gguf_qwen2_keeps_biases_and_row_order(tiny_data, tmp_path):
    from gguf import GGUFReader

    from mlxsft.export.fuse import fuse

    base = save_model_dir(tmp_path / "qwen2", arch="qwen2")
    run = train_adapter(base, tiny_data, tmp_path / "run", lora_targets=["q_proj", "k_proj"])
    result = fuse(run, tmp_path / "qwen2.gguf", fmt="gguf")
    tensors = {t.name: t for t in GGUFReader(str(tmp_path / "qwen2.gguf")).tensors}
    module = "model.layers.0.self_attn.q_proj"
    fused = load_file(str(base / "model.safetensors"))[f"{module}.weight"] + \
        lora_deltas(run)[module]
    np.testing.assert_allclose(tensors["blk.0.attn_q.weight"].data, fused, atol=2e-6)  # as is
    assert "blk.0.attn_q.bias" in tensors and "blk.1.attn_v.bias" in tensors
    assert result.verification.max_logit_diff < 1e-4


def test_gguf_refusals_name_the_alternative():
    from mlxsft.gguf.writer import gguf_architecture

    with pytest.raises(UserError, match="model type 'gemma2' is not one mlxsft writes"):
        gguf_architecture({"model_type": "gemma2"})
    with pytest.raises(UserError, match="RoPE scaling 'llama3'.*--format hf"):
        gguf_architecture({"model_type": "llama", "rope_scaling": {"rope_type": "llama3"}})
    assert gguf_architecture({"model_type": "mistral"}) == "llama"


def test_pre_tokenizer_is_the_llama_cpp_one_that_tokenizes_alike():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from mlxsft.gguf.writer import PROBE_TEXT, hf_tokenizer_metadata

    # Llama 3's tokenizer.json: its split regex (digits in threes, case-insensitive
    # contractions), then byte-level without GPT-2's regex, whole-word vocabulary lookups.
    llama3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
              r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

    def tokenizer(regex):
        tok = Tokenizer(models.BPE(ignore_merges=regex is not None))
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=regex is None)
        tok.pre_tokenizer = byte_level if regex is None else pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(regex), behavior="isolated"), byte_level])
        tok.decoder = decoders.ByteLevel()
        tok.train_from_iterator(corpus() + [PROBE_TEXT] * 3, trainers.BpeTrainer(
            vocab_size=600, special_tokens=["<|endoftext|>"], show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")

    assert hf_tokenizer_metadata(tokenizer(None), 600)["tokenizer.ggml.pre"] == "gpt-2"
    md = hf_tokenizer_metadata(tokenizer(llama3), 602)
    assert md["tokenizer.ggml.pre"] == "llama-bpe"
    assert md["tokenizer.ggml.tokens"][-2:] == ["[PAD600]", "[PAD601]"]  # embedding rows
    assert md["tokenizer.ggml.token_type"][0] == 3 and md["tokenizer.ggml.token_type"][-1] == 5


@pytest.mark.parametrize("overrides, message", [
    ({"hidden_size": 96}, "(hidden_size 64), but the base"),
    ({"intermediate_size": 96}, "does not fit model.layers.0.mlp.down_proj.weight (64, 96)"),
])
def test_peft_export_refuses_a_base_the_adapter_does_not_fit(adapter, tmp_path, overrides,
                                                             message):

    from mlxsft.export.peft import export_peft

    other = save_model_dir(tmp_path / "other", **overrides)
    with pytest.raises(UserError) as e:
        export_peft(adapter, tmp_path / "out", base=str(other))
    assert message in str(e.value) and "\n" not in str(e.value)
    assert os.listdir(tmp_path) == ["other"]


def test_peft_export_of_an_mlx_quantized_base_asks_for_the_full_precision_one(tiny_data,
                                                                               tmp_path):

    from mlxsft.export.peft import export_peft

    base = save_model_dir(tmp_path / "q4", quantize_bits=4)
    run = train_adapter(base, tiny_data, tmp_path / "run", iters=2)
    result = export_peft(run, tmp_path / "peft")
    assert result.notes == [f"the base {base} is MLX-quantized, which transformers cannot "
                            "load; pass --base with the full-precision Hugging Face model it "
                            "came from"]


def test_checkpoint_shapes_come_from_the_headers_and_a_damaged_file_is_one_line(tmp_path):
    import shutil

    from mlxsft.export.hf import checkpoint_tensor_shapes

    model = save_model_dir(tmp_path / "m", hidden_size=64, intermediate_size=128)
    assert checkpoint_tensor_shapes(model)["model.layers.0.mlp.down_proj.weight"] == [64, 128]
    damaged = tmp_path / "d"
    shutil.copytree(model, damaged)
    (damaged / "model.safetensors").write_bytes(b"\x05")
    with pytest.raises(UserError) as e:
        checkpoint_tensor_shapes(damaged)
    assert "truncated or corrupt" in str(e.value) and "\n" not in str(e.value)
