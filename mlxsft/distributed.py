"""Data-parallel runs on MLX's own distributed engine (`mx.distributed`, `mlx.launch`).

`mlx.launch [--hosts ... | --hostfile ... | -n N] -- mlxsft train ...` starts one process
(a rank) per host entry; `join()` gives each its `World`: rank, size and every rank's
host. mlxsft has no launcher and no transport of its own: the collectives are MLX's
(ring over TCP sockets, JACCL over Thunderbolt RDMA, MPI).

Data-parallel here equals one process on the same global batch: every rank takes a
disjoint shard of each global batch (`mlxsft.batching`), and the step sums gradients,
NLL, supervised and token counts over the ranks (`World.all_reduce`) before dividing
once by the global supervised count. `World.agree` keeps the ranks in step: a stop
asked on one rank or a failure on one rank ends every rank at the same step. A rank
that waits longer than the peer timeout in one collective ends itself with a message
(`Watchdog`), so none hangs forever; a peer that dies is noticed by MLX at once.

Nothing here reads or writes run files: rank 0 alone does that (`mlxsft.train`).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable

from mlxsft.errors import UserError

# heavy: mlx is imported inside the functions that need it (`mlxsft.blas` reads
# `ranks_on_this_host` before mlx may be loaded at all).

# What a rank says at an agreement: all well, it failed, or it was asked to stop
# (STOP + the signal number, STOP alone when the stop came from no signal).
OK, FAILED, STOP = 0, 1, 1000
DEFAULT_PEER_TIMEOUT = 600.0
# Gradients are summed in messages of about this many bytes (as mlx.nn.average_gradients).
MESSAGE_BYTES = 32 << 20
# The exit status of a rank its watchdog ended.
TIMED_OUT = 124


def launched() -> bool:
    """True when a launcher (mlx.launch, mpirun) started this process as one of several."""
    hostfile = os.environ.get("MLX_HOSTFILE")
    if hostfile:
        try:  # `mlx.launch -n 1` leaves an empty host file: one process, no peers
            return bool(open(hostfile, encoding="utf-8").read().strip())
        except OSError:
            return False
    return any(os.environ.get(k) for k in ("MLX_JACCL_COORDINATOR", "OMPI_COMM_WORLD_SIZE",
                                           "PMI_SIZE"))


def ranks_on_this_host() -> int:
    """How many ranks of a ring launch share this machine (1 when not launched), read from
    the launcher's host file so it is known before MLX loads (BLAS threads per rank)."""
    hostfile = os.environ.get("MLX_HOSTFILE")
    rank = os.environ.get("MLX_RANK")
    if not hostfile or rank is None:
        return 1
    try:
        hosts = json.loads(open(hostfile, encoding="utf-8").read() or "[]")
        mine = {a.rsplit(":", 1)[0] for a in hosts[int(rank)]}
        return max(1, sum(1 for h in hosts if {a.rsplit(":", 1)[0] for a in h} & mine))
    except (OSError, ValueError, IndexError, TypeError, AttributeError):
        return 1


@dataclass
class World:
    """This process's place in a data-parallel run; rank 0 of 1 when not launched."""

    rank: int = 0
    size: int = 1
    hosts: list[str] = field(default_factory=lambda: [socket.gethostname()])
    group: Any = None
    watchdog: "Watchdog | None" = None

    @property
    def leader(self) -> bool:
        """Rank 0: the one rank that writes the run directory and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def name(self, rank: int | None = None) -> str:
        """'rank 1 (studio.local)': how messages name a rank."""
        rank = self.rank if rank is None else rank
        return f"rank {rank} ({self.hosts[rank]})"

    def describe(self, batch_size: int, grad_accum: int) -> str:
        """The run's first word on its ranks and its global batch."""
        hosts = ", ".join(sorted(set(self.hosts)))
        accum = f" x --grad-accum {grad_accum}" if grad_accum > 1 else ""
        return (f"data-parallel on {self.size} ranks ({hosts}): a global batch of "
                f"{batch_size * self.size} records = --batch-size {batch_size} per rank x "
                f"{self.size} ranks{accum}; --learning-rate applies to that global batch")

    def said(self, message: str) -> str:
        """A message as this rank says it (unchanged in a one-process run)."""
        return f"{self.name()}: {message}" if self.distributed else message

    @contextmanager
    def waiting(self, what: str):
        """A stretch in which this rank may wait for the others (a step, an evaluation,
        an agreement): the watchdog ends the process when it lasts past the timeout."""
        if self.watchdog is None or self.watchdog.busy:  # the outer stretch is watched
            yield
            return
        self.watchdog.enter(what)
        try:
            yield
        finally:
            self.watchdog.leave()

    # -- collectives ---------------------------------------------------------------------
    def all_reduce(self, grads, sums):
        """(gradient tree, vector of sums) summed over all ranks, in float32, in messages
        of about MESSAGE_BYTES; usable inside the compiled step."""
        if not self.distributed:
            return grads, sums
        return sum_arrays(grads, sums, self._all_sum)

    def _all_sum(self, x):
        import mlx.core as mx

        return mx.distributed.all_sum(x, group=self.group)

    def gather(self, row: list[int], what: str) -> list[list[int]]:
        """Every rank's `row` of small integers (int32), in rank order."""
        if not self.distributed:
            return [list(row)]
        import mlx.core as mx

        with self.waiting(what):
            rows = mx.distributed.all_gather(mx.array([row], mx.int32), group=self.group,
                                             stream=mx.cpu)
            mx.eval(rows)
        return rows.tolist()

    def sum(self, values: list[float], what: str) -> list[float]:
        """`values` summed over all ranks (float32)."""
        if not self.distributed:
            return list(values)
        import mlx.core as mx

        with self.waiting(what):
            out = mx.distributed.all_sum(mx.array(values, mx.float32), group=self.group,
                                         stream=mx.cpu)
            mx.eval(out)
        return out.tolist()

    def agree(self, code: int, what: str) -> list[int]:
        """Every rank's code (OK, FAILED, STOP + signal) at this point of the run."""
        return [row[0] for row in self.gather([code], what)]


