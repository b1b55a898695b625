"""Cancel and retry from a screen that closes while the runner's API answers: the answer is still told, and
the closed screen is not polled. Driven headless (Textual's Pilot) against the demo study of tui_fixtures."""

import asyncio
import threading

from test_review_tui_screens import make_app, open_cell, until
from tui_fixtures import demo_study

from runner import api
from store import CellState, get_cell, open_store
from tui.confirm import ConfirmScreen
from tui.study_screen import StudyScreen


def test_a_cancel_answered_after_its_screen_closed_is_still_told(tmp_path, monkeypatch):
    """Esc on the cell's screen while the cancel ran: the worker asked the closed screen for its app
    (NoActiveAppError), so the cancel happened without a word, and the closed screen was to be polled."""
    demo = demo_study(tmp_path)
    gate = threading.Event()
    cancel = api.cancel

    def slow_cancel(*args, **kwargs):
        gate.wait(10)
        return cancel(*args, **kwargs)

    monkeypatch.setattr(api, "cancel", slow_cancel)

    async def scenario():
        app = make_app(demo.db)
        async with app.run_test(size=(160, 50)) as pilot:
            screen = await open_cell(app, pilot, "d8-c16")
            await pilot.press("c")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("y")
            await until(pilot, lambda: app.screen is screen)
            await pilot.press("escape")
            await until(pilot, lambda: isinstance(app.screen, StudyScreen) and not screen.is_attached)
            polls = []
            monkeypatch.setattr(screen, "poll", lambda: polls.append(1))
            gate.set()
            messages = lambda: [str(n.message) for n in app._notifications]
            await until(pilot, lambda: "cell d8-c16 cancelled" in messages(), what="the cancel told")
            await pilot.pause(0.2)
            assert polls == []
            with open_store(demo.db, create=False) as store:
                assert get_cell(store, "d8-c16").state is CellState.CANCELLED

    asyncio.run(scenario())
