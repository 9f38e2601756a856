"""`mlxsft bench`: the FLOPs accounting against a hand count, and a real timed run."""

import math

import pytest

from mlxsft.bench import flops_per_token, run_bench
from mlxsft.cli import main
from mlxsft.config import BenchConfig


def test_flops_per_token_matches_a_hand_count(tiny_llama):
    from mlxsft.models import load_model

    model = load_model(str(tiny_llama)).model
    # tiny llama: hidden 64, 2 layers, 4 heads of 16, 2 KV heads, MLP 128, tied vocab V.
    vocab = model.args.vocab_size
    per_layer = 64 * 64 + 2 * (64 * 32) + 64 * 64 + 3 * 64 * 128  # q, k+v, o, gate/up/down
    weights = 2 * per_layer + vocab * 64
    seq = 100
    forward = 2 * weights + 4 * 2 * 64 * (seq / 2)
    assert flops_per_token(model, seq, "lora") == 2 * forward
    assert flops_per_token(model, seq, "full") == 3 * forward


@pytest.mark.slow
def test_bench_runs_the_real_step(tiny_llama, capsys):
    result = run_bench(BenchConfig(model=str(tiny_llama), batch_size=2, seq_len=32, steps=2,
                                   warmup=1))
    assert result.tokens_per_second > 0 and math.isclose(
        result.supervised_tokens_per_second, result.tokens_per_second / 2, rel_tol=1e-6)
    assert result.matmul_peak_gflops > 0 and 0 < result.peak_fraction
    assert main(["bench", "--model", str(tiny_llama), "--batch-size", "2", "--seq-len", "32",
                 "--steps", "1", "--warmup", "1"]) == 0
    out = capsys.readouterr().out
    assert "tokens/s" in out and "% of a measured fp32 matmul peak" in out
