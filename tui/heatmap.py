"""The study's grid at a glance: depth (rows) × FLOP budget (columns), one coloured box per grid point.

A grid point holds every seed of one depth and budget. While any of its cells is unfinished the box shows
the most urgent state (running, then failed, diverged, pending, cancelled); once all are done it shows
their mean final val bpb, coloured from green (the lowest of the grid) to red (the highest).
"""

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from rich.table import Table
from rich.text import Text
from textual.geometry import Size
from textual.widgets import Static

from runner.api import CellProgress
from tui.format import fixed, flops

# Which state a grid point shows while its cells differ: what needs a look first.
URGENCY = ("running", "failed", "diverged", "pending", "cancelled", "done")
STATE_BOXES = {
    "running": "black on cyan",
    "failed": "white on red",
    "diverged": "white on magenta",
    "pending": "white on grey23",
    "cancelled": "black on yellow",
}


@dataclass(frozen=True, kw_only=True, slots=True)
class GridPoint:
    state: str  # the most urgent state of its cells, "done" when all are
    num_cells: int
    mean_bpb: float | None  # of its done cells
    progress: float  # steps done over steps planned, all its cells


def grid_points(cells: Sequence[CellProgress], mode: str) -> dict[tuple[int, float], GridPoint]:
    """(depth, budget) -> its summary, over the cells of one mode."""
    groups: dict[tuple[int, float], list[CellProgress]] = defaultdict(list)
    for cell in cells:
        if cell.mode == mode:
            groups[cell.depth, cell.flops].append(cell)
    points = {}
    for key, group in groups.items():
        states = {cell.state for cell in group}
        bpbs = [cell.val_bpb for cell in group if cell.state == "done" and cell.val_bpb is not None]
        steps_total = sum(cell.steps_total for cell in group)
        points[key] = GridPoint(
            state=next(state for state in URGENCY if state in states),
            num_cells=len(group),
            mean_bpb=sum(bpbs) / len(bpbs) if bpbs else None,
            progress=sum(cell.step for cell in group) / steps_total if steps_total else 0.0,
        )
    return points


def _bpb_style(bpb: float, lowest: float, highest: float) -> str:
    """Green at the grid's lowest bpb to red at its highest."""
    share = 0.0 if highest <= lowest else (bpb - lowest) / (highest - lowest)
    red, green = round(40 + 180 * share), round(200 - 140 * share)
    return f"black on rgb({red},{green},60)"


def render_grid(cells: Sequence[CellProgress], mode: str) -> Table:
    points = grid_points(cells, mode)
    depths = sorted({depth for depth, _ in points})
    budgets = sorted({budget for _, budget in points})
    done = [p.mean_bpb for p in points.values() if p.state == "done" and p.mean_bpb is not None]
    lowest, highest = (min(done), max(done)) if done else (0.0, 0.0)
    table = Table(box=None, padding=(0, 1), show_edge=False)
    table.add_column("depth", justify="right", style="bold")
    for budget in budgets:
        table.add_column(flops(budget), justify="center", min_width=8)
    for depth in depths:
        row: list[Text] = [Text(str(depth))]
        for budget in budgets:
            point = points.get((depth, budget))
            if point is None:
                row.append(Text(""))
            elif point.state == "done" and point.mean_bpb is not None:
                row.append(
                    Text(f" {fixed(point.mean_bpb)} ", style=_bpb_style(point.mean_bpb, lowest, highest))
                )
            elif point.state == "running":
                row.append(Text(f" {100 * point.progress:3.0f}% ", style=STATE_BOXES["running"]))
            else:
                row.append(Text(f" {point.state[:7]:^7}", style=STATE_BOXES.get(point.state, "")))
        table.add_row(*row)
    return table


def legend() -> Text:
    text = Text("done: mean val bpb, ")
    text.append("low", style=_bpb_style(0, 0, 1)).append(" → ").append("high", style=_bpb_style(1, 0, 1))
    for state, style in STATE_BOXES.items():
        text.append("  ").append(f" {state} ", style=style)
    return text


class Heatmap(Static):
    """The grid of one mode; `show(cells)` redraws it."""

    DEFAULT_CSS = """
    Heatmap {
        height: auto;
        max-height: 16;
        padding: 0 1;
    }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.mode = "pretraining"

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        # A third of the screen at most: on a small terminal its natural height left the cells' table below
        # it no row at all (40x12: the totals wrap to 4 lines, the grid takes 9).
        return min(super().get_content_height(container, viewport, width), max(1, viewport.height // 3))

    def show(self, cells: Sequence[CellProgress]) -> None:
        modes = sorted({cell.mode for cell in cells})
        if modes and self.mode not in modes:
            self.mode = modes[0]
        if not cells:
            self.update(Text("no cells yet", style="dim"))
            return
        table = Table.grid()
        table.add_row(Text(f"{self.mode} cells: depth × FLOP budget (m: another mode)", style="italic"))
        table.add_row(render_grid(cells, self.mode))
        table.add_row(legend())
        self.update(table)

    def cycle_mode(self, cells: Sequence[CellProgress]) -> None:
        modes = sorted({cell.mode for cell in cells})
        if modes:
            self.mode = modes[(modes.index(self.mode) + 1) % len(modes)] if self.mode in modes else modes[0]
            self.show(cells)