def sum_arrays(grads, sums, all_sum: Callable):
    """`all_sum` applied to the leaves of `grads` and to `sums`, packed into few messages:
    each leaf flattened and cast to float32, concatenated up to MESSAGE_BYTES, summed,
    split and given back its shape and dtype."""
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten

    flat = tree_flatten(grads)
    leaves = [sums.astype(mx.float32)] + [g.astype(mx.float32).reshape(-1) for _, g in flat]
    summed: list = []
    start = 0
    while start < len(leaves):
        end, size = start, 0
        while end < len(leaves) and (end == start or size + leaves[end].size * 4 <= MESSAGE_BYTES):
            size += leaves[end].size * 4
            end += 1
        chunk = leaves[start:end]
        total = all_sum(mx.concatenate(chunk) if len(chunk) > 1 else chunk[0])
        offsets, at = [], 0
        for leaf in chunk[:-1]:
            at += leaf.size
            offsets.append(at)
        summed += mx.split(total, offsets) if offsets else [total]
        start = end
    out = [(name, part.reshape(g.shape).astype(g.dtype))
           for (name, g), part in zip(flat, summed[1:])]
    return tree_unflatten(out), summed[0].astype(sums.dtype)


class Watchdog:
    """Ends this process when one stretch of waiting (`World.waiting`) outlasts the
    timeout: a peer that hangs (not one that dies, which MLX reports at once) would
    otherwise keep every rank in its collective forever."""

    def __init__(self, world: World, timeout: float):
        self.world, self.timeout = world, timeout
        self._since: float | None = None
        self._what = ""
        # Rank 0 names its last complete checkpoint in the message (set by the trainer).
        self.last_good: Callable[[], str | None] = lambda: None
        threading.Thread(target=self._watch, name="mlxsft-watchdog", daemon=True).start()

    @property
    def busy(self) -> bool:
        return self._since is not None

    def enter(self, what: str) -> None:
        self._what, self._since = what, time.monotonic()

    def leave(self) -> None:
        self._since = None

    def _watch(self) -> None:
        while True:
            time.sleep(0.5)
            since = self._since
            if since is None or time.monotonic() - since < self.timeout:
                continue
            try:
                last = self.last_good()
            except Exception:
                last = None
            keep = f"; the last good adapter is {last}" if last else ""
            message = (f"mlxsft: error: {self.world.name()}: waited {self.timeout:.0f}s for the "
                       f"other ranks ({self._what}); one of them stopped answering. Stopping "
                       f"this rank{keep} (--peer-timeout sets the wait)\n")
            try:
                os.write(sys.stderr.fileno(), message.encode())
            except OSError:
                pass
            os._exit(TIMED_OUT)  # the main thread is inside MLX and cannot be interrupted


class RunStopped(UserError):
    """A stop every rank knows of (another rank failed, or the ranks disagree): rank 0
    says it, the other ranks end quietly."""


def stop_code(requested) -> int:
    """This rank's word at an agreement: OK, or STOP + the signal number that asked
    (`should_stop()` returns it; a plain True is a stop without a signal)."""
    if not requested:
        return OK
    if isinstance(requested, int) and not isinstance(requested, bool):
        return STOP + requested
    return STOP


def agreement_outcome(world: World, codes: list[int], step: int) -> tuple[str | None, str | None]:
    """(why the run fails, None) when a rank failed; (None, a note naming who asked to
    stop, for the log) when one was asked to stop; (None, None) when all are OK."""
    for rank, code in enumerate(codes):
        if code == FAILED:
            return (f"{world.name(rank)} failed after step {step} (its message says why); "
                    "every rank stops"), None
    for rank, code in enumerate(codes):
        if code >= STOP:
            if not world.distributed:
                return None, None
            try:
                what = signal.Signals(code - STOP).name if code > STOP else "a stop request"
            except ValueError:
                what = f"signal {code - STOP}"
            return None, (f"{world.name(rank)} got {what}: every rank stops after step {step} "
                          "and rank 0 saves the adapter")
    return None, None


