"""The compare pane: one prompt box, the Base and the Tuned answers side by side.

The pane only shows things: the app decides which adapter answers and when (queued
while a run trains), and the chat worker streams `ChatUpdate`s that land here.
Every prompt is answered on its own (no shared history), so the two columns stay a
fair comparison of the same question.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Input, Select, Static

from mlxsft.tui.messages import Answers, ChatUpdate
from mlxsft.tui.runs import SavedAdapter, newest

LATEST = "latest"


@dataclass
class Exchange(Answers):
    """One prompt and its answers as the pane shows them."""

    prompt: str = ""


class AnswerColumn(VerticalScroll):
    """One model's answers to every prompt so far."""

    def __init__(self, title: str, *, id: str):
        super().__init__(id=id, classes="answer-column")
        self.title = title

    def compose(self) -> ComposeResult:
        yield Static("", classes="answer-text")

    def on_mount(self) -> None:
        self.border_title = self.title

    def show(self, text: Text) -> None:
        self.query_one(".answer-text", Static).update(text)
        self.scroll_end(animate=False)


class ComparePane(Vertical):
    """Prompt box, adapter choice, and the Base / Tuned columns."""

    def __init__(self, *, id: str | None = None):
        super().__init__(id=id)
        self.exchanges: dict[int, Exchange] = {}
        self.adapter_options: list[tuple[str, str]] = [("latest saved adapter", LATEST)]

    def compose(self) -> ComposeResult:
        with Horizontal(id="prompt-row"):
            yield Input(placeholder="ask both models (enter)", id="prompt", compact=True)
            yield Select([("latest saved adapter", LATEST)], value=LATEST, allow_blank=False,
                         compact=True, id="adapter-choice",
                         tooltip="which saved adapter the Tuned column uses")
        with Horizontal(id="answers"):
            yield AnswerColumn("Base", id="base-column")
            yield AnswerColumn("Tuned", id="tuned-column")
        yield Static("", id="chat-status")

    def on_mount(self) -> None:
        self.border_title = "Compare"

    @property
    def adapter_choice(self) -> str:
        value = self.query_one("#adapter-choice", Select).value
        return value if isinstance(value, str) else LATEST

    def set_adapters(self, adapters: list[SavedAdapter]) -> None:
        """Offer the run's saved adapters, keeping the current choice when it still exists."""
        select = self.query_one("#adapter-choice", Select)
        current = self.adapter_choice
        options = [("latest saved adapter", LATEST)] + [(a.label, a.key) for a in adapters]
        self.adapter_options = options
        select.set_options(options)
        select.value = current if current in {key for _, key in options} else LATEST
        if adapters and not getattr(self, "answered", False):
            # Before the first answer the title says what would answer: the newest adapter.
            self.query_one("#tuned-column").border_subtitle = f"saved: {newest(adapters).label}"

    def choose_adapter(self, key: str) -> bool:
        """Make the Tuned column answer with saved adapter `key`; False if not offered."""
        if key not in {k for _, k in self.adapter_options}:
            return False
        self.query_one("#adapter-choice", Select).value = key
        return True

    def set_sources(self, base: str, tuned: str, answered: bool = True) -> None:
        """Title the columns: what answered (or, before any answer, what would)."""
        self.answered = answered
        self.query_one("#base-column").border_subtitle = base
        self.query_one("#tuned-column").border_subtitle = tuned

    def set_status(self, text: str) -> None:
        self.query_one("#chat-status", Static).update(Text(text, style="dim italic"))

    def add_prompt(self, request_id: int, prompt: str, note: str = "") -> None:
        self.exchanges[request_id] = Exchange(base_note=note, tuned_note=note, prompt=prompt)
        self._redraw()

    def update_answer(self, update: ChatUpdate) -> None:
        exchange = self.exchanges.get(update.request_id)
        if exchange is None:
            return
        vars(exchange).update(vars(update.answers()))
        self._redraw()

    def answers(self, side: str) -> list[str]:
        """The answer texts of one column, oldest first ("base" or "tuned")."""
        return [e.text(side) for e in self.exchanges.values()]

    def on_resize(self) -> None:
        self._redraw()

    def _block(self, exchange: Exchange, side: str) -> Text:
        text = Text()
        text.append(f"> {exchange.prompt}\n", style="bold")
        answer, note = exchange.text(side), exchange.note(side)
        text.append(answer)
        if note:
            style = "bold red" if note.startswith("error") else "dim italic"
            text.append(("\n" if answer else "") + note, style=style)
        return text

    def _redraw(self) -> None:
        # Earlier prompts' two answers get the same height, so the columns stay aligned
        # prompt by prompt; the latest is left as is, so each column, scrolled to its
        # end, shows its own answer.
        columns = {side: self.query_one(f"#{side}-column", AnswerColumn)
                   for side in ("base", "tuned")}
        widths = {side: column.query_one(".answer-text").size.width
                  for side, column in columns.items()}
        out = {side: Text() for side in columns}
        last = len(self.exchanges) - 1
        for i, exchange in enumerate(self.exchanges.values()):
            blocks = {side: self._block(exchange, side) for side in columns}
            heights = {side: len(block.wrap(self.app.console, widths[side]))
                       if widths[side] and i < last else 0 for side, block in blocks.items()}
            for side, block in blocks.items():
                if i:
                    out[side].append("\n\n")
                out[side].append(block)
                out[side].append("\n" * (max(heights.values()) - heights[side]))
        for side, column in columns.items():
            column.show(out[side])
