"""`mlxsft train` end to end on tiny models: files written, loss goes down, mlx-lm loads it."""

import json
import math
import os
import shutil

import pytest
from helpers.tiny import save_model_dir

from mlxsft import events as ev
from mlxsft.rundir import read_metrics
from mlxsft.cli import main
from mlxsft.config import TrainConfig, build_config
from mlxsft.errors import UserError
from mlxsft.train import train


def run_events(**kw):
    return list(train(TrainConfig(**kw)))


@pytest.mark.slow
def test_thirty_steps_lower_the_loss_and_write_exactly_the_run_files(tiny_llama, tiny_data, tmp_path):
    out = tmp_path / "run"
    events = run_events(data=str(tiny_data), model=str(tiny_llama), out=str(out), iters=30,
                        batch_size=8, learning_rate=1e-3, steps_per_report=5,
                        steps_per_eval=15, steps_per_save=10)
    # Setup stages are announced (not logged): loading, tokenizing, then compiling the step.
    assert [e.kind if e.kind != "setup" else e.stage for e in events[:5]] == [
        "load", "tokenize", "start", "compile", "train"]
    events = [e for e in events if not isinstance(e, ev.Setup)]
    kinds = [e.kind for e in events]
    assert kinds[0] == "start" and kinds[-1] == "finished"
    reports = [e for e in events if isinstance(e, ev.StepReport)]
    # Step 1 is reported too, so the chart and ETA start with the first step.
    assert [r.step for r in reports] == [1, 5, 10, 15, 20, 25, 30]
    assert reports[-1].train_loss < reports[0].train_loss * 0.7
    evals = [e for e in events if isinstance(e, ev.EvalReport)]
    assert [e.step for e in evals] == [15, 30] and evals[-1].val_supervised_tokens > 0
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    unit = ["adapter_config.json", "adapters.safetensors", "optimizer.safetensors"]
    assert files == [
        "adapter_config.json", "adapters.safetensors",
        "best/adapter_config.json", "best/adapters.safetensors",
        *[f"checkpoints/step-0000{n}/{name}" for n in (10, 20, 30) for name in unit],
        "config.yaml", "metrics.jsonl",
    ]
    # The final adapter is the last checkpoint's files, linked (no second copy).
    for name in unit[:2]:
        assert os.path.samefile(out / name, out / "checkpoints/step-000030" / name)
    metrics = read_metrics(out)
    assert [m["event"] for m in metrics] == kinds
    assert all(k in metrics[1] for k in ("step", "train_loss", "learning_rate", "tokens",
                                         "seconds", "peak_memory_gb"))
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["lora_parameters"]["scale"] == 2.0 and config["lora_alpha"] == 16.0
    # Published with the adapter: names and hashes; local paths stay in config.yaml.
    assert config["mask"] == "assistant" and config["base_model"] == tiny_llama.name
    assert [(d["split"], d["name"]) for d in config["data"]] == [("train", "train.jsonl"),
                                                                 ("valid", "valid.jsonl")]
    assert len(config["data"][0]["sha256"]) == 64
    assert "base_model_path" not in config and "path" not in config["data"][0]


def test_mlx_lm_loads_the_adapter_and_generates(tiny_llama, tiny_data, tmp_path):
    import mlx.core as mx
    from mlx_lm import generate, load

    from mlxsft.loss import masked_mean_loss

    out = tmp_path / "run"
    run_events(data=str(tiny_data), model=str(tiny_llama), out=str(out), iters=20, batch_size=8,
               learning_rate=1e-3, steps_per_eval=0)
    model, tokenizer = load(str(tiny_llama), adapter_path=str(out))
    text = generate(model, tokenizer, "add 2 3", max_tokens=5)
    assert isinstance(text, str)
    base, _ = load(str(tiny_llama))
    # The adapter changed the function: the tuned model scores the data differently.
    tokens = mx.array([tokenizer.encode("<|im_start|>user\nadd 2 3<|im_end|>\n<|im_start|>assistant\nsum 5")])
    mask = mx.ones(tokens.shape)
    assert masked_mean_loss(model, tokens, mask).item() != masked_mean_loss(base, tokens, mask).item()


def test_quantized_base_qlora_and_qwen2(tmp_path, tiny_data):

    q4 = save_model_dir(tmp_path / "q4", quantize_bits=4)
    events = run_events(data=str(tiny_data), model=str(q4), out=str(tmp_path / "r1"), iters=4,
                        batch_size=4, steps_per_eval=0)
    assert isinstance(events[-1], ev.Finished)
    assert json.loads((tmp_path / "r1/adapter_config.json").read_text())["base_quantization"] == {
        "group_size": 32, "bits": 4}
    qwen = save_model_dir(tmp_path / "qwen2", arch="qwen2")
    events = run_events(data=str(tiny_data), model=str(qwen), out=str(tmp_path / "r2"), iters=4,
                        batch_size=4, quantize=8, steps_per_eval=0, grad_accum=2)
    assert isinstance(events[-1], ev.Finished) and math.isfinite(events[-1].final_train_loss)


def test_non_finite_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(
        tiny_llama, tiny_data, tmp_path, monkeypatch):
    from mlxsft.train import Trainer

    real_step = Trainer.train_step
    calls = {"n": 0}

    def step_that_diverges(self, batches):
        calls["n"] += 1
        loss, supervised, tokens = real_step(self, batches)
        return (float("nan") if calls["n"] == 5 else loss), supervised, tokens

    monkeypatch.setattr(Trainer, "train_step", step_that_diverges)
    out = tmp_path / "run"
    events = run_events(data=str(tiny_data), model=str(tiny_llama), out=str(out), iters=40,
                        batch_size=8, steps_per_save=2, steps_per_eval=0)
    failed = events[-1]
    assert isinstance(failed, ev.Failed) and failed.step == 5
    assert "the training loss became nan at step 5" in failed.message
    assert failed.last_good_checkpoint == str(out / "checkpoints" / "step-000004")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
    assert not (out / "adapters.safetensors").exists()
    assert read_metrics(out)[-1]["event"] == "failed"


