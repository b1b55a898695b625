"""The study screen on a small terminal: the heatmap takes a third of the screen at most, so the cells' table
keeps rows. Driven headless (Textual's Pilot) against the demo study of tui_fixtures."""

import asyncio

from test_review_tui_screens import make_app, until
from textual.widgets import DataTable, Footer
from tui_fixtures import demo_study

from tui.heatmap import Heatmap
from tui.study_screen import StudyScreen


def _rows_shown(screen) -> int:
    """How many of the table's rows (below its header) lie on the screen, above the footer."""
    table = screen.query_one(DataTable)
    bottom = min(table.region.bottom, screen.query_one(Footer).region.y)
    return max(0, bottom - table.region.y - 1)


def test_the_cells_table_keeps_rows_on_a_small_terminal(tmp_path):
    """At 40x12 the totals wrap to four lines and the grid took nine: the table began below the screen."""
    demo = demo_study(tmp_path)

    async def scenario():
        app = make_app(demo.db)
        async with app.run_test(size=(40, 12)) as pilot:
            await until(pilot, lambda: isinstance(app.screen, StudyScreen) and app.screen.status)
            await pilot.pause(0.2)
            assert app.screen.query_one(Heatmap).region.height <= 12 // 3
            assert _rows_shown(app.screen) >= 2
            await pilot.resize_terminal(150, 42)
            await pilot.pause(0.2)
            assert app.screen.query_one(Heatmap).region.height == 6  # its natural height: all of the grid
            await pilot.resize_terminal(40, 12)
            await pilot.pause(0.2)
            assert _rows_shown(app.screen) >= 2

    asyncio.run(scenario())
