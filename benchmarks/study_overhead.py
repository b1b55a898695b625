"""What a study costs beyond training: per-cell overhead and the GPU-busy fraction of `nanostudy run`.

    python -m benchmarks.study_overhead [--depths 6,8,10,12] [--flops 4e15,8e15] [--json out.json]
    python -m benchmarks.study_overhead --flops 1.4e16,1.5e16,1.6e16,1.7e16,1.2e17 --seeds 0,1 \
        --grid-depth "{1.4e16: [6], 1.5e16: [6], 1.6e16: [6], 1.7e16: [6], 1.2e17: [12]}" \
        --gpus-per-cell "{6: 1, 12: 4}" --max-bytes 600MB   # 8 one-GPU, 2 four-GPU cells on 8 GPUs

Writes a study of small cells (offline: python-source data, a BPE trained on it), prepares its data first
(timed apart: it happens once per study), then runs `nanostudy run` on it as a user would and reads the
database and every cell's events afterwards. For each cell:

- train: pure training seconds, from the trainer's own `step` events: the sum of step_s less the part of
  the first steps above the median step (that excess is compilation and warm-up);
- start: the attempt's start (the runner's fork) to the trainer's `start` event: interpreter, imports,
  CUDA initialisation, model build, data, the micro-batch probe;
- compile: that excess of the first steps over the median step;
- final: the last step event to the `end` event: the final validation and checkpoint;
- exit: the `end` event to the attempt's end as the runner recorded it (process exit, the runner's poll);
- gap: how long the cell's GPUs sat free before it started: its start less the latest end of an earlier
  attempt on any of its GPUs (the runner choosing and launching the next cell); 0 for a GPU's first cell.

overhead = the attempt's wall time − train, plus the gap before it. GPU-busy = Σ (train × the cell's GPUs)
/ (GPUs used × study wall), where the study wall runs from the first attempt's start to the last attempt's
end and GPUs used are the distinct GPUs the attempts ran on (1 on the CPU). `--gpus-per-cell` and
`--grid-depth` (YAML, as in a study file) make a study of cells of several sizes, e.g. one-GPU and four-GPU
cells together (the second command above). Targets (issue): ≤ 10 s of overhead per cell, ≥ 85% busy.
"""

import argparse
import json
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
eval:
  every_steps: null
  val_tokens: {val_tokens}
resources:
  gpus_per_cell: {gpus_per_cell}
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
    parser.add_argument("--batch", type=int, default=262144, help="total batch tokens")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--max-bytes", default="100MB")
    parser.add_argument("--val-tokens", type=int, default=1048576)
    parser.add_argument("--workdir", type=Path, help="default: a temporary directory")
    parser.add_argument("--json", type=Path, help="also write the per-cell numbers here")
    args = parser.parse_args()

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
            seq_len=args.seq_len,
            batch=args.batch,
            val_tokens=args.val_tokens,
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
    report(workdir, prepare_s=prepare_s, command_s=command_s, json_path=args.json)


def cell_numbers(attempt, events: list[dict]) -> dict:
    start = next(e for e in events if e["kind"] == "start")
    steps = [e for e in events if e["kind"] == "step"]
    end = next(e for e in events if e["kind"] == "end")
    step_s = [e["step_s"] for e in steps]
    median = statistics.median(step_s)
    compile_s = sum(max(0.0, s - median) for s in step_s[:5])
    return {
        "steps": len(steps),
        "step_s": median,
        "train_s": sum(step_s) - compile_s,
        "start_s": start["time"] - attempt.started_at,
        "compile_s": compile_s,
        "final_s": end["time"] - steps[-1]["time"],
        "exit_s": attempt.ended_at - end["time"],
        "wall_s": attempt.ended_at - attempt.started_at,
        "tok_per_s": statistics.median(e["tok_per_s"] for e in steps[5:] or steps),
        "mfu": statistics.median((e["mfu"] or 0.0) for e in steps[5:] or steps),
        "device_batch": start["device_batch_size"],
    }


