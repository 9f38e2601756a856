"""Fine-tuning methods and optimizers: DoRA, rsLoRA, LoRA+, NEFTune, every optimizer's
exact resume, early stopping and the evaluation interval."""

import json

import pytest

from mlxsft import events as ev
from mlxsft.checkpoints import read_metrics
from mlxsft.config import TrainConfig
from mlxsft.errors import UserError
from mlxsft.train import train


def run(tiny_llama, tiny_data, out, **kw):
    base = dict(data=str(tiny_data), model=str(tiny_llama), out=str(out), batch_size=4,
                learning_rate=1e-3, steps_per_report=1, steps_per_eval=0, samples=0)
    base.update(kw)
    return list(train(TrainConfig(**base)))


def _lora_model(tiny_llama, rank=4, alpha=8.0, **kw):
    from mlxsft.lora import apply_lora, lora_spec
    from mlxsft.models import load_model, to_compute_precision

    loaded = load_model(str(tiny_llama))
    to_compute_precision(loaded, False)
    apply_lora(loaded.model, lora_spec(loaded.model, rank, alpha, 0.0, -1, None, **kw))
    return loaded


def test_rslora_scales_by_alpha_over_sqrt_rank(tiny_llama, tiny_data, tmp_path):
    run(tiny_llama, tiny_data, tmp_path / "r", iters=1, lora_rank=16, lora_alpha=8,
        lora_scale="rs")
    config = json.loads((tmp_path / "r" / "adapter_config.json").read_text())
    assert config["lora_parameters"]["scale"] == pytest.approx(8 / 16 ** 0.5)


def test_dora_trains_loads_in_mlx_lm_and_fuses_to_base_plus_adapter(tiny_llama, tiny_data, tmp_path):
    import mlx.core as mx
    from mlx_lm import load

    from mlxsft.export.fuse import fuse

    out = tmp_path / "dora"
    events = run(tiny_llama, tiny_data, out, iters=8, fine_tune="dora")
    losses = [e.train_loss for e in events if isinstance(e, ev.StepReport)]
    assert losses[-1] < losses[0]
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["fine_tune_type"] == "dora"
    names = mx.load(str(out / "adapters.safetensors")).keys()
    assert any(n.endswith(".m") for n in names) and any(n.endswith("lora_b") for n in names)

    tuned, tokenizer = load(str(tiny_llama), adapter_path=str(out))
    fused_dir = tmp_path / "fused"
    fuse(out, fused_dir, dtype="float32")
    fused, _ = load(str(fused_dir))
    tokens = mx.array([tokenizer.encode("add 2 3 sum 5 add 4 4 sum 8")])
    a, b = tuned(tokens), fused(tokens)
    assert mx.abs(a - b).max().item() < 1e-4


def test_dora_exports_to_peft_with_use_dora(tiny_llama, tiny_data, tmp_path):
    import mlx.core as mx
    from safetensors.numpy import load_file

    from mlxsft.export.peft import export_peft

    out = tmp_path / "dora"
    run(tiny_llama, tiny_data, out, iters=2, fine_tune="dora")
    export_peft(out, tmp_path / "peft")
    peft_config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert peft_config["use_dora"] is True
    tensors = load_file(str(tmp_path / "peft" / "adapter_model.safetensors"))
    ours = mx.load(str(out / "adapters.safetensors"))
    magnitudes = {k: v for k, v in tensors.items() if k.endswith("lora_magnitude_vector")}
    assert len(magnitudes) == sum(k.endswith(".m") for k in ours)
    name = next(k for k in ours if k.endswith(".m"))
    peft_name = "base_model.model." + name[: -len(".m")] + ".lora_magnitude_vector"
    assert (tensors[peft_name] == ours[name].astype(mx.float32).tolist()).all()


