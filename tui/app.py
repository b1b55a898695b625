"""The nanostudy terminal UI: the study list, a study's live view, a cell's detail, the GPUs, the chat.

    NanostudyApp(db, study=None).run()      # what `nanostudy tui [STUDY] [--db URL]` does

It reads the database (through `tui.source`, in worker threads) and NVML, and talks to a chat subprocess;
it never writes results and never imports torch. Its only requests to change anything are cancel and
retry, through the runner's public API. NVML and the chat command are injectable, for tests.
"""

import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from textual.app import App
from textual.binding import Binding, BindingType

from runner.gpus import load_nvml
from tui.cell_screen import CellScreen
from tui.chat_process import chat_command
from tui.chat_screen import ChatScreen
from tui.gpu_screen import GpuScreen
from tui.source import StoreSource
from tui.studies_screen import StudiesScreen
from tui.study_screen import StudyScreen

DEFAULT_POLL_S = 1.0


class NanostudyApp(App):
    TITLE = "nanostudy"
    BINDINGS: ClassVar[list[BindingType]] = [Binding("ctrl+q", "quit", "Quit", show=False)]

    def __init__(
        self,
        db: str,
        study: str | None = None,
        *,
        poll_s: float = DEFAULT_POLL_S,
        nvml_loader: Callable[[], Any | None] = load_nvml,
        chat_command: Callable[[Path, str], list[str]] = chat_command,
        hostname: str | None = None,
    ) -> None:
        super().__init__()
        self.source = StoreSource(db)
        self.study = study
        self.poll_s = poll_s
        self.chat_command = chat_command
        # Attempts record the host they run on; the GPU screen matches this machine's by this name.
        self.hostname = hostname or socket.gethostname()
        self._nvml_loader = nvml_loader
        self._nvml: Any | None = None
        self._nvml_loaded = False
        self._nvml_lock = threading.Lock()

    def on_mount(self) -> None:
        self.push_screen(StudyScreen(self.study) if self.study else StudiesScreen())

    def nvml(self) -> Any | None:
        """NVML, loaded once on first use (from a worker thread: it may take a moment); None without it."""
        with self._nvml_lock:
            if not self._nvml_loaded:
                self._nvml = self._nvml_loader()
                self._nvml_loaded = True
            return self._nvml

    def open_study(self, name: str) -> None:
        self.push_screen(StudyScreen(name))

    def back_to_studies(self) -> None:
        """Back to the list of studies: the screen below, or a new list when the app started on the study."""
        if isinstance(self.screen_stack[-2] if len(self.screen_stack) > 1 else None, StudiesScreen):
            self.pop_screen()
        else:
            self.switch_screen(StudiesScreen())

    def open_cell(self, study: str, cell_id: str) -> None:
        self.push_screen(CellScreen(study, cell_id))

    def show_gpus(self, study: str | None = None) -> None:
        self.push_screen(GpuScreen(study))

    def open_chat(self, study: str) -> None:
        self.push_screen(ChatScreen(study))

    def on_unmount(self) -> None:
        self.source.close()
