"""The data view: the lint summary of `mlxsft data check` and records with their masks.

`check_data` does the work (read, tokenize and mask exactly as training will, using
`mlxsft.datacheck`) and is meant for a worker thread: it loads only a tokenizer and
returns plain Rich `Text`. `DataView` shows the result: masked tokens dim, supervised
tokens bold green.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from mlxsft.data import load_splits
from mlxsft.datacheck import check_split, mask_runs, render_summary
from mlxsft.masking import Masker
from mlxsft.models import load_tokenizer

SUPERVISED = "bold green"
MASKED = "dim"
MAX_RECORDS = 100  # rendering thousands of records would only slow the UI down


def render_tokens(item, tokenizer) -> Text:
    """One record: a heading, then its text with masked and supervised runs styled."""
    text = Text()
    truncated = ", truncated" if item.truncated else ""
    text.append(f"{item.source}:{item.line}  {item.format}, {len(item.tokens)} tokens, "
                f"{item.supervised_tokens} supervised{truncated}\n", style="bold underline")
    for supervised, run in mask_runs(item, tokenizer):
        text.append(run, style=SUPERVISED if supervised else MASKED)
    return text


def check_data(data: str, model: str | None, mask: str, max_seq_len: int,
               max_records: int = MAX_RECORDS) -> tuple[list[str], list[Text], list[str]]:
    """(summaries, rendered records, masker warnings) of every split of `data`.
    Raises `UserError` for a missing file or model."""
    # Invalid records are counted and listed in the summary instead of stopping at the
    # first: a person looking at the data wants to see them all.
    splits = load_splits(data, skip_invalid=True)
    tokenizer = load_tokenizer(model)
    masker = Masker(tokenizer, mask, max_seq_len)
    summaries, records = [], []
    for name, datafile in splits.items():
        report = check_split(name, datafile, masker)
        summaries.append(render_summary(report))
        for item in report.items[:max(0, max_records - len(records))]:
            records.append(render_tokens(item, tokenizer))
    return summaries, records, list(masker.warnings)


class DataView(VerticalScroll):
    """Lint summary on top, then records with masked and supervised tokens told apart."""

    def __init__(self, *, id: str | None = None):
        super().__init__(id=id)
        self.summary_text = ""
        self.records: list[Text] = []
        self.error: str | None = None

    def compose(self) -> ComposeResult:
        legend = Text()
        legend.append("masked tokens", style=MASKED)
        legend.append("  ")
        legend.append("supervised tokens (carry the loss)", style=SUPERVISED)
        legend.append("   ctrl+l checks the data again", style="dim")
        yield Static(legend, id="data-legend")
        yield Static(Text("no data checked yet: fill in 'data' and open this tab",
                          style="dim"), id="data-summary")
        yield Static("", id="data-records")

    def on_mount(self) -> None:
        self.border_title = "Data"

    def show_loading(self, data: str) -> None:
        self.query_one("#data-summary", Static).update(
            Text(f"checking {data} (loading the tokenizer)...", style="dim italic"))
        self.query_one("#data-records", Static).update("")

    def show_error(self, message: str) -> None:
        self.error, self.summary_text, self.records = message, "", []
        self.query_one("#data-summary", Static).update(Text(f"error: {message}",
                                                            style="bold red"))
        self.query_one("#data-records", Static).update("")

    def show(self, summaries: list[str], records: list[Text], warnings: list[str]) -> None:
        summary = Text()
        for warning in warnings:
            summary.append(f"warning: {warning}\n", style="yellow")
        summary.append("\n\n".join(summaries))
        self.query_one("#data-summary", Static).update(summary)
        body = Text("\n\n").join(records) if records else Text("")
        self.query_one("#data-records", Static).update(body)
        self.error, self.summary_text, self.records = None, summary.plain, records
