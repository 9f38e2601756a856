"""The compare pane's models: a base and a tuned copy owned by one chat thread.

MLX streams are thread-local, so a model must be loaded and generated on one thread,
and the model being trained belongs to the training thread. `ChatEngine.serve()` runs
in the app's chat worker thread for the app's whole life: it loads the base model and
the base with a saved adapter (its own copies, cached until the model or the adapter
file changes), answers one request at a time, and interleaves the two generations so
both columns fill side by side. It reports only through `post` (the app's
`post_message`, which is thread-safe). Whether to answer while a run trains is the
app's decision, not the engine's. When it stops it frees its models and the thread's
MLX state on its own thread (see `mlxsft.mlx_thread`); the app's event loop joins the
thread before the interpreter shuts down.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Callable

# heavy: the model loading and generation modules (mlx, mlx_lm) are imported inside the
# functions the chat thread runs, so the app opens without waiting for them.
from mlxsft.checkpoints import adapter_stamp  # the final adapter is replaced when a run ends
from mlxsft.errors import UserError
from mlxsft.mlx_thread import release_thread_state
from mlxsft.tui.messages import Answers, ChatUpdate


EMPTY_NOTE = "(no text: the model ended its turn at once)"


@dataclass
class ChatRequest:
    request_id: int
    prompt: str
    model: str | None  # the base model spec (None: mlxsft's default)
    adapter_dir: str | None  # None: no tuned answer, `no_adapter_note` says why
    max_tokens: int = 256
    no_adapter_note: str = ""
    adapter_label: str = ""


def _default_load(model, adapter_dir=None):
    from mlxsft.adapters import load_for_inference

    return load_for_inference(model, adapter_dir)


def _default_stream(loaded, messages, max_tokens):
    from mlxsft.generate import stream_reply

    return stream_reply(loaded, messages, max_tokens=max_tokens, temperature=0.0)


def _error_text(error: BaseException) -> str:
    if isinstance(error, UserError):
        return f"error: {error}"
    return f"error: {type(error).__name__}: {error}"


class ChatEngine:
    """Answers `ChatRequest`s with a base and a tuned model on the serving thread."""

    def __init__(self, post: Callable[[ChatUpdate], object],
                 load: Callable = _default_load, stream: Callable = _default_stream):
        self.post = post
        self.load = load
        self.stream = stream
        self.requests: queue.Queue[ChatRequest] = queue.Queue()
        self.closed = threading.Event()
        self._cache: dict[str, tuple[tuple, object]] = {}  # side -> (key, loaded model)
        self._cancelled: Callable[[], bool] = lambda: False

    def submit(self, request: ChatRequest) -> None:
        self.requests.put(request)

    def close(self) -> None:
        self.closed.set()

    def serve(self, cancelled: Callable[[], bool] = lambda: False) -> None:
        """Answer requests until `close()` (or `cancelled()`); call it from the thread
        that is to own the models. On return it frees them and that thread's MLX state,
        so the thread must do no more MLX work: give it one of its own
        (`mlxsft.mlx_thread.run_on_own_thread`)."""
        self._cancelled = cancelled
        try:
            while not self._stopping():
                try:
                    request = self.requests.get(timeout=0.1)
                except queue.Empty:
                    continue
                self.answer(request)
        finally:
            # The models' arrays and the thread's MLX state go on the thread that made
            # them, while the interpreter is alive: left to thread exit they can abort it.
            self._cache.clear()
            release_thread_state()

    def _stopping(self) -> bool:
        return self.closed.is_set() or self._cancelled()

    def _model(self, side: str, model: str | None, adapter_dir: str | None):
        key = (model, adapter_dir, adapter_stamp(adapter_dir) if adapter_dir else 0)
        cached = self._cache.get(side)
        if cached is None or cached[0] != key:
            self._cache.pop(side, None)  # free the old copy before loading a new one
            self._cache[side] = (key, self.load(model, adapter_dir))
        return self._cache[side][1]

    def answer(self, request: ChatRequest) -> None:
        state = Answers(base_note="loading the base model...",
                        tuned_note="waiting for the base model...")

        def post(done: bool = False) -> None:
            # A fresh message each time: one already posted belongs to the UI thread.
            self.post(ChatUpdate(**vars(state.answers()), request_id=request.request_id,
                                 done=done))

        post()
        messages = [{"role": "user", "content": request.prompt}]
        streams = {}
        try:
            streams["base"] = iter(self.stream(self._model("base", request.model, None),
                                               messages, request.max_tokens))
            state.base_note = "generating..."
        except Exception as e:  # a missing model is a UserError; anything else is shown too
            state.base_note = _error_text(e)
        if request.adapter_dir is None:
            state.tuned_note = request.no_adapter_note
        else:
            state.tuned_note = f"loading {request.adapter_label or request.adapter_dir}..."
            post()
            try:
                tuned = self._model("tuned", request.model, request.adapter_dir)
                streams["tuned"] = iter(self.stream(tuned, messages, request.max_tokens))
                state.tuned_note = "generating..."
            except Exception as e:
                state.tuned_note = _error_text(e)
        post()
        # One piece from each side in turn: both columns grow together.
        while streams and not self._stopping():
            for side in list(streams):
                try:
                    piece = next(streams[side])
                except StopIteration:
                    del streams[side]
                    state.set(side, note=EMPTY_NOTE if not state.text(side) else "")
                    continue
                except Exception as e:
                    del streams[side]
                    state.set(side, note=_error_text(e))
                    continue
                state.set(side, text=state.text(side) + piece)
            post()
        post(done=True)

