"""One study, live: totals and ETA, the grid as a heatmap, a table of every cell; cancel or retry a cell.

The table is keyed by cell id and updated in place (only the cells that changed), so a thousand rows
refresh every second without rebuilding the table or losing the cursor. Cancel and retry go through the
runner's public API (`runner.api.cancel`, `retry`) in a worker thread: the runner that holds the study
acts on them on its next turn.
"""

from typing import ClassVar

from rich.markup import escape
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.widgets import DataTable, Footer, Static

from runner import api
from tui.cell_actions import ask_to_cancel, ask_to_retry
from tui.format import STATE_STYLES, UNKNOWN, duration, fixed, flops, percent, progress_bar, si
from tui.heatmap import Heatmap
from tui.polling import PollingScreen
from tui.problem import ProblemBanner

COLUMNS = (
    "cell", "mode", "depth", "budget", "seed", "state", "progress", "step",
    "tokens", "loss", "bpb", "tok/s", "MFU", "ETA", "GPU",
)  # fmt: skip


def cell_row(cell: api.CellProgress) -> tuple[Text, ...]:
    """The table's cells for one cell. Rich Text rather than strings: the table then measures them
    without parsing markup, which at a thousand rows is most of the first frame's cost."""
    gpu = UNKNOWN if cell.gpus is None else (cell.gpus or "cpu")
    return (
        Text(cell.id),
        Text("mid" if cell.mode == "mid-training" else "pre"),
        Text(str(cell.depth)),
        Text(flops(cell.flops)),
        Text(str(cell.seed)),
        Text(cell.state, style=STATE_STYLES.get(cell.state, "")),
        Text(progress_bar(cell.step, cell.steps_total)),
        Text(f"{cell.step}/{cell.steps_total}"),
        Text(si(cell.tokens)),
        Text(fixed(cell.train_loss)),
        Text(fixed(cell.val_bpb)),
        Text(si(cell.tok_per_s) if cell.state == "running" else UNKNOWN),
        Text(percent(cell.mfu) if cell.state == "running" else UNKNOWN),
        Text(duration(cell.eta_s)),
        Text(gpu),
    )


def totals_line(status: api.StudyStatus) -> str:
    counts = "  ".join(
        f"[{STATE_STYLES[state]}]{n} {state}[/]"
        for state, n in status.counts.items()
        if n and state in STATE_STYLES
    )
    runner = "runner active" if status.runner_active else "[dim]no runner on this machine[/]"
    done = percent(status.fraction_done)
    return (
        f"[b]{escape(status.name)}[/]  {len(status.cells)} cells  {counts}  │  {done} of FLOPs"
        f"  │  ETA {duration(status.eta_s)}  │  {runner}"
    )


class StudyScreen(PollingScreen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open_cell", "Detail", show=True),
        Binding("c", "cancel_cell", "Cancel cell"),
        Binding("r", "retry_cell", "Retry cell"),
        Binding("m", "cycle_mode", "Heatmap mode"),
        Binding("g", "gpus", "GPUs"),
        Binding("t", "chat", "Chat"),
        Binding("escape", "back", "Studies"),
        Binding("q", "app.quit", "Quit"),
    ]
    DEFAULT_CSS = """
    StudyScreen #totals { padding: 0 1; height: auto; }
    StudyScreen #cells { height: 1fr; }
    """

    def __init__(self, study: str) -> None:
        super().__init__()
        self.study = study
        self.status: api.StudyStatus | None = None
        self._rows: dict[str, tuple] = {}

    def compose(self) -> ComposeResult:
        yield Static(f"[b]{escape(self.study)}[/]  loading…", id="totals")
        yield ProblemBanner(id="problem")
        with Vertical():
            yield Heatmap(id="heatmap")
            yield DataTable(id="cells", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for column in COLUMNS:
            table.add_column(column, key=column)

    def read(self) -> api.StudyStatus:
        return self.app.source.read(api.study_status, self.study)

    def show(self, status: api.StudyStatus) -> None:
        self.status = status
        self.query_one(ProblemBanner).clear()
        self.query_one("#totals", Static).update(totals_line(status))
        self.query_one(Heatmap).show(status.cells)
        table = self.query_one(DataTable)
        # Cells the study's file no longer plans (it was edited and run again) leave the study's status.
        for cell_id in self._rows.keys() - {cell.id for cell in status.cells}:
            table.remove_row(cell_id)
            del self._rows[cell_id]
        shown_before, added = bool(self._rows), False
        for cell in status.cells:
            row = cell_row(cell)
            before = self._rows.get(cell.id)
            if before is None:
                table.add_row(*row, key=cell.id)
                added = shown_before
            else:
                for column, old, new in zip(COLUMNS, before, row, strict=True):
                    if old != new:
                        table.update_cell(cell.id, column, new, update_width=True)
            self._rows[cell.id] = row
        if added:  # cells the plan added since (a larger grid): in their place, not below every other row
            order = {cell.id: position for position, cell in enumerate(status.cells)}
            table.sort("cell", key=lambda cell_id: order[cell_id.plain])

    def show_problem(self, message: str) -> None:
        self.query_one(ProblemBanner).report(message)

    def selected_cell(self) -> api.CellProgress | None:
        table = self.query_one(DataTable)
        if self.status is None or not table.row_count:
            return None
        cell_id = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return next((cell for cell in self.status.cells if cell.id == cell_id), None)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.app.open_cell(self.study, str(event.row_key.value))

    def action_open_cell(self) -> None:
        cell = self.selected_cell()
        if cell is not None:
            self.app.open_cell(self.study, cell.id)

    def action_cancel_cell(self) -> None:
        cell = self.selected_cell()
        if cell is not None:
            ask_to_cancel(self, self.study, cell)

    def action_retry_cell(self) -> None:
        cell = self.selected_cell()
        if cell is not None:
            ask_to_retry(self, self.study, cell)

    def action_cycle_mode(self) -> None:
        if self.status is not None:
            self.query_one(Heatmap).cycle_mode(self.status.cells)

    def action_gpus(self) -> None:
        self.app.show_gpus(self.study)

    def action_chat(self) -> None:
        self.app.open_chat(self.study)

    def action_back(self) -> None:
        self.app.back_to_studies()
