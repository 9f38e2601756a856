"""Fuse a trained adapter into its base and save the result, verified.

W' = W + scale * B A for every LoRA layer (mlx-lm's `LoRALinear.fuse`; its lora_a is
A^T [in, r] and lora_b is B^T [r, out], scale = alpha / rank). A quantized base is
de-quantized first and every sum is taken in float32, then rounded once to the output
dtype (the base's float dtype by default, float16 for a quantized base) and, on request,
re-quantized (`quantize`: 4 or 8 bits, MLX affine for --format mlx and Q4_1 / Q8_0 for
GGUF; or for GGUF a llama.cpp scheme such as q4_k_m, or `same` as the source GGUF).

Formats: "mlx" and "hf" write a Hugging Face model directory that `mlx_lm.load` opens;
"hf" also promises transformers can (full precision, weight names checked against the
base checkpoint's). "gguf" writes one llama.cpp file (`mlxsft.gguf.writer`); "ollama"
writes OUT/<name>.gguf and a Modelfile, "lmstudio" the GGUF where LM Studio finds it
(`mlxsft.export.handoff`).

Verification always runs: the files written are loaded back and run on a few held-out
records (the run's validation data when adapter_config.json names it, else built-in
ones) next to base + adapter: the max |logit difference| and the response-only loss of
base, tuned and fused (`mlxsft.export.verify`). An export that loses a noticeable share of
what tuning gained gets a warning with the numbers. Nothing appears at OUT unless all of
this succeeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mlxsft.errors import UserError
from mlxsft.export.verify import (HeldOut, Verification, logits_on, release_model,
                                 response_loss, verify_written)

FORMATS = ("mlx", "hf", "gguf", "ollama", "lmstudio")
GGUF_FORMATS = ("gguf", "ollama", "lmstudio")  # the ones that write a GGUF file
DTYPES = ("float16", "bfloat16", "float32")
@dataclass
class FuseResult:
    adapter: Path
    base: str
    out: Path
    format: str
    dtype: str
    quantization: str | None  # e.g. "4-bit (group size 64)" or "Q8_0"
    bits: int | str | None
    verification: Verification
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def render(self) -> str:
        v = self.verification
        stored = f"{self.dtype}, quantized {self.quantization}" if self.quantization else \
            self.dtype
        kept = f" (keeps {v.kept:.1%} of the tuning's improvement)" if v.kept is not None \
            and self.quantization else ""
        return "\n".join([
            f"fused {self.adapter} into {self.base} -> {self.out} ({self.format}, {stored})",
            *(f"note: {n}" for n in self.notes),
            f"verified on {v.records} held-out records from {v.source} "
            f"({v.supervised_tokens} supervised tokens): max |logit diff| vs base + adapter "
            f"{v.max_logit_diff:.3g}; loss base {v.loss_base:.4f}, tuned {v.loss_tuned:.4f}, "
            f"fused {v.loss_fused:.4f} nats/token{kept}"])

    def to_json(self) -> dict:
        v = self.verification
        return {"adapter": str(self.adapter), "base": self.base, "out": str(self.out),
                "format": self.format, "dtype": self.dtype,
                "quantization": self.quantization, "verification": {
                    **v.__dict__, "kept_share_of_improvement": v.kept},
                "notes": self.notes, "warnings": self.warnings}


# -- the weights --------------------------------------------------------------------------
def stored_float_dtype(loaded) -> str:
    """The base's float dtype as stored (float16 when it is quantized)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    if loaded.quantization:
        return "float16"
    counts: dict = {}
    for _, p in tree_flatten(loaded.model.parameters()):
        if mx.issubdtype(p.dtype, mx.floating):
            counts[p.dtype] = counts.get(p.dtype, 0) + p.size
    dtype = max(counts, key=counts.get) if counts else mx.float16
    return {mx.float32: "float32", mx.bfloat16: "bfloat16"}.get(dtype, "float16")


def fuse_lora_layers(model, dtype: str) -> int:
    """Fuse every adapter layer into its linear in place, in float32, then cast the whole
    model to `dtype`. Returns the number of layers fused."""
    import mlx.core as mx
    from mlx.utils import tree_unflatten
    from mlx_lm.utils import dequantize_model

    from mlxsft.models import cast_floating

    # float32 scales and biases first: de-quantizing with float16 ones rounds every weight
    # to float16 (up to an ulp) before the sum. Then one rounding, at the end.
    cast_floating(model, mx.float32)
    dequantize_model(model)  # also the linears inside LoRA layers
    fused = [(name, module.fuse(dequantize=True)) for name, module in model.named_modules()
             if hasattr(module, "fuse")]
    if fused:
        model.update_modules(tree_unflatten(fused))
    cast_floating(model, getattr(mx, dtype))
    mx.eval(model.parameters())
    return len(fused)