SETUP_ROW = 6  # [code, start step, records, data checksum, validation records, total steps]


def data_fingerprint(items) -> list[int]:
    """[records, checksum of their tokens and masks] (int32-safe): what every rank must
    have tokenized alike for their shards to make up one global batch."""
    import numpy as np

    crc = 0
    for item in items:
        crc = zlib.crc32(np.asarray(item.tokens, np.int64).tobytes(), crc)
        crc = zlib.crc32(np.asarray(item.loss_mask, np.float32).tobytes(), crc)
    return [len(items), crc & 0x7FFFFFFF]


def check_setup(world: World, values: list[int] | None) -> None:
    """Setup's agreement: every rank brings its `values` (None when its setup failed,
    after which it raises its own error); raises `RunStopped` unless all set up alike."""
    if not world.distributed:
        return
    row = [FAILED] + [0] * (SETUP_ROW - 1) if values is None else [OK, *values]
    assert len(row) == SETUP_ROW, row
    try:
        rows = world.gather(row, "setting up")
    except RuntimeError as e:
        if not peer_lost(e):
            raise
        raise UserError(world.said("lost the connection to another rank during setup (its "
                                   "message says why)")) from None
    if values is None:
        return
    for rank, other in enumerate(rows):
        if other[0] != OK:
            raise RunStopped(f"{world.name(rank)} could not set up (its message says why); no "
                             "rank trains")
    first = rows[0]
    for rank, other in enumerate(rows[1:], start=1):
        if other[1] != first[1]:
            raise RunStopped(f"{world.name(rank)} would resume at step {other[1]} and "
                             f"{world.name(0)} at step {first[1]}; every host needs the same "
                             "run directory at the same path")
        if other[2:] != first[2:]:
            raise RunStopped(f"{world.name(rank)} tokenized other data than {world.name(0)} "
                             f"({other[2]} training records, {first[2]} on rank 0, or the "
                             "same number with other tokens); every host needs the same "
                             "data, model and options at the same paths")


_world: World | None = None


def join(timeout: float = DEFAULT_PEER_TIMEOUT) -> World:
    """This process's World: joins the launcher's group once (later calls return it)."""
    global _world
    if _world is not None:
        if _world.watchdog is not None:
            _world.watchdog.timeout = timeout
        return _world
    if not launched():
        _world = World()
        return _world
    import mlx.core as mx

    world = World(hosts=[socket.gethostname()])
    world.watchdog = Watchdog(world, timeout)
    with world.waiting("joining the group"):
        try:
            group = mx.distributed.init()
        except RuntimeError as e:
            raise UserError(f"cannot join the other ranks ({' '.join(str(e).split())[:200]}); "
                            "check the host file and that every host runs the same "
                            "mlxsft") from None
    if group.size() == 1:
        world.watchdog.leave()
        _world = World()
        return _world
    world.rank, world.size, world.group = group.rank(), group.size(), group
    world.hosts = [socket.gethostname()] * world.size
    world.hosts = _gather_hosts(world)
    _world = world
    return world


def _gather_hosts(world: World) -> list[str]:
    """Every rank's host name, so a message can name the host of any rank."""
    raw = socket.gethostname().encode()[:63]
    rows = world.gather(list(raw) + [0] * (64 - len(raw)), "exchanging host names")
    return [bytes(b for b in row if b).decode(errors="replace") for row in rows]


def resumed_batch_size(saved: dict, world: World, where: str) -> tuple[int | None, str | None]:
    """The per-rank --batch-size that keeps a resumed run's global batch (and so its data
    order and loss) on this world size, and a note when it changed; (None, None) when the
    run recorded no global batch."""
    per_rank, ranks = saved.get("batch_size"), saved.get("world_size") or 1
    global_batch = saved.get("global_batch_size") or (per_rank * ranks if per_rank else None)
    if not isinstance(global_batch, int) or global_batch < 1:
        return None, None
    if global_batch % world.size:
        raise UserError(f"--resume {where}: its global batch is {global_batch} records "
                        f"({per_rank} per rank x {ranks} ranks), which {world.size} ranks "
                        f"cannot share evenly; resume on a number of ranks that divides "
                        f"{global_batch}, or pass --batch-size (the data order then changes)")
    batch = global_batch // world.size
    if ranks == world.size:
        return batch, None
    return batch, (f"resumed on {world.size} rank{'s' if world.size > 1 else ''} (the run "
                   f"started on {ranks}): --batch-size {batch} per rank keeps the global "
                   f"batch of {global_batch}")


def peer_lost(e: BaseException) -> bool:
    """Whether an error from MLX is a collective whose peer went away."""
    text = str(e)
    return "peer" in text or text.startswith(("[ring]", "[jaccl]", "[mpi]", "[nccl]"))
