"""Chat-template control: which template renders the conversations, with which switches,
and what happens to reasoning blocks of thinking models.

- ``--chat-template FILE.jinja | chatml | MODEL`` replaces the tokenizer's template (a
  file, mlxsft's ChatML, or the template of another model's tokenizer, by hub id or
  directory).
- ``--template-kwarg KEY=VALUE`` (e.g. ``enable_thinking=false``) is a variable the
  template sees. It is baked into the template text as ``{%- set KEY = VALUE -%}`` lines,
  so the one string saved with the adapter (and written into fused models) renders the
  same way in training, eval, chat, the TUI, fuse and any other tool that reads it.
- ``--thinking keep|strip-history|off``: reasoning (``<think>...</think>`` in the content,
  or a ``reasoning_content`` field) is kept as the data has it, removed from every
  assistant turn but the last (what thinking models' templates do to history at
  inference), or removed everywhere (and ``enable_thinking=false`` passed when the
  template has that switch).

`chat_template_for_adapter` is what export code calls to learn the template a fused or
exported model must carry. Rendering and masking are `mlxsft.masking`'s.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlxsft.errors import UserError

THINKING_MODES = ("keep", "strip-history", "off")
# ChatML as Qwen and SmolLM write it; `--chat-template chatml`.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_THINK = re.compile(r"<think>.*?</think>\s*", re.DOTALL)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class TemplateChoice:
    """The template override (None: the tokenizer's own), the variables baked into it,
    and the thinking mode: everything that decides how a conversation renders."""

    template: str | None = None  # the override as given, before kwargs are baked in
    source: str | None = None    # what the user named: a file, "chatml" or a model
    kwargs: dict[str, Any] = field(default_factory=dict)
    thinking: str = "keep"

    def effective(self, tokenizer_template: str | None) -> str | None:
        """The template text to render with: the override or the tokenizer's, with the
        kwargs baked in. None when nothing changes the tokenizer's own."""
        base = self.template or tokenizer_template
        kwargs = dict(self.kwargs)
        if (self.thinking == "off" and base and "enable_thinking" in base
                and "enable_thinking" not in kwargs):
            kwargs["enable_thinking"] = False
        if not kwargs:
            return self.template
        return bake_kwargs(base, kwargs) if base else None

    def saved(self, tokenizer_template: str | None) -> dict[str, Any]:
        """What the adapter config records, so chat, eval and fuse render alike."""
        effective = self.effective(tokenizer_template)
        out: dict[str, Any] = {"thinking": self.thinking}
        if effective is not None:
            out.update(chat_template=effective, chat_template_source=self.source,
                       template_kwargs=self.kwargs)
        return out


def parse_kwarg(text: str) -> tuple[str, Any]:
    """KEY=VALUE -> (key, value); true/false/null and numbers are typed, the rest is text
    (JSON values such as ["a"] or {"k": 1} are accepted too)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not _NAME.match(key):
        raise UserError(f"--template-kwarg {text}: expected KEY=VALUE with KEY a name, e.g. "
                        "enable_thinking=false")
    lowered = raw.strip().lower()
    if lowered in ("true", "false"):
        return key, lowered == "true"
    if lowered in ("none", "null"):
        return key, None
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw


def _jinja_literal(value: Any) -> str:
    """A Jinja literal for a JSON-like value (Jinja spells null `none`)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_jinja_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {_jinja_literal(v)}"
                               for k, v in value.items()) + "}"
    return json.dumps(value, ensure_ascii=False)  # numbers, and strings JSON-escaped


def bake_kwargs(template: str, kwargs: dict[str, Any]) -> str:
    """The template with each variable set at its top, where every later use sees it."""
    head = "".join(f"{{%- set {k} = {_jinja_literal(v)} -%}}" for k, v in sorted(kwargs.items()))
    return head + template


