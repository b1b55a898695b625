"""What the report reads from the store, in one pass: the study, a row per cell, curves, evals, hours.

Everything the charts and tables need is gathered here as plain rows, so `reports.charts` never touches the
store and `reports.report` never writes SQL. Reading never writes: the report opens the database read-only
(`create=False`) while a runner may still be writing it.
"""

import statistics
import time
from dataclasses import dataclass
from typing import Any

from store import (
    Attempt,
    CellMode,
    CellState,
    Eval,
    Store,
    Study,
    TrainPoint,
    attempts_of,
    cells_of,
    evals_of,
    get_study,
    train_curve,
)

# A training curve is drawn from at most this many points (the first and the last always among them): a
# study of a thousand cells logging every step would otherwise put millions of points in one HTML file.
MAX_CURVE_POINTS = 200
# Throughput and MFU are medians over the steps after this share of a run: the first steps pay for
# compilation and warm-up.
WARMUP_FRACTION = 0.1


class UnknownStudyError(LookupError):
    """No study of that name in the database."""


@dataclass(frozen=True, kw_only=True, slots=True)
class CellRow:
    """One cell as the report shows it: grid coordinates, state, results, cost and speed."""

    id: str
    mode: str
    parent_id: str | None
    depth: int
    budget_flops: float  # the grid's FLOP budget (its isoflop curve)
    seed: int
    state: str
    reason: str | None
    num_params: int  # N
    num_tokens: int  # D, planned
    flops: float  # C, planned
    steps_done: int
    steps_total: int
    train_loss: float | None
    val_loss: float | None
    val_bpb: float | None
    num_attempts: int
    device: str | None  # from the newest attempt's start event, e.g. "NVIDIA H100 80GB HBM3" or "cpu"
    # Whether the newest attempt trained the lm_head in FP8 (its start event; `fp8_head: auto` takes FP8
    # where the GPU has it, so one study's cells may differ); None when no attempt has started.
    fp8_head: bool | None
    num_gpus: int  # of the newest attempt; 0 on the CPU
    gpu_hours: float
    cpu_hours: float
    tok_per_s: float | None  # median after warm-up
    mfu: float | None  # median after warm-up, in [0, 1]; None on the CPU


@dataclass(frozen=True, kw_only=True, slots=True)
class StudyData:
    study: Study
    database: str
    cells: list[CellRow]  # grid order: mode, budget, depth, seed
    curves: dict[str, list[TrainPoint]]  # cell id -> training points (thinned to MAX_CURVE_POINTS)
    evals: list[Eval]  # each cell's newest score per task
    read_at: float

    @property
    def counts(self) -> dict[str, int]:
        """Cells per state, every state listed (zeros included) in the state machine's order."""
        counts = {state.value: 0 for state in CellState}
        for cell in self.cells:
            counts[cell.state] += 1
        return counts

    @property
    def gpu_hours(self) -> float:
        return sum(cell.gpu_hours for cell in self.cells)

    @property
    def cpu_hours(self) -> float:
        return sum(cell.cpu_hours for cell in self.cells)

    @property
    def pretraining(self) -> list[CellRow]:
        return [cell for cell in self.cells if cell.mode == CellMode.PRETRAINING.value]


def read_study(store: Store, study_name: str) -> StudyData:
    """Everything the report shows about the study, read in one snapshot of the database (a runner may be
    writing it); UnknownStudyError when the database has no such study."""
    with store.snapshot():
        return _read_study(store, study_name)


def _read_study(store: Store, study_name: str) -> StudyData:
    study = get_study(store, study_name)
    if study is None or study.id is None:
        raise UnknownStudyError(f"study {study_name!r} is not in the database {store.name}")
    read_at = time.time()
    rows, curves = [], {}
    for cell in cells_of(store, study.id):
        points = train_curve(store, cell.id)
        attempts = attempts_of(store, cell.id)
        gpu_hours, cpu_hours = attempt_hours(attempts, now=read_at)
        newest = attempts[-1] if attempts else None
        rows.append(
            CellRow(
                id=cell.id,
                mode=CellMode(cell.mode).value,
                parent_id=cell.parent_cell_id,
                depth=cell.depth,
                budget_flops=cell.flops_budget,
                seed=cell.seed,
                state=CellState(cell.state).value,
                reason=cell.reason,
                num_params=cell.num_params,
                num_tokens=cell.num_tokens,
                flops=cell.flops,
                steps_done=cell.steps_done,
                steps_total=cell.steps_total,
                train_loss=cell.train_loss,
                val_loss=cell.val_loss,
                val_bpb=cell.val_bpb,
                num_attempts=len(attempts),
                device=_device_name(newest),
                fp8_head=_fp8_head(newest),
                num_gpus=newest.num_gpus if newest else 0,
                gpu_hours=gpu_hours,
                cpu_hours=cpu_hours,
                tok_per_s=_steady_median(points, "tok_per_s"),
                mfu=_steady_median(points, "mfu"),
            )
        )
        if points:
            curves[cell.id] = thin(points, MAX_CURVE_POINTS)
    return StudyData(
        study=study,
        database=store.name,
        cells=rows,
        curves=curves,
        evals=_newest_evals(evals_of(store, study_id=study.id)),
        read_at=read_at,
    )


def attempt_hours(attempts: list[Attempt], *, now: float) -> tuple[float, float]:
    """(GPU-hours, CPU-hours) of the attempts: wall time × GPUs for GPU attempts, wall time for CPU ones.

    An attempt still open counts up to its last heartbeat (its trainer may be gone; `now` caps it).
    """
    gpu_s = cpu_s = 0.0
    for attempt in attempts:
        end = attempt.ended_at if attempt.ended_at is not None else min(attempt.heartbeat_at, now)
        wall_s = max(0.0, end - attempt.started_at)
        if attempt.num_gpus > 0:
            gpu_s += wall_s * attempt.num_gpus
        else:
            cpu_s += wall_s
    return gpu_s / 3600, cpu_s / 3600


def thin(points: list[Any], limit: int) -> list[Any]:
    """At most `limit` points, evenly spaced by index, keeping the first and the last."""
    if len(points) <= limit:
        return list(points)
    step = (len(points) - 1) / (limit - 1)
    return [points[round(i * step)] for i in range(limit)]


def _steady_median(points: list[TrainPoint], field: str) -> float | None:
    values = [getattr(point, field) for point in points[int(len(points) * WARMUP_FRACTION) :]]
    values = [value for value in values if value is not None]
    return statistics.median(values) if values else None


def _device_name(attempt: Attempt | None) -> str | None:
    if attempt is None or not attempt.start_event:
        return None
    device = attempt.start_event.get("device") or {}
    name = device.get("name") or device.get("type")
    count = device.get("count") or 1
    return f"{count}× {name}" if name and count > 1 else name


def _fp8_head(attempt: Attempt | None) -> bool | None:
    """The head an attempt trained: its start event's device.fp8_head, else (written before that was
    recorded) its config's fp8_head, then always true or false."""
    if attempt is None or not attempt.start_event:
        return None
    resolved = (attempt.start_event.get("device") or {}).get("fp8_head")
    if resolved is None:
        resolved = (attempt.start_event.get("config") or {}).get("fp8_head", False)
    return resolved if isinstance(resolved, bool) else None


def _newest_evals(evals: list[Eval]) -> list[Eval]:
    """Each cell's newest score of each task (a cell evaluated at several steps shows its final one)."""
    newest: dict[tuple[str, str], Eval] = {}
    for row in evals:  # ordered by cell, step, task
        newest[(row.cell_id, row.task)] = row
    return list(newest.values())
