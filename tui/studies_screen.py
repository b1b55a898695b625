"""Every study in the database, when `nanostudy tui` is given none: pick one to open it."""

from typing import ClassVar

from rich.markup import escape
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Footer, Static

from runner import api
from tui.format import percent
from tui.polling import PollingScreen
from tui.problem import ProblemBanner

COLUMNS = ("study", "cells", "done", "running", "pending", "failed", "FLOPs done", "study file")


class StudiesScreen(PollingScreen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open_study", "Open", show=True),
        Binding("g", "gpus", "GPUs"),
        Binding("q", "app.quit", "Quit"),
    ]
    DEFAULT_CSS = """
    StudiesScreen #title { padding: 0 1; text-style: bold; }
    StudiesScreen #empty { padding: 1 2; color: $text-muted; }
    """

    def compose(self) -> ComposeResult:
        yield Static(f"studies in {self.app.source.target}", id="title", markup=False)
        yield ProblemBanner(id="problem")
        yield DataTable(id="studies", cursor_type="row", zebra_stripes=True)
        yield Static("", id="empty")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for column in COLUMNS:
            table.add_column(column, key=column)

    def read(self) -> list[api.StudyOverview]:
        return self.app.source.read(api.list_studies)

    def show(self, studies: list[api.StudyOverview]) -> None:
        self.query_one(ProblemBanner).clear()
        table = self.query_one(DataTable)
        for name in {key.value for key in table.rows} - {study.name for study in studies}:
            table.remove_row(name)  # the database was replaced by one without it
        for study in studies:
            row = (
                escape(study.name),  # the table reads strings as markup: a name may be "lr [sweep]"
                str(study.num_cells),
                str(study.counts.get("done", 0)),
                str(study.counts.get("running", 0)),
                str(study.counts.get("pending", 0)),
                str(study.counts.get("failed", 0) + study.counts.get("diverged", 0)),
                percent(study.fraction_done),
                escape(study.path),
            )
            if study.name in table.rows:
                for column, value in zip(COLUMNS, row, strict=True):
                    table.update_cell(study.name, column, value, update_width=True)
            else:
                table.add_row(*row, key=study.name)
        self.query_one("#empty", Static).update(
            "" if studies else "no study in this database yet: `nanostudy run STUDY` records one"
        )

    def show_problem(self, message: str) -> None:
        self.query_one(ProblemBanner).report(message)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.app.open_study(str(event.row_key.value))

    def action_open_study(self) -> None:
        table = self.query_one(DataTable)
        if table.row_count:
            self.app.open_study(str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value))

    def action_gpus(self) -> None:
        self.app.show_gpus()
