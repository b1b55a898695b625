"""What a study costs beyond training: per-cell overhead and the GPU-busy fraction of `nanostudy run`.

    python -m benchmarks.study_overhead [--depths 6,8,10,12] [--flops 4e15,8e15] [--json out.json]
    python -m benchmarks.study_overhead --flops 1.4e16,1.5e16,1.6e16,1.7e16,1.2e17 --seeds 0,1 \
        --grid-depth "{1.4e16: [6], 1.5e16: [6], 1.6e16: [6], 1.7e16: [6], 1.2e17: [12]}" \
        --gpus-per-cell "{6: 1, 12: 4}" --max-bytes 600MB   # 8 one-GPU, 2 four-GPU cells on 8 GPUs

Writes a study of small cells (offline: python-source data, a BPE trained on it), prepares its data first
(timed apart: it happens once per study), then runs `nanostudy run` on it as a user would and reads the
database and every cell's events afterwards. For each attempt of each cell:

- train: pure training seconds, from the trainer's own `step` events: the sum of step_s less the part of
  the first steps above the median step (that excess is compilation and warm-up);
- start: the attempt's start (the runner's fork) to the trainer's `start` event: interpreter, imports,
  CUDA initialisation, model build, data, the micro-batch probe (the trainer times its own phases in the
  event's `setup_s`; their means are printed, and the rest of start is the interpreter and imports);
- compile: that excess of the first steps over the median step;
- final: the last step event to the `end` event: the final validation and checkpoint;
- exit: the `end` event to the attempt's end as the runner recorded it (process exit, the runner's poll);
- gap: how long the cell's GPUs sat free before it started: its start less the latest end of an earlier
  attempt on any of its GPUs (the runner choosing and launching the next cell); 0 for a GPU's first cell;
- standby: how long it set up beside an earlier attempt still training on its GPUs (the study's
  resources.overlap_startup): its start to that attempt's end. This part of its start costs no GPU time.

overhead = the attempt's own GPU time (its wall time less its standby) − train, plus the gap before it (a
cell's every attempt counts toward its overhead). GPU-busy = Σ (train × the cell's GPUs) / (GPUs used × study
wall), where the study wall runs from the first attempt's start to the last attempt's end of each runner
session (a study stopped and resumed over several `nanostudy run` commands: the pause between them is not
counted) and GPUs used are the distinct GPUs the attempts ran on (1 on the CPU). `--analyze DB --study NAME
--runs-dir DIR` measures a study that has already run, without running anything. `--gpus-per-cell` and
`--grid-depth` (YAML, as in a study file) make a study of cells of several sizes, e.g. one-GPU and four-GPU
cells together (the second command above). Targets (issue): ≤ 10 s of overhead per cell, ≥ 85% busy.
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

STUDY = """\
name: overhead
data:
  source: {{name: python-source, max_bytes: {max_bytes}}}
  tokenizer: bpe:{vocab}
  tokenizer_train_bytes: 20MB
grid:
  depth: {depths}
  flops: [{flops}]
  seed: [{seeds}]
model:
  sequence_len: {seq_len}
train:
  total_batch_tokens: {batch}
  compile: {compile}
eval:
  every_steps: null
  val_tokens: {val_tokens}
