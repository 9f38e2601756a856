"""`mlxsft compare RUN`: which checkpoint behaves best, and did tuning break anything?

Answers one probe set (held-out prompts with reference answers) with the base, every
adapter the run saved (checkpoints, best, final) and any fused or GGUF output given, and
scores each: the response-only loss of the reference answer (masked as in training, on
the last assistant turn), exact match, whether answers ended with the end-of-turn token,
mean length, and, where the reference is JSON or a tool call, whether the answer parses.
Generation is greedy, so a table is reproducible. Each model is loaded on the calling
thread in turn and released before the next (MLX streams are thread-local).
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mlxsft.checkpoints import ADAPTER_WEIGHTS
from mlxsft.errors import UserError
from mlxsft.probes import Answer, Probe, SampleTable, answer, probes_from_records, read_probes


@dataclass
class Candidate:
    name: str  # the column's label: base, checkpoint step-000010, best, final, a path
    model: str | None  # a model to load (None: the run's base)
    adapter: Path | None


def run_candidates(run_dir: Path, include: list[str]) -> list[Candidate]:
    """The base, every saved adapter of the run in step order, then each extra model."""
    from mlxsft.rundir import saved_adapters

    saved = saved_adapters(run_dir)
    if not saved:
        raise UserError(f"{run_dir}: no saved adapter; pass the --out of a run that saved one")
    ordered = sorted(saved, key=lambda a: (a.step, {"final": 2, "best": 1}.get(a.key, 0)))
    # The final adapter's files are links into its checkpoint: answer with it once.
    seen, unique = {}, []
    for a in reversed(ordered):
        st = (a.path / ADAPTER_WEIGHTS).stat()
        if (st.st_dev, st.st_ino) not in seen:
            seen[(st.st_dev, st.st_ino)] = a
            unique.append(a)
    out = [Candidate("base", None, None)]
    # The best adapter saved at the final step holds the final weights in files of its
    # own: one column, named for both, rather than two that always agree.
    names: dict[Path, list[str]] = {}
    kept: list = []
    for a in reversed(unique):
        twin = next((k for k in kept if k.step == a.step and _same_weights(k.path, a.path)),
                    None)
        if twin is None:
            kept.append(a)
        names.setdefault((twin or a).path, []).append(a.key.rsplit("/", 1)[-1])
    out += [Candidate(f"{' = '.join(sorted(names[a.path], key=_label_order))} (step {a.step})",
                      None, a.path) for a in kept]
    for path in include:
        if not Path(path).exists():
            raise UserError(f"--include {path}: no such file or directory; pass a fused model "
                            "directory or a .gguf file")
        out.append(Candidate(Path(path).name, path, None))
    return out


def _label_order(label: str) -> int:
    return {"final": 0, "best": 1}.get(label, 2)


def _same_weights(a: Path, b: Path) -> bool:
    """Whether two adapters hold the same tensors (their files differ in save ids)."""
    import numpy as np
    from safetensors.numpy import load_file

    try:
        x, y = load_file(str(a / ADAPTER_WEIGHTS)), load_file(str(b / ADAPTER_WEIGHTS))
    except Exception:  # unreadable: kept apart here; loading it to answer says what is wrong
        return False
    return x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)


def default_probes(run_dir: Path, limit: int) -> list[Probe]:
    """The first `limit` records of the run's validation data."""
    from mlxsft.data import read_jsonl
    from mlxsft.rundir import run_settings

    settings = run_settings(run_dir)
    path = settings.get("valid")
    if not path and settings.get("data") and Path(settings["data"]).is_dir():
        path = Path(settings["data"]) / "valid.jsonl"
    if not path or not Path(path).is_file():
        raise UserError(f"{run_dir}: the run had no validation data to probe with; pass "
                        "--prompts FILE (a .jsonl of prompts with reference answers)")
    probes = probes_from_records(read_jsonl(path).records, limit)
    if not probes:
        raise UserError(f"{path}: no record has a prompt and an answer to probe with; pass "
                        "--prompts FILE")
    return probes


