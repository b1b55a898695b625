"""`nanostudy plan`, `nanostudy run`, `nanostudy status` and `nanostudy cancel`.

    nanostudy plan studies/isoflop.yaml [--db URL] [--json]
    nanostudy run studies/isoflop.yaml [--db URL] [--runs-dir DIR] [--gpus 0,2,3] [--max-parallel N]
                                       [--rerun failed|diverged|cancelled] [--launcher auto|torchrun]
                                       [--executor local|slurm]
    nanostudy status studies/isoflop.yaml [--json]
    nanostudy cancel studies/isoflop.yaml [--cell ID]

`plan` prints the cells the study would train, with their numbers and an ETA, and changes nothing: it
reads the store (for the cells' states and this machine's measured speed) only when the database exists.
`run` loads and plans the study, prepares its data (once: a second run finds it prepared), records the
study and its cells (cells already in the database keep their state), then runs the loop of `runner.run`
until every cell is finished, and prints a summary table. It exits 0 only when every cell of the study is
done; 130 when stopped by Ctrl-C or SIGTERM (the trainers checkpoint; run it again to resume); 2 for an
invalid study or option; 1 otherwise. STUDY for `status` and `cancel` is the study file, or the study's name
with `--db`.
"""

import argparse
import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from runner.api import CellProgress, StudyStatus, UnknownStudyError, cancel, open_study, rerun, study_status
from runner.executor import LocalExecutor
from runner.gpus import GpuListError, GpuPool, load_nvml, parse_gpu_list
from runner.lock import StudyLock, StudyLockedError, lock_path
from runner.slurm.commands import SlurmError
from store import (
    CellMode,
    CellState,
    NewCell,
    Store,
    StoreNotFoundError,
    cell_states,
    default_db_path,
    get_study,
    move_run_dirs,
    open_store,
    record_study,
    studies_of_cell,
)

if TYPE_CHECKING:
    from runner.study import Study

RERUN_CHOICES = ("failed", "diverged", "cancelled")


@dataclass(frozen=True, kw_only=True, slots=True)
class RunResult:
    study_name: str
    interrupted: bool
    all_done: bool

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 0 if self.all_done else 1


def _check_same_file(store: Store, study: "Study", path: Path) -> None:
    """StudyError when the database has a study of this name recorded from another study file that still
    exists: a copy of a study file, edited but not renamed, would otherwise run as the same study, its
    cells mixed with the original's in the status and the report. A study file that moved (the recorded
    one is gone) takes the study over."""
    from runner.study import StudyError

    recorded = get_study(store, study.name)
    if recorded is None or not recorded.path:
        return
    other = Path(recorded.path)
    if not other.is_file() or other.resolve() == path.resolve():
        return
    raise StudyError(
        [
            study.problem(
                "name",
                f"{study.name!r} is the name of the study in {store.name} recorded from {other}, which still "
                "exists: give this file a name of its own (or move that file away to go on with the study "
                "from this one)",
            )
        ]
    )