def test_lora_plus_gives_b_ratio_times_the_learning_rate(tiny_llama):
    """One SGD step: every lora_b moves by -lr * ratio * grad, every lora_a by -lr * grad."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    from mlxsft.loss import masked_nll_sum
    from mlxsft.optimizers import build_optimizer

    loaded = _lora_model(tiny_llama)
    model = loaded.model
    # B starts at zero, which would make A's gradient zero: give B a value first.
    model.update({k: v for k, v in []})
    for _, m in model.named_modules():
        if hasattr(m, "lora_b"):
            m.lora_b = mx.random.normal(m.lora_b.shape) * 0.01
    config = TrainConfig(optimizer="sgd", lora_plus_ratio=4.0, learning_rate=0.1)
    optimizer = build_optimizer(config, 0.1)
    tokens = mx.array([[1, 5, 9, 13, 17, 21, 25, 29]])
    mask = mx.ones(tokens.shape)
    (_, _), grads = nn.value_and_grad(model, masked_nll_sum)(model, tokens, mask)
    before = dict(tree_flatten(model.trainable_parameters()))
    optimizer.update(model, grads)
    after = dict(tree_flatten(model.trainable_parameters()))
    flat_grads = dict(tree_flatten(grads))
    for name, g in flat_grads.items():
        factor = 4.0 if name.endswith("lora_b") else 1.0
        expected = before[name] - 0.1 * factor * g
        assert mx.allclose(after[name], expected, atol=1e-6).item(), name


def test_neftune_adds_bounded_noise_in_training_mode_only(tiny_llama):
    import mlx.core as mx

    from mlxsft.lora import apply_neftune

    loaded = _lora_model(tiny_llama)
    model = loaded.model
    embed = model.model.embed_tokens
    tokens = mx.array([[1, 2, 3, 4, 5, 6]])
    clean = embed(tokens)
    apply_neftune(model, alpha=5.0)
    model.eval()
    assert mx.array_equal(embed(tokens), clean).item()
    model.train()
    noisy_a, noisy_b = embed(tokens), embed(tokens)
    bound = 5.0 / (tokens.shape[1] * clean.shape[-1]) ** 0.5
    diff = mx.abs(noisy_a - clean)
    assert diff.max().item() <= bound + 1e-6 and diff.max().item() > bound / 10
    assert not mx.array_equal(noisy_a, noisy_b).item()
    # The LM head of a tied model reads the embedding matrix, not the noisy call.
    assert "lora" not in " ".join(k for k, _ in model.trainable_parameters().items())


@pytest.mark.parametrize("optimizer", ["adamw", "adam", "sgd", "adafactor", "lion", "muon"])
def test_each_optimizer_resumes_to_the_same_losses(optimizer, tiny_llama, tiny_data, tmp_path):
    kw = dict(iters=4, optimizer=optimizer, momentum=0.9 if optimizer == "sgd" else 0.0,
              lr_schedule="cosine", warmup=0.0, learning_rate=3e-4 if optimizer == "lion" else 1e-3)
    straight = [e.train_loss for e in run(tiny_llama, tiny_data, tmp_path / "a", **kw)
                if isinstance(e, ev.StepReport)]
    calls = {"n": 0}

    def stop_after_two():
        calls["n"] += 1
        return calls["n"] > 2

    config = dict(data=str(tiny_data), model=str(tiny_llama), out=str(tmp_path / "b"),
                  batch_size=4, steps_per_report=1, steps_per_eval=0, samples=0, **kw)
    list(train(TrainConfig(**config), should_stop=stop_after_two))
    resumed = list(train(TrainConfig(**config), resume_from=tmp_path / "b"))
    tail = [e.train_loss for e in resumed if isinstance(e, ev.StepReport)]
    assert len(tail) == 2
    assert tail == pytest.approx(straight[2:], abs=1e-5)
    assert straight[-1] != pytest.approx(straight[0], abs=1e-4)  # it did train


def test_resume_refuses_another_optimizer(tiny_llama, tiny_data, tmp_path):
    config = dict(data=str(tiny_data), model=str(tiny_llama), out=str(tmp_path / "b"),
                  batch_size=4, iters=4, steps_per_eval=0, samples=0)
    list(train(TrainConfig(**config), should_stop=iter([False, False, True]).__next__))
    with pytest.raises(UserError, match="optimizer state is for --optimizer adamw, not lion"):
        list(train(TrainConfig(**config, optimizer="lion"),
                   resume_from=tmp_path / "b"))


def test_patience_stops_at_the_right_evaluation_and_names_the_best(tiny_llama, tiny_data, tmp_path,
                                                                  monkeypatch):
    from mlxsft.train import Trainer

    losses = iter([3.0, 2.0, 2.5, 2.1, 2.2, 1.0, 0.5])
    monkeypatch.setattr(Trainer, "evaluate", lambda self: (next(losses), 10))
    events = run(tiny_llama, tiny_data, tmp_path / "r", iters=20, steps_per_eval=2, patience=2)
    evals = [e.step for e in events if isinstance(e, ev.EvalReport)]
    assert evals == [2, 4, 6, 8]  # 2.0 at step 4, then two evaluations without a lower loss
    finished = events[-1]
    assert isinstance(finished, ev.Finished) and finished.step == 8 and finished.stopped_early
    assert "best adapter is" in finished.stop_reason and "step 4" in finished.stop_reason
    best = json.loads((tmp_path / "r" / "best" / "adapter_config.json").read_text())
    assert best["step"] == 4 and best["val_loss"] == 2.0


def test_eval_every_fraction_of_an_epoch(tiny_llama, tiny_data, tmp_path, monkeypatch):
    from mlxsft.train import Trainer

    monkeypatch.setattr(Trainer, "evaluate", lambda self: (1.0, 10))
    # 64 records / batch 8 = 8 steps an epoch; a quarter epoch is every 2 steps.
    events = run(tiny_llama, tiny_data, tmp_path / "r", iters=8, batch_size=8, eval_every=0.25)
    assert [e.step for e in events if isinstance(e, ev.EvalReport)] == [2, 4, 6, 8]


@pytest.mark.parametrize("flag,value,message", [
    ("eval_every", 2.5, "--eval-every 2.5: must be a whole number"),
    ("patience", -1, "--patience -1"),
    ("lora_plus_ratio", -2.0, "--lora-plus-ratio -2.0"),
    ("report_to", ["mlflow"], "--report-to ['mlflow']"),
])
def test_bad_method_options_are_one_line_errors(flag, value, message):
    from mlxsft.config import validate

    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate(TrainConfig(**{flag: value}))


def test_metrics_record_the_samples_event(tiny_llama, tiny_data, tmp_path):
    events = run(tiny_llama, tiny_data, tmp_path / "r", iters=2, samples=2, sample_max_tokens=4)
    samples = [e for e in events if isinstance(e, ev.SampleAnswers)]
    assert len(samples) == 1 and samples[0].step == 2 and len(samples[0].samples) == 2
    first = samples[0].samples[0]
    assert first["prompt"].startswith("add ") and first["reference"].startswith("sum ")
    assert 1 <= first["tokens"] <= 4 and isinstance(first["exact"], bool)
    recorded = [m for m in read_metrics(tmp_path / "r") if m["event"] == "samples"]
    assert recorded[0]["samples"][0]["answer"] == first["answer"]


def test_training_keeps_a_mac_awake_and_does_nothing_elsewhere(monkeypatch):
    import os
    import shutil
    import subprocess
    import sys

    from mlxsft import cli

    started = []
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(subprocess, "Popen", lambda cmd, **kw: started.append(cmd) or "proc")
    monkeypatch.setattr(sys, "platform", "linux")
    assert cli.keep_awake() is None and started == []
    monkeypatch.setattr(sys, "platform", "darwin")
    assert cli.keep_awake() == "proc"
    # -i: no idle sleep; -w PID: caffeinate exits with the training process.
    assert started == [["/usr/bin/caffeinate", "-i", "-w", str(os.getpid())]]


@pytest.mark.parametrize("error,what", [
    (RuntimeError("[metal::malloc] Unable to allocate 8589934592 bytes"), "out of memory"),
    (RuntimeError("[METAL] Command buffer execution failed: Insufficient Memory "
                  "(00000008:kIOGPUCommandBufferCallbackErrorOutOfMemory)"), "out of memory"),
    (RuntimeError("[METAL] Command buffer execution failed: Caused GPU Timeout Error "
                  "(00000002:kIOGPUCommandBufferCallbackErrorTimeout)"), "a GPU timeout"),
])
def test_out_of_memory_is_one_failure_with_the_last_good_adapter_and_what_fits(
        error, what, tiny_llama, tiny_data, tmp_path, monkeypatch):
    from mlxsft.train import Trainer

    real, calls = Trainer.train_step, {"n": 0}

    def step(self, batches):
        calls["n"] += 1
        if calls["n"] == 3:
            raise error
        return real(self, batches)

    monkeypatch.setattr(Trainer, "train_step", step)
    events = run(tiny_llama, tiny_data, tmp_path / "r", iters=6, steps_per_save=2,
                 max_seq_len=512)
    failed = events[-1]
    assert isinstance(failed, ev.Failed) and failed.step == 3
    assert failed.message.startswith(f"{what} at step 3 (")
    assert ("try --batch-size 2 --grad-accum 2, or --grad-checkpoint, or --max-seq-len 256, or "
            "--quantize 4.") in failed.message
    assert failed.last_good_checkpoint.endswith("step-000002")
    assert failed.message.endswith(f"The last good adapter is {failed.last_good_checkpoint}")


def test_other_step_errors_are_not_taken_for_memory(tiny_llama, tiny_data, tmp_path, monkeypatch):
    from mlxsft.train import Trainer

    def step(self, batches):
        raise RuntimeError("[matmul] Last dimension of first input with shape (1,2) must match")

    monkeypatch.setattr(Trainer, "train_step", step)
    with pytest.raises(RuntimeError, match="matmul"):
        run(tiny_llama, tiny_data, tmp_path / "r", iters=2)
