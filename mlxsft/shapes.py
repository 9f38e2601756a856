"""Record shapes: one decoded JSON object (a JSONL line, a JSON array item, a parquet row)
-> a validated `Record`. Detected per record, so a file may mix them:

- chat (OpenAI): ``{"messages": [{"role", "content"}, ...], "tools": [...]?}``; ``content``
  may be a string or a list of parts ``[{"type": "text", "text": ...}]`` (text parts are
  joined with a newline, as vLLM does; any other part is an error), and an assistant turn
  may carry ``tool_calls`` (``content`` then may be null).
- ShareGPT: ``{"conversations": [{"from": "human"|"gpt"|"system"|"tool"|
  "function_call"|"observation", "value": ...}], "system"?, "tools"?}``; a
  ``function_call`` turn is the assistant calling a tool (its value is the call's JSON).
- prompt/completion: ``{"prompt": ..., "completion": ...}``
- Alpaca: ``{"instruction": ..., "input": ...?, "output": ...}``
- plain text: ``{"text": ...}`` (no prompt: every token is supervised)
- any table, through a column mapping (`RecordKeys`): ``--messages-key`` names the
  column holding the conversation, ``--prompt-key``/``--response-key`` a prompt and a
  response column.

An assistant message may carry ``"train": false`` (or ``true``) to override the mask mode
for that turn (axolotl's convention; ShareGPT's ``"weight": 0|1`` means the same).
Everything but plain text becomes chat messages, so one code path renders them. This
module reads no files and tokenizes nothing.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from typing import Any

from mlxsft.records import ROLES, DataError, Record

FORMATS = ("chat", "sharegpt", "completion", "alpaca", "text", "columns")

# The top-level keys that identify each shape, for "did you mean" hints.
_FORMAT_KEYS = ("messages", "conversations", "prompt", "completion", "instruction", "input",
                "output", "text")
# ShareGPT speaker names (FastChat, LLaMA-Factory, axolotl) -> chat roles.
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bard": "assistant", "bing": "assistant",
                  "model": "assistant", "system": "system", "tool": "tool",
                  "observation": "tool", "function_response": "tool",
                  "function_call": "assistant"}


@dataclass(frozen=True)
class RecordKeys:
    """A column mapping for tables whose columns have other names."""

    prompt_key: str | None = None
    response_key: str | None = None
    messages_key: str | None = None

    @property
    def mapped(self) -> bool:
        return bool(self.prompt_key or self.response_key or self.messages_key)


def _did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", type(None): "null", bool: "a boolean",
            int: "a number", float: "a number", str: "a string"}.get(type(value), type(value).__name__)


def _require_string(obj: dict, key: str, where: str, path, line) -> str:
    if key not in obj:
        close = difflib.get_close_matches(key, [k for k in obj if isinstance(k, str)], n=1,
                                          cutoff=0.6)
        if close:
            raise DataError(path, line, f"missing field '{where}{key}' (found '{where}{close[0]}'; "
                            f"rename it to '{key}')")
        raise DataError(path, line, f"missing field '{where}{key}'; add it as a string")
    value = obj[key]
    if not isinstance(value, str):
        raise DataError(path, line, f"field '{where}{key}' is {_type_name(value)}, expected a string")
    return value


def _content_text(message: dict, key: str, where: str, path, line) -> str:
    """A message's content: a string, or OpenAI content parts joined with newlines."""
    value = message.get(key)
    if not isinstance(value, list):
        return _require_string(message, key, where, path, line)
    texts = []
    for j, part in enumerate(value):
        at = f"{where}{key}[{j}]"
        if not isinstance(part, dict):
            raise DataError(path, line, f"field '{at}' is {_type_name(part)}, expected a "
                            "content part such as {\"type\": \"text\", \"text\": ...}")
        kind = part.get("type", "text")
        if kind != "text":
            raise DataError(path, line, f"field '{at}' is a '{kind}' part; only text parts "
                            "can be trained on here (remove the part or describe it in text)")
        texts.append(_require_string(part, "text", f"{at}.", path, line))
    return "\n".join(texts)


