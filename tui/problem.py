"""A one-line banner for what went wrong (no database yet, an old schema, a model that cannot load)."""

from rich.text import Text
from textual.widgets import Static


class ProblemBanner(Static):
    """Hidden until `report`; shows the message in place of a traceback, until `clear`."""

    DEFAULT_CSS = """
    ProblemBanner {
        display: none;
        background: $error 30%;
        color: $text;
        padding: 0 1;
        height: auto;
    }
    ProblemBanner.-shown {
        display: block;
    }
    """

    def report(self, message: str) -> None:
        """Shown as written: a message carries outside text (a path, a chat process's stderr line), which
        read as markup lost its `[rank0]` or ended the app on a `[/pytorch/...]`."""
        self.update(Text(message))
        self.add_class("-shown")

    def clear(self) -> None:
        self.remove_class("-shown")

    @property
    def message(self) -> str | None:
        return str(self.content) if self.has_class("-shown") else None
