"""One cell in detail: loss and bpb curves, eval scores, attempts with the reason of each ending, the tail of
its newest log. Curves are fetched incrementally (only the steps after those already shown) and drawn with
plotext, thinned to the plot's width, so a long run costs the same to redraw as a short one.
"""

from typing import ClassVar

from rich.markup import escape
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Footer, Static
from textual_plotext import PlotextPlot

from runner import api
from tui.cell_actions import ask_to_cancel, ask_to_retry
from tui.format import STATE_STYLES, UNKNOWN, duration, fixed, flops, percent, printable, si
from tui.polling import PollingScreen
from tui.problem import ProblemBanner
from tui.source import CellDetail, cell_detail

MAX_PLOT_POINTS = 400  # more than a terminal plot has columns


def thin(xs: list[float], ys: list[float], limit: int = MAX_PLOT_POINTS) -> tuple[list[float], list[float]]:
    """Every k-th point (the last one kept), so that at most about `limit` remain."""
    if len(xs) <= limit:
        return xs, ys
    stride = -(-len(xs) // limit)
    keep = list(range(0, len(xs), stride))
    if keep[-1] != len(xs) - 1:
        keep.append(len(xs) - 1)
    return [xs[i] for i in keep], [ys[i] for i in keep]


def summary_line(cell: api.CellProgress) -> str:
    style = STATE_STYLES.get(cell.state, "")
    parts = [
        f"[b]{cell.id}[/]  [{style}]{cell.state}[/]",
        f"{cell.mode}, depth {cell.depth}, {flops(cell.flops)} FLOPs, seed {cell.seed}",
        f"{si(cell.num_params)} params",
        f"step {cell.step}/{cell.steps_total}, {si(cell.tokens)} tokens",
        f"loss {fixed(cell.train_loss)}, val bpb {fixed(cell.val_bpb)}",
    ]
    if cell.state == "running":
        parts.append(f"{si(cell.tok_per_s)} tok/s, MFU {percent(cell.mfu)}, ETA {duration(cell.eta_s)}")
    line = "  │  ".join(parts)
    if cell.reason:
        # A reason may hold [rank0] or [/path], and the escape codes of a coloured stderr.
        line += f"\n[{style}]reason: {escape(printable(cell.reason))}[/]"
    return line


class CellScreen(PollingScreen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("c", "cancel_cell", "Cancel"),
        Binding("r", "retry_cell", "Retry"),
        Binding("escape", "app.pop_screen", "Back"),
        Binding("q", "app.quit", "Quit"),
    ]
    DEFAULT_CSS = """
    CellScreen #summary { padding: 0 1; height: auto; }
    CellScreen #plots { height: 1fr; min-height: 12; }
    CellScreen #tables { height: auto; max-height: 12; }
    CellScreen #tables DataTable { width: 1fr; height: auto; max-height: 12; }
    CellScreen #log { height: auto; max-height: 14; padding: 0 1; border-top: solid $primary; }
    """

    def __init__(self, study: str, cell_id: str) -> None:
        super().__init__()
        self.study = study
        self.cell_id = cell_id
        self.cell: api.CellProgress | None = None
        self.train_steps: list[float] = []
        self.train_loss: list[float] = []
        self.val_steps: list[float] = []
        self.val_bpb: list[float] = []
        self._num_attempts = 0

    def compose(self) -> ComposeResult:
        yield Static(f"[b]{self.cell_id}[/]  loading…", id="summary")
        yield ProblemBanner(id="problem")
        with Horizontal(id="plots"):
            yield PlotextPlot(id="loss-plot")
            yield PlotextPlot(id="bpb-plot")
        with Horizontal(id="tables"):
            yield DataTable(id="evals", cursor_type="none")
            yield DataTable(id="attempts", cursor_type="none")
        with Vertical(id="log"):
            yield Static("", id="log-text")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#evals", DataTable).add_columns("task", "step", "score", "accuracy")
        self.query_one("#attempts", DataTable).add_columns("#", "outcome", "exit", "host", "GPUs", "reason")

    def read(self) -> CellDetail:
        # Each curve from its own last point: a trainer scores the validation set before its first step, and
        # reading both afresh while there was no training point appended the val points again at each poll.
        return self.app.source.read(
            cell_detail,
            self.study,
            self.cell_id,
            train_after=int(self.train_steps[-1]) if self.train_steps else None,
            val_after=int(self.val_steps[-1]) if self.val_steps else None,
        )

    def show(self, detail: CellDetail) -> None:
        self.query_one(ProblemBanner).clear()
        if len(detail.attempts) != self._num_attempts and (self.train_steps or self.val_steps):
            # Another attempt began: its resume may have dropped steps; read the curves afresh next time.
            self._num_attempts = len(detail.attempts)
            self.train_steps, self.train_loss, self.val_steps, self.val_bpb = [], [], [], []
            self.poll()
            return
        self._num_attempts = len(detail.attempts)
        self.cell = detail.cell
        self.query_one("#summary", Static).update(summary_line(detail.cell))
        self._extend_curves(detail)
        self._draw_plot("#loss-plot", "train loss", self.train_steps, self.train_loss)
        self._draw_plot("#bpb-plot", "val bpb", self.val_steps, self.val_bpb)
        self._fill_evals(detail)
        self._fill_attempts(detail)
        self._fill_log(detail)

    def show_problem(self, message: str) -> None:
        self.query_one(ProblemBanner).report(message)

    def _extend_curves(self, detail: CellDetail) -> None:
        for point in detail.train:
            if point.loss is not None:
                self.train_steps.append(point.step)
                self.train_loss.append(point.loss)
        for point in detail.val:
            if point.val_bpb is not None:
                self.val_steps.append(point.step)
                self.val_bpb.append(point.val_bpb)

    def _draw_plot(self, selector: str, title: str, steps: list[float], values: list[float]) -> None:
        widget = self.query_one(selector, PlotextPlot)
        plt = widget.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title(title if values else f"{title}: no points yet")
        plt.xlabel("step")
        if values:
            xs, ys = thin(steps, values)
            plt.plot(xs, ys, marker="braille")
        widget.refresh()

    def _fill_evals(self, detail: CellDetail) -> None:
        table = self.query_one("#evals", DataTable)
        table.clear()
        latest = {}
        for row in detail.evals:  # ordered by step: the newest score of each task wins
            latest[row.task] = row
        for task, row in sorted(latest.items()):
            table.add_row(task, str(row.step), fixed(row.score, 4), fixed(row.accuracy, 4))
        if not latest:
            table.add_row("no eval scores", "", "", "")

    def _fill_attempts(self, detail: CellDetail) -> None:
        table = self.query_one("#attempts", DataTable)
        table.clear()
        for attempt in detail.attempts:
            outcome = attempt.outcome.value if attempt.outcome else "running"
            table.add_row(
                str(attempt.number),
                outcome,
                UNKNOWN if attempt.exit_code is None else str(attempt.exit_code),
                attempt.host,
                attempt.gpus or "cpu",
                # The table reads a string as markup: a reason may hold [rank0] or [/path].
                escape(printable(attempt.reason or "")),
            )
        if not detail.attempts:
            table.add_row("", "never started", "", "", "", "")

    def _fill_log(self, detail: CellDetail) -> None:
        if not detail.logs:
            self.query_one("#log-text", Static).update("[dim]no log yet[/]")
            return
        parts = []
        for tail in detail.logs:
            parts.append(f"[b]{tail.path.parent.name}/{tail.path.name}[/]")  # under the run directory
            parts.extend(escape(printable(line)) for line in tail.lines[-12:])
        self.query_one("#log-text", Static).update("\n".join(parts))

    def action_cancel_cell(self) -> None:
        if self.cell is not None:
            ask_to_cancel(self, self.study, self.cell)

    def action_retry_cell(self) -> None:
        if self.cell is not None:
            ask_to_retry(self, self.study, self.cell)
