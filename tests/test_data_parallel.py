"""Data-parallel pieces that need no second process: each rank's shard of a global batch,
the batch size a resumed run takes on another number of ranks, the packed all-sum of
gradients, and what an agreement between ranks decides. (`test_distributed.py` runs
real ranks under mlx.launch.)"""

import json
from collections import Counter

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

import mlxsft.distributed as dist
from mlxsft.batching import iterate_batches, iterate_packed_batches
from mlxsft.config import TrainConfig, build_config
from mlxsft.distributed import (FAILED, OK, STOP, World, agreement_outcome,
                                ranks_on_this_host, resumed_batch_size, stop_code, sum_arrays)
from mlxsft.errors import UserError
from mlxsft.masking import Tokenized


def records(n: int, seed: int = 0) -> list[Tokenized]:
    """Records of different lengths with distinct tokens (the first token is the id)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        length = int(rng.integers(3, 40))
        tokens = [i + 1000] + [int(t) for t in rng.integers(0, 500, length - 1)]
        out.append(Tokenized(tokens, [0] + [1] * (length - 1), "train.jsonl", i + 1, "chat",
                             "prefix"))
    return out


def real_rows(batch) -> Counter:
    """The records in a batch (by id), filler rows (no length) left out."""
    return Counter(int(batch.tokens[r, 0]) for r in range(len(batch.lengths))
                   if batch.lengths[r] > 0)


@pytest.mark.parametrize("ranks", [2, 3])
@pytest.mark.parametrize("n", [37, 48])  # a short tail batch, and none
def test_shards_are_disjoint_and_make_up_the_one_process_batch(ranks, n):
    items, per_rank, steps = records(n), 4, 40  # 40 steps: several epochs, reshuffled
    whole = iterate_batches(items, per_rank * ranks, 64, seed=3)
    shards = [iterate_batches(items, per_rank, 64, seed=3, shard=(r, ranks))
              for r in range(ranks)]
    for _ in range(steps):
        want = real_rows(next(whole))
        parts = [next(s) for s in shards]
        got = [real_rows(p) for p in parts]
        assert sum(got, Counter()) == want
        for a in range(ranks):
            for b in range(a + 1, ranks):
                assert not set(got[a]) & set(got[b])
        for part in parts:
            assert part.tokens.shape[0] == per_rank  # one compiled shape on every rank
            filler = part.lengths == 0
            assert part.loss_mask[filler].sum() == 0  # fillers carry no loss


def test_a_rank_with_no_record_of_the_tail_batch_gets_only_filler():
    items = records(9)  # global batches of 8: the tail holds one record
    shards = [iterate_batches(items, 2, 64, shuffle=False, loop=False, shard=(r, 4))
              for r in range(4)]
    tails = [list(s)[-1] for s in shards]
    assert [int(t.lengths.sum() > 0) for t in tails] == [1, 0, 0, 0]
    assert all(t.loss_mask.sum() == 0 for t in tails[1:])
    assert all(t.tokens.shape[0] == 2 for t in tails)


def test_packed_shards_make_up_the_one_process_batch():
    items = records(50)
    whole = iterate_packed_batches(items, 4, 96, seed=1)
    shards = [iterate_packed_batches(items, 2, 96, seed=1, shard=(r, 2)) for r in range(2)]
    for _ in range(12):
        want = sorted(map(tuple, next(whole).tokens.tolist()))
        got = sorted(map(tuple, np.concatenate([next(s).tokens for s in shards]).tolist()))
        assert got == want


def test_the_data_order_follows_the_global_step_on_any_number_of_ranks():
    """A run resumed at step k on another number of ranks (same global batch) sees the
    batches an uninterrupted run would: batch k of every layout is the same records."""
    items, global_batch, k = records(45), 8, 13

    def batch_at(ranks):
        shards = [iterate_batches(items, global_batch // ranks, 64, seed=5, shard=(r, ranks))
                  for r in range(ranks)]
        for _ in range(k):  # what --resume skips
            for s in shards:
                next(s)
        return sum((real_rows(next(s)) for s in shards), Counter())

    assert batch_at(1) == batch_at(2) == batch_at(4)


def test_resumed_batch_size_keeps_the_global_batch():
    two = {"batch_size": 2, "world_size": 2, "global_batch_size": 4}
    assert resumed_batch_size(two, World(0, 1), "RUN") == (
        4, "resumed on 1 rank (the run started on 2): --batch-size 4 per rank keeps the "
        "global batch of 4")
    assert resumed_batch_size(two, World(0, 2, ["a", "b"]), "RUN") == (2, None)
    assert resumed_batch_size({"batch_size": 6}, World(0, 3, ["a"] * 3), "RUN")[0] == 2
    assert resumed_batch_size({}, World(), "RUN") == (None, None)
    with pytest.raises(UserError, match=r"global batch is 4 records \(2 per rank x 2 ranks\), "
                                        r"which 3 ranks cannot share evenly"):
        resumed_batch_size(two, World(0, 3, ["a"] * 3), "RUN")


def test_a_run_config_with_its_world_size_reads_back(tmp_path):
    saved = TrainConfig(batch_size=2).resolved() | {"world_size": 2, "global_batch_size": 4}
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(saved))  # JSON is YAML
    assert build_config({}, str(path)).batch_size == 2


def test_sum_arrays_packs_every_leaf_and_gives_back_shapes_and_dtypes(monkeypatch):
    monkeypatch.setattr(dist, "MESSAGE_BYTES", 64)  # several messages
    calls = []

    def twice(x):
        calls.append(x.size)
        return x * 2

    grads = {"a": {"w": mx.arange(12, dtype=mx.float32).reshape(3, 4)},
             "b": [mx.ones((5,), mx.bfloat16), mx.full((2, 2), 0.5)]}
    sums = mx.array([3.0, 7.5, 11.0])
    out, summed = sum_arrays(grads, sums, twice)
    assert summed.tolist() == [6.0, 15.0, 22.0]
    for (name, g), (_, o) in zip(tree_flatten(grads), tree_flatten(out)):
        assert o.shape == g.shape and o.dtype == g.dtype, name
        assert mx.array_equal(o, g * 2).item(), name
    assert len(calls) > 1 and sum(calls) == 3 + 12 + 5 + 4


def test_the_agreement_stops_everyone_and_names_who():
    world = World(0, 3, ["mini", "studio", "air"])
    assert agreement_outcome(world, [OK, OK, OK], 5) == (None, None)
    failure, note = agreement_outcome(world, [OK, FAILED, STOP + 2], 5)
    assert failure == ("rank 1 (studio) failed after step 5 (its message says why); every "
                       "rank stops") and note is None
    assert agreement_outcome(world, [OK, OK, STOP + 2], 5) == (
        None, "rank 2 (air) got SIGINT: every rank stops after step 5 and rank 0 saves the "
        "adapter")
    assert stop_code(None) == stop_code(False) == OK
    assert stop_code(True) == STOP and stop_code(15) == STOP + 15


def test_blas_threads_are_shared_by_the_ranks_of_one_host(tmp_path, monkeypatch):
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps([["10.0.0.1:5000"], ["10.0.0.1:5001"], ["10.0.0.2:5000"]]))
    monkeypatch.setenv("MLX_HOSTFILE", str(hostfile))
    monkeypatch.setenv("MLX_RANK", "1")
    assert ranks_on_this_host() == 2
    monkeypatch.setenv("MLX_RANK", "2")
    assert ranks_on_this_host() == 1
    monkeypatch.delenv("MLX_HOSTFILE")
    assert ranks_on_this_host() == 1


def test_evaluation_shards_sum_to_the_whole(tiny_llama):
    from mlxsft.evaluate import nll_sums
    from mlxsft.models import load_model

    model = load_model(str(tiny_llama)).model
    vocab = model.args.vocab_size
    items = [Tokenized([t % vocab for t in r.tokens], r.loss_mask, r.source, r.line, r.format,
                       r.method) for r in records(11)]
    total, count = nll_sums(model, items, 4, 64)
    parts = [nll_sums(model, items, 2, 64, shard=(r, 2)) for r in range(2)]
    assert sum(c for _, c in parts) == count == sum(sum(i.loss_mask[1:]) for i in items)
    assert abs(sum(t for t, _ in parts) - total) < 1e-4 * total


class FakeWorld(World):
    """Rank 0 of three whose gather returns the rows given (what the others brought)."""

    def __init__(self, others):
        super().__init__(0, 3, ["mini", "studio", "air"])
        self.others = others

    def gather(self, row, what):
        return [row, *self.others]


def test_setup_stops_every_rank_unless_all_set_up_alike():
    from mlxsft.distributed import RunStopped, check_setup

    mine = [0, 64, 12345, 8, 30]  # start step, records, checksum, validation records, steps
    check_setup(FakeWorld([[OK, *mine], [OK, *mine]]), mine)
    with pytest.raises(RunStopped, match=r"^rank 2 \(air\) could not set up"):
        check_setup(FakeWorld([[OK, *mine], [FAILED, 0, 0, 0, 0, 0]]), mine)
    with pytest.raises(RunStopped, match=r"^rank 1 \(studio\) would resume at step 3 and "
                                         r"rank 0 \(mini\) at step 0"):
        check_setup(FakeWorld([[OK, 3, *mine[1:]], [OK, *mine]]), mine)
    with pytest.raises(RunStopped, match=r"^rank 1 \(studio\) tokenized other data than rank 0 "
                                         r"\(mini\) \(64 training records, 64 on rank 0"):
        check_setup(FakeWorld([[OK, 0, 64, 999, 8, 30], [OK, *mine]]), mine)
    # A rank whose own setup failed only tells the others (its own error follows).
    check_setup(FakeWorld([[OK, *mine], [OK, *mine]]), None)
