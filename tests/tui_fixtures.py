"""A small study in every state, written through the store as the runner writes it, for the TUI's tests and
the runner API's status views; and a fake NVML with telemetry, and one with a GPU that is lost.

The demo study ("demo"): depths 2, 4, 8 × budgets 1e15, 1e16, and one mid-training cell.

| cell | state | notes |
|---|---|---|
| d2-c15 | done | val bpb 1.30, final checkpoint, an eval score |
| d4-c15 | done | val bpb 1.25, final checkpoint |
| mid-d4 | done | mid-training child of d4-c15, val bpb 1.40, final checkpoint |
| d2-c16 | running | step 40 of 200 on GPU 0, 12,000 tok/s, MFU 41%, 1 s per step; logs |
| d4-c16 | failed | two attempts, the last ended "CUDA out of memory"; logs |
| d8-c16 | pending | |
"""

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from runner_fixtures import FakeNvml

from store import (
    AttemptOutcome,
    CellMode,
    CellState,
    Executor,
    NewCell,
    add_cells,
    claim,
    end_attempt,
    ingest,
    open_store,
    record_launch,
    transition,
    upsert_study,
)

STUDY = "demo"
RUNNING_PID = 4242  # the running cell's trainer, as the attempt records it


@dataclass(frozen=True)
class DemoStudy:
    db: Path
    runs: Path


def _cell(cell_id: str, depth: int, budget: float, runs: Path, **extra) -> NewCell:
    return NewCell(
        id=cell_id,
        mode=extra.pop("mode", CellMode.PRETRAINING),
        depth=depth,
        flops_budget=budget,
        seed=0,
        num_params=100_000 * depth,
        num_tokens=200 * 4096,
        flops_per_token=600_000 * depth,
        steps_total=200,
        config={"model": {"depth": depth}},
        axes={"depth": depth, "flops": budget, "seed": 0},
        run_dir=str(extra.pop("run_dir", runs / cell_id)),
        **extra,
    )


def _steps(first: int, last: int, *, tok_per_s: float, mfu: float | None) -> list[dict]:
    return [
        {
            "step": step,
            "tokens": 4096 * step,
            "loss": 4.0 - step / 100,
            "tok_per_s": tok_per_s,
            "mfu": mfu,
            "elapsed_s": float(step),
        }
        for step in range(first, last + 1)
    ]


def _finish(store, cell_id: str, bpb: float, *, evals: list[dict] = (), final_step: int = 200) -> None:
    attempt = claim(store, cell_id, executor=Executor.LOCAL, host="here", gpus="0", num_gpus=1)
    ingest(
        store,
        cell_id,
        attempt_id=attempt.id,
        train=_steps(1, 200, tok_per_s=20_000.0, mfu=0.5),
        val=[
            {"step": s, "tokens": 4096 * s, "val_loss": bpb + 1 + 100 / s, "val_bpb": bpb + 50 / s}
            for s in (50, 100, 150)
        ]
        + [{"step": 200, "tokens": 4096 * 200, "val_loss": bpb + 1, "val_bpb": bpb}],
        evals=list(evals),
        checkpoints=[{"step": 200, "kind": "final", "path": f"checkpoints/step_{final_step:06d}"}],
    )
    end_attempt(store, attempt.id, AttemptOutcome.DONE, exit_code=0)


def _write_logs(run_dir: Path, number: int, out: list[str], err: list[str]) -> None:
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    (logs / f"attempt_{number}.out").write_text("".join(f"{line}\n" for line in out))
    (logs / f"attempt_{number}.err").write_text("".join(f"{line}\n" for line in err))


