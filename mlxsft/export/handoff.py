"""Hand a fused GGUF to the runtimes people chat in: Ollama's Modelfile and LM Studio's folder.

Ollama reads the GGUF's chat template and recognises the common families (ChatML, Llama 3,
Gemma, Mistral, Phi-3), but it does not learn where a turn ends from it: without
`PARAMETER stop` lines a tuned model runs on past its reply, the most reported problem with
hand-made Modelfiles. The stop tokens here are read off the chat template itself (the
special tokens a rendered conversation contains, BOS aside) plus EOS. For a template no
family marker identifies, a Go `TEMPLATE` is derived by rendering a probe conversation,
exact for alternating user/assistant turns with an optional system prompt.

LM Studio finds models under `~/.lmstudio/models/<publisher>/<name>/`; `lmstudio_path`
says where a GGUF goes there. Neither runtime is called from here.
"""

from __future__ import annotations

from pathlib import Path

# Marker token -> the family Ollama knows by its chat template.
OLLAMA_FAMILIES = {"<|im_start|>": "chatml", "<|start_header_id|>": "llama3",
                   "<start_of_turn>": "gemma", "[INST]": "mistral", "<|user|>": "phi3"}
LMSTUDIO_MODELS = Path("~/.lmstudio/models")
_PROBE = {"system": "mlxsft-system-probe", "user1": "mlxsft-user-probe-one",
          "assistant": "mlxsft-assistant-probe", "user2": "mlxsft-user-probe-two"}


def _special_tokens(tok) -> list[str]:
    tokens = set(getattr(tok, "all_special_tokens", None) or [])
    tokens |= {t.content for t in getattr(tok, "added_tokens_decoder", {}).values()
               if getattr(t, "special", False)}
    return sorted((t for t in tokens if t), key=len, reverse=True)


def _render(tok, messages, generation=False) -> str | None:
    try:
        return tok.apply_chat_template(messages, tokenize=False,
                                       add_generation_prompt=generation)
    except Exception:  # a template that refuses this shape (Gemma's system role, say)
        return None


def _conversation(with_system: bool):
    turns = [{"role": "user", "content": _PROBE["user1"]},
             {"role": "assistant", "content": _PROBE["assistant"]},
             {"role": "user", "content": _PROBE["user2"]}]
    return ([{"role": "system", "content": _PROBE["system"]}] if with_system else []) + turns


def stop_tokens(tokenizer) -> list[str]:
    """The special tokens a rendered conversation contains (in order of appearance; BOS
    excluded, it starts a text rather than ends a turn), then EOS."""
    from mlxsft.masking import hf_tokenizer

    tok = hf_tokenizer(tokenizer)
    text = _render(tok, _conversation(True), True) or _render(tok, _conversation(False), True)
    found = []
    if text:
        specials = _special_tokens(tok)
        at = 0
        while at < len(text):
            match = next((t for t in specials if text.startswith(t, at)), None)
            if match:
                if match != tok.bos_token and match not in found:
                    found.append(match)
                at += len(match)
            else:
                at += 1
    if tok.eos_token and tok.eos_token not in found:
        found.append(tok.eos_token)
    return found


def ollama_family(tokenizer) -> str | None:
    from mlxsft.masking import hf_tokenizer

    text = _render(hf_tokenizer(tokenizer), _conversation(False), True) or ""
    return next((f for marker, f in OLLAMA_FAMILIES.items() if marker in text), None)


def _go_literal(text: str) -> str:
    return text.replace("{{", '{{ "{{" }}')


def go_template(tokenizer) -> str | None:
    """An Ollama (Go text/template) TEMPLATE that renders alternating turns as the chat
    template does, or None when the rendering cannot be split at the probe messages."""
    from mlxsft.masking import hf_tokenizer

    tok = hf_tokenizer(tokenizer)
    text = _render(tok, _conversation(False), True)
    if not text:
        return None
    marks = [_PROBE["user1"], _PROBE["assistant"], _PROBE["user2"]]
    cuts, at = [], 0
    for m in marks:
        i = text.find(m, at)
        if i < 0:
            return None
        cuts.append((i, i + len(m)))
        at = i + len(m)
    start = text[:cuts[0][0]]
    after_user = text[cuts[0][1]:cuts[1][0]]
    after_assistant = text[cuts[1][1]:cuts[2][0]]
    if text[cuts[2][1]:] != after_user:  # the generation prompt must close a user turn alike
        return None
    if tok.bos_token and start.startswith(tok.bos_token):
        start = start[len(tok.bos_token):]  # llama.cpp adds BOS itself
    system_start = None
    sys_text = _render(tok, _conversation(True), True)
    if sys_text and _PROBE["system"] in sys_text:
        i = sys_text.index(_PROBE["system"])
        j = sys_text.index(_PROBE["user1"])
        head = sys_text[:i]
        if tok.bos_token and head.startswith(tok.bos_token):
            head = head[len(tok.bos_token):]
        system_start = (head, sys_text[i + len(_PROBE["system"]):j])
    first = _go_literal(start)
    if system_start:
        first = (f"{{{{ if .System }}}}{_go_literal(system_start[0])}{{{{ .System }}}}"
                 f"{_go_literal(system_start[1])}{{{{ else }}}}{first}{{{{ end }}}}")
    return (first + '{{- range .Messages }}{{ if eq .Role "user" }}{{ .Content }}'
            f'{_go_literal(after_user)}{{{{ else if eq .Role "assistant" }}}}{{{{ .Content }}}}'
            f"{_go_literal(after_assistant)}{{{{ end }}}}{{{{ end }}}}")


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def modelfile(gguf_name: str, tokenizer) -> str:
    """An Ollama Modelfile for `gguf_name` (next to it): FROM, TEMPLATE when Ollama cannot
    infer the chat format, and the stop tokens."""
    lines = [f"FROM ./{gguf_name}"]
    if ollama_family(tokenizer) is None:
        template = go_template(tokenizer)
        if template:
            lines.append(f'TEMPLATE """{template}"""')
    lines += [f"PARAMETER stop {_quoted(t)}" for t in stop_tokens(tokenizer)]
    return "\n".join(lines) + "\n"


def ollama_create_command(out_dir: Path, name: str) -> str:
    return f"ollama create {name} -f {out_dir / 'Modelfile'}"


def lmstudio_path(name: str, models_dir: str | Path | None = None) -> Path:
    """Where LM Studio looks for a model `publisher/name` (or `name`, published by mlxsft)."""
    publisher, _, model = name.strip("/").rpartition("/")
    root = Path(models_dir or LMSTUDIO_MODELS).expanduser()
    model = model or "model"
    return root / (publisher or "mlxsft") / model / f"{model}.gguf"
