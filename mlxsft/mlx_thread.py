"""Ending a worker thread that used MLX without aborting the process at exit.

MLX keeps per-thread state: each thread's command streams and, in its Python binding,
each thread's random key (a Python list held in a C++ `thread_local`). That key's
destructor takes the GIL when the OS thread finally ends. Python's `Thread.join()` and
the thread pools that Textual and asyncio use return as soon as the thread's Python
state is gone, *before* its C++ thread-locals are destroyed; if the main thread is in
interpreter finalization by then, taking the GIL makes the thread `pthread_exit` inside
a `noexcept` destructor and C++ calls `std::terminate` ("terminate called without an
active exception", exit 134). It is a race, so it bites in some runs and not others.

`release_thread_state()` empties that state while the thread still runs Python
(`mx.clear_streams()` also drops the random key, with the GIL held), so nothing is left
that needs the interpreter when the thread ends. It must be the thread's last MLX act:
the thread's default stream is gone afterwards, so a pooled thread (Textual's and
asyncio's workers are) would fail its next MLX job with "There is no Stream(cpu, N) in
current thread". `run_on_own_thread` gives a job a thread of its own that releases and
ends; pooled workers call that. The main thread needs nothing: its state dies with the
interpreter, in order.
"""

from __future__ import annotations

import sys
import threading
from typing import Any, Callable


def release_thread_state() -> None:
    """Finish this thread's pending MLX work, then drop its streams and random key."""
    if "mlx.core" not in sys.modules:
        return  # MLX never ran in this process, so this thread holds none of its state
    import mlx.core as mx

    try:
        mx.synchronize()
    except Exception:  # a failed computation is reported by whoever ran it; still release
        pass
    mx.clear_streams()


def run_on_own_thread(job: Callable[..., Any], *args, name: str = "mlx", **kwargs) -> Any:
    """Run `job(*args, **kwargs)` on a new thread that owns every MLX object the job makes
    and releases the thread's MLX state before it ends; wait for it and return its result
    (or raise its exception) here."""
    outcome: dict[str, Any] = {}

    def own_thread() -> None:
        try:
            outcome["result"] = job(*args, **kwargs)
        except BaseException as e:  # handed to the caller's thread below
            outcome["error"] = e
        finally:
            release_thread_state()

    thread = threading.Thread(target=own_thread, name=name)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("result")
