"""A fused Hugging Face directory's tokenizer loads in transformers 4.x and 5.x alike and
tokenizes identically: transformers 5 saves `TokenizersBackend`, a class 4.x does not
have, so the export names `PreTrainedTokenizerFast` (both versions have it) and carries
the chat template inline as well as in chat_template.jinja.

The 4.x side runs in its own virtual environment per release (4.x and 5.x cannot share
one), made once under ~/.cache/mlxsft/test-venvs with pip; the test is skipped when that
cannot be done. Checked: 4.46 (the oldest pyproject.toml allows; it reads the inline
chat template only) and 4.57 (the release the defect was found with)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlxsft.cli import main

PROBE = """
import json, sys
import transformers
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
texts = json.loads(sys.argv[2])
chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4."}]
ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
print(json.dumps({"version": transformers.__version__, "ids": ids,
                  "decoded": [tok.decode(i) for i in ids],
                  "chat": tok.apply_chat_template(chat, tokenize=False),
                  "special": [tok.eos_token, tok.pad_token, tok.bos_token]}))
"""
TEXTS = ["Hello world, what is 12 x 7?", "<|im_start|>user\nhi<|im_end|>\n",
         "  spaces\tand\nnewlines ünïcödé 3.14"]
TRANSFORMERS_4 = ["4.46.*", "4.57.*"]


def probe(python, directory):
    done = subprocess.run([str(python), "-c", PROBE, str(directory), json.dumps(TEXTS)],
                          capture_output=True, text=True, timeout=300)
    return done.returncode, (json.loads(done.stdout.splitlines()[-1]) if done.returncode == 0
                             else done.stderr)


def transformers_4_python(release: str) -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    venv = cache / "mlxsft" / "test-venvs" / f"transformers-{release.rstrip('.*')}"
    python = venv / "bin" / "python"
    if not (venv / "ready").exists():
        shutil.rmtree(venv, ignore_errors=True)
        made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True)
        if made.returncode == 0:
            made = subprocess.run([str(python), "-m", "pip", "install", "-q",
                                   f"transformers=={release}", "jinja2"],
                                  capture_output=True, text=True, timeout=900)
        if made.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            pytest.skip(f"cannot make a transformers {release} environment")
        (venv / "ready").write_text("")
    return python


@pytest.fixture(scope="module")
def fused_hf(tiny_llama, tiny_data, tmp_path_factory):
    home = tmp_path_factory.mktemp("portable")
    run, out = home / "run", home / "fused"
    assert main(["train", str(tiny_data), "--model", str(tiny_llama), "--out", str(run),
                 "--iters", "2", "--batch-size", "4", "--steps-per-eval", "0"]) == 0
    assert main(["fuse", "--adapter", str(run), "--out", str(out), "--format", "hf",
                 "--dtype", "float32"]) == 0
    return out


def test_the_tokenizer_config_names_a_class_both_versions_have(fused_hf):
    config = json.loads((fused_hf / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert config["chat_template"] == (fused_hf / "chat_template.jinja").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("release", TRANSFORMERS_4)
def test_transformers_4_and_5_load_it_and_tokenize_identically(fused_hf, tmp_path, release):
    old_python = transformers_4_python(release)
    code, old = probe(old_python, fused_hf)
    assert code == 0, old
    code, new = probe(sys.executable, fused_hf)
    assert code == 0, new
    assert old.pop("version").startswith("4.") and new.pop("version").startswith("5.")
    assert old == new
    assert new["decoded"] == TEXTS and new["special"][0] == "<|im_end|>"
    # The check can fail: the config transformers 5 writes by itself does not load in 4.x.
    as_saved = tmp_path / "as-saved"
    shutil.copytree(fused_hf, as_saved)
    config = json.loads((as_saved / "tokenizer_config.json").read_text())
    (as_saved / "tokenizer_config.json").write_text(
        json.dumps(config | {"tokenizer_class": "TokenizersBackend"}))
    code, error = probe(old_python, as_saved)
    assert code != 0 and "TokenizersBackend does not exist" in error