def demo_study(root: Path, *, chat_runs=None) -> DemoStudy:
    """The demo study in `root/nanostudy.db`, run directories under `root/runs`. With `chat_runs` (the
    chat fixtures' checkpoints), the mid-training cell's run directory is the real mid-trained model's and
    d4-c15's the real base model's, their final checkpoints the real ones."""
    db, runs = root / "nanostudy.db", root / "runs"
    store = open_store(db)
    study = upsert_study(store, name=STUDY, path=str(root / "demo.yaml"), spec={"name": STUDY})
    base_dir = chat_runs.base if chat_runs else runs / "d4-c15"
    chat_dir = chat_runs.chat if chat_runs else runs / "mid-d4"
    add_cells(
        store,
        study.id,
        [
            _cell("d2-c15", 2, 1e15, runs),
            _cell("d4-c15", 4, 1e15, runs, run_dir=base_dir),
            _cell("d2-c16", 2, 1e16, runs),
            _cell("d4-c16", 4, 1e16, runs),
            _cell("d8-c16", 8, 1e16, runs),
            _cell(
                "mid-d4", 4, 1e15, runs, mode=CellMode.MID_TRAINING, parent_cell_id="d4-c15", run_dir=chat_dir
            ),
        ],
    )
    _finish(
        store, "d2-c15", 1.30, evals=[{"step": 200, "task": "hellaswag", "score": 0.31, "accuracy": 0.31}]
    )
    # The real checkpoints of the chat fixtures are at steps 30 (base) and 60 (mid-trained).
    _finish(store, "d4-c15", 1.25, final_step=30 if chat_runs else 200)
    _finish(store, "mid-d4", 1.40, final_step=60 if chat_runs else 200)

    attempt = claim(store, "d4-c16", executor=Executor.LOCAL, host="here", gpus="1", num_gpus=1)
    ingest(store, "d4-c16", attempt_id=attempt.id, train=_steps(1, 10, tok_per_s=9_000.0, mfu=0.3))
    end_attempt(store, attempt.id, AttemptOutcome.FAILED, exit_code=1, reason="killed by signal 9")
    assert transition(store, "d4-c16", CellState.FAILED, CellState.PENDING, reason="retry")
    attempt = claim(store, "d4-c16", executor=Executor.LOCAL, host="here", gpus="1", num_gpus=1)
    end_attempt(store, attempt.id, AttemptOutcome.FAILED, exit_code=1, reason="CUDA out of memory")
    _write_logs(
        runs / "d4-c16", 2, ["step 10 loss 3.9"], ["Traceback (most recent call last):", "CUDA out of memory"]
    )

    attempt = claim(store, "d2-c16", executor=Executor.LOCAL, host="here", gpus="0", num_gpus=1)
    record_launch(store, attempt.id, pid=RUNNING_PID, pid_start_time=1.0)
    ingest(
        store,
        "d2-c16",
        attempt_id=attempt.id,
        train=_steps(1, 40, tok_per_s=12_000.0, mfu=0.41),
        val=[
            {"step": 20, "tokens": 4096 * 20, "val_loss": 3.5, "val_bpb": 1.9},
            {"step": 40, "tokens": 4096 * 40, "val_loss": 3.2, "val_bpb": 1.7},
        ],
    )
    _write_logs(runs / "d2-c16", 1, [f"step {s} loss {4.0 - s / 100:.2f}" for s in range(1, 41)], [])
    store.close()
    return DemoStudy(db=db, runs=runs)


def unfinished_study(root: Path) -> Path:
    """Study "later" in `root/nanostudy.db`: cells c1 and c2, neither finished yet (`finish_cell` ends one),
    for a chat opened before any model exists. The database's path."""
    db = root / "nanostudy.db"
    with open_store(db) as store:
        study = upsert_study(store, name="later", path=str(root / "later.yaml"), spec={"name": "later"})
        runs = root / "runs"
        add_cells(store, study.id, [_cell("c1", 2, 1e15, runs), _cell("c2", 4, 1e15, runs)])
    return db


def finish_cell(db: Path, cell_id: str, bpb: float) -> None:
    """The cell done, with its final checkpoint, as a runner records it."""
    with open_store(db) as store:
        _finish(store, cell_id, bpb)


class TelemetryNvml(FakeNvml):
    """FakeNvml with the telemetry the GPU screen reads; utilisation moves on at each sample."""

    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2

    def __init__(self, num_gpus: int, foreign: dict[int, list[int]] | None = None):
        super().__init__(num_gpus, foreign)
        self.tick = 0

    def nvmlDeviceGetCount(self):
        self.tick += 1  # once per sample of every GPU: the readings move on
        return super().nvmlDeviceGetCount()

    def nvmlDeviceGetUtilizationRates(self, handle):
        return SimpleNamespace(gpu=(10 * (handle + 1) + 5 * self.tick) % 101, memory=20)

    def nvmlDeviceGetTemperature(self, handle, sensor):
        assert sensor == self.NVML_TEMPERATURE_GPU
        return 40 + handle

    def nvmlDeviceGetPowerUsage(self, handle):
        return 250_000 + 1000 * handle  # milliwatts

    def nvmlDeviceGetEnforcedPowerLimit(self, handle):
        return 700_000

    def nvmlDeviceGetClockInfo(self, handle, clock):
        return {self.NVML_CLOCK_SM: 1980, self.NVML_CLOCK_MEM: 2619}[clock]


class NVMLError_GpuIsLost(Exception):  # pynvml's name for it
    def __str__(self) -> str:
        return "GPU is lost"


class LostGpuNvml(TelemetryNvml):
    """TelemetryNvml whose GPU `lost` is gone from the `lost_at`-th sample on (an Xid error): every reading
    of it raises, as NVML's do once the driver has lost the GPU."""

    def __init__(self, num_gpus: int, *, lost: int, lost_at: int = 1, **kwargs):
        super().__init__(num_gpus, **kwargs)
        self.lost, self.lost_at = lost, lost_at

    def nvmlDeviceGetMemoryInfo(self, handle):
        if handle == self.lost and self.tick >= self.lost_at:
            raise NVMLError_GpuIsLost()
        return super().nvmlDeviceGetMemoryInfo(handle)


class NVMLError_Unknown(Exception):  # pynvml's name for it
    def __str__(self) -> str:
        return "Unknown Error"


class UncountableNvml(TelemetryNvml):
    """TelemetryNvml whose nvmlDeviceGetCount fails at the samples in `failing` (counted from 1), as NVML's
    does while the driver reloads, and answers again after them."""

    def __init__(self, num_gpus: int, *, failing: range, **kwargs):
        super().__init__(num_gpus, **kwargs)
        self.failing = failing

    def nvmlDeviceGetCount(self):
        count = super().nvmlDeviceGetCount()
        if self.tick in self.failing:
            raise NVMLError_Unknown()
        return count
