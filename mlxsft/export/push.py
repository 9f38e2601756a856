"""`mlxsft push`: upload an adapter, a fused model or a GGUF to the Hugging Face hub.

What is uploaded depends on what SOURCE is:
- a run or adapter directory (adapters.safetensors + adapter_config.json): the adapter in
  mlx-lm's layout at the top, the same adapter in PEFT's layout under `peft/`, and a card;
- a fused model directory (config.json + *.safetensors): its files as written by `fuse`
  (which already wrote its card);
- a .gguf file (or a directory from `fuse --format ollama`): the file(s) and a card.
The card names the base, the data (paths and sha256), the mask mode, the chat template,
the training settings and the held-out loss before and after tuning (from the run's
metrics when the run recorded evaluations).

The hub is asked first: offline (HF_HUB_OFFLINE), without a token, or with a token the hub
refuses, the command stops with one line before anything is staged.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlxsft.errors import UserError

_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


@dataclass
class PushResult:
    repo: str
    url: str
    kind: str
    files: list[str]


def check_hub_access(api) -> str:
    """The token to upload with, or a UserError saying why the hub cannot be used."""
    from huggingface_hub import constants, get_token

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        raise UserError("push: HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it "
                        "and run again when online")
    token = get_token()
    if not token:
        raise UserError("push: no Hugging Face token; run `hf auth login` (or set HF_TOKEN) "
                        "with a token that can write, then run again")
    try:
        api.whoami(token=token)
    except Exception as e:  # no network, a revoked token: either way nothing to upload to
        reason = " ".join(str(e).split())[:160] or type(e).__name__
        raise UserError(f"push: cannot reach the Hugging Face hub with this token ({reason}); "
                        "check the network and `hf auth whoami`") from None
    return token


def source_kind(source: Path) -> str:
    if source.is_file() and source.suffix == ".gguf":
        return "gguf"
    if (source / "adapters.safetensors").is_file() and (source / "adapter_config.json").is_file():
        return "adapter"
    if (source / "config.json").is_file() and any(source.glob("*.safetensors")):
        return "model"
    if source.is_dir() and any(source.glob("*.gguf")):
        return "gguf"
    raise UserError(f"push: {source} is not a run or adapter directory (adapters.safetensors "
                    "+ adapter_config.json), a fused model directory (config.json + "
                    "*.safetensors) or a .gguf file")


def _held_out_losses(run: Path) -> tuple[float, float] | None:
    from mlxsft.checkpoints import read_metrics

    losses = [e["val_loss"] for e in read_metrics(run) if e.get("event") == "eval"]
    return (losses[0], losses[-1]) if len(losses) >= 2 else None


def adapter_card(repo: str, adapter_dir: Path, adapter_config: dict) -> str:
    from mlxsft.export.card import model_card

    base = adapter_config.get("base_model") or "?"
    settings = {k: adapter_config[k] for k in ("iters", "batch_size", "learning_rate",
                                               "max_seq_len", "lr_schedule", "seed")
                if k in adapter_config}
    body = ["## Training settings", "",
            *([f"- {k}: `{v}`" for k, v in settings.items()] or ["- (not recorded)"]), ""]
    template = adapter_config.get("chat_template")
    if template:
        body += ["## Chat template", "", "```jinja", str(template).strip(), "```", ""]
    losses = _held_out_losses(adapter_dir)
    if losses:
        body += ["## Held-out loss", "", "| | response-only loss (nats/token) |", "|---|---|",
                 f"| before tuning (first evaluation) | {losses[0]:.4f} |",
                 f"| after tuning (last evaluation) | {losses[1]:.4f} |", ""]
    body += ["## Use", "", "```sh", f"mlxsft chat --adapter {repo}  # after hf download",
             "```", "", "The same adapter in PEFT's layout is in `peft/`."]
    return model_card(f"{repo}", base, adapter_dir, adapter_config, "A LoRA adapter for",
                      body, "mlx")


def stage(source: Path, repo: str, into: Path) -> str:
    """Fill `into` with what will be uploaded; returns the kind of SOURCE."""
    kind = source_kind(source)
    if kind == "adapter":
        from mlxsft.checkpoints import read_adapter_config
        from mlxsft.export.peft import export_peft

        config = read_adapter_config(source)
        for name in ("adapters.safetensors", "adapter_config.json"):
            shutil.copy2(source / name, into / name)
        if config.get("fine_tune_type", "lora") == "lora":
            export_peft(source, into / "peft")
        (into / "README.md").write_text(adapter_card(repo, source, config))
    elif kind == "model":
        for item in source.iterdir():
            if item.is_file():
                shutil.copy2(item, into / item.name)
    else:
        files = [source] if source.is_file() else sorted(
            p for p in source.iterdir() if p.is_file())
        for item in files:
            shutil.copy2(item, into / item.name)
        gguf_name = next(p.name for p in files if p.suffix == ".gguf")
        if not (into / "README.md").exists():
            (into / "README.md").write_text(
                f"---\ntags: [mlxsft, gguf]\n---\n# {repo}\n\nA model fused with mlxsft, "
                f"as llama.cpp's GGUF (`{gguf_name}`).\n\n```sh\nllama-cli -m {gguf_name}\n"
                "```\n")
    return kind


def push(source: str | Path, repo: str, private: bool = False, api=None) -> PushResult:
    """Check the hub, stage SOURCE in a temporary folder, create the repo and upload."""
    if not _REPO_ID.fullmatch(repo or ""):
        raise UserError(f"push --repo {repo!r}: give the repository as user/name")
    source = Path(source)
    if not source.exists():
        raise UserError(f"push: {source}: no such file or directory")
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    token = check_hub_access(api)
    source_kind(source)  # refuse a wrong SOURCE before staging
    with tempfile.TemporaryDirectory(prefix="mlxsft-push-") as tmp:
        staged = Path(tmp)
        kind = stage(source, repo, staged)
        files = sorted(str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file())
        url = api.create_repo(repo, private=private, exist_ok=True, token=token)
        api.upload_folder(folder_path=str(staged), repo_id=repo, token=token,
                          commit_message=f"Upload {kind} with mlxsft")
    return PushResult(repo, str(url), kind, files)
