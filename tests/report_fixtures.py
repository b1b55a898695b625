"""A realistic study for the report's tests, written through the store's API as the runner writes it.

`build_study(db)` records an isoflop grid of 3 budgets × 4 depths whose final losses follow a known
Chinchilla law L(N, D) = E + A/N^α + B/D^β (with 0.3% noise), plus one failed and one diverged cell, with
attempts on a GPU (a fake clock gives them hours of wall time), training and validation curves, throughput
and MFU, and two eval tasks: enough for every section of the report to render. `empty_study` and
`sparse_study` are the bad inputs (no finished cell; budgets with too few points); `one_budget_study` has a
full isoflop curve at a single budget, which determines a minimum but no law.
"""

import math
import random
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

from store import (
    AttemptOutcome,
    CellMode,
    Executor,
    NewCell,
    Store,
    add_cells,
    claim,
    end_attempt,
    ingest,
    open_store,
    upsert_study,
)

# The law the synthetic losses follow (Hoffmann et al. 2022, approach 3's fit), in nats per token.
TRUE_LAW = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
BYTES_PER_TOKEN = 4.2  # bits per byte = loss / ln 2 / bytes per token
BUDGETS = (1e17, 3e17, 1e18)
DEPTHS = (6, 8, 10, 12)
NUM_STEPS = 40
EVAL_TASKS = ("arc_easy", "hellaswag")
GPU = {"type": "cuda", "name": "NVIDIA H100 80GB HBM3", "count": 1}


def law_loss(n: float, d: float) -> float:
    law = TRUE_LAW
    return law["E"] + law["A"] / n ** law["alpha"] + law["B"] / d ** law["beta"]


def num_params(depth: int) -> int:
    """N of a nanochat-shaped model: width 64·depth, about 12·depth·width² parameters."""
    return 12 * depth * (64 * depth) ** 2


class FakeClock:
    """Unix time that moves only when told: attempts get hours of wall time in a test that takes ms."""

    def __init__(self, start: float = 1.7e9):
        self.t = start

    def __call__(self) -> float:
        return self.t

    def patch(self) -> ExitStack:
        stack = ExitStack()
        for module in ("store.attempts", "store.cells", "store.metrics"):
            stack.enter_context(mock.patch(f"{module}.now", self))
        return stack


def new_study(db: Path, name: str) -> tuple[Store, int]:
    store = open_store(db)
    study = upsert_study(store, name=name, path=str(db.parent / f"{name}.yaml"), spec={"name": name})
    assert study.id is not None
    return store, study.id


def build_study(db: Path, name: str = "synthetic", *, evals: bool = True) -> Store:
    """The full study: 12 done cells, one failed, one diverged (see the module's docstring)."""
    store, study_id = new_study(db, name)
    rng = random.Random(0)
    clock = FakeClock()
    grid = [(budget, depth, "done") for budget in BUDGETS for depth in DEPTHS]
    grid += [(BUDGETS[2], 16, "failed"), (BUDGETS[1], 16, "diverged")]
    cells = {f"c{int(budget / 1e16):03d}d{depth:02d}": (budget, depth, end) for budget, depth, end in grid}
    add_cells(
        store, study_id, [_new_cell(cell_id, budget, depth) for cell_id, (budget, depth, _) in cells.items()]
    )
    with clock.patch():
        for cell_id, (budget, depth, end) in cells.items():
            _train(store, clock, rng, cell_id, budget, depth, end, evals=evals)
    return store


def empty_study(db: Path, name: str = "empty") -> Store:
    """Cells planned, one failed, none finished: nothing to fit."""
    store, study_id = new_study(db, name)
    add_cells(store, study_id, [_new_cell(f"e{depth}", 1e17, depth) for depth in DEPTHS])
    clock = FakeClock()
    with clock.patch():
        _train(store, clock, random.Random(1), f"e{DEPTHS[0]}", 1e17, DEPTHS[0], "failed", evals=False)
    return store


def sparse_study(db: Path, name: str = "sparse") -> Store:
    """Two budgets: one with 3 done cells, one with a single done cell (too few for a parabola)."""
    store, study_id = new_study(db, name)
    specs = [(1e17, depth) for depth in (4, 8, 12)] + [(1e18, 12)]
    ids = {f"s{int(budget / 1e16):03d}d{depth}": (budget, depth) for budget, depth in specs}
    add_cells(
        store, study_id, [_new_cell(cell_id, budget, depth) for cell_id, (budget, depth) in ids.items()]
    )
    clock = FakeClock()
    with clock.patch():
        for cell_id, (budget, depth) in ids.items():
            _train(store, clock, random.Random(2), cell_id, budget, depth, "done", evals=False)
    return store


