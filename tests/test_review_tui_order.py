"""The study screen's table keeps the cells in the study's order (grid order) when the plan grows while it
is open. Driven headless (Textual's Pilot) against the demo study of tui_fixtures."""

import asyncio

from test_review_tui_screens import make_app, replan, until
from textual.widgets import DataTable
from tui_fixtures import demo_study

from tui.study_screen import StudyScreen


def test_cells_the_plan_adds_take_their_place_in_the_table(tmp_path):
    """The study's file edited to a larger grid and run again: its new cells were put below every other
    row, where the table is documented to hold the cells in grid order."""
    demo = demo_study(tmp_path)

    async def scenario():
        app = make_app(demo.db)
        async with app.run_test(size=(160, 50)) as pilot:
            await until(pilot, lambda: isinstance(app.screen, StudyScreen) and app.screen.status)
            table = app.screen.query_one(DataTable)
            replan(demo, tmp_path, [("d2-c15", 2, 1e15), ("d3-c15", 3, 1e15), ("d2-c16", 2, 1e16)])
            await until(pilot, lambda: len(app.screen.status.cells) == 3, what="the new plan")
            await pilot.pause(0.1)
            planned = [cell.id for cell in app.screen.status.cells]
            assert [str(table.get_row_at(i)[0]) for i in range(3)] == planned

    asyncio.run(scenario())
