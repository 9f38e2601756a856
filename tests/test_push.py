"""`mlxsft push`: everything up to the upload call (the staged folder and its card, through
a recording stand-in for HfApi), and the refusals that must come before any staging."""

import json
import os
from pathlib import Path

import pytest

from mlxsft.errors import UserError


class RecordingApi:
    def __init__(self, whoami_error=None):
        self.whoami_error, self.calls, self.staged = whoami_error, [], {}

    def whoami(self, token=None):
        self.calls.append(("whoami", token))
        if self.whoami_error:
            raise self.whoami_error
        return {"name": "me"}

    def create_repo(self, repo_id, private=False, exist_ok=False, token=None):
        self.calls.append(("create_repo", repo_id, private))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, folder_path, repo_id, token=None, commit_message=""):
        self.calls.append(("upload_folder", repo_id))
        root = Path(folder_path)
        self.staged = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*")
                       if p.is_file()}


@pytest.fixture
def token(monkeypatch):
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")


@pytest.fixture(scope="module")
def run(tiny_llama, tiny_data, tmp_path_factory):
    from test_fuse import train_adapter

    return train_adapter(tiny_llama, tiny_data, tmp_path_factory.mktemp("runs") / "run",
                         iters=4, steps_per_eval=2)


@pytest.mark.slow
def test_an_adapter_is_staged_in_mlx_lm_and_peft_layouts_with_a_card(run, token):
    from mlxsft.export.push import push

    api = RecordingApi()
    result = push(run, "me/tuned", private=True, api=api)
    assert [c[0] for c in api.calls] == ["whoami", "create_repo", "upload_folder"]
    assert api.calls[1] == ("create_repo", "me/tuned", True)
    assert sorted(api.staged) == ["README.md", "adapter_config.json", "adapters.safetensors",
                                  "peft/README.md", "peft/adapter_config.json",
                                  "peft/adapter_model.safetensors"]
    assert result.kind == "adapter" and result.url == "https://huggingface.co/me/tuned"
    assert api.staged["adapters.safetensors"] == (run / "adapters.safetensors").read_bytes()
    card = api.staged["README.md"].decode()
    config = json.loads((run / "adapter_config.json").read_text())
    evals = [json.loads(line)["val_loss"] for line in (run / "metrics.jsonl").read_text()
             .splitlines() if json.loads(line).get("event") == "eval"]
    assert len(evals) >= 2
    assert f"| before tuning (first evaluation) | {evals[0]:.4f} |" in card
    assert f"| after tuning (last evaluation) | {evals[-1]:.4f} |" in card
    for entry in config["data"]:
        assert entry["sha256"] in card
    assert "`assistant` loss mask" in card and str(config["base_model"]) in card


def test_a_gguf_file_is_staged_with_a_card(tmp_path, token):
    from mlxsft.export.push import push

    path = tmp_path / "tuned.gguf"
    path.write_bytes(b"GGUF" + bytes(60))
    api = RecordingApi()
    push(path, "me/tuned-gguf", api=api)
    assert sorted(api.staged) == ["README.md", "tuned.gguf"]
    assert "llama-cli -m tuned.gguf" in api.staged["README.md"].decode()


@pytest.mark.parametrize("setup, message", [
    ("no_token", "push: no Hugging Face token; run `hf auth login`"),
    ("offline", "push: HF_HUB_OFFLINE is set"),
    ("unreachable", r"push: cannot reach the Hugging Face hub with this token \(Connection"),
])
def test_without_the_hub_it_is_one_line_before_anything_is_staged(tmp_path, monkeypatch,
                                                                   capsys, setup, message):
    import huggingface_hub

    from mlxsft.cli import main
    from mlxsft.export import push as push_module

    monkeypatch.setattr(huggingface_hub, "get_token",
                        lambda: None if setup == "no_token" else "hf_test")
    if setup == "offline":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    api = RecordingApi(ConnectionError("Connection refused") if setup == "unreachable" else None)
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda: api)
    staged = []
    monkeypatch.setattr(push_module, "stage", lambda *a: staged.append(a))
    run = tmp_path / "run"
    run.mkdir()
    for name in ("adapters.safetensors", "adapter_config.json"):
        (run / name).write_text("{}")
    assert main(["push", str(run), "--repo", "me/tuned"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mlxsft: error: ")
    assert __import__("re").search(message, err), err
    assert staged == [] and not any(c[0] != "whoami" for c in api.calls)


def test_a_bad_repo_or_source_is_refused(tmp_path, token):
    from mlxsft.export.push import push

    with pytest.raises(UserError, match="give the repository as user/name"):
        push(tmp_path, "tuned", api=RecordingApi())
    with pytest.raises(UserError, match="is not a run or adapter directory"):
        push(tmp_path, "me/tuned", api=RecordingApi())