def run_study(
    study_path: Path,
    *,
    db: str | None = None,
    runs_dir: Path | None = None,
    gpus: tuple[int, ...] | None = None,
    max_parallel: int | None = None,
    rerun_states: frozenset[CellState] = frozenset(),
    launcher: str = "auto",
    executor: str | None = None,
    data_root: Path | None = None,
    nvml: object | None = "auto",
    trainer_env: dict[str, str] | None = None,
    log=print,
) -> tuple[RunResult, Store]:
    """Plan, record and run the study; the caller prints the summary from the returned store.

    `executor` overrides the study's resources.executor. `nvml`: "auto" loads NVML (none found: the CPU);
    tests pass a fake, or None for the CPU. With executor slurm, the cluster is checked (runner.slurm.
    preflight) before anything is recorded or submitted; SlurmError says what is wrong."""
    from runner.data.commands import default_data_root
    from runner.eval_commands import ensure_bundles
    from runner.plan import UNPREPARED, plan
    from runner.run import CellLaunch, LoopOptions, StudyLoop
    from runner.study import GAUNTLET_KEYS, load

    study = load(study_path, executor=executor)
    # Absolute: a trainer runs in its run directory, and the store keeps these paths for later commands.
    runs_root = (
        Path(runs_dir).resolve() if runs_dir else Path(study_path).resolve().parent / "runs" / study.name
    )
    if study.resources.executor == "slurm":
        cell_executor, pool = _slurm_executor(study, runs_root, trainer_env=trainer_env, log=log)
    else:
        cell_executor, pool = None, None
    data_root = writable_dir(data_root or default_data_root(), "--data-root")
    store = open_store(db or default_db_path(study_path))
    with StudyLock(lock_path(store, study.name), study.name):
        _check_same_file(store, study, Path(study_path))
        data_dirs = prepare_data(study, root=data_root, log=log)
        planned = plan(study, data_dirs=data_dirs)
        for warning in planned.warnings:
            log(f"warning: {warning}")
        ensure_bundles([cell.config for cell in planned.cells], log=log)
        cells = [new_cell(cell, runs_root) for cell in planned.cells]
        # One transaction: a study whose cells cannot be recorded is not recorded either.
        record, added, left_out = record_study(
            store, name=study.name, path=str(Path(study_path).resolve()), spec=study.to_dict(), cells=cells
        )
        assert record.id is not None
        log(f"study {study.name}: {len(cells)} cells ({added} new); database {store.name}")
        if left_out:
            log(
                f"{left_out} cell(s) that an earlier version of the study file planned are no longer in its "
                "plan: left out of its status, report and fits (their results stay in the database, and "
                "come back if the file plans them again)"
            )
        # A cell never tried takes this run's directory; one with attempts keeps its checkpoints' directory.
        kept = move_run_dirs(store, {cell.id: cell.run_dir for cell in cells if cell.run_dir})
        if kept and runs_dir:
            log(
                f"warning: {len(kept)} of {len(cells)} cell(s) keep their run directory from an earlier run "
                f"(they were tried there; their checkpoints are there), not {runs_root}"
            )
        _log_shared(store, study.name, cells, log)
        planned_ids = {cell.id for cell in cells}
        moved = rerun(store, record.id, set(rerun_states), only=planned_ids) if rerun_states else []
        if moved:
            log(f"--rerun: {len(moved)} cell(s) back to pending")
        if cell_executor is None:
            cell_executor = LocalExecutor(launcher=launcher, env=trainer_env)
            pool = GpuPool(
                nvml=load_nvml() if nvml == "auto" else nvml,
                restrict=gpus,
                visible_devices=None if gpus else os.environ.get("CUDA_VISIBLE_DEVICES"),
            )
            log(f"devices: {pool.describe()}")
        loop = StudyLoop(
            store,
            record.id,
            {
                cell.id: CellLaunch(
                    cell_id=cell.id,
                    num_gpus=cell.gpus,
                    run_dir=runs_root / cell.id,
                    gauntlet={key: cell.config["eval"][key] for key in GAUNTLET_KEYS},
                    init_from=cell.config["init_from"]
                    if cell.mode == "mid-training" and not cell.parent_id
                    else None,
                    train_dir=None
                    if cell.config["data"]["train_dir"] == UNPREPARED
                    else cell.config["data"]["train_dir"],
                )
                for cell in planned.cells
            },
            executor=cell_executor,
            pool=pool,
            options=LoopOptions(
                max_parallel=study.resources.max_parallel if max_parallel is None else max_parallel,
                max_attempts=study.retry.max_attempts,
                rerun_diverged=study.retry.rerun_diverged,
                overlap_startup=study.resources.overlap_startup,
            ),
            fresh_budget=frozenset(moved),
            log=log,
        )
        interrupted = loop.run()
    status = study_status(store, study.name)
    ids = {cell.id for cell in planned.cells}
    all_done = all(cell.state == CellState.DONE.value for cell in status.cells if cell.id in ids)
    return RunResult(study_name=study.name, interrupted=interrupted, all_done=all_done), store