def _same_base(adapter_dir: Path, adapter_config: dict, model: str) -> bool:
    from mlxsft.provenance import local_base, public_name

    name, here = adapter_config.get("base_model"), local_base(adapter_dir, adapter_config)
    if not name and not here:
        return True  # nothing recorded to compare with
    if here and Path(model).exists():
        return Path(model).resolve() == Path(here).resolve()
    return model in (name, here) or public_name(model) == name


# -- the command --------------------------------------------------------------------------
def fuse(adapter: str | Path, out: str | Path, model: str | None = None, fmt: str = "mlx",
         dtype: str | None = None, quantize: int | str | None = None,
         lmstudio_dir: str | Path | None = None) -> FuseResult:
    """Fuse `adapter` into its base (or `model`), write OUT in `fmt`, verify, report.
    For "lmstudio", OUT is the model's name (`publisher/name` or `name`)."""
    from mlxsft.checkpoints import read_adapter_config
    from mlxsft.export.staging import check_free_space, check_out_free, check_out_writable, staged
    from mlxsft.gguf.schemes import parse_quantize
    from mlxsft.templates import use_adapter_template

    adapter_dir, out = Path(adapter), Path(out)
    if fmt in FORMATS:
        quantize = parse_quantize(quantize, "gguf" if fmt in GGUF_FORMATS else fmt)
    _check_options(fmt, dtype, quantize)
    if fmt == "lmstudio":
        from mlxsft.export.handoff import lmstudio_path

        out = lmstudio_path(str(out), lmstudio_dir)
        out.parent.mkdir(parents=True, exist_ok=True)
    check_out_free(out)
    check_out_writable(out)
    adapter_config = read_adapter_config(adapter_dir)
    loaded, notes = _load_base(adapter_dir, adapter_config, model)
    # The chat template (and template kwargs) the adapter was trained with: held-out
    # masking renders with it, and every output format carries it.
    use_adapter_template(loaded.tokenizer, adapter_config)
    out_dtype = dtype or stored_float_dtype(loaded)
    held_out = HeldOut.of(adapter_dir, adapter_config, loaded.tokenizer)
    notes += held_out.notes
    tokenizer_md, source = None, {}
    if fmt in GGUF_FORMATS:  # refused here (architecture, tokenizer) rather than after work
        from mlxsft.gguf.writer import gguf_architecture, tokenizer_metadata

        gguf_architecture(loaded.config)
        tokenizer_md = {**tokenizer_metadata(loaded, held_out.texts()),
                        **_end_of_turn_metadata(held_out.masker, loaded.tokenizer)}
        source = _source_types(loaded, quantize)
    reference = _base_and_tuned(loaded, adapter_dir, held_out)
    config, quantization = _fuse_weights(loaded, out_dtype, fmt, quantize)
    notes += _check_names(loaded, fmt, quantize)
    check_free_space(out, _written_bytes(loaded.model, out_dtype, fmt, quantize))

    with staged(out, single_file=fmt in ("gguf", "lmstudio")) as target:
        written = target
        if fmt in GGUF_FORMATS:
            from mlxsft.gguf.writer import GGUF_TYPE_OF_DTYPE, write_gguf

            if fmt == "ollama":
                written = target / f"{out.name}.gguf"
            write_gguf(written, loaded.model, config, tokenizer_md, GGUF_TYPE_OF_DTYPE[out_dtype],
                       quantize if isinstance(quantize, str) else quantization,
                       name=out.stem, notes=notes, **source)
            if fmt == "ollama":
                from mlxsft.export.handoff import modelfile, ollama_create_command

                (target / "Modelfile").write_text(modelfile(written.name, loaded.tokenizer))
                notes.append(f"to run it: {ollama_create_command(out, out.name.lower())} && "
                             f"ollama run {out.name.lower()}")
        else:
            from mlxsft.export.hf import write_model_dir

            write_model_dir(target, loaded.model, loaded.tokenizer, config, loaded.path)
        release_model(loaded)  # the written files are what gets verified
        result = FuseResult(adapter_dir, loaded.source, out, fmt, out_dtype, quantization,
                            quantize, verify_written(written, held_out, *reference), notes)
        _check_finite(result)  # a NaN model is never published: nothing appears at OUT
        result.warnings = _warnings(result)
        if fmt in ("mlx", "hf"):
            (target / "README.md").write_text(_card(result, adapter_config))
    return result


