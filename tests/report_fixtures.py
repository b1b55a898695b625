"""A realistic study for the report's tests, written through the store's API as the runner writes it.

`build_study(db)` records an isoflop grid of 3 budgets × 4 depths whose final losses follow a known
Chinchilla law L(N, D) = E + A/N^α + B/D^β (with 0.3% noise), plus one failed and one diverged cell, with
attempts on a GPU (a fake clock gives them hours of wall time), training and validation curves, throughput
and MFU, and two eval tasks: enough for every section of the report to render. `empty_study` and
`sparse_study` are the bad inputs (no finished cell; budgets with too few points).
"""

import math
import random
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np

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
DEPTHS = (4, 8, 12, 16)
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
    grid += [(BUDGETS[2], 20, "failed"), (BUDGETS[1], 20, "diverged")]
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
        _train(store, clock, random.Random(1), "e4", 1e17, 4, "failed", evals=False)
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


# -- stand-ins for reports.fit's objects (docs/internals.md, "reports/fit.py"), until the real one lands --


class StandInPowerLaw:
    def __init__(self, cs, ys):
        slope, intercept = np.polyfit(np.log(cs), np.log(ys), 1)
        self.k, self.exponent = float(np.exp(intercept)), float(slope)
        self.k_ci, self.exponent_ci = (
            (self.k * 0.8, self.k * 1.25),
            (self.exponent - 0.03, self.exponent + 0.03),
        )

    def __call__(self, c):
        return self.k * np.asarray(c, dtype=float) ** self.exponent

    def band(self, c):
        c = np.asarray(c, dtype=float)
        spread = 1.05 * (c / 1e17) ** 0.04
        return self(c) / spread, self(c) * spread


def standin_fits(store: Store, study_name: str, *, metric: str = "bpb") -> SimpleNamespace:
    """Objects with the attributes of `reports.fit.StudyFits`, fitted with numpy (no bootstrap)."""
    from store import CellState, cells_of, get_study

    study = get_study(store, study_name)
    cells = [c for c in cells_of(store, study.id, states=[CellState.DONE]) if c.val_bpb is not None]
    points = [
        SimpleNamespace(
            n=c.num_params, d=c.num_tokens, c=c.flops, loss=c.val_bpb if metric == "bpb" else c.val_loss,
            budget=c.flops_budget, cell_id=c.id, depth=c.depth,
        )
        for c in cells
    ]  # fmt: skip
    parabolas, skipped = [], []
    for budget in sorted({p.budget for p in points}):
        group = [p for p in points if p.budget == budget]
        if len(group) < 3:
            skipped.append(f"budget {budget:.2g}: {len(group)} done cell(s), a parabola needs 3")
            continue
        x = np.log([p.n for p in group])
        c2, c1, c0 = np.polyfit(x, [p.loss for p in group], 2)
        n_opt = float(np.exp(-c1 / (2 * c2)))
        loss_opt = float(c0 - c1 * c1 / (4 * c2))
        d_opt = budget / (6 * n_opt)
        parabolas.append(
            SimpleNamespace(
                budget=budget, n_points=len(group), coeffs=(c2, c1, c0), n_opt=n_opt,
                n_opt_ci=(n_opt * 0.8, n_opt * 1.25), d_opt=d_opt, d_opt_ci=(d_opt * 0.8, d_opt * 1.25),
                loss_opt=loss_opt, loss_opt_ci=(loss_opt * 0.99, loss_opt * 1.01),
                interior=min(x) < math.log(n_opt) < max(x), advice=None, outlier=None,
            )
        )  # fmt: skip
    laws = [None, None, None]
    if len(parabolas) >= 2:
        cs = [p.budget for p in parabolas]
        laws = [
            StandInPowerLaw(cs, [getattr(p, a) for p in parabolas]) for a in ("n_opt", "d_opt", "loss_opt")
        ]
    isoflop = None
    if points:
        isoflop = SimpleNamespace(
            metric=metric,
            parabolas=parabolas,
            skipped=skipped,
            n_opt=laws[0],
            d_opt=laws[1],
            loss_opt=laws[2],
        )
    parametric = _standin_parametric(points, metric) if len(points) >= 5 else None
    problems = [] if points else ["no done pretraining cell has a final validation value"]
    if points and parametric is None:
        problems.append(f"parametric fit: {len(points)} points, needs 5")
    return SimpleNamespace(
        study=study_name, metric=metric, points=points, isoflop=isoflop if points else None,
        parametric=parametric, prediction=None, problems=problems,
    )  # fmt: skip


def _standin_parametric(points, metric: str) -> SimpleNamespace:
    scale = 1 / math.log(2) / BYTES_PER_TOKEN if metric == "bpb" else 1.0
    law = TRUE_LAW
    E, A, B, alpha, beta = law["E"] * scale, law["A"] * scale, law["B"] * scale, law["alpha"], law["beta"]

    def loss(n, d):
        return E + A / np.asarray(n, dtype=float) ** alpha + B / np.asarray(d, dtype=float) ** beta

    G = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
    a, b = beta / (alpha + beta), alpha / (alpha + beta)

    def optimal(c):
        n = G * (c / 6) ** a
        return n, c / (6 * n)

    def optimal_ci(c):
        n, d = optimal(c)
        return {
            "n": (n * 0.7, n * 1.4),
            "d": (d * 0.7, d * 1.4),
            "tokens_per_param": (d / n * 0.5, d / n * 2),
        }

    values = {"E": E, "A": A, "B": B, "alpha": alpha, "beta": beta, "a": a, "b": b}
    return SimpleNamespace(
        **values, ci={k: (v * 0.9, v * 1.1) for k, v in values.items()}, n_points=len(points), n_boot=0,
        residuals=[math.log(p.loss) - math.log(float(loss(p.n, p.d))) for p in points],
        loss=loss, optimal=optimal, optimal_ci=optimal_ci,
    )  # fmt: skip
