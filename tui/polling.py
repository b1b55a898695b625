"""A screen that refreshes itself from the database (or NVML) every `app.poll_s`, off the UI thread.

Each poll runs `read()` in a thread worker; its result comes back to the UI thread as `show(data)`, a
`StoreProblem` as `show_problem(message)`. A poll never starts while the previous one still runs, so a
slow read (a busy disk, a thousand cells) delays the next refresh instead of piling threads up.
"""

from typing import Any

from textual import work
from textual.screen import Screen
from textual.worker import Worker, get_current_worker

from tui.source import StoreProblem


def still_open(screen: Screen) -> bool:
    """Whether a result from a worker may still be shown on `screen`. A closed screen leaves the stack at
    once, but stays attached while its widgets are removed one by one: `is_attached` alone let a late
    result query a widget already gone (NoMatches, and the app died)."""
    return screen.is_attached and screen in screen.app.screen_stack


class PollingScreen(Screen):
    """Subclasses implement `read` and `show` (and may override `show_problem`). Textual calls `on_mount`
    of every class in the MRO, subclass first: a subclass's own `on_mount` sets its widgets up, then this
    one starts polling; neither calls super()."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._poll_worker: Worker | None = None

    def on_mount(self) -> None:
        self.poll()
        self.set_interval(self.app.poll_s, self.poll)

    def poll(self) -> None:
        """Start a read now, unless one is under way."""
        if self._poll_worker is None or self._poll_worker.is_finished:
            self._poll_worker = self._read_in_thread()

    @work(thread=True, group="poll")
    def _read_in_thread(self) -> None:
        worker = get_current_worker()
        try:
            data = self.read()
        except StoreProblem as problem:
            if not worker.is_cancelled:
                self.app.call_from_thread(self._deliver_problem, str(problem))
            return
        if not worker.is_cancelled:
            self.app.call_from_thread(self._deliver, data)

    def _deliver(self, data: Any) -> None:
        if still_open(self):  # the screen may have closed while the read ran
            self.show(data)

    def _deliver_problem(self, message: str) -> None:
        if still_open(self):
            self.show_problem(message)

    def read(self) -> Any:
        """Runs in a worker thread: fetch what the screen shows. Raise StoreProblem for a message."""
        raise NotImplementedError

    def show(self, data: Any) -> None:
        """Runs on the UI thread with what `read` returned."""
        raise NotImplementedError

    def show_problem(self, message: str) -> None:
        self.notify(message, severity="error", markup=False)  # a path may hold [brackets]