def _tool_calls(message: dict, where: str, path, line) -> list[dict] | None:
    calls = message.get("tool_calls")
    if calls is None:
        return None
    if not isinstance(calls, list):
        raise DataError(path, line, f"field '{where}tool_calls' is {_type_name(calls)}, "
                        "expected a list of {\"type\": \"function\", \"function\": {...}}")
    for j, call in enumerate(calls):
        at = f"{where}tool_calls[{j}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise DataError(path, line, f"field '{at}' needs a 'function' object with 'name' "
                            "and 'arguments'")
        _require_string(function, "name", f"{at}.function.", path, line)
        arguments = function.get("arguments", {})
        if not isinstance(arguments, (dict, str)):
            raise DataError(path, line, f"field '{at}.function.arguments' is "
                            f"{_type_name(arguments)}, expected an object or a JSON string")
    return calls


def _train_flag(message: dict, role: str, where: str, path, line) -> bool | None:
    flag = message.get("train")
    if flag is None and "weight" in message:  # ShareGPT in axolotl: weight 0 or 1
        weight = message["weight"]
        if weight not in (0, 1):
            raise DataError(path, line, f"field '{where}weight' is {weight!r}; use 0 or 1")
        flag = bool(weight)
    if flag is None:
        return None
    if not isinstance(flag, bool):
        raise DataError(path, line, f"field '{where}train' is {_type_name(flag)}, expected "
                        "true or false")
    if role != "assistant":
        raise DataError(path, line, f"field '{where}train' is set on a {role} turn; only "
                        "assistant turns carry loss (remove it)")
    return flag


def _chat_message(message: Any, i: int, key: str, path, line) -> dict[str, Any]:
    where = f"{key}[{i}]."
    if not isinstance(message, dict):
        raise DataError(path, line, f"{key}[{i}] is {_type_name(message)}, expected an object "
                        "with 'role' and 'content'")
    role = _require_string(message, "role", where, path, line)
    if role not in ROLES:
        raise DataError(path, line, f"{key}[{i}].role '{role}' is not one of "
                        f"{', '.join(ROLES)}{_did_you_mean(role, ROLES)}")
    out = dict(message)
    calls = _tool_calls(message, where, path, line) if role == "assistant" else None
    # An assistant turn that only calls tools may have no text content.
    if calls and message.get("content") is None:
        out["content"] = ""
    else:
        out["content"] = _content_text(message, "content", where, path, line)
    flag = _train_flag(message, role, where, path, line)
    out.pop("weight", None)
    if flag is not None:
        out["train"] = flag
    return out


def _sharegpt_message(message: Any, i: int, key: str, path, line) -> dict[str, Any]:
    where = f"{key}[{i}]."
    if not isinstance(message, dict):
        raise DataError(path, line, f"{key}[{i}] is {_type_name(message)}, expected an object "
                        "with 'from' and 'value'")
    speaker = _require_string(message, "from", where, path, line)
    role = SHAREGPT_ROLES.get(speaker.lower())
    if role is None:
        raise DataError(path, line, f"{key}[{i}].from '{speaker}' is not a ShareGPT speaker "
                        f"({', '.join(SHAREGPT_ROLES)}){_did_you_mean(speaker, SHAREGPT_ROLES)}")
    value = _content_text(message, "value", where, path, line)
    out: dict[str, Any] = {"role": role, "content": value}
    if speaker.lower() == "function_call":
        # LLaMA-Factory's tool call: the value is {"name": ..., "arguments": ...} (or a list).
        try:
            parsed = json.loads(value)
        except ValueError:
            raise DataError(path, line, f"field '{where}value' of a function_call turn is not "
                            "JSON; write the call as {\"name\": ..., \"arguments\": {...}}") from None
        calls = parsed if isinstance(parsed, list) else [parsed]
        out = {"role": "assistant", "content": "",
               "tool_calls": [{"type": "function", "function": c} for c in calls]}
        _tool_calls(out, where, path, line)
    flag = _train_flag(message, role, where, path, line)
    if flag is not None:
        out["train"] = flag
    return out


def _messages(items: Any, key: str, path, line) -> list[dict[str, Any]]:
    if not isinstance(items, list) or not items:
        raise DataError(path, line, f"field '{key}' must be a non-empty list of "
                        "{\"role\": ..., \"content\": ...} objects")
    sharegpt = isinstance(items[0], dict) and "from" in items[0] and "role" not in items[0]
    parse = _sharegpt_message if sharegpt else _chat_message
    out = [parse(m, i, key, path, line) for i, m in enumerate(items)]
    if not any(m["role"] == "assistant" for m in out):
        raise DataError(path, line, f"no assistant turn in '{key}'; add the response to "
                        "train on as {\"role\": \"assistant\", \"content\": ...}")
    return out


