"""Model cards: the README.md written next to a fused model or an exported adapter, naming
the base, the adapter and the data it was trained on (by name and sha256: a card is
published, so it holds no local path).
"""

from __future__ import annotations

from pathlib import Path

from mlxsft.models import hub_id
from mlxsft.provenance import public_data, public_name


def describe_data(adapter_config: dict) -> list[str]:
    lines = []
    for entry in public_data(adapter_config.get("data") or []):  # names, never local paths
        lines.append(f"- {entry['split']}: `{entry['name']}` ({entry['records']} "
                     f"records, sha256 `{entry['sha256']}`)")
    return lines or ["- (not recorded)"]


def describe_lora(adapter_config: dict) -> str:
    params = adapter_config.get("lora_parameters")
    if adapter_config.get("fine_tune_type", "lora") != "lora" or not params:
        return f"{adapter_config.get('fine_tune_type', 'unknown')} fine-tune"
    alpha = adapter_config.get("lora_alpha", params["scale"] * params["rank"])
    return (f"LoRA rank {params['rank']}, alpha {alpha:g} (scale alpha / rank = "
            f"{params['scale']:g}) on {', '.join(params.get('keys', []))} in the last "
            f"{adapter_config.get('num_layers', '?')} layers")


def model_card(title: str, base: str, adapter_dir: Path, adapter_config: dict, what: str,
               body: list[str], library: str) -> str:
    """A short README.md: YAML front matter for the hub, then base, adapter, data, `body`.
    It is published: the base and the adapter appear by name, not by local path."""
    base = public_name(base) or "unknown"
    front = ["---", f"library_name: {library}", "pipeline_tag: text-generation",
             "tags: [mlxsft, lora, sft]"]
    if (hub := hub_id(base)):
        front.append(f"base_model: {hub}")
    front.append("---")
    lines = front + [
        f"# {title}", "",
        f"{what} `{base}` with mlxsft: {describe_lora(adapter_config)}, trained with the "
        f"`{adapter_config.get('mask', 'assistant')}` loss mask (adapter: `{Path(adapter_dir).name}`, "
        f"step {adapter_config.get('step', '?')}).", "",
        "## Training data", "", *describe_data(adapter_config), "", *body]
    return "\n".join(lines).rstrip() + "\n"


