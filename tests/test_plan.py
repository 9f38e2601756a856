"""`mlxsft plan`: the predicted peak against the peak a real run measures, the change it
suggests when a run will not fit, and the line training prints before it starts."""

import pytest

from mlxsft import plan as plan_module
from mlxsft.cli import main
from mlxsft.config import TrainConfig
from mlxsft.events import RunStarted
from mlxsft.train import Trainer


@pytest.mark.parametrize("grad_checkpoint", [False, True])
def test_predicted_peak_is_within_a_quarter_of_the_measured_one(tiny_llama, tiny_data, tmp_path,
                                                                grad_checkpoint):
    config = TrainConfig(data=str(tiny_data), model=str(tiny_llama), out=str(tmp_path / "run"),
                         iters=4, batch_size=8, steps_per_report=4, steps_per_eval=0,
                         steps_per_save=0, grad_checkpoint=grad_checkpoint)
    import mlx.core as mx

    trainer = Trainer(config)
    mx.reset_peak_memory()  # the process's peak so far belongs to other tests
    events = list(trainer.run())
    measured = [e for e in events if e.kind == "train"][-1].peak_memory_gb * 1e9
    predicted = trainer.plan.peak
    assert abs(predicted - measured) <= 0.25 * measured, (predicted, measured)
    started = next(e for e in events if isinstance(e, RunStarted))
    assert started.messages[-1] == trainer.plan.summary()
    assert started.messages[-1].startswith(f"plan: peak memory ~{predicted / 1e9:.2f} GB at "
                                             "batch 8 x 96 of ")


def test_a_plan_that_does_not_fit_names_a_change_that_does(tiny_llama, tiny_data, monkeypatch,
                                                           capsys):
    config = TrainConfig(data=str(tiny_data), model=str(tiny_llama), batch_size=32)
    full = plan_module.plan_run(config)
    # A budget the batch of 32 overruns by far, but a batch of 4 fits in.
    monkeypatch.setattr(plan_module, "memory_budget", lambda: (full.peak * 0.5, "test RAM"))
    tight = plan_module.plan_run(config)
    assert not tight.fits
    assert tight.suggestion.startswith("--batch-size ")
    batch = int(tight.suggestion.split()[1])
    assert batch < 32 and f"--grad-accum {32 // batch} (same tokens per step)" in tight.suggestion
    assert main(["plan", str(tiny_data), "--model", str(tiny_llama), "--batch-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "largest micro-batch: 32 x 96 tokens" in out and "budget" in out
    assert f"will not fit; {tight.suggestion}" in out
