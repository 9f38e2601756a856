"""Which ggml type each tensor of a written GGUF gets: llama.cpp's quantization schemes.

`--quantize` names a scheme as llama-quantize does (`q4_k_m`, `q5_k_m`, `q6_k`, `q8_0`,
`q4_0`, ...) or `same` (each tensor in the type the source GGUF had). The mixes follow
llama.cpp's `llama_tensor_get_type`: in the _M schemes the output matrix (or a tied token
embedding) and the value projections and down projections of the first and last eighth of
the layers, and every third one between, get Q6_K; rows that are not whole 256-blocks fall
back to the 32-block type llama.cpp picks (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0), and
rows that are not whole 32-blocks stay float. Norms and biases stay F32.

It does not encode Q2_K, Q3_K or IQ types: `same` writes those tensors one step up (Q4_K)
and says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mlxsft.errors import UserError

# scheme -> (base type, type for the "more bits" tensors, llama.cpp's general.file_type name)
SCHEMES = {
    "q4_k_m": ("Q4_K", "Q6_K", "MOSTLY_Q4_K_M"), "q4_k_s": ("Q4_K", "Q4_K", "MOSTLY_Q4_K_S"),
    "q5_k_m": ("Q5_K", "Q6_K", "MOSTLY_Q5_K_M"), "q5_k_s": ("Q5_K", "Q5_K", "MOSTLY_Q5_K_S"),
    "q6_k": ("Q6_K", "Q6_K", "MOSTLY_Q6_K"), "q8_0": ("Q8_0", "Q8_0", "MOSTLY_Q8_0"),
    "q4_0": ("Q4_0", "Q4_0", "MOSTLY_Q4_0"), "q4_1": ("Q4_1", "Q4_1", "MOSTLY_Q4_1"),
    "q5_0": ("Q5_0", "Q5_0", "MOSTLY_Q5_0"), "q5_1": ("Q5_1", "Q5_1", "MOSTLY_Q5_1"),
}
GGUF_QUANTIZE_CHOICES = (*SCHEMES, "same")
# The types mlxsft writes: gguf's reference quantizers and our K-quant encoder.
WRITABLE = {"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K",
            "Q6_K"}
_FALLBACK_32 = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}


def _block(kind: str) -> int:
    return 256 if kind.endswith("_K") else 32 if kind.startswith("Q") else 1


def use_more_bits(i: int, n: int) -> bool:
    """llama.cpp's use_more_bits: the first and last eighth of the layers, every third between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def writable_type(kind: str) -> str:
    """The type mlxsft writes for a source type it cannot encode (one step up)."""
    if kind in WRITABLE:
        return kind
    if kind in ("Q2_K", "Q3_K") or kind.startswith(("IQ1", "IQ2", "IQ3", "IQ4", "TQ")):
        return "Q4_K"
    return "Q8_0"


@dataclass
class TypePlan:
    """Chooses each tensor's type; `notes` says where a choice departs from the request."""
    scheme: str | None  # None: floats only
    float_type: str
    n_layers: int
    has_output: bool
    source_types: dict[str, str] | None = None  # GGUF name -> type, for "same"

    def __post_init__(self):
        self.notes: list[str] = []

    def type_for(self, name: str, shape: tuple[int, ...]) -> str:
        if len(shape) == 1:
            return "F32"  # llama.cpp keeps norms and biases in F32
        if self.scheme is None:
            return self.float_type
        kind = self._wanted(name)
        if shape[-1] % _block(kind):
            kind = _FALLBACK_32.get(kind, kind)
        if shape[-1] % _block(kind):
            kind = self.float_type
        return kind

    def _wanted(self, name: str) -> str:
        if self.scheme == "same":
            source = (self.source_types or {}).get(name)
            if source is None:
                return self.float_type
            kind = writable_type(source)
            if kind != source:
                self.notes.append(f"{name}: {source} is not a type mlxsft writes; wrote {kind}")
            return kind
        base, more, _ = SCHEMES[self.scheme]
        if name == "output.weight" or (name == "token_embd.weight" and not self.has_output):
            return "Q6_K" if base.endswith("_K") else base
        m = re.fullmatch(r"blk\.(\d+)\.(attn_v|ffn_down)\.weight", name)
        if m and use_more_bits(int(m[1]), self.n_layers):
            return more
        return base

    def file_type(self, source_file_type: int | None = None) -> str:
        if self.scheme is None:
            return "ALL_F32" if self.float_type == "F32" else f"MOSTLY_{self.float_type}"
        if self.scheme == "same":
            return source_file_type
        return SCHEMES[self.scheme][2]


def parse_quantize(value, fmt: str):
    """--quantize as given: 4 or 8 (bits) or a llama.cpp scheme name for GGUF."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if text in ("4", "8"):
        return int(text)
    if fmt == "gguf" and text in GGUF_QUANTIZE_CHOICES:
        return text
    if text in GGUF_QUANTIZE_CHOICES:
        raise UserError(f"--quantize {value}: llama.cpp's schemes are for --format gguf (or "
                        "ollama, lmstudio); with --format mlx use 4 or 8")
    raise UserError(f"--quantize {value}: use 4 or 8, or for GGUF one of "
                    f"{', '.join(GGUF_QUANTIZE_CHOICES)}")
