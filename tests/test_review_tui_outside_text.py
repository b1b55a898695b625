"""Outside text on the TUI's screens: what a chat process writes (a stderr line, a stdout line that is not
JSON), a path in a store's message, what was typed. Shown as written; read as markup, a `[/pytorch/...]`
ended the app (a closing tag matching no open one) and a `[rank0]` or `[b]` vanished. Driven headless
(Textual's Pilot) against the demo study of tui_fixtures."""

import asyncio
import sys

from test_tui import make_app, until
from textual.widgets import DataTable, Input, Static
from textual.widgets._data_table import default_cell_formatter
from textual.widgets._toast import Toast
from tui_fixtures import TelemetryNvml, demo_study

from tui.chat_screen import ChatScreen
from tui.gpu_screen import GpuScreen
from tui.problem import ProblemBanner
from tui.study_screen import StudyScreen

STDOUT = "[W init] not [b]json[/b]"
STDERR = "RuntimeError: [/pytorch/c10/cuda] device-side assert [rank0]"
FOREIGN_PID = 9_999_999  # above Linux's pid_max: never a live process
DIES = f"import sys; print({STDOUT!r}, flush=True); sys.stderr.write({STDERR!r} + '\\n'); sys.exit(1)"


def toasts(app) -> list[str]:
    return [str(toast.render()) for toast in app.screen.query(Toast)]


async def open_chat(app, pilot) -> ChatScreen:
    await until(pilot, lambda: isinstance(app.screen, StudyScreen) and app.screen.status)
    await pilot.press("t")
    return await until(pilot, lambda: isinstance(app.screen, ChatScreen) and app.screen)


def test_a_chat_process_s_own_words_are_shown_as_written(tmp_path):
    demo = demo_study(tmp_path)

    async def scenario():
        app = make_app(demo.db, chat_command=lambda path, device: [sys.executable, "-c", DIES])
        async with app.run_test(size=(160, 50), notifications=True) as pilot:
            screen = await open_chat(app, pilot)
            banner = await until(pilot, lambda: screen.query_one(ProblemBanner).message, what="a banner")
            assert banner == f"the chat process exited (code 1): {STDERR}"
            assert screen.query_one(ProblemBanner).visual.plain == banner
            said = await until(pilot, lambda: [text for text in toasts(app) if "said" in text], what="toasts")
            assert said == [f"chat process said: {STDOUT}"]

    asyncio.run(scenario())


def test_a_setting_typed_with_square_brackets_is_quoted_as_typed(tmp_path):
    demo = demo_study(tmp_path)

    async def scenario():
        app = make_app(demo.db)
        async with app.run_test(size=(160, 50), notifications=True) as pilot:
            screen = await open_chat(app, pilot)
            await until(pilot, lambda: screen.ready, what="the model")
            screen.query_one("#top-k", Input).value = "[/x]"
            screen.query_one("#prompt", Input).value = "hello"
            await pilot.press("enter")
            said = await until(pilot, lambda: [text for text in toasts(app) if "top-k" in text])
            assert said == ["top-k: must be a positive integer, got '[/x]'"]

    asyncio.run(scenario())


def test_a_database_path_and_a_process_name_with_square_brackets_are_shown_as_written(tmp_path, monkeypatch):
    """The store's message names the database's path; NVML's processes are named by what they run."""
    db = tmp_path / "runs[" / "v2]" / "nanostudy.db"
    db.parent.mkdir(parents=True)
    monkeypatch.setattr("tui.gpu_screen.psutil_name", lambda pid: "[b]python[/b]")

    async def scenario():
        app = make_app(db, nvml_loader=lambda: TelemetryNvml(2, foreign={1: [FOREIGN_PID]}))
        async with app.run_test(size=(160, 50)) as pilot:
            banner = await until(pilot, lambda: app.screen.query_one(ProblemBanner).message, what="a banner")
            assert banner.startswith(f"{db}: no nanostudy database here yet")
            assert app.screen.query_one(ProblemBanner).visual.plain == banner
            await pilot.press("g")
            screen = await until(pilot, lambda: isinstance(app.screen, GpuScreen) and app.screen)
            table = screen.query_one(DataTable)
            await until(pilot, lambda: table.row_count == 2, what="the GPUs")
            note = await until(pilot, lambda: screen.query_one("#note", Static).visual.plain, what="a note")
            assert note == f"which cell runs where is unknown: {banner}"
            who = default_cell_formatter(table.get_row("1")[-1]).plain
            assert who == f"pid {FOREIGN_PID} ([b]python[/b])"  # no study to tell ours by

    asyncio.run(scenario())
