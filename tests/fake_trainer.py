"""A stand-in for `python -m nanogpt.train` that starts in milliseconds: the runner's loop tests use it to
play every way a trainer can end, with real processes, real signals and real events files.

Invoked as `fake_trainer.py -m nanogpt.train --config RUN_DIR/config.json` (the local executor's command
with this script as the interpreter). What it does comes from the JSON file named by FAKE_TRAINER_PLAN:
`{cell_id: [behaviour of attempt 1, of attempt 2, ...]}` (the last one repeats; a cell not listed is
"done"). It records its environment in RUN_DIR/env_attempt_N.json so tests can check what the runner set.

Behaviours: done, crash (steps, then an exception on stderr, exit 1, no end event), error (end error,
exit 1), diverged (end diverged, exit 3), bad_input (one line on stderr, exit 2, nothing written),
hang (steps until SIGTERM, then a checkpoint and exit 143, like the real trainer's stop), setting_up
(writes nothing and never steps: a trainer still importing torch, which a SIGTERM kills outright), slow
(like done, with FAKE_TRAINER_STEP_S (0.1) seconds per step, as its step events say, and a checkpoint every
5 steps), killed_at_final (steps, then its final checkpoint's directory and SIGKILL before the event naming
it), finished (a run already done, as the real trainer: an `end` if the file's last event is not one, exit 0).
Given GPU locks (nanogpt.gpu_lock), it "sets up" for FAKE_TRAINER_SETUP_S (0) seconds, then waits for its
lock before its start event, as the real trainer does; its start event's setup_s says how long it waited.
"""

import json
import os
import signal
import sys
import time
from pathlib import Path

from nanogpt.events import EventWriter, read_events
from nanogpt.gpu_lock import GpuLock

NUM_STEPS = 4
SLOW_STEPS = 40
SLOW_STEP_S = float(os.environ.get("FAKE_TRAINER_STEP_S", "0.1"))
SETUP_S = float(os.environ.get("FAKE_TRAINER_SETUP_S", "0"))


def main() -> int:
    config_path = Path(sys.argv[sys.argv.index("--config") + 1])
    run_dir = config_path.parent
    cell_id, attempt = os.environ["NANOSTUDY_ATTEMPT"].rsplit(":", 1)
    plan = (
        json.loads(Path(os.environ["FAKE_TRAINER_PLAN"]).read_text())
        if "FAKE_TRAINER_PLAN" in os.environ
        else {}
    )
    behaviours = plan.get(cell_id, ["done"])
    behaviour = behaviours[min(int(attempt), len(behaviours)) - 1]
    keys = (
        "CUDA_VISIBLE_DEVICES",
        "CUDA_DEVICE_ORDER",
        "OMP_NUM_THREADS",
        "NANOSTUDY_ATTEMPT",
        "SLURM_JOB_ID",
        "SLURMD_NODENAME",
    )
    (run_dir / f"env_attempt_{attempt}.json").write_text(json.dumps({k: os.environ.get(k) for k in keys}))
    if behaviour == "setting_up":
        time.sleep(600)
        return 1
    if behaviour == "finished":
        events_path = run_dir / "events.jsonl"
        last = read_events(events_path)[0][-1:]
        if not last or last[0]["kind"] != "end":
            with EventWriter(events_path) as events:
                events.write(
                    "end", status="done", message=None, **_counters(NUM_STEPS), val_loss=1.5, val_bpb=0.9
                )
        return 0
    if behaviour == "bad_input":
        print(f"error: {config_path}: train.num_steps: must be positive", file=sys.stderr)
        return 2

    setup_s = {}
    lock = GpuLock.from_env(0)
    if lock is not None:
        time.sleep(SETUP_S)
        waited = time.time()
        lock.acquire()
        setup_s["gpu_wait"] = time.time() - waited
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    with EventWriter(run_dir / "events.jsonl") as events:
        checkpoints = sorted((run_dir / "checkpoints").glob("step_*"))
        first = int(checkpoints[-1].name.split("_")[1]) if checkpoints else 0
        events.write("start", **_start_fields(config_path, first), setup_s=setup_s)
        step = first
        num_steps = SLOW_STEPS if behaviour == "slow" else NUM_STEPS
        while step < num_steps or behaviour == "hang":
            step += 1
            loss = None if behaviour == "diverged" else 3.0 / step
            events.write(
                "step",
                **_counters(step),
                loss=loss,
                lr=0.02,
                lr_frac=1.0,
                tok_per_s=1e4,
                mfu=None,
                step_s=SLOW_STEP_S if behaviour == "slow" else 0.01,
            )
            if behaviour == "diverged":
                events.write(
                    "end",
                    status="diverged",
                    message=f"training loss is nan at step {step}",
                    **_counters(step),
                    val_loss=None,
                    val_bpb=None,
                )
                return 3
            if behaviour == "crash" and step == 2:
                print(
                    "Traceback (most recent call last):\nRuntimeError: shard 0: checksum mismatch",
                    file=sys.stderr,
                    flush=True,
                )
                return 1
            if behaviour in ("hang", "slow"):
                time.sleep(SLOW_STEP_S if behaviour == "slow" else 0.05)
                if stop:
                    _checkpoint(events, run_dir, step, final=False, stopping=True)
                    return 143
                if behaviour == "slow" and step % 5 == 0 and step < num_steps:
                    _checkpoint(events, run_dir, step, final=False)
        if behaviour == "killed_at_final":
            (run_dir / "checkpoints" / f"step_{step:06d}").mkdir(parents=True)
            os.kill(os.getpid(), signal.SIGKILL)
        if behaviour == "error":
            events.write(
                "end",
                status="error",
                message="ValueError: bad things",
                **_counters(step),
                val_loss=None,
                val_bpb=None,
            )
            return 1
        events.write("val", **_counters(step), val_loss=1.5, val_bpb=0.9, val_tokens=64)
        _checkpoint(events, run_dir, step, final=True)
        events.write("end", status="done", message=None, **_counters(step), val_loss=1.5, val_bpb=0.9)
    return 0


def _counters(step: int) -> dict:
    return {"step": step, "tokens": 256 * step, "flops": 1e6 * step, "elapsed_s": 0.01 * step}


def _checkpoint(
    events: EventWriter, run_dir: Path, step: int, *, final: bool, stopping: bool = False
) -> None:
    path = run_dir / "checkpoints" / f"step_{step:06d}"
    path.mkdir(parents=True, exist_ok=True)
    relative = str(path.relative_to(run_dir))
    events.write("checkpoint", **_counters(step), path=relative, final=final, stopping=stopping)


def _start_fields(config_path: Path, first: int) -> dict:
    return {
        "config": json.loads(config_path.read_text()),
        "mode": "pretraining",
        "resumed_from": f"checkpoints/step_{first:06d}" if first else None,
        "init_from": None,
        "git_sha": None,
        "versions": {},
        "device": {"type": "cpu"},
        "world_size": 1,
        "num_params": 1000,
        "num_scaling_params": 1000,
        "flops_per_token": 6000,
        "total_steps": NUM_STEPS,
        "total_tokens": 256 * NUM_STEPS,
        "total_flops": 1e6 * NUM_STEPS,
        "total_batch_tokens": 256,
        "device_batch_size": 4,
        "grad_accum": 2,
        "data_epochs": 0.1,
        "optim": {},
        "warnings": [],
    }


if __name__ == "__main__":
    sys.exit(main())
