"""Helpers for the runner's tests: a store holding tiny cells, a loop over them, a runner process, and the
study file of a tiny study that `nanostudy run` trains on the CPU.

`python tests/runner_fixtures.py DB STUDY [--fake PLAN] [--max-attempts N]` runs the loop over the cells
already in the database, as `nanostudy run` does after planning; the crash-safety tests start it as a
process of its own so that they can kill it.
"""

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

from trainer_fixtures import tiny_config

from runner.executor import LocalExecutor
from runner.gpus import GpuPool
from runner.lock import StudyLock, lock_path
from runner.run import CellLaunch, LoopOptions, StudyLoop
from store import CellMode, NewCell, Store, add_cells, cell_statuses, get_study, open_store, upsert_study

ROOT = Path(__file__).resolve().parents[1]

FAKE_TRAINER = ROOT / "tests" / "fake_trainer.py"
# One thread per trainer: the tests share two cores with everything else.
TRAINER_ENV = {"OMP_NUM_THREADS": "1"}


def fake_python(tmp_path: Path) -> Path:
    """An executable that runs the fake trainer whatever module the executor asks for."""
    path = tmp_path / "fake-python"
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_TRAINER}" "$@"\n')
    path.chmod(0o755)
    return path


def write_plan(tmp_path: Path, plan: dict[str, list[str]]) -> Path:
    path = tmp_path / "fake-plan.json"
    path.write_text(json.dumps(plan))
    return path


def tiny_study_yaml(name: str, corpus: Path, grid: str, *, sections: str = "", eval_lines: str = "") -> str:
    """A study file's text: the text files `corpus/*.txt` (a 300-token BPE, a tenth for validation), the
    `grid` lines, a model and batch small enough to train in seconds on the CPU, `eval_lines` added to its
    eval section, one attempt a cell, and other top-level `sections` (whole lines: a mode, resources)."""
    return f"""\
name: {name}
{sections}data:
  source: {{name: local, paths: '{corpus}/*.txt'}}
  tokenizer: bpe:300
  val_fraction: 0.1
grid:
{grid}model:
  aspect_ratio: 16
  head_dim: 16
  sequence_len: 32
train:
  total_batch_tokens: 256
  device_batch_size: 8
  device: cpu
  compile: false
eval:
  every_steps: null
  val_tokens: 512
{eval_lines}retry:
  max_attempts: 1
"""


def new_study(db: Path, name: str = "tiny") -> tuple[Store, int]:
    store = open_store(db)
    study = upsert_study(store, name=name, path=str(db.parent / f"{name}.yaml"), spec={"name": name})
    assert study.id is not None
    return store, study.id


def add_tiny_cells(
    store: Store,
    study_id: int,
    data_dir: Path,
    runs_dir: Path,
    specs: Sequence[dict],
) -> list[NewCell]:
    """Cells from specs: {"id", "depth"=1, "flops"=1e9, "seed"=0, "config": overrides, "parent": id,
    "mid_data": dir}; each config is `tiny_config` with the overrides."""
    cells = []
    for spec in specs:
        depth = spec.get("depth", 1)
        overrides = {"seed": spec.get("seed", 0), **spec.get("config", {})}
        overrides["model"] = {"depth": depth, **overrides.get("model", {})}
        config = tiny_config(data_dir, **overrides)
        parent = spec.get("parent")
        if parent is not None:
            config.pop("model")
            config.update(mode="mid-training", init_from=None, data={"train_dir": str(spec["mid_data"])})
        steps = config["train"]["num_steps"]
        cells.append(
            NewCell(
                id=spec["id"],
                mode=CellMode.MID_TRAINING if parent else CellMode.PRETRAINING,
                parent_cell_id=parent,
                depth=depth,
                flops_budget=spec.get("flops", 1e9),
                seed=spec.get("seed", 0),
                num_params=1000 * depth,
                num_tokens=256 * steps,
                flops_per_token=6000 * depth,
                steps_total=steps,
                config=config,
                run_dir=str(runs_dir / spec["id"]),
            )
        )
    add_cells(store, study_id, cells)
    return cells


def make_loop(
    store: Store,
    study_id: int,
    *,
    python: Path | None = None,
    plan: Path | None = None,
    pool: GpuPool | None = None,
    options: LoopOptions | None = None,
    launcher: str = "auto",
    num_gpus: dict[str, int] | None = None,
    log: list[str] | None = None,
) -> StudyLoop:
    """A loop over every cell of the study (run directories from the store), on the CPU by default."""
    env = dict(TRAINER_ENV)
    if plan is not None:
        env["FAKE_TRAINER_PLAN"] = str(plan)
    executor = LocalExecutor(
        python=str(python or sys.executable), env=env, launcher=launcher, stop_grace_s=60
    )
    return study_loop(
        store,
        study_id,
        executor,
        pool=pool or GpuPool(nvml=None),
        options=options or LoopOptions(poll_s=0.1, heartbeat_s=1.0),
        num_gpus=num_gpus,
        log=log,
    )


def study_loop(
    store: Store,
    study_id: int,
    executor,
    *,
    pool: GpuPool | None,
    options: LoopOptions,
    num_gpus: dict[str, int] | None = None,
    log: list[str] | None = None,
) -> StudyLoop:
    """The runner's loop over every cell of the study with this executor: run directories from the store,
    `num_gpus` per cell id (1 by default), each log line printed with the time and appended to `log`."""
    launches = {
        status.id: CellLaunch(
            cell_id=status.id, num_gpus=(num_gpus or {}).get(status.id, 1), run_dir=Path(".")
        )
        for status in cell_statuses(store, study_id)
    }
    lines = log if log is not None else []

    def record(message: str) -> None:
        lines.append(message)
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    return StudyLoop(store, study_id, launches, executor=executor, pool=pool, options=options, log=record)


class FakeNvml:
    """pynvml's functions over a made-up machine; `foreign` maps a GPU index to pids running on it."""

    def __init__(self, num_gpus: int, foreign: dict[int, list[int]] | None = None):
        self.num_gpus = num_gpus
        self.processes = {index: list((foreign or {}).get(index, [])) for index in range(num_gpus)}

    def nvmlDeviceGetCount(self):
        return self.num_gpus

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetUUID(self, handle):
        return f"GPU-{handle:08x}-0000-0000-0000-000000000000"

    def nvmlDeviceGetName(self, handle):
        return b"NVIDIA H100 80GB HBM3" if handle == 0 else "NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(total=80 << 30, used=(1 << 30) * len(self.processes[handle]))

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        return [SimpleNamespace(pid=pid, usedGpuMemory=1 << 30) for pid in self.processes[handle]]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("db", type=Path)
    parser.add_argument("study")
    parser.add_argument("--fake", type=Path, help="a fake-trainer plan: run the fake trainer")
    parser.add_argument("--max-attempts", type=int, default=3)
    args = parser.parse_args()
    store = open_store(args.db)
    study = get_study(store, args.study)
    assert study is not None and study.id is not None
    python = fake_python(args.db.parent) if args.fake else None
    options = LoopOptions(poll_s=0.1, heartbeat_s=1.0, max_attempts=args.max_attempts)
    with StudyLock(lock_path(store, study.name), study.name):
        loop = make_loop(store, study.id, python=python, plan=args.fake, options=options)
        print(f"runner pid {os.getpid()}", flush=True)
        interrupted = loop.run()
    return 130 if interrupted else 0


def wait_for(predicate, *, timeout_s: float, what: str, interval_s: float = 0.1):
    """Poll until `predicate()` is truthy; its value, or AssertionError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def kill9(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
