"""The mlxsft Textual app: an empty shell for now (the TUI issue fills it in)."""

from __future__ import annotations

from textual.app import App, ComposeResult
from textual.widgets import Footer, Header, Static


class MlxsftApp(App):
    TITLE = "mlxsft"
    BINDINGS = [("q", "quit", "Quit")]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("mlxsft: the training view arrives with the TUI issue.", id="placeholder")
        yield Footer()


def create_app(**kwargs) -> MlxsftApp:
    """App factory: tests inject fakes through keyword arguments."""
    return MlxsftApp(**kwargs)