def resolve_template(spec: str | None, trust_remote_code: bool = False) -> str | None:
    """The text of ``--chat-template``: a .jinja file, "chatml", or a model's template."""
    if not spec:
        return None
    if spec.lower() == "chatml":
        return CHATML
    path = Path(spec).expanduser()
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UserError(f"--chat-template {spec}: not UTF-8 text; pass a Jinja file") from None
        if path.suffix == ".json":  # a tokenizer_config.json: take its chat_template
            try:
                text = json.loads(text).get("chat_template")
            except (ValueError, AttributeError):
                text = None
            if not isinstance(text, str):
                raise UserError(f"--chat-template {spec}: no 'chat_template' string in it")
        if not text.strip():
            raise UserError(f"--chat-template {spec}: empty file")
        _check_syntax(text, spec)
        return text
    if spec.endswith((".jinja", ".j2")):
        raise UserError(f"--chat-template {spec}: no such file")
    from mlxsft.masking import hf_tokenizer
    from mlxsft.models import load_tokenizer

    template = getattr(hf_tokenizer(load_tokenizer(spec, trust_remote_code)), "chat_template", None)
    if not isinstance(template, str) or not template:
        raise UserError(f"--chat-template {spec}: that model's tokenizer has no chat template "
                        "(a single template is expected); pass a .jinja file or chatml")
    return template


def _check_syntax(text: str, spec: str) -> None:
    import jinja2

    try:
        jinja2.Environment(extensions=["jinja2.ext.loopcontrols"]).parse(text)
    except jinja2.TemplateSyntaxError as e:
        raise UserError(f"--chat-template {spec}:{e.lineno}: not a valid Jinja template "
                        f"({e.message})") from None


def template_choice(options: Any) -> TemplateChoice:
    """A `TemplateChoice` from a `TrainConfig` or CLI flags (chat_template,
    template_kwarg, thinking)."""
    get = lambda name, default=None: getattr(options, name, default) or default  # noqa: E731
    thinking = get("thinking", "keep")
    if thinking not in THINKING_MODES:
        raise UserError(f"--thinking {thinking}: must be one of {', '.join(THINKING_MODES)}")
    spec = get("chat_template")
    kwargs = dict(parse_kwarg(k) for k in get("template_kwarg", []))
    return TemplateChoice(resolve_template(spec, bool(get("trust_remote_code"))), spec,
                          kwargs, thinking)


def strip_reasoning(message: dict) -> dict:
    """The message without its reasoning block(s) and reasoning_content."""
    out = {k: v for k, v in message.items() if k != "reasoning_content"}
    if isinstance(out.get("content"), str) and "<think>" in out["content"]:
        out["content"] = _THINK.sub("", out["content"])
    return out


def reasoning_of(message: dict) -> str:
    """The message's reasoning text, '' when it has none."""
    found = [m.group(0)[len("<think>"):].rsplit("</think>", 1)[0]
             for m in _THINK.finditer(message.get("content") or "")]
    if isinstance(message.get("reasoning_content"), str):
        found.append(message["reasoning_content"])
    return "\n".join(t.strip() for t in found if t.strip())


def apply_thinking(messages: list[dict], mode: str) -> list[dict]:
    """Messages as `--thinking` says to train on them."""
    if mode == "keep":
        return messages
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
    return [strip_reasoning(m) if m["role"] == "assistant" and (mode == "off" or i < last) else m
            for i, m in enumerate(messages)]


def chat_template_for_adapter(adapter_config: dict) -> str | None:
    """The chat template a model fused or exported from this adapter must carry (the
    override and template kwargs it was trained with), or None for the base's own.
    Export code writes it into tokenizer_config.json / chat_template.jinja / GGUF."""
    template = adapter_config.get("chat_template")
    return template if isinstance(template, str) and template else None


def use_adapter_template(tokenizer, adapter_config: dict) -> None:
    """Make `tokenizer` render as the adapter was trained (its saved chat template)."""
    from mlxsft.masking import hf_tokenizer

    template = chat_template_for_adapter(adapter_config)
    if template is not None:
        hf_tokenizer(tokenizer).chat_template = template