def reference_loss(loaded, probes: list[Probe], max_seq_len: int = 2048) -> float | None:
    """Mean NLL of the reference answers (the last assistant turn only), masked as in
    training; None when no probe has a reference."""
    from mlxsft.data import Record
    from mlxsft.evaluate import mean_nll
    from mlxsft.masking import Masker, encode_records

    records = [Record(p.where, 0, "chat", p.messages + [{"role": "assistant",
                                                          "content": p.reference}])
               for p in probes if p.reference is not None]
    if not records:
        return None
    encoded = encode_records(Masker(loaded.tokenizer, "last", max_seq_len), records, True)
    if not encoded.items:
        return None
    tok = loaded.tokenizer
    pad = tok.pad_token_id if getattr(tok, "pad_token_id", None) is not None else 0
    loss, _ = mean_nll(loaded.model, encoded.items, 4, max_seq_len, pad)
    return loss


def compare(run_dir: str | Path, prompts: str | None = None, include: list[str] | None = None,
            limit: int = 8, max_tokens: int = 64,
            progress: Callable[[str], None] | None = None) -> SampleTable:
    """Answer the probes with every candidate; the table of answers and scores."""
    from mlxsft.adapters import adapter_base, load_for_inference

    run_dir = Path(run_dir)
    candidates = run_candidates(run_dir, include or [])
    probes = read_probes(prompts, limit) if prompts else default_probes(run_dir, limit)
    base_model, base_name = adapter_base(candidates[1].adapter)
    table = SampleTable(probes)
    for candidate in candidates:
        if progress:
            progress(f"answering {len(probes)} prompts with {candidate.name}")
        loaded = load_for_inference(candidate.model or base_model, candidate.adapter)
        if candidate.model is None:
            loaded.source = base_name or loaded.source
        answers: list[Answer] = [answer(loaded, p, max_tokens) for p in probes]
        table.add(candidate.name, answers, reference_loss(loaded, probes))
        del loaded
        gc.collect()
    return table


def render(table: SampleTable, width: int = 60) -> str:
    """A block per prompt (reference, then each model's answer) and a score table."""
    def short(text, n=width):
        text = " ".join(str(text).split())
        return text if len(text) <= n else text[: n - 1] + "…"

    lines = []
    for i, probe in enumerate(table.probes):
        lines.append(f"[{i + 1}] {short(probe.prompt, 100)}   ({probe.where})")
        if probe.reference is not None:
            lines.append(f"    {'reference':<22} {short(probe.reference)}")
        for column in table.columns:
            a = table.answers[column][i]
            s = a.scores(probe.reference)
            mark = "=" if s.get("exact") else ("." if a.ended else "…")
            lines.append(f"  {mark} {column:<22} {short(a.text)}")
        lines.append("")
    lines.append("  (= exact match; . ended at the end-of-turn token; … cut at the length limit)")
    lines.append("")
    header = f"{'model':<24} {'loss':>8} {'exact':>7} {'ended':>7} {'tokens':>7} {'parses':>7}"
    lines += [header, "-" * len(header)]
    for column in table.columns:
        s = table.summary(column)
        pct = lambda v: "-" if v is None else f"{100 * v:.0f}%"  # noqa: E731
        loss = "-" if s["loss"] is None else f"{s['loss']:.4f}"
        lines.append(f"{column:<24} {loss:>8} {pct(s['exact']):>7} {pct(s['ended']):>7} "
                     f"{s['mean_tokens']:>7.1f} {pct(s['parses']):>7}")
    return "\n".join(lines)


def to_json(table: SampleTable) -> dict:
    return {
        "prompts": [{"prompt": p.prompt, "where": p.where, "reference": p.reference,
                     "answers": {c: {"text": table.answers[c][i].text,
                                     **table.answers[c][i].scores(p.reference)}
                                 for c in table.columns}}
                    for i, p in enumerate(table.probes)],
        "scores": [table.summary(c) for c in table.columns],
    }
