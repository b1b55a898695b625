"""Every GPU of this machine from NVML: utilisation, memory, temperature, power, clocks, the last half
minute as sparklines, and who runs on it (a cell of the open study, or a foreign process). Without NVML or
without a GPU the screen says so.
"""

from dataclasses import dataclass
from typing import ClassVar

from rich.markup import escape
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Footer, Static

from runner.gpus import GpuListError
from tui.format import UNKNOWN, sparkline
from tui.gpu_telemetry import GpuSample, History, occupants, psutil_ancestors, psutil_name, sample
from tui.polling import PollingScreen
from tui.source import StoreProblem, ours_on_host

COLUMNS = (
    "GPU",
    "name",
    "util",
    "util history",
    "memory",
    "memory history",
    "temp",
    "power",
    "clocks",
    "running",
)
NO_NVML = (
    "No NVIDIA GPU found (NVML unavailable: no driver, or no GPU on this machine). "
    "Cells train on the CPU; nothing to show here."
)


@dataclass(frozen=True, kw_only=True, slots=True)
class GpuReading:
    samples: list[GpuSample] | None  # None: NVML unavailable, or `nvml_problem`
    nvml_problem: str | None = None  # NVML is there but cannot list the GPUs now
    occupants: dict[int, list[str]]
    store_problem: str | None  # the GPUs show, but which cell runs where is unknown


class GpuScreen(PollingScreen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("q", "app.quit", "Quit"),
    ]
    DEFAULT_CSS = """
    GpuScreen #title { padding: 0 1; text-style: bold; }
    GpuScreen #note { padding: 1 2; }
    """

    def __init__(self, study: str | None = None) -> None:
        super().__init__()
        self.study = study
        self.history = History()

    def compose(self) -> ComposeResult:
        where = f" (cells of study {self.study})" if self.study else ""
        yield Static(f"GPUs of {self.app.hostname}{where}", id="title", markup=False)
        yield DataTable(id="gpus", cursor_type="row")
        yield Static("", id="note")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for column in COLUMNS:
            table.add_column(column, key=column)

    def read(self) -> GpuReading:
        nvml = self.app.nvml()
        if nvml is None:
            return GpuReading(samples=None, occupants={}, store_problem=None)
        try:
            samples = sample(nvml)
        except GpuListError as error:  # the next poll tries again: a driver reload may end it
            return GpuReading(samples=None, occupants={}, store_problem=None, nvml_problem=str(error))
        ours, problem = None, None
        if self.study is not None:
            try:
                ours = self.app.source.read(ours_on_host, self.study, self.app.hostname)
            except StoreProblem as error:
                problem = str(error)
        return GpuReading(
            samples=samples,
            occupants={
                gpu.index: occupants(gpu, ours, ancestors=psutil_ancestors, process_name=psutil_name)
                for gpu in samples
            },
            store_problem=problem,
        )

    def show(self, reading: GpuReading) -> None:
        note = self.query_one("#note", Static)
        table = self.query_one(DataTable)
        if reading.nvml_problem is not None:
            note.update(f"[red]{escape(reading.nvml_problem)}[/]; trying again at the next poll.")
            return
        if reading.samples is None:
            note.update(NO_NVML)
            return
        if not reading.samples:
            note.update("NVML sees no GPU on this machine. Cells train on the CPU.")
            return
        self.history.add(reading.samples)
        note.update(
            f"[dim]which cell runs where is unknown: {escape(reading.store_problem)}[/]"
            if reading.store_problem
            else ""
        )
        for gpu in reading.samples:
            row = self._row(gpu, reading.occupants.get(gpu.index, []))
            key = str(gpu.index)
            if key in table.rows:
                for column, value in zip(COLUMNS, row, strict=True):
                    table.update_cell(key, column, value, update_width=True)
            else:
                table.add_row(*row, key=key)

    def _row(self, gpu: GpuSample, who: list[str]) -> tuple[str, ...]:
        if gpu.error is not None:
            # Its readings are empty, not zero: say so in the row, where the eye looks for this GPU.
            blank = (UNKNOWN,) * (len(COLUMNS) - 3)
            return (
                str(gpu.index),
                gpu.name,
                *blank,
                f"[red]NVML cannot read it: {escape(gpu.error)}[/]",
            )
        gib = 1 << 30
        power = UNKNOWN if gpu.power_w is None else f"{gpu.power_w:.0f} W"
        if gpu.power_w is not None and gpu.power_limit_w:
            power += f" / {gpu.power_limit_w:.0f}"
        clocks = UNKNOWN if gpu.sm_clock_mhz is None else f"{gpu.sm_clock_mhz} MHz"
        if gpu.memory_clock_mhz is not None:
            clocks += f" / mem {gpu.memory_clock_mhz}"
        return (
            str(gpu.index),
            gpu.name,
            UNKNOWN if gpu.util_percent is None else f"{gpu.util_percent:.0f}%",
            sparkline(list(self.history.util.get(gpu.index, [])), highest=100),
            f"{gpu.memory_used_bytes / gib:.1f} / {gpu.memory_total_bytes / gib:.0f} GiB",
            sparkline(list(self.history.memory.get(gpu.index, [])), highest=100),
            UNKNOWN if gpu.temperature_c is None else f"{gpu.temperature_c:.0f}°C",
            power,
            clocks,
            escape(", ".join(who)) if who else "[dim]idle[/]",  # a process's name is any text
        )

    def show_problem(self, message: str) -> None:
        self.query_one("#note", Static).update(escape(message))  # a path may hold [brackets]