def writable_dir(path: Path, option: str) -> Path:
    """`path`, made if missing; ValueError naming the option and the path when it cannot hold files."""
    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"{option} {path}: cannot be created ({error.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {path}: not writable")
    return path


def _log_shared(store: Store, study_name: str, cells: list[NewCell], log) -> None:
    """Say which of the study's cells other studies planned too: their results are shared, not retrained."""
    shared: dict[str, int] = {}
    for cell in cells:
        for other in studies_of_cell(store, cell.id, planned_only=True):  # not studies that dropped it
            if other != study_name:
                shared[other] = shared.get(other, 0) + 1
    done = sum(state is CellState.DONE for state in cell_states(store, [cell.id for cell in cells]).values())
    for other, count in shared.items():
        log(f"study {study_name}: {count} cell(s) shared with study {other} (same config, trained once)")
    if shared and done:
        log(f"study {study_name}: {done} cell(s) already done")


def _slurm_executor(study, runs_root: Path, *, trainer_env: dict[str, str] | None, log):
    """The Slurm executor for the study, after the checks that must pass before anything is submitted; no
    GPU pool (the cluster's queue places the jobs)."""
    from runner.slurm.executor import SlurmExecutor
    from runner.slurm.preflight import check_cluster

    settings = study.resources.slurm
    for warning in check_cluster(settings, runs_dir=runs_root, problem=study.problem):
        log(f"warning: {warning}")
    executor = SlurmExecutor(settings, env=trainer_env)
    device = "GPU" if settings.gpus_per_node else "CPU"
    nodes = f"{settings.nodes} node(s) × {settings.processes_per_node} {device} process(es)"
    log(f"devices: Slurm cluster {executor.host}, {nodes} per cell")
    return executor, None


def prepare_data(
    study, *, root: Path, log, progress: bool | None = None, num_workers: int | None = None
) -> dict[str, Path]:
    """Prepare the study's data once (a prepared directory is found again): {stage: data directory}."""
    from runner.data.prepare import prepare
    from runner.study import mid_training_data

    dirs: dict[str, Path] = {}
    progress = sys.stderr.isatty() if progress is None else progress
    options = dict(root=root, progress=progress, num_workers=num_workers)
    if study.data is not None:
        dirs["pretraining"] = _prepared(prepare(study.data, **options), log)
    if study.mid_training is not None:
        config = mid_training_data(study, pretraining_data_dir=dirs.get("pretraining"))
        dirs["mid-training"] = _prepared(prepare(config, **options), log)
    return dirs


def _prepared(result, log) -> Path:
    log(f"{result.status}: {result.data_dir}")
    return Path(result.data_dir)


def new_cell(cell, runs_root: Path) -> NewCell:
    """The store's record of a planned cell."""
    axes = dict(cell.axes)
    return NewCell(
        id=cell.id,
        mode=CellMode(cell.mode),
        parent_cell_id=cell.parent_id,
        depth=int(axes["depth"]),
        flops_budget=float(axes["flops"]),
        seed=int(axes["seed"]),
        num_params=cell.num_params,
        num_tokens=cell.num_tokens,
        flops_per_token=cell.flops_per_token,
        steps_total=cell.num_steps,
        config=cell.config,
        axes=axes,
        run_dir=str(runs_root / cell.id),
    )


# -- planning ---------------------------------------------------------------------------------------------