def one_budget_study(db: Path, name: str = "one") -> Store:
    """Six done cells at one budget (depths 4 to 14): N and D are collinear, so no parametric law."""
    store, study_id = new_study(db, name)
    ids = {f"o{depth:02d}": depth for depth in (4, 6, 8, 10, 12, 14)}
    add_cells(store, study_id, [_new_cell(cell_id, 1e18, depth) for cell_id, depth in ids.items()])
    clock = FakeClock()
    with clock.patch():
        for cell_id, depth in ids.items():
            _train(store, clock, random.Random(3), cell_id, 1e18, depth, "done", evals=False)
    return store


def _new_cell(cell_id: str, budget: float, depth: int) -> NewCell:
    n = num_params(depth)
    tokens = int(budget / (6 * n))
    return NewCell(
        id=cell_id,
        mode=CellMode.PRETRAINING,
        depth=depth,
        flops_budget=budget,
        seed=0,
        num_params=n,
        num_tokens=tokens,
        flops_per_token=6 * n,
        steps_total=NUM_STEPS,
        config={"model": {"depth": depth}},
        axes={"depth": depth, "flops": budget, "seed": 0},
    )


def _train(
    store: Store,
    clock: FakeClock,
    rng: random.Random,
    cell_id: str,
    budget: float,
    depth: int,
    end: str,
    *,
    evals: bool,
) -> None:
    """One attempt at the cell: a start event, step and val rows as the trainer logs them, then its end."""
    n, tokens = num_params(depth), int(budget / (6 * num_params(depth)))
    duration_s = budget / 4e14  # 40% of an H100: 1e18 FLOPs in 42 minutes
    attempt = claim(store, cell_id, executor=Executor.LOCAL, host="gpu-node-1", gpus="0", num_gpus=1)
    assert attempt is not None
    started = clock.t
    last_step = {"done": NUM_STEPS, "failed": NUM_STEPS // 4, "diverged": NUM_STEPS // 2}[end]
    train, val = [], []
    for step in range(1, last_step + 1):
        seen = tokens * step // NUM_STEPS
        loss = law_loss(n, seen) * (1 + rng.gauss(0, 0.01))
        if end == "diverged" and step > last_step - 4:
            loss = None if step == last_step else loss * (1 + 0.1 * (step - last_step + 4))
        train.append(
            {
                "step": step,
                "tokens": seen,
                "flops": 6.0 * n * seen,
                "loss": loss,
                "tok_per_s": tokens / duration_s * (0.5 if step == 1 else rng.uniform(0.97, 1.03)),
                "mfu": (0.30 + 0.01 * depth) * rng.uniform(0.97, 1.03),
                "elapsed_s": duration_s * step / NUM_STEPS,
                "time": started + duration_s * step / NUM_STEPS,
            }
        )
        if step % 10 == 0 and loss is not None:
            val_loss = law_loss(n, seen) * (1 + rng.gauss(0, 0.003))
            val.append({"step": step, "tokens": seen, "val_loss": val_loss, "val_bpb": _bpb(val_loss)})
    score_rows = []
    if evals and end == "done":
        final = val[-1]["val_loss"]
        for offset, task in enumerate(EVAL_TASKS):
            score = 0.25 + 0.6 / (1 + math.exp(3 * (final - 3.6 + 0.3 * offset)))
            score_rows.append({"step": NUM_STEPS, "task": task, "score": score, "num_examples": 500})
    start = {"kind": "start", "device": GPU, "world_size": 1, "num_scaling_params": n}
    ingest(store, cell_id, attempt_id=attempt.id, train=train, val=val, evals=score_rows, start=start)
    clock.t += duration_s * last_step / NUM_STEPS
    if end == "done":
        end_attempt(store, attempt.id, AttemptOutcome.DONE, exit_code=0)
    elif end == "failed":
        reason = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
        end_attempt(store, attempt.id, AttemptOutcome.FAILED, exit_code=1, reason=reason)
    else:
        end_attempt(
            store,
            attempt.id,
            AttemptOutcome.DIVERGED,
            exit_code=3,
            reason=f"training loss is nan at step {last_step}",
        )
    clock.t += 60


def _bpb(loss: float) -> float:
    return loss / math.log(2) / BYTES_PER_TOKEN
