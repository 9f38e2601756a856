"""`mlxsft chat`: talk to a model, or to its base and its tuned version side by side.

Interactive mode streams tokens and keeps the conversation (``/reset`` clears it,
``/quit`` or end of input leaves). With ``--prompt``/``--prompts`` it answers each prompt
once and exits; ``--compare`` answers with the base and then with the adapter, each
clearly labelled. This module prints; the generation itself is `mlxsft.generate`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from mlxsft.adapters import adapter_base, load_for_inference
from mlxsft.checkpoints import read_adapter_config
from mlxsft.errors import UserError
from mlxsft.generate import reply, stream_reply
from mlxsft.templates import use_adapter_template


@dataclass
class ChatModels:
    """The models to answer with, in order: [("base", m)], [("tuned", m)] or both."""
    answerers: list[tuple[str, object]]


def load_chat_models(model: str | None, adapter: str | None, compare: bool) -> ChatModels:
    if compare and not adapter:
        raise UserError("--compare needs --adapter DIR (the tuned model to compare with its base)")
    if adapter:
        if model is None:
            model, _ = adapter_base(adapter)
        tuned = load_for_inference(model, adapter)
        if not compare:
            return ChatModels([("tuned", tuned)])
        base = load_for_inference(model)
        # The base answers in the same template (and template kwargs) as the tuned model,
        # so --compare shows what the tuning changed, not a rendering difference.
        use_adapter_template(base.tokenizer, read_adapter_config(adapter))
        return ChatModels([("base", base), ("tuned", tuned)])
    return ChatModels([("base", load_for_inference(model))])


def read_prompts(prompts: list[str] | None, prompts_file: str | None) -> list[str]:
    out = list(prompts or [])
    if prompts_file:
        path = Path(prompts_file)
        if not path.exists():
            raise UserError(f"--prompts {path}: no such file")
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            line = line.strip()
            if not line:
                continue
            if line.startswith("{"):
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{n}: invalid JSON ({e.msg})") from None
                if not isinstance(obj.get("prompt"), str):
                    raise UserError(f"{path}:{n}: expected {{\"prompt\": \"...\"}} or a plain line")
                line = obj["prompt"]
            out.append(line)
    return out


def answer_all(models: ChatModels, prompts: list[str], system: str | None, max_tokens: int,
               temperature: float, as_json: bool, out: TextIO | None = None) -> None:
    """Answer each prompt once with every model; plain labelled text or JSON lines."""
    out = out or sys.stdout  # looked up now: a default of sys.stdout is frozen at import

    for prompt in prompts:
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}]
        if as_json:
            record = {"prompt": prompt}
            for label, loaded in models.answerers:
                record[label] = reply(loaded, messages, max_tokens=max_tokens,
                                      temperature=temperature)
            out.write(json.dumps(record) + "\n")
            continue
        out.write(f">>> {prompt}\n")
        for label, loaded in models.answerers:
            out.write(f"[{label}] ")
            for piece in stream_reply(loaded, messages, max_tokens=max_tokens,
                                      temperature=temperature):
                out.write(piece)
                out.flush()
            out.write("\n")
        out.write("\n")


def interactive(models: ChatModels, system: str | None, max_tokens: int, temperature: float,
                stdin: TextIO | None = None, out: TextIO | None = None) -> None:
    """A terminal chat; each model keeps its own history of the conversation."""
    stdin, out = stdin or sys.stdin, out or sys.stdout

    start = [{"role": "system", "content": system}] if system else []
    histories = {label: list(start) for label, _ in models.answerers}
    labels = " and ".join(label for label, _ in models.answerers)
    out.write(f"chatting with {labels}; /reset clears the conversation, /quit leaves\n")
    while True:
        out.write("> ")
        out.flush()
        line = stdin.readline()
        if not line or line.strip() == "/quit":
            out.write("\n")
            return
        text = line.strip()
        if not text:
            continue
        if text == "/reset":
            histories = {label: list(start) for label, _ in models.answerers}
            out.write("(conversation cleared)\n")
            continue
        for label, loaded in models.answerers:
            history = histories[label]
            history.append({"role": "user", "content": text})
            if len(models.answerers) > 1:
                out.write(f"[{label}] ")
            pieces = []
            for piece in stream_reply(loaded, history, max_tokens=max_tokens,
                                      temperature=temperature):
                pieces.append(piece)
                out.write(piece)
                out.flush()
            out.write("\n")
            history.append({"role": "assistant", "content": "".join(pieces)})
