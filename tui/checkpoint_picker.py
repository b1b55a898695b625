"""Choose which checkpoint to chat with: the study's done cells, best first (`api.checkpoint_candidates`)."""

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from runner import api
from tui.format import fixed, flops


def describe_checkpoint(checkpoint: api.BestCheckpoint) -> str:
    return (
        f"cell {checkpoint.cell_id} ({checkpoint.mode}, depth {checkpoint.depth}, {flops(checkpoint.flops)} "
        f"FLOPs, val bpb {fixed(checkpoint.val_bpb, 4)}), step {checkpoint.step}"
    )


class CheckpointPicker(ModalScreen[api.BestCheckpoint | None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "dismiss(None)", "Cancel")]
    DEFAULT_CSS = """
    CheckpointPicker { align: center middle; }
    CheckpointPicker > Vertical {
        width: 100; height: auto; max-height: 80%; border: thick $primary; background: $surface;
    }
    CheckpointPicker #hint { padding: 0 1; color: $text-muted; }
    """

    def __init__(self, candidates: list[api.BestCheckpoint], current: str | None) -> None:
        super().__init__()
        self.candidates = candidates
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(
                "the first is the best by the rule; Enter chooses, Esc keeps the current one", id="hint"
            )
            yield OptionList(
                *(
                    Option(
                        ("● " if c.cell_id == self.current else "  ") + describe_checkpoint(c), id=c.cell_id
                    )
                    for c in self.candidates
                ),
                id="candidates",
            )

    def on_option_list_option_selected(self, selected: OptionList.OptionSelected) -> None:
        self.dismiss(next(c for c in self.candidates if c.cell_id == selected.option.id))
