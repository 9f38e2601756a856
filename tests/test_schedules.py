"""Learning-rate schedules: every schedule, with and without warmup, trains on a tiny model
and the rate the optimizer applied at each step matches the documented formula.

The applied rate is measured, not read back from the schedule: after each step the change
of every LoRA weight is divided by the Adam direction m / (sqrt(v) + eps) the optimizer
stored for it (MLX's Adam without bias correction, no weight decay here).
"""

import math

import numpy as np
import pytest

from mlxsft import events as ev
from mlxsft.config import TrainConfig
from mlxsft.train import Trainer

PEAK = 1e-3
STEPS = 6


def expected_rate(schedule: str, warmup: int, step: int) -> float:
    """The documented rate of 0-based step `step`, written out independently."""
    if step < warmup:
        return PEAK * (step + 1) / warmup
    if schedule == "constant":
        return PEAK
    progress = (step - warmup) / max(STEPS - 1 - warmup, 1)
    end = 0.1 * PEAK
    if schedule == "linear":
        return PEAK + (end - PEAK) * progress
    return end + (PEAK - end) * 0.5 * (1 + math.cos(math.pi * progress))


def lora_weights(trainer) -> dict:
    from mlx.utils import tree_flatten

    return {k: np.array(v) for k, v in tree_flatten(trainer.loaded.model.trainable_parameters())}


def applied_rate(before: dict, after: dict, optimizer_state) -> float:
    """The rate that turns the stored Adam direction into the observed weight change."""
    from mlx.utils import tree_flatten

    state = dict(tree_flatten(optimizer_state))
    rates = []
    for name, old in before.items():
        m, v = np.array(state[f"{name}.m"]), np.array(state[f"{name}.v"])
        direction = m / (np.sqrt(v) + 1e-8)
        big = np.abs(direction) > 0.1  # well-conditioned entries only
        if big.any():
            rates.append(((old - after[name])[big] / direction[big]))
    rates = np.concatenate(rates)
    return float(np.median(rates)), float(np.max(np.abs(rates - np.median(rates))))


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
@pytest.mark.parametrize("warmup", [0, 2])
def test_each_schedule_applies_the_documented_rate(schedule, warmup, tiny_llama, tiny_data,
                                                   tmp_path):
    config = TrainConfig(data=str(tiny_data), model=str(tiny_llama), out=str(tmp_path / "run"),
                         iters=STEPS, batch_size=4, learning_rate=PEAK, lr_schedule=schedule,
                         warmup=warmup, steps_per_report=1, steps_per_eval=0,
                         steps_per_save=0, grad_clip=0.0)
    trainer = Trainer(config)
    applied, reported, before = [], [], None
    for event in trainer.run():
        if isinstance(event, ev.RunStarted):
            before = lora_weights(trainer)
        elif isinstance(event, ev.StepReport):
            after = lora_weights(trainer)
            rate, spread = applied_rate(before, after, trainer.optimizer.state)
            assert spread < 1e-3 * rate  # one rate for every weight
            applied.append(rate)
            reported.append(event.learning_rate)
            before = after
    want = [expected_rate(schedule, warmup, s) for s in range(STEPS)]
    assert applied == pytest.approx(want, rel=1e-4)
    assert reported == pytest.approx(want, rel=1e-5)
    if schedule != "constant":
        assert applied[-1] == pytest.approx(0.1 * PEAK, rel=1e-4)


def test_first_step_of_constant_schedule_moves_lora_b_by_the_rate(tiny_llama, tiny_data,
                                                                  tmp_path):
    """B starts at zero, so the first Adam step moves each B entry by lr * 0.1 / sqrt(0.001)
    (m = 0.1 g, v = 0.001 g^2) whatever its gradient: the rate is visible in the weights."""
    config = TrainConfig(data=str(tiny_data), model=str(tiny_llama), out=str(tmp_path / "run"),
                         iters=1, batch_size=4, learning_rate=PEAK, lr_schedule="constant",
                         warmup=0, steps_per_eval=0, steps_per_save=0, grad_clip=0.0,
                         )
    trainer = Trainer(config)
    list(trainer.run())
    moved = [np.abs(w).max() for k, w in lora_weights(trainer).items() if k.endswith("lora_b")]
    assert moved and max(moved) == pytest.approx(PEAK * 0.1 / math.sqrt(0.001), rel=1e-4)