def plan_study(study_path: Path, *, db: str | None = None, data_root: Path | None = None):
    """The plan `nanostudy run` would make now, and each cell's state in the store ("new" if absent).

    Uses the prepared data when it exists (vocabulary and epochs from its manifest) and never prepares;
    the ETA uses the speed finished cells reached on this machine's device when the store has any."""
    from runner.data.commands import default_data_root
    from runner.data.prepare import find_prepared
    from runner.plan import local_device, measured_throughput, plan
    from runner.study import load, mid_training_data

    study = load(study_path)
    root = data_root or default_data_root()
    data_dirs: dict[str, Path] = {}
    if study.data is not None and (found := find_prepared(study.data, root=root)) is not None:
        data_dirs["pretraining"] = found
    if study.mid_training is not None:
        try:
            config = mid_training_data(study, pretraining_data_dir=data_dirs.get("pretraining"))
        except ValueError:  # mode all, pretraining data not prepared: its tokenizer is not known yet
            config = None
        if config is not None and (found := find_prepared(config, root=root)) is not None:
            data_dirs["mid-training"] = found
    device = local_device(study)
    store = None
    db_path = db or default_db_path(study_path)
    if "://" in str(db_path) or Path(db_path).is_file():
        # A runner may be creating it this moment: nothing recorded yet.
        with contextlib.suppress(StoreNotFoundError):
            store = open_store(db_path, create=False)
    if store is None:
        planned = plan(study, data_dirs=data_dirs, measured=device)
        return planned, dict.fromkeys((cell.id for cell in planned.cells), "new")
    with store:
        planned = plan(study, data_dirs=data_dirs, measured=measured_throughput(store, device))
        # By cell id, not through the study: a cell another study planned (and maybe trained) is shared.
        states = cell_states(store, [cell.id for cell in planned.cells])
    return planned, {cell.id: states[cell.id].value if cell.id in states else "new" for cell in planned.cells}


def format_plan(planned, states: dict[str, str], *, num_devices: int = 1) -> str:
    """The plan as a table, then totals and warnings."""
    header = (
        "cell", "mode", "depth", "width", "params N", "tokens D", "FLOPs C", "tok/param", "steps", "epochs",
        "gpus", "time", "state",
    )  # fmt: skip
    rows = [header]
    for cell in planned.cells:
        rows.append(
            (
                cell.id,
                "mid" if cell.mode == "mid-training" else "pre",
                str(cell.axes["depth"]),
                str(cell.width),
                _si(cell.num_params),
                _si(cell.num_tokens),
                f"{cell.flops:.2e}",
                f"{cell.tokens_per_param:.1f}",
                str(cell.num_steps),
                "?" if cell.epochs is None else f"{cell.epochs:.2f}",
                "-" if planned.device_type == "cpu" else str(cell.gpus),
                _duration(cell.eta_s),
                states.get(cell.id, "new"),
            )
        )
    lines = _table(rows)
    todo = [cell for cell in planned.cells if states.get(cell.id) != CellState.DONE.value]
    if planned.device_type == "cpu":
        wall_s, where = sum(cell.eta_s for cell in todo), "one cell at a time on the CPU"
    else:
        wall_s = sum(cell.eta_s * cell.gpus for cell in todo) / max(num_devices, 1)
        where = f"on {num_devices} GPU(s)"
    measured = sum(cell.eta_measured for cell in planned.cells)
    basis = (
        f"{measured} of {len(planned.cells)} cells at the speed their shape reached on this machine"
        if measured
        else "at an assumed speed: no cell of these shapes has finished on this machine yet"
    )
    lines.append(
        f"study {planned.study.name} ({planned.study.mode}): {len(planned.cells)} cells, "
        f"{planned.total_flops:.2e} FLOPs, {planned.device_hours:.2f} device-hours; "
        f"{len(todo)} to train, about {_duration(wall_s)} {where} ({basis})"
    )
    unprepared = [stage for stage, ready in planned.prepared.items() if not ready]
    if unprepared:
        lines.append(
            f"data not prepared yet ({', '.join(unprepared)}): epochs unknown; `nanostudy run` prepares it"
        )
    lines += [f"warning: {warning}" for warning in planned.warnings]
    return "\n".join(lines)


def _si(number: float) -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(number) >= scale:
            return f"{number / scale:.3g}{suffix}"
    return f"{number:.3g}"


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


# -- printing ---------------------------------------------------------------------------------------------