resources:
  gpus_per_cell: {gpus_per_cell}
  overlap_startup: {overlap}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="6,8,10,12")
    parser.add_argument("--flops", default="4e15,8e15")
    parser.add_argument("--seeds", default="0")
    parser.add_argument(
        "--grid-depth", help="grid.depth as YAML, e.g. '{1e16: [6], 6e16: [6, 12]}'; overrides --depths"
    )
    parser.add_argument(
        "--gpus-per-cell", default="1", help="resources.gpus_per_cell as YAML: 1, auto, '{6: 1, 12: 4}'"
    )
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument(
        "--no-overlap",
        action="store_true",
        help="resources.overlap_startup: false (a GPU's next cell starts only once its current one exits)",
    )
    parser.add_argument("--batch", type=int, default=262144, help="total batch tokens")
    parser.add_argument(
        "--compile",
        default="auto",
        choices=("auto", "true", "blocks"),
        help="train.compile (blocks: regional; auto, the default, picks per cell)",
    )
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--max-bytes", default="100MB")
    parser.add_argument("--val-tokens", type=int, default=1048576)
    parser.add_argument("--workdir", type=Path, help="default: a temporary directory")
    parser.add_argument("--json", type=Path, help="also write the per-cell numbers here")
    parser.add_argument(
        "--analyze", type=Path, metavar="DB", help="run nothing: measure a study already in this database"
    )
    parser.add_argument("--study", help="with --analyze: the study's name")
    parser.add_argument("--runs-dir", type=Path, help="with --analyze: its run directories")
    args = parser.parse_args()
    if args.analyze is not None:
        if not (args.study and args.runs_dir):
            parser.error("--analyze needs --study and --runs-dir")
        report(args.analyze, args.study, args.runs_dir, json_path=args.json)
        return

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="nanostudy-overhead-"))
    workdir.mkdir(parents=True, exist_ok=True)
    study = workdir / "overhead.yaml"
    study.write_text(
        STUDY.format(
            max_bytes=args.max_bytes,
            vocab=args.vocab,
            depths=args.grid_depth or f"[{', '.join(args.depths.split(','))}]",
            flops=", ".join(args.flops.split(",")),
            seeds=", ".join(args.seeds.split(",")),
            gpus_per_cell=args.gpus_per_cell,
            overlap="false" if args.no_overlap else "true",
            seq_len=args.seq_len,
            batch=args.batch,
            val_tokens=args.val_tokens,
            compile=args.compile,
        )
    )
    cli = [sys.executable, "-m", "runner.cli"]
    data_root = ["--data-root", str(workdir / "data")]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.time()
    subprocess.run(
        [*cli, "prepare", str(study), "--root", str(workdir / "data")], check=True, cwd=ROOT, env=env
    )
    prepare_s = time.time() - t0
    subprocess.run([*cli, "plan", str(study), *data_root], check=True, cwd=ROOT, env=env)
    t0 = time.time()
    code = subprocess.run([*cli, "run", str(study), *data_root], cwd=ROOT, env=env).returncode
    command_s = time.time() - t0
    if code != 0:
        raise SystemExit(f"nanostudy run exited {code}; see {workdir}")
    report(
        workdir / "nanostudy.db",
        "overhead",
        workdir / "runs" / "overhead",
        prepare_s=prepare_s,
        command_s=command_s,
        json_path=args.json,
    )


def cell_numbers(attempt, events: list[dict]) -> dict:
    """One attempt's numbers from its own events (those from its `start` on). An attempt stopped or
    crashed before its `end` has no final or exit time; one stopped before its `start`, no train time."""
    start = next((e for e in events if e["kind"] == "start"), None)
    steps = [e for e in events if e["kind"] == "step"]
    end = next((e for e in events if e["kind"] == "end"), None)
    step_s = [e["step_s"] for e in steps]
    median = statistics.median(step_s) if step_s else 0.0
    compile_s = sum(max(0.0, s - median) for s in step_s[:5])
    steady = steps[5:] or steps
    # A device whose peak the trainer does not know (the CPU, a GPU not in its table) has no MFU: "-", not 0%.
    mfus = [e["mfu"] for e in steady if e.get("mfu") is not None]
    return {
        "steps": len(steps),
        "step_s": median,
        "train_s": sum(step_s) - compile_s,
        "start_s": start["time"] - attempt.started_at if start else None,
        "compile_s": compile_s,
        "final_s": end["time"] - steps[-1]["time"] if end and steps else None,
        "exit_s": attempt.ended_at - end["time"] if end else None,
        "wall_s": attempt.ended_at - attempt.started_at,
        "tok_per_s": statistics.median(e["tok_per_s"] for e in steady) if steady else None,
        "mfu": statistics.median(mfus) if mfus else None,
        "device_batch": start["device_batch_size"] if start else None,
        # the trainer's own set-up phases (absent from events older than the field), and before them the
        # interpreter and imports: the rest of start_s
        "setup_s": start.get("setup_s") if start else None,
    }