def test_should_stop_saves_the_adapter(tiny_llama, tiny_data, tmp_path):
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] > 3

    out = tmp_path / "run"
    events = list(train(TrainConfig(data=str(tiny_data), model=str(tiny_llama), out=str(out),
                                    iters=50, steps_per_eval=0), should_stop=stop))
    assert events[-1].stopped_early and events[-1].step == 3
    assert (out / "adapters.safetensors").exists()


def test_yaml_then_cli_override_order(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("learning-rate: 0.002\nbatch_size: 2\nlora_rank: 4\nmask: last\n")
    import argparse

    args = argparse.Namespace(batch_size=6, learning_rate=None, lora_rank=None, iters=None)
    c = build_config(args, str(config))
    assert (c.batch_size, c.learning_rate, c.lora_rank, c.mask) == (6, 0.002, 4, "last")
    assert c.lora_alpha == 16.0  # untouched default
    config.write_text("lora_rnak: 4\n")
    with pytest.raises(UserError, match="unknown option 'lora_rnak'; did you mean 'lora_rank'"):
        build_config(argparse.Namespace(), str(config))
    config.write_text("batch_size: many\n")
    with pytest.raises(UserError, match="'batch_size' must be int"):
        build_config(argparse.Namespace(), str(config))


def test_train_cli_resolved_config_is_saved(tiny_llama, tiny_data, tmp_path, capsys):
    import yaml

    config = tmp_path / "run.yaml"
    config.write_text(f"model: {tiny_llama}\niters: 3\nlora_rank: 4\n")
    out = tmp_path / "run"
    code = main(["train", str(tiny_data), "--config", str(config), "--out", str(out),
                 "--lora-rank", "2", "--steps-per-eval", "0"])
    assert code == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["lora_rank"] == 2 and saved["iters"] == 3 and saved["model"] == str(tiny_llama)
    printed = capsys.readouterr().out
    assert "trainable parameters:" in printed and "step 3/3" in printed and "finished at step 3" in printed


def test_refuses_to_overwrite_a_run(tiny_llama, tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "adapters.safetensors").write_bytes(b"precious")
    code = main(["train", str(tiny_data), "--model", str(tiny_llama), "--out", str(out)])
    assert code == 2
    assert "already holds files" in capsys.readouterr().err
    assert (out / "adapters.safetensors").read_bytes() == b"precious"


def test_gradient_checkpointing_gives_the_same_losses(tiny_llama, tiny_data, tmp_path):
    def losses(flag, name):
        events = run_events(data=str(tiny_data), model=str(tiny_llama), out=str(tmp_path / name),
                            iters=4, batch_size=4, steps_per_report=1, steps_per_eval=0,
                            grad_checkpoint=flag, learning_rate=1e-3)
        return [e.train_loss for e in events if isinstance(e, ev.StepReport)]

    plain, checkpointed = losses(False, "a"), losses(True, "b")
    assert len(plain) == 4 and plain[0] != plain[-1]
    assert all(abs(a - b) < 1e-4 for a, b in zip(plain, checkpointed))


def test_same_seed_same_run(tiny_llama, tiny_data, tmp_path):
    def losses(name, seed):
        events = run_events(data=str(tiny_data), model=str(tiny_llama), out=str(tmp_path / name),
                            iters=3, batch_size=4, steps_per_report=1, steps_per_eval=0,
                            seed=seed, lora_dropout=0.1)
        return [e.train_loss for e in events if isinstance(e, ev.StepReport)]

    assert losses("a", 1) == losses("b", 1)
    assert losses("c", 2) != losses("d", 1)


def test_resume_continues_exactly_where_the_run_stopped(tiny_llama, tiny_data, tmp_path, capsys):
    common = ["--model", str(tiny_llama), "--batch-size", "4", "--learning-rate", "1e-3",
              "--steps-per-report", "1", "--steps-per-eval", "0", "--lora-dropout", "0"]
    straight = tmp_path / "straight"
    assert main(["train", str(tiny_data), "--out", str(straight), "--iters", "6", *common]) == 0
    first = tmp_path / "first"
    assert main(["train", str(tiny_data), "--out", str(first), "--iters", "6",
                 "--steps-per-save", "3", *common]) == 0
    # Pretend the run died after step 3: only that checkpoint survives.
    for name in ("adapters.safetensors", "adapter_config.json"):
        (first / name).unlink()
    shutil.rmtree(first / "checkpoints" / "step-000006")
    capsys.readouterr()
    assert main(["train", "--resume", str(first)]) == 0
    assert "resumed from" in capsys.readouterr().out
    a = [m["train_loss"] for m in read_metrics(straight) if m["event"] == "train"]
    b = [m["train_loss"] for m in read_metrics(first) if m["event"] == "train"]
    assert len(a) == 6 and len(b) == 9  # 6 from the first attempt, 3 more after resuming
    assert all(abs(x - y) < 1e-5 for x, y in zip(a[3:], b[6:]))
    assert main(["train", "--resume", str(first)]) == 2
    assert "already at step 6 of 6" in capsys.readouterr().err