def _tools(obj: dict, path, line) -> list | None:
    tools = obj.get("tools")
    if isinstance(tools, str) and tools.strip():  # LLaMA-Factory stores them as JSON text
        try:
            tools = json.loads(tools)
        except ValueError:
            raise DataError(path, line, "field 'tools' is a string that is not JSON; give "
                            "a list of tool schemas") from None
    if tools in ("", None):
        return None
    if not isinstance(tools, list):
        raise DataError(path, line, f"field 'tools' is {_type_name(tools)}, expected a list")
    return tools


def _with_system(obj: dict, messages: list[dict], path, line) -> list[dict]:
    system = obj.get("system")
    if system is None or system == "" or (messages and messages[0]["role"] == "system"):
        return messages
    if not isinstance(system, str):
        raise DataError(path, line, f"field 'system' is {_type_name(system)}, expected a string")
    return [{"role": "system", "content": system}] + messages


def _mapped(obj: dict, keys: RecordKeys, path, line) -> Record:
    source = str(path)
    if keys.messages_key:
        if keys.messages_key not in obj:
            raise DataError(path, line, f"no column '{keys.messages_key}' (--messages-key); "
                            f"found {', '.join(repr(k) for k in list(obj)[:8])}")
        messages = _messages(obj[keys.messages_key], keys.messages_key, path, line)
        return Record(source, line, "columns", _with_system(obj, messages, path, line),
                      tools=_tools(obj, path, line))
    if not (keys.prompt_key and keys.response_key):
        raise DataError(path, line, "--prompt-key and --response-key go together; give both "
                        "(or --messages-key)")
    prompt = _require_string(obj, keys.prompt_key, "", path, line)
    response = _require_string(obj, keys.response_key, "", path, line)
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    return Record(source, line, "columns", _with_system(obj, messages, path, line))


def parse_record(obj: Any, path, line: int, keys: RecordKeys | None = None) -> Record:
    """Validate one decoded JSON value and normalize it to a `Record`."""
    source = str(path)
    if not isinstance(obj, dict):
        raise DataError(path, line, f"the line is {_type_name(obj)}, expected a JSON object "
                        "such as {\"messages\": [...]}")
    if keys is not None and keys.mapped:
        return _mapped(obj, keys, path, line)
    if "messages" in obj:
        messages = _messages(obj["messages"], "messages", path, line)
        return Record(source, line, "chat", messages, tools=_tools(obj, path, line))
    if "conversations" in obj:
        messages = _messages(obj["conversations"], "conversations", path, line)
        return Record(source, line, "sharegpt", _with_system(obj, messages, path, line),
                      tools=_tools(obj, path, line))
    if "prompt" in obj or "completion" in obj:
        prompt = _require_string(obj, "prompt", "", path, line)
        completion = _require_string(obj, "completion", "", path, line)
        messages = [{"role": "user", "content": prompt},
                    {"role": "assistant", "content": completion}]
        return Record(source, line, "completion", messages)
    if "instruction" in obj or "output" in obj:
        instruction = _require_string(obj, "instruction", "", path, line)
        output = _require_string(obj, "output", "", path, line)
        extra = obj.get("input", "")
        if extra is None:
            extra = ""
        if not isinstance(extra, str):
            raise DataError(path, line, f"field 'input' is {_type_name(extra)}, expected a string")
        prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        messages = [{"role": "user", "content": prompt},
                    {"role": "assistant", "content": output}]
        return Record(source, line, "alpaca", messages)
    if "text" in obj:
        return Record(source, line, "text", text=_require_string(obj, "text", "", path, line))
    keys_found = [k for k in obj if isinstance(k, str)]
    hints = {h for k in keys_found for h in difflib.get_close_matches(k, _FORMAT_KEYS, n=1,
                                                                      cutoff=0.6)}
    found = ", ".join(repr(k) for k in keys_found[:5]) or "no fields"
    hint = f"; did you mean {' / '.join(repr(h) for h in sorted(hints))}?" if hints else ""
    raise DataError(path, line, f"unknown record format (found {found}): expected 'messages', "
                    f"'conversations', 'prompt'+'completion', 'instruction'+'output' or 'text' "
                    f"(or map other columns with --messages-key / --prompt-key and "
                    f"--response-key){hint}")