def read_events_file(path: Path) -> list[dict]:
    """A cell's events; none when its trainer never got as far as writing one (a study stopped early)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _events_of(attempt, segments: list[list[dict]]) -> list[dict]:
    """The events of the attempt: the segment (a `start` and what follows it) that began during it."""
    ended = attempt.ended_at if attempt.ended_at is not None else math.inf
    return next((seg for seg in segments if attempt.started_at <= seg[0]["time"] <= ended), [])


def _segments(events: list[dict]) -> list[list[dict]]:
    """The events split at each `start` (one segment per attempt that got as far as starting)."""
    segments: list[list[dict]] = []
    for event in events:
        if event["kind"] == "start":
            segments.append([])
        if segments:
            segments[-1].append(event)
    return segments


def summarize(store, study_name: str, runs_dir: Path) -> dict:
    """Every attempt's numbers and the study's: wall, training, GPUs used, GPU-busy.

    A study run over several `nanostudy run` commands (stopped, then resumed) is a series of sessions: a
    session ends with the attempts the runner stopped on its way out, and the study wall is the sum of the
    sessions' walls (first start to last end of each), so the time between commands is not counted; nor is
    the gap before a session's first attempt.
    """
    from store import attempts_of, cell_statuses, get_study

    study = get_study(store, study_name)
    rows = []
    for status in cell_statuses(store, study.id):
        segments = _segments(read_events_file(runs_dir / status.id / "events.jsonl"))
        for number, attempt in enumerate(attempts_of(store, status.id), start=1):
            if attempt.ended_at is None:
                continue  # still running (or its runner died): nothing to measure yet
            rows.append({"cell": status.id, "attempt": number, "depth": status.depth,
                         "flops": status.flops_budget, "started_at": attempt.started_at,
                         "ended_at": attempt.ended_at, "stopped": _stopped_by_runner(attempt),
                         "gpus": attempt.gpus.split(",") if attempt.gpus else ["cpu"],
                         **cell_numbers(attempt, _events_of(attempt, segments))})  # fmt: skip
    rows.sort(key=lambda row: row["started_at"])
    session_walls = [
        max(r["ended_at"] for r in session) - min(r["started_at"] for r in session)
        for session in sessions_of(rows)
    ]
    wall_s = sum(session_walls)
    num_gpus = len({gpu for row in rows for gpu in row["gpus"]})
    return {
        "wall_s": wall_s,
        "session_walls_s": session_walls,
        "train_s": sum(row["train_s"] for row in rows),
        "num_gpus": num_gpus,
        "gpu_busy": sum(row["train_s"] * len(row["gpus"]) for row in rows) / (num_gpus * wall_s or math.inf),
        "cells": rows,
    }


def sessions_of(rows: list[dict]) -> list[list[dict]]:
    """The attempts (sorted by start) grouped by runner session, each given its gap (how long its GPUs sat
    free before it, in its session), its standby time (how long it set up while an earlier attempt still
    held its GPUs: resources.overlap_startup) and its overhead: the GPU time that was its own (from its
    start, or from the end of the attempt it waited for, to its end) less its training, plus the gap. The
    overheads and trainings of a GPU's attempts add up to its wall time."""
    last_end: dict[str, float] = {}  # GPU -> when the last attempt on it ended, in this session
    sessions: list[list[dict]] = [[]]
    stopped_at = None  # when the runner of this session stopped its trainers, once it has
    for row in rows:
        if stopped_at is not None and row["started_at"] >= stopped_at:  # the next command's attempts
            sessions.append([])
            last_end, stopped_at = {}, None
        sessions[-1].append(row)
        ends = [last_end[gpu] for gpu in row["gpus"] if gpu in last_end]
        before = max(ends) if ends else row["started_at"]
        row["gap_s"] = max(0.0, row["started_at"] - before)
        own_from = min(max(row["started_at"], before), row["ended_at"])
        row["standby_s"] = own_from - row["started_at"]
        row["overhead_s"] = row["ended_at"] - own_from - row["train_s"] + row["gap_s"]
        for gpu in row["gpus"]:
            last_end[gpu] = max(last_end.get(gpu, row["ended_at"]), row["ended_at"])
        if row["stopped"]:
            stopped_at = max(stopped_at or 0.0, row["ended_at"])
    return [session for session in sessions if session]