def _end_of_turn_metadata(masker, tokenizer) -> dict:
    """tokenizer.ggml.eot_token_id: the token the chat template ends a reply with, when it
    is not EOS (Llama 3's <|eot_id|>, Gemma's <end_of_turn>): llama.cpp stops on it."""
    from mlxsft.masking import hf_tokenizer

    tok = hf_tokenizer(tokenizer)
    eot = masker.end_of_turn
    if eot is None or eot == tok.eos_token:
        return {}
    token_id = tok.convert_tokens_to_ids(eot)
    return {"tokenizer.ggml.eot_token_id": token_id} if isinstance(token_id, int) else {}


def _written_bytes(model, out_dtype: str, fmt: str, quantize: int | None) -> int:
    """About the size of what will be written (GGUF quantizes from float weights)."""
    from mlx.utils import tree_flatten

    params = tree_flatten(model.parameters())
    if fmt in GGUF_FORMATS:
        per_weight = {None: 4 if out_dtype == "float32" else 2, 8: 34 / 32, 4: 20 / 32,
                      "q4_k_m": 0.65, "q4_k_s": 0.6, "q5_k_m": 0.75, "q5_k_s": 0.7,
                      "q6_k": 210 / 256, "q4_0": 18 / 32, "q4_1": 20 / 32, "q5_0": 22 / 32,
                      "q5_1": 24 / 32}.get(quantize, 34 / 32)  # same: at most Q8_0's
        return int(sum(p.size for _, p in params) * per_weight)
    return sum(p.nbytes for _, p in params)


def _check_options(fmt: str, dtype: str | None, quantize: int | None) -> None:
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    if dtype is not None and dtype not in DTYPES:
        raise UserError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    if quantize not in (None, 4, 8) and fmt not in GGUF_FORMATS:
        raise UserError(f"--quantize {quantize}: use 4 or 8")
    if fmt == "hf" and quantize:
        raise UserError("--quantize with --format hf: transformers cannot read MLX's quantized "
                        "weights; use --format mlx (MLX) or --format gguf (llama.cpp)")


def _load_base(adapter_dir: Path, adapter_config: dict, model: str | None):
    """The base in its stored precision, and what to tell the user about it."""
    from mlxsft.adapters import adapter_base
    from mlxsft.models import load_model

    notes = []
    spec, name = (model, None) if model else adapter_base(adapter_dir)
    loaded = load_model(spec)
    if name:
        loaded.source = name
    elif not _same_base(adapter_dir, adapter_config, model):
        notes.append(f"the adapter was trained on {adapter_config.get('base_model')}; fusing "
                     f"it into {model}")
    if adapter_config.get("base_quantization") and not loaded.quantization:
        notes.append(f"the adapter was trained on a quantized base "
                     f"({adapter_config['base_quantization'].get('bits')}-bit); fusing it into "
                     "the full-precision weights")
    return loaded, notes


def _base_and_tuned(loaded, adapter_dir: Path, held_out: HeldOut):
    """(base loss, base + adapter loss, base + adapter logits), in the compute precision
    training used; leaves the adapter attached."""
    from mlxsft.adapters import attach_adapter
    from mlxsft.models import to_compute_precision

    to_compute_precision(loaded)
    loaded.model.eval()
    loss_base = response_loss(loaded.model, held_out.items, loaded.tokenizer)
    attach_adapter(loaded, adapter_dir)  # a mismatched adapter stops here: nothing written
    return (loss_base, response_loss(loaded.model, held_out.items, loaded.tokenizer),
            logits_on(loaded.model, held_out.items))


def _fuse_weights(loaded, out_dtype: str, fmt: str, quantize: int | None):
    """Fuse in place, MLX-quantize for --format mlx; (config to write, quantization label)."""
    from mlxsft.export.hf import hf_config
    from mlxsft.gguf.writer import GGUF_TYPE_OF_BITS
    from mlxsft.models import quantize_model

    fuse_lora_layers(loaded.model, out_dtype)
    config = hf_config(loaded.config, out_dtype)  # the base's, without its quantization
    if quantize and fmt == "mlx":
        group_size = (loaded.quantization or {}).get("group_size", 64)
        loaded.model, config = quantize_model(loaded.model, config, quantize, group_size)
        return config, f"{quantize}-bit (group size {group_size})"
    if isinstance(quantize, str):
        return config, ("the source GGUF's types" if quantize == "same" else quantize.upper())
    return config, GGUF_TYPE_OF_BITS[quantize] if quantize else None


