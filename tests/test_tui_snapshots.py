"""Snapshots of the TUI's screens at a fixed terminal size (pytest-textual-snapshot): the demo study, a
failed cell's detail, the GPUs of a fake machine, a chat after one reply. A change to what a screen shows
fails here until the snapshot is regenerated (`pytest tests/test_tui_snapshots.py --snapshot-update`)
and the new SVG is looked at. Polling is slowed to one read per screen, so every frame is the same.
"""

import pytest
from rich.text import Text
from test_tui import fake_chat, until
from textual.widgets import DataTable, Input
from textual.widgets._data_table import default_cell_formatter
from tui_fixtures import STUDY, TelemetryNvml, demo_study

from tui.app import NanostudyApp
from tui.cell_screen import CellScreen
from tui.chat_screen import ChatScreen
from tui.gpu_screen import GpuScreen
from tui.study_screen import StudyScreen

SIZE = (150, 42)
FOREIGN_PID = 9_999_999  # above Linux's pid_max: never a live process, so its name is always "?"


@pytest.fixture
def app(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_CHAT_LOAD_S", "0")
    demo = demo_study(tmp_path)
    return NanostudyApp(
        str(demo.db),
        STUDY,
        poll_s=3600,
        nvml_loader=lambda: TelemetryNvml(2, foreign={1: [FOREIGN_PID]}),
        chat_command=fake_chat(),
        hostname="here",
    )


async def study_shown(pilot) -> None:
    app = pilot.app
    await until(pilot, lambda: isinstance(app.screen, StudyScreen) and app.screen.status)
    # The cells' table widens its columns to its rows on a later refresh; a frame taken between showed the
    # first row cut to the header's widths once (in a full test run): wait for every row and a width that
    # holds over a pause.
    table = app.screen.query_one("#cells", DataTable)
    await until(pilot, lambda: table.row_count == 6, what="the study's 6 cells in the table")
    # Waiting for the table's width to hold over one pause was not enough under load (a frame still showed
    # every column at its header's width): wait until each column is as wide as its widest cell.
    await until(pilot, lambda: _widened(table), what="the columns widened to their cells")
    await pilot.pause()


def _widened(table: DataTable) -> bool:
    """Whether every auto-width column of `table` has taken the width of its widest cell, as drawn."""
    for column in table.ordered_columns:
        drawn = [default_cell_formatter(value) for value in table.get_column(column.key)]
        widest = max((cell.cell_len for cell in drawn if isinstance(cell, Text)), default=0)
        if column.auto_width and column.content_width < widest:
            return False
    return True


def test_study_screen(snap_compare, app):
    assert snap_compare(app, terminal_size=SIZE, run_before=study_shown)


def test_cell_detail_of_a_failed_cell(snap_compare, app):
    async def run_before(pilot) -> None:
        await study_shown(pilot)
        table = pilot.app.screen.query_one(DataTable)
        table.move_cursor(row=table.get_row_index("d4-c16"))
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(pilot.app.screen, CellScreen) and pilot.app.screen.cell)
        # A table sizes itself to its new rows on a later refresh (39 cells wide with the "no eval scores"
        # row, 29 before): wait for that, not for a fixed time.
        evals = pilot.app.screen.query_one("#evals", DataTable)
        task = evals.ordered_columns[0]
        wide = len("no eval scores")
        await until(pilot, lambda: task.content_width >= wide and evals.virtual_size.width >= 39)
        # Then the refresh that lays the wider columns out (a frame taken before it, under load, once showed
        # the header-only widths of both tables).
        await pilot.wait_for_scheduled_animations()
        await pilot.pause()
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_gpu_screen(snap_compare, app):
    async def run_before(pilot) -> None:
        await study_shown(pilot)
        await pilot.press("g")
        await until(
            pilot,
            lambda: (
                isinstance(pilot.app.screen, GpuScreen) and pilot.app.screen.query_one(DataTable).row_count
            ),
        )
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_chat_after_one_reply(snap_compare, app):
    async def run_before(pilot) -> None:
        await study_shown(pilot)
        await pilot.press("t")
        screen = await until(
            pilot, lambda: isinstance(pilot.app.screen, ChatScreen) and pilot.app.screen.ready
        )
        screen = pilot.app.screen
        screen.query_one("#prompt", Input).value = "What is a scaling law?"
        await pilot.press("enter")
        # Done: the reply is in the conversation (not merely "no reply running", as before it started).
        await until(
            pilot,
            lambda: screen.generating is None and screen.reply is None and len(screen.history) == 2,
        )
        for field in screen.query(Input):
            field.cursor_blink = False  # a blinking cursor is drawn or not by the clock: always draw it
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
