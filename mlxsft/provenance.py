"""What files meant to be shared say about a model's base and data: names and sha256,
never where they sit on this machine; and how this machine finds them again.

An adapter (RUN/adapter_config.json), a fused model and its card, and a PEFT export are
things users publish, so they record the base by the name it was given (an alias or a
hub id as is, a local directory or GGUF file by its own name) and each data file by name,
record count and sha256. The local paths a run needs later (`--resume`, `eval`, `chat`
and `fuse` without `--model`, fusing's check on the run's validation data) stay in the
run directory's own config.yaml, which is not published; `run_settings` finds it from
any adapter directory inside the run (the final one, best/, a checkpoint).
"""

from __future__ import annotations

from pathlib import Path

from mlxsft.models import hub_id

RUN_CONFIG = "config.yaml"
SEARCH_UP = 3  # RUN/, RUN/best/, RUN/checkpoints/step-N/: the run's config is this close


def public_name(spec: str | None) -> str | None:
    """The base as a published file may name it: an alias or hub id unchanged, a local
    directory or file by its own name (no parent directories)."""
    if not spec or hub_id(spec) is not None:
        return spec
    if "/" in spec or "\\" in spec or spec.startswith("~") or Path(spec).exists():
        return Path(spec.rstrip("/")).name or spec
    return spec  # an alias such as smollm2-135m


def public_data(files: list[dict]) -> list[dict]:
    """The data entries of an adapter_config: name, records and sha256 per split. A hub
    split keeps its dataset name; a local file is named by its file name alone."""
    out = []
    for f in files:
        name, path = f.get("name"), f.get("path")
        if not name:
            name = Path(path).name if path and Path(path).is_absolute() else path
        out.append({"split": f.get("split"), "name": name, "records": f.get("records"),
                    "sha256": f.get("sha256")})
    return out


def public_template(template: dict) -> dict:
    """The chat-template entries of an adapter_config, a template file named by its name."""
    source = template.get("chat_template_source")
    return template | ({"chat_template_source": public_name(source)} if source else {})


def run_settings(adapter_dir: str | Path) -> dict:
    """The resolved options of the run that wrote `adapter_dir` (its config.yaml, with
    absolute local paths), or {} when the adapter travelled without its run."""
    import yaml

    here = Path(adapter_dir).resolve()
    for directory in [here, *here.parents][:SEARCH_UP]:
        path = directory / RUN_CONFIG
        if path.is_file():
            try:
                settings = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError):
                return {}
            return settings if isinstance(settings, dict) else {}
    return {}


def local_base(adapter_dir: str | Path, adapter_config: dict) -> str | None:
    """Where the adapter's base sits on this machine, when its run recorded one that is
    still there (adapters written before names replaced paths say so themselves)."""
    for candidate in (run_settings(adapter_dir).get("model"),
                      adapter_config.get("base_model_path")):
        if candidate and Path(candidate).exists():
            return str(candidate)
    return None


def local_data_file(adapter_dir: str | Path, entry: dict) -> Path | None:
    """The local file an adapter_config data entry names, found through the run's
    config.yaml (its --valid, its data file, or the file of that name in its data
    directory); None when the run is not here or the file is gone."""
    if entry.get("path"):  # written before names replaced paths
        return Path(entry["path"])
    name = entry.get("name")
    settings = run_settings(adapter_dir)
    candidates = []
    for key in (("valid", "data") if entry.get("split") == "valid" else ("data",)):
        value = settings.get(key)
        if value:
            path = Path(value)
            candidates += [path / name] if path.is_dir() else [path, path.parent / name]
    for path in candidates:
        if path.is_file() and (name is None or path.name == name):
            return path
    return None