def summarize(store, study_name: str, runs_dir: Path) -> dict:
    """Every cell's numbers (one attempt each) and the study's: wall, training, GPUs used, GPU-busy."""
    from store import attempts_of, cell_statuses, get_study

    study = get_study(store, study_name)
    rows = []
    for status in cell_statuses(store, study.id):
        [attempt] = attempts_of(store, status.id)
        lines = (runs_dir / status.id / "events.jsonl").read_text().splitlines()
        rows.append({"cell": status.id, "depth": status.depth, "flops": status.flops_budget,
                     "started_at": attempt.started_at, "ended_at": attempt.ended_at,
                     "gpus": attempt.gpus.split(",") if attempt.gpus else ["cpu"],
                     **cell_numbers(attempt, [json.loads(line) for line in lines])})  # fmt: skip
    rows.sort(key=lambda row: row["started_at"])
    last_end: dict[str, float] = {}  # GPU -> when the last attempt on it ended
    for row in rows:
        ends = [last_end[gpu] for gpu in row["gpus"] if gpu in last_end]
        row["gap_s"] = max(0.0, row["started_at"] - max(ends)) if ends else 0.0
        row["overhead_s"] = row["wall_s"] - row["train_s"] + row["gap_s"]
        last_end.update({gpu: row["ended_at"] for gpu in row["gpus"]})
    wall_s = max(row["ended_at"] for row in rows) - rows[0]["started_at"]
    num_gpus = len(last_end)
    return {
        "wall_s": wall_s,
        "train_s": sum(row["train_s"] for row in rows),
        "num_gpus": num_gpus,
        "gpu_busy": sum(row["train_s"] * len(row["gpus"]) for row in rows) / (num_gpus * wall_s),
        "cells": rows,
    }


def report(workdir: Path, *, prepare_s: float, command_s: float, json_path: Path | None) -> None:
    sys.path.insert(0, str(ROOT))
    from store import open_store

    with open_store(workdir / "nanostudy.db", create=False) as store:
        summary = summarize(store, "overhead", workdir / "runs" / "overhead")
    rows, wall_s, train_s = summary["cells"], summary["wall_s"], summary["train_s"]
    num_gpus, busy = summary["num_gpus"], summary["gpu_busy"]

    print(f"\n{'cell':12} {'d':>3} {'GPUs':>4} {'FLOPs':>8} {'steps':>6} {'tok/s':>10} {'MFU':>6} "
          f"{'train':>7} {'start':>6} {'compile':>7} {'final':>6} {'exit':>5} {'gap':>5} "
          f"{'overhead':>8}")  # fmt: skip
    for row in rows:
        print(
            f"{row['cell']:12} {row['depth']:3d} {len(row['gpus']):4d} {row['flops']:8.1e} {row['steps']:6d} "
            f"{row['tok_per_s']:10,.0f} {row['mfu']:6.1%} {row['train_s']:7.1f} {row['start_s']:6.1f} "
            f"{row['compile_s']:7.1f} "
            f"{row['final_s']:6.1f} {row['exit_s']:5.1f} {row['gap_s']:5.1f} {row['overhead_s']:8.1f}"
        )
    mean = {key: statistics.mean(row[key] for row in rows) for key in
            ("start_s", "compile_s", "final_s", "exit_s", "gap_s", "overhead_s")}  # fmt: skip
    print(f"\ndata preparation (once per study, not counted below): {prepare_s:.1f} s")
    print(f"`nanostudy run` command: {command_s:.1f} s; study wall (first start to last end): {wall_s:.1f} s")
    print(
        f"cells: {len(rows)} on {num_gpus} GPU(s); pure training {train_s:.1f} s; "
        f"GPU-busy {busy:.1%} (target >= 85%)"
    )
    print(
        f"mean overhead per cell {mean['overhead_s']:.1f} s (target <= 10 s): start {mean['start_s']:.1f}, "
        f"compile {mean['compile_s']:.1f}, final val+checkpoint {mean['final_s']:.1f}, "
        f"exit {mean['exit_s']:.1f}, gap {mean['gap_s']:.1f}"
    )
    if json_path is not None:
        json_path.write_text(
            json.dumps({"prepare_s": prepare_s, "command_s": command_s, **summary}, indent=1)
        )


if __name__ == "__main__":
    main()
