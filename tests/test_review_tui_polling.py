"""A poll's result that comes back while its screen is closing: dropped, never shown on widgets being
removed. Driven by keys (Textual's Pilot), headless, against the demo study of tui_fixtures."""

import asyncio

from test_review_tui_screens import SIZE, make_app, open_cell, until
from tui_fixtures import demo_study

from tui.problem import ProblemBanner
from tui.study_screen import StudyScreen


def test_a_poll_that_lands_while_its_screen_closes_is_dropped(tmp_path, monkeypatch):
    """Esc on a cell's screen while its poll was reading: the result came back while Textual removed the
    screen's widgets one by one (the screen still attached, no longer on the stack), and showing it met a
    widget already gone: NoMatches in the worker, and the whole app died. Here the late result lands at
    the moment the removal reaches the problem banner."""
    demo = demo_study(tmp_path)
    errors = []

    async def scenario():
        app = make_app(demo.db)
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_cell(app, pilot, "d2-c16")
            detail = screen.read()

            def late_result(banner):
                try:
                    screen._deliver(detail)
                    screen._deliver_problem("the database went away")
                except Exception as error:
                    errors.append(error)

            monkeypatch.setattr(ProblemBanner, "on_unmount", late_result, raising=False)
            await pilot.press("escape")
            await until(pilot, lambda: isinstance(app.screen, StudyScreen) and not screen.is_attached)

    asyncio.run(scenario())
    assert errors == []