def _stopped_by_runner(attempt) -> bool:
    from runner.scheduler import STOPPED_BY_RUNNER

    return attempt.reason == STOPPED_BY_RUNNER


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def report(
    db: Path,
    study_name: str,
    runs_dir: Path,
    *,
    prepare_s: float | None = None,
    command_s: float | None = None,
    json_path: Path | None = None,
) -> None:
    sys.path.insert(0, str(ROOT))
    from store import open_store

    with open_store(db, create=False) as store:
        summary = summarize(store, study_name, runs_dir)
    rows, wall_s, train_s = summary["cells"], summary["wall_s"], summary["train_s"]
    num_gpus, busy = summary["num_gpus"], summary["gpu_busy"]
    on_cpu = all(row["gpus"] == ["cpu"] for row in rows)
    where = "the CPU" if on_cpu else f"{num_gpus} GPU(s)"

    print(f"\n{'cell':12} {'try':>3} {'d':>3} {'GPUs':>4} {'FLOPs':>8} {'steps':>6} {'tok/s':>10} {'MFU':>6} "
          f"{'train':>7} {'start':>6} {'standby':>7} {'compile':>7} {'final':>6} {'exit':>5} {'gap':>5} "
          f"{'overhead':>8}")  # fmt: skip
    for row in rows:
        print(
            f"{row['cell']:12} {row['attempt']:3d} {row['depth']:3d} {len(row['gpus']):4d} "
            f"{row['flops']:8.1e} {row['steps']:6d} {_num(row['tok_per_s'], '10,.0f')} "
            f"{_num(row['mfu'], '6.1%')} "
            f"{row['train_s']:7.1f} {_num(row['start_s'], '6.1f')} {row['standby_s']:7.1f} "
            f"{row['compile_s']:7.1f} "
            f"{_num(row['final_s'], '6.1f')} {_num(row['exit_s'], '5.1f')} {row['gap_s']:5.1f} "
            f"{row['overhead_s']:8.1f}"
        )
    num_cells = len({row["cell"] for row in rows})
    if not num_cells:
        print("no attempt has ended yet: nothing to measure")
        return
    mean = {key: statistics.mean([v for row in rows if (v := row[key]) is not None] or [math.nan]) for key in
            ("start_s", "standby_s", "compile_s", "final_s", "exit_s", "gap_s")}  # fmt: skip
    per_cell = sum(row["overhead_s"] for row in rows) / num_cells  # a cell's every attempt counts
    if prepare_s is not None:
        print(f"\ndata preparation (once per study, not counted below): {prepare_s:.1f} s")
    if command_s is not None:
        print(f"`nanostudy run` command: {command_s:.1f} s")
    sessions = " + ".join(f"{s:.1f}" for s in summary["session_walls_s"])
    print(f"study wall (first start to last end of each runner session): {sessions} = {wall_s:.1f} s")
    print(
        f"cells: {num_cells} ({len(rows)} attempts) on {where}; pure training {train_s:.1f} s; "
        f"GPU-busy {busy:.1%} (target >= 85%)"
    )
    print(
        f"mean overhead per cell {per_cell:.1f} s (target <= 10 s); per attempt: "
        f"start {mean['start_s']:.1f} (of which on standby beside another cell's training "
        f"{mean['standby_s']:.1f}), compile {mean['compile_s']:.1f}, "
        f"final val+checkpoint {mean['final_s']:.1f}, "
        f"exit {mean['exit_s']:.1f}, gap {mean['gap_s']:.1f}"
    )
    setups = [(row["start_s"], row["setup_s"]) for row in rows if row["setup_s"]]
    if setups:
        phases = {"interpreter and imports": [start - sum(setup.values()) for start, setup in setups]}
        for _, setup in setups:
            for name, seconds in setup.items():
                phases.setdefault(name, []).append(seconds)
        shown = ", ".join(f"{name} {statistics.mean(values):.1f}" for name, values in phases.items())
        print(f"start-up, mean of {len(setups)} attempts: {shown}")
    if json_path is not None:
        json_path.write_text(
            json.dumps({"prepare_s": prepare_s, "command_s": command_s, **summary}, indent=1)
        )


if __name__ == "__main__":
    main()