def format_status(status: StudyStatus) -> str:
    """The summary table: one line per cell, then the counts."""
    header = ("cell", "mode", "depth", "flops", "seed", "state", "step", "val_bpb", "tries", "eta")
    lines = _table([header] + [_row(cell) for cell in status.cells])
    counts = ", ".join(f"{n} {state}" for state, n in status.counts.items() if n)
    eta = f"; ETA {_duration(status.eta_s)}" if status.eta_s else ""
    lines.append(
        f"study {status.name}: {len(status.cells)} cells: {counts}; {status.fraction_done:.0%} of FLOPs{eta}"
    )
    for cell in status.cells:
        if cell.state in ("failed", "diverged") and cell.reason:
            lines.append(f"  {cell.id} {cell.state}: {cell.reason.splitlines()[0]}")
    return "\n".join(lines)


def _row(cell: CellProgress) -> tuple[str, ...]:
    return (
        cell.id,
        "mid" if cell.mode == CellMode.MID_TRAINING.value else "pre",
        str(cell.depth),
        f"{cell.flops:.1e}",
        str(cell.seed),
        cell.state,
        f"{cell.step}/{cell.steps_total}",
        "-" if cell.val_bpb is None else f"{cell.val_bpb:.4f}",
        str(cell.attempts),
        _duration(cell.eta_s) if cell.eta_s is not None else "-",
    )


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- commands ---------------------------------------------------------------------------------------------


def _cmd_run(args) -> int:
    from runner.study import StudyError

    rerun_states = frozenset(CellState(state) for state in args.rerun or ())
    try:
        gpus = parse_gpu_list(args.gpus) if args.gpus is not None else None
        result, store = run_study(
            Path(args.study),
            db=args.db,
            runs_dir=args.runs_dir,
            gpus=gpus,
            max_parallel=args.max_parallel,
            rerun_states=rerun_states,
            launcher=args.launcher,
            executor=args.executor,
            data_root=args.data_root,
            log=_log,
        )
    except StudyError as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        return 2
    except (StudyLockedError, SlurmError) as error:
        print(f"nanostudy run: {error}", file=sys.stderr)
        return 2
    except ValueError as error:
        print(f"nanostudy run: error: {error}", file=sys.stderr)
        return 2
    with store:
        print(format_status(study_status(store, result.study_name)))
    if result.interrupted:
        print("stopped: run the same command again to resume")
    return result.exit_code


def _cmd_plan(args) -> int:
    from runner.study import StudyError

    try:
        planned, states = plan_study(Path(args.study), db=args.db, data_root=args.data_root)
    except StudyError as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        return 2
    except ValueError as error:
        print(f"nanostudy plan: error: {error}", file=sys.stderr)
        return 2
    if args.json:
        out = planned.to_dict()
        for cell in out["cells"]:
            cell["state"] = states[cell["id"]]
        print(json.dumps(out, indent=1))
        return 0
    num_devices = 1
    if planned.device_type == "cuda":
        try:
            num_devices = len(GpuPool(nvml=load_nvml(), restrict=None, visible_devices=None).usable) or 1
        except GpuListError as error:  # the plan itself is still right; its ETA assumes one GPU
            print(f"nanostudy plan: warning: {error}; the ETA assumes one GPU", file=sys.stderr)
    print(format_plan(planned, states, num_devices=num_devices))
    return 0


def _resolve(study: str, db: str | None) -> tuple[Store, str]:
    """STUDY as a study file (its name, its database unless --db) or as a study name (needs --db, or a
    nanostudy.db in the current directory)."""
    return open_study(study, db)


