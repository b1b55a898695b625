"""What a trainer wrote, shown on the cell's screen: a reason and a log with terminal escape codes (a
coloured traceback under FORCE_COLOR, a progress bar) are shown as their text. Written to the terminal as
they were, the codes recoloured it and shifted every column after them."""

import asyncio

from test_review_tui_screens import SIZE, fail_attempt, make_app, open_cell, until
from textual.widgets import DataTable, Static
from textual.widgets._data_table import default_cell_formatter
from tui_fixtures import _cell, demo_study

from store import add_cells, open_store, upsert_study
from tui.chat_screen import ChatScreen
from tui.format import printable
from tui.study_screen import StudyScreen

COLOURED = "\x1b[1;31mRuntimeError\x1b[0m: \x1b[35mCUDA error\x1b[0m [/pytorch/c10/cuda]"
PLAIN = "RuntimeError: CUDA error [/pytorch/c10/cuda]"


def test_printable_drops_escape_sequences_and_control_characters():
    assert printable(COLOURED) == PLAIN
    assert printable("\x1b]8;;https://x\x1b\\link\x1b]8;;\x1b\\ \x1b(Bok\x07\x1b[2K") == "link ok"
    assert printable("tab\tand\nnewline stay") == "tab\tand\nnewline stay"


def test_a_coloured_reason_and_log_show_as_text(tmp_path):
    demo = demo_study(tmp_path)
    fail_attempt(demo.db, "d8-c16", f"{COLOURED}\nsecond line")
    logs = demo.runs / "d8-c16" / "logs"
    logs.mkdir(parents=True)
    (logs / "attempt_1.err").write_text(f"\x1b[33mwarning\x1b[0m: slow\n{COLOURED}\n")

    async def scenario():
        app = make_app(demo.db)
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_cell(app, pilot, "d8-c16")
            await pilot.pause(0.3)
            summary = screen.query_one("#summary", Static).visual.plain
            log = screen.query_one("#log-text", Static).visual.plain
            attempts = screen.query_one("#attempts", DataTable)
            reason = default_cell_formatter(attempts.get_row_at(0)[5], height=1).plain
            for text in (summary, log, reason):
                assert "\x1b" not in text
            assert f"reason: {PLAIN}\nsecond line" in summary
            assert "warning: slow" in log and PLAIN in log
            assert reason == PLAIN

    asyncio.run(scenario())


def test_a_study_name_with_square_brackets_is_shown_as_written(tmp_path):
    """A study's name is any one folder name: `lr [sweep]` was read as markup, and the totals, the list of
    studies and the chat's header showed `lr ` (the [sweep] taken for a style)."""
    name = "lr [sweep]"
    db = tmp_path / "nanostudy.db"
    with open_store(db) as store:
        study = upsert_study(store, name=name, path=f"/data/[v2]/{name}.yaml", spec={"name": name})
        add_cells(store, study.id, [_cell("c1", 2, 1e15, tmp_path / "runs")])

    async def scenario():
        app = make_app(db, study=None)
        async with app.run_test(size=SIZE) as pilot:
            table = await until(
                pilot, lambda: app.screen.query_one(DataTable).row_count and app.screen.query_one(DataTable)
            )
            await pilot.pause(0.2)
            row = [default_cell_formatter(value).plain for value in table.get_row(name)]
            assert row[0] == name and row[-1] == f"/data/[v2]/{name}.yaml"
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, StudyScreen) and app.screen.status)
            assert app.screen.query_one("#totals", Static).visual.plain.startswith(f"{name}  1 cells")
            await pilot.press("t")
            await until(pilot, lambda: isinstance(app.screen, ChatScreen))
            assert app.screen.query_one("#model", Static).visual.plain.endswith(f"checkpoint of {name}")

    asyncio.run(scenario())