def _source_types(loaded, quantize) -> dict:
    """For --quantize same: each tensor's type in the source GGUF, and its file type."""
    if quantize != "same":
        return {}
    if loaded.kind != "gguf":
        raise UserError("--quantize same: the base is not a GGUF file, so there are no "
                        "source types to keep; name a scheme such as q4_k_m or q8_0")
    from mlxsft.gguf.reader import read_gguf_header

    header = read_gguf_header(loaded.path)
    return {"source_types": {t.name: t.type_name for t in header.tensors},
            "source_file_type": header.metadata.get("general.file_type")}


def _check_names(loaded, fmt: str, quantize: int | None) -> list[str]:
    """Weight names against the base checkpoint's: an error for --format hf, else a note.
    Float weights only: MLX-quantized ones (.scales, .biases) are for mlx-lm anyway."""
    from mlx.utils import tree_flatten

    from mlxsft.export.hf import checkpoint_tensor_names, names_missing_from

    if loaded.kind != "hf" or fmt in GGUF_FORMATS or (quantize and fmt == "mlx"):
        return []
    names = [k for k, _ in tree_flatten(loaded.model.parameters())]
    missing = names_missing_from(names, checkpoint_tensor_names(loaded.path))
    if missing and fmt == "hf":
        raise UserError(f"--format hf: mlx-lm names weight {missing[0]} differently from the "
                        f"base checkpoint, so transformers would not load it; use --format mlx")
    return [f"weight names differ from the base checkpoint's (e.g. {missing[0]}); mlx-lm "
            "loads this directory, transformers may not"] if missing else []


def _check_finite(result: FuseResult) -> None:
    import math

    v = result.verification
    figures = {"base loss": v.loss_base, "base + adapter loss": v.loss_tuned,
               "fused loss": v.loss_fused, "max |logit diff|": v.max_logit_diff}
    bad = [f"{name} {value}" for name, value in figures.items() if not math.isfinite(value)]
    if bad:
        raise UserError(f"--out {result.out}: verification on {v.source} gave non-finite "
                        f"numbers ({', '.join(bad)}); nothing was written (check the base "
                        "model's weights and --dtype; float16 may overflow)")


def _warnings(result: FuseResult) -> list[str]:
    v, warnings = result.verification, []
    if not v.tokenizer_matches:
        warnings.append("the written tokenizer splits the held-out records differently from "
                        "the base's; check the output's tokenizer files")
    if v.lost_too_much:
        what = f"quantizing to {result.quantization}" if result.quantization else \
            f"saving in {result.dtype}"
        kept = (f"; it keeps {v.kept:.0%} of the improvement tuning made, losing "
                f"{1 - v.kept:.0%}" if v.kept is not None else "")
        fix = ("export in full precision (drop --quantize)" + (" or try --quantize 8" if
               result.bits == 4 else "")) if result.bits else "export with --dtype float32"
        warnings.append(f"{what} moved the loss on {v.records} held-out records: base "
                        f"{v.loss_base:.4f}, tuned {v.loss_tuned:.4f}, fused "
                        f"{v.loss_fused:.4f} nats/token{kept}; {fix}")
    return warnings


def _card(result: FuseResult, adapter_config: dict) -> str:
    from mlxsft.export.card import model_card

    v = result.verification
    stored = (f"quantized {result.quantization} (from {result.dtype})" if result.quantization
              else result.dtype)
    body = [
        "## Verification", "",
        f"Response-only loss (nats/token) on {v.records} held-out records from "
        f"`{v.source}` ({v.supervised_tokens} supervised tokens):", "",
        "| model | loss |", "|---|---|", f"| base | {v.loss_base:.4f} |",
        f"| base + adapter | {v.loss_tuned:.4f} |", f"| this model | {v.loss_fused:.4f} |", "",
        f"Max |logit difference| between this model and base + adapter: "
        f"{v.max_logit_diff:.3g} over {v.compared_positions} positions.",
        *[line for w in result.warnings for line in ("", f"Warning: {w}")]]
    return model_card(result.out.name, result.base, result.adapter, adapter_config,
                      f"Fused weights ({stored}, {result.format} layout) of", body,
                      "mlx" if result.format == "mlx" else "transformers")