def _cmd_status(args) -> int:
    try:
        store, name = _resolve(args.study, args.db)
        with store:
            status = study_status(store, name)
    except (UnknownStudyError, FileNotFoundError, ValueError) as error:
        print(f"nanostudy status: error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(status.to_json(), indent=1))
    else:
        print(format_status(status))
        if status.runner_active:
            print("a runner is running this study")
    return 0


def _cmd_cancel(args) -> int:
    try:
        store, name = _resolve(args.study, args.db)
        with store:
            result = cancel(store, name, cell_id=args.cell, wait_s=args.wait)
    except (UnknownStudyError, FileNotFoundError, ValueError, SlurmError) as error:
        print(f"nanostudy cancel: error: {error}", file=sys.stderr)
        return 2
    if result.cancelled:
        print(f"cancelled {len(result.cancelled)} pending cell(s)")
    if result.stopping:
        who = "stopped here" if result.stopped_here else "the runner stops their trainers"
        print(f"cancelled {len(result.stopping)} running cell(s) ({who})")
    if result.unplanned_stopped:
        print(
            f"stopped {len(result.unplanned_stopped)} trainer(s) of cells the study file no longer plans "
            f"(they checkpoint and stay pending): {', '.join(result.unplanned_stopped)}"
        )
    if result.still_running:
        print(
            f"{len(result.still_running)} trainer(s) still stopping after {args.wait:g} s: "
            f"{', '.join(result.still_running)}; `nanostudy status` shows when they end"
        )
    if not result.cancelled and not result.stopping and not result.unplanned_stopped:
        print("nothing to cancel (every cell is finished)")
    return 0


def positive_int(text: str) -> int:
    """argparse type for counts that must be at least 1 (checked before anything runs)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def register(subparsers) -> None:
    plan_parser = subparsers.add_parser(
        "plan",
        help="the cells a study would train: N, D, C, steps, epochs, ETA (runs nothing)",
        description="Expand the study into cells and print their numbers and an ETA; changes nothing.",
    )
    plan_parser.add_argument("study", help="the study file (YAML)")
    plan_parser.add_argument("--db", help="database file or URL (default: nanostudy.db beside the study)")
    plan_parser.add_argument("--data-root", type=Path, dest="data_root", help="where prepared data lives")
    plan_parser.add_argument("--json", action="store_true", help="the plan as one JSON object")
    plan_parser.set_defaults(func=_cmd_plan)

    run = subparsers.add_parser(
        "run",
        help="plan the study and train every cell on the free GPUs (or the CPU)",
        description="Plan, record and train a study until every cell is finished; safe to stop and rerun.",
    )
    run.add_argument("study", help="the study file (YAML)")
    run.add_argument("--db", help="database file or URL (default: nanostudy.db beside the study)")
    run.add_argument("--runs-dir", type=Path, dest="runs_dir", help="run directories (default: runs/<study>)")
    run.add_argument("--gpus", help="GPU indices to use, e.g. 0,2,3 (default: every free GPU)")
    run.add_argument(
        "--max-parallel", type=positive_int, dest="max_parallel", help="cells at once (at least 1)"
    )
    run.add_argument(
        "--rerun",
        action="append",
        choices=RERUN_CHOICES,
        help="move cells in this state back to pending first (repeatable)",
    )
    run.add_argument(
        "--launcher",
        choices=("auto", "torchrun"),
        default="auto",
        help="auto: plain python for one process per cell, torchrun for several; torchrun: always",
    )
    run.add_argument(
        "--executor",
        choices=("local", "slurm"),
        help="where cells train: this machine, or Slurm batch jobs (default: the study's resources.executor)",
    )
    run.add_argument("--data-root", type=Path, dest="data_root", help="where prepared data lives")
    run.set_defaults(func=_cmd_run)

    status = subparsers.add_parser("status", help="cells, progress and ETA of a study")
    status.add_argument("study", help="the study file, or the study's name with --db")
    status.add_argument("--db", help="database file or URL")
    status.add_argument("--json", action="store_true", help="one JSON object")
    status.set_defaults(func=_cmd_status)

    cancel_parser = subparsers.add_parser("cancel", help="cancel a study's pending and running cells")
    cancel_parser.add_argument("study", help="the study file, or the study's name with --db")
    cancel_parser.add_argument("--db", help="database file or URL")
    cancel_parser.add_argument("--cell", help="only this cell")
    cancel_parser.add_argument(
        "--wait", type=float, default=60.0, help="seconds to wait for a trainer this command stops"
    )
    cancel_parser.set_defaults(func=_cmd_cancel)
