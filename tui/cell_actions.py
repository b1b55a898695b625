"""Cancel and retry a cell from the study and cell screens: confirm first, then ask the runner's public API
(`runner.api.cancel`, `retry`) in a worker thread, and say what happened.

These are the TUI's only writes, and they are requests in the runner's own terms: a state change that a
runner holding the study acts on at its next turn (or, with no runner, `cancel` stops the local trainer).
"""

from collections.abc import Callable

from textual.app import App
from textual.screen import Screen

from runner import api
from tui.confirm import ConfirmScreen
from tui.polling import still_open
from tui.source import StoreProblem


def ask_to_cancel(screen: Screen, study: str, cell: api.CellProgress) -> None:
    """Pending and running cells only; the others have nothing to cancel."""
    if cell.state not in ("pending", "running"):
        screen.notify(f"cell {cell.id} is {cell.state}: nothing to cancel", severity="warning")
        return
    what = "its trainer stops at a checkpoint" if cell.state == "running" else "it will not start"
    screen.app.push_screen(
        ConfirmScreen(f"Cancel {cell.state} cell {cell.id}? ({what})"),
        lambda yes: _run(screen, _cancel, study, cell.id) if yes else None,
    )


def ask_to_retry(screen: Screen, study: str, cell: api.CellProgress) -> None:
    """Failed, diverged and cancelled cells only: back to pending, resumed from their last checkpoint."""
    if cell.state not in {state.value for state in api.RETRYABLE_STATES}:
        screen.notify(
            f"cell {cell.id} is {cell.state}: only failed, diverged or cancelled cells are retried",
            severity="warning",
        )
        return
    screen.app.push_screen(
        ConfirmScreen(f"Retry {cell.state} cell {cell.id}? (it resumes from its last checkpoint)"),
        lambda yes: _run(screen, _retry, study, cell.id) if yes else None,
    )


def _run(screen: Screen, action: Callable[[App, Screen, str, str], None], study: str, cell_id: str) -> None:
    # The app is taken here, on the UI thread: the screen may close while the action runs, and a closed
    # screen no longer knows its app (NoActiveAppError in the worker, and the result was never told).
    screen.run_worker(lambda: action(screen.app, screen, study, cell_id), thread=True, group="cell-action")


def _cancel(app: App, screen: Screen, study: str, cell_id: str) -> None:
    try:
        result = app.source.read(api.cancel, study, cell_id=cell_id)
    except StoreProblem as problem:
        _tell(app, screen, str(problem), severity="error")
        return
    if result.stopping:
        _tell(app, screen, f"cell {cell_id} cancelled; its trainer is being stopped")
    elif result.cancelled:
        _tell(app, screen, f"cell {cell_id} cancelled")
    else:
        _tell(app, screen, f"cell {cell_id} had finished meanwhile: nothing cancelled", severity="warning")


def _retry(app: App, screen: Screen, study: str, cell_id: str) -> None:
    try:
        moved = app.source.read(api.retry, study, cell_id)
    except StoreProblem as problem:
        _tell(app, screen, str(problem), severity="error")
        return
    if moved:
        _tell(app, screen, f"cell {cell_id} is pending again: a runner will start it")
    else:
        _tell(app, screen, f"cell {cell_id} changed state meanwhile: not retried", severity="warning")


def _tell(app: App, screen: Screen, message: str, *, severity: str = "information") -> None:
    """From the worker thread: a notification (the app's, which outlives the screen), then a fresh poll so
    the table shows the new state, while the screen is open."""
    # A store's message may name a path with [brackets] in it: shown as written, not read as markup.
    app.call_from_thread(app.notify, message, severity=severity, markup=False)
    app.call_from_thread(_poll_if_open, screen)


def _poll_if_open(screen: Screen) -> None:
    if hasattr(screen, "poll") and still_open(screen):
        screen.poll()
