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
that needs the interpreter when the thread ends. Call it last on any non-main thread
that loaded, trained or generated with MLX, after dropping its models and arrays. The
main thread needs nothing: its state dies with the interpreter, in order.
"""

from __future__ import annotations

import sys


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
