"""The TUI against what a live study's database holds: reasons and logs as the trainer wrote them, a plan
that changes, a database deleted or replaced under the screen. Driven by keys (Textual's Pilot), headless,
against stores written through the store API as the runner writes them."""

import asyncio
import time
from pathlib import Path

from textual.css.query import NoMatches
from textual.widgets import DataTable
from textual.widgets._data_table import default_cell_formatter
from tui_fixtures import STUDY, _cell, demo_study

from store import (
    AttemptOutcome,
    Executor,
    add_cells,
    claim,
    end_attempt,
    open_store,
    record_study,
    upsert_study,
)
from tui.app import NanostudyApp
from tui.cell_screen import CellScreen
from tui.problem import ProblemBanner
from tui.study_screen import StudyScreen

SIZE = (160, 50)
GLOO_REASON = "[rank0]: RuntimeError: [/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:534] closed"


def make_app(db: Path, study: str | None = STUDY) -> NanostudyApp:
    return NanostudyApp(str(db), study, poll_s=0.1, nvml_loader=lambda: None, hostname="here")


async def until(pilot, predicate, *, timeout_s: float = 20.0, what: str = "the screen"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except NoMatches:
            value = None
        if value:
            return value
        await pilot.pause(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def fail_attempt(db: Path, cell_id: str, reason: str) -> None:
    with open_store(db) as store:
        attempt = claim(store, cell_id, executor=Executor.LOCAL, host="here", gpus="1", num_gpus=1)
        end_attempt(store, attempt.id, AttemptOutcome.FAILED, exit_code=1, reason=reason)


async def open_cell(app: NanostudyApp, pilot, cell_id: str) -> CellScreen:
    await until(pilot, lambda: isinstance(app.screen, StudyScreen) and app.screen.status)
    table = app.screen.query_one(DataTable)
    table.move_cursor(row=table.get_row_index(cell_id))
    await pilot.press("enter")
    return await until(pilot, lambda: isinstance(app.screen, CellScreen) and app.screen.cell and app.screen)


def test_an_attempt_reason_with_square_brackets_is_shown_as_written(tmp_path):
    """The attempts table reads a string as markup: a gloo error's `[/pytorch/...]` crashed the app (a closing
    tag matching no open one) and `[rank0]` vanished."""
    demo = demo_study(tmp_path)
    fail_attempt(demo.db, "d8-c16", f"{GLOO_REASON}\nthe next line of stderr")

    async def scenario():
        app = make_app(demo.db)
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_cell(app, pilot, "d8-c16")
            await pilot.pause(0.3)  # the table draws its rows
            attempts = screen.query_one("#attempts", DataTable)
            assert default_cell_formatter(attempts.get_row_at(0)[5], height=1).plain == GLOO_REASON

    asyncio.run(scenario())


def replan(demo, tmp_path: Path, cells: list[tuple[str, int, float]]) -> None:
    """The demo study's file edited to plan these cells (id, depth, FLOPs) and recorded again."""
    with open_store(demo.db) as store:
        record_study(
            store,
            name=STUDY,
            path=str(tmp_path / "demo.yaml"),
            spec={"name": STUDY},
            cells=[_cell(cell_id, depth, flops, demo.runs) for cell_id, depth, flops in cells],
        )


def test_cells_the_plan_leaves_out_leave_the_table(tmp_path):
    """The study's file edited to a smaller grid and run again: its status has fewer cells, and the table kept
    the rows of the others, beside totals that counted only the planned ones."""
    demo = demo_study(tmp_path)

    async def scenario():
        app = make_app(demo.db)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: isinstance(app.screen, StudyScreen) and app.screen.status)
            table = app.screen.query_one(DataTable)
            assert table.row_count == 6
            replan(demo, tmp_path, [("d2-c15", 2, 1e15), ("d2-c16", 2, 1e16)])
            await until(pilot, lambda: len(app.screen.status.cells) == 2, what="the new plan")
            await pilot.pause(0.1)
            assert sorted(key.value for key in table.rows) == ["d2-c15", "d2-c16"]
            table.move_cursor(row=table.get_row_index("d2-c16"))
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, CellScreen) and app.screen.cell)

    asyncio.run(scenario())


def _replace_database(db: Path, studies: dict[str, list[str]], runs: Path) -> None:
    for path in db.parent.glob(f"{db.name}*"):  # the file, its -wal and -shm
        path.unlink()
    with open_store(db) as store:
        for name, cell_ids in studies.items():
            study = upsert_study(store, name=name, path=f"{name}.yaml", spec={"name": name})
            add_cells(
                store,
                study.id,
                [_cell(cell_id, 2, 1e15 * (i + 1), runs) for i, cell_id in enumerate(cell_ids)],
            )


def test_a_database_deleted_or_replaced_under_the_screen(tmp_path):
    """The open SQLite connection kept reading the deleted file: the screen showed the old study as live
    forever, and a new database at the path was never read."""
    demo = demo_study(tmp_path)

    async def scenario():
        app = make_app(demo.db)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: isinstance(app.screen, StudyScreen) and app.screen.status)
            for path in tmp_path.glob("nanostudy.db*"):
                path.unlink()
            banner = await until(pilot, lambda: app.screen.query_one(ProblemBanner).message, what="a banner")
            assert "no nanostudy database here yet" in banner
            _replace_database(demo.db, {STUDY: ["new"]}, demo.runs)
            await until(pilot, lambda: len(app.screen.status.cells) == 1, what="the new database")
            await pilot.pause(0.1)
            assert [key.value for key in app.screen.query_one(DataTable).rows] == ["new"]
            assert app.screen.query_one(ProblemBanner).message is None

    asyncio.run(scenario())


def test_the_list_of_studies_follows_a_database_replaced_under_it(tmp_path):
    demo = demo_study(tmp_path)

    async def scenario():
        app = make_app(demo.db, study=None)
        async with app.run_test(size=SIZE) as pilot:
            table = await until(
                pilot, lambda: app.screen.query_one(DataTable).row_count and app.screen.query_one(DataTable)
            )
            _replace_database(demo.db, {"other": ["x"], "ünï 研究": ["y", "z"]}, demo.runs)
            await until(
                pilot,
                lambda: table.row_count == 2 and table.get_row_at(0)[0] == "other",
                what="the new studies",
            )
            assert [str(value) for value in table.get_row("ünï 研究")][:2] == ["ünï 研究", "2"]

    asyncio.run(scenario())
