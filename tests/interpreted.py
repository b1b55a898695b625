"""Running Triton kernels under the interpreter on the CPU: a benchmark or a test's worker script as a
process of its own (with TRITON_INTERPRET=1, which must be set before triton is imported), and a small run
of the trainer inside a worker process that already has it set."""

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(module: str, args: list[str], out: Path, key: str = "results") -> list[dict]:
    """`python -m module *args --json out` under the interpreter: its rows of results (under `key`)."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", module, *args, "--json", str(out)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())[key]


def run_worker(worker: str, *args: str) -> dict | list:
    """`python tests/<worker> *args` under the interpreter: the JSON it prints."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / worker), *args],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def small_training_run(counted: mock._patch, *contexts, **config) -> dict:
    """A 4-step CPU run of the trainer at depth 1 (2 micro-batches a step), its config's settings (the
    run directory's fused_loss, fused_mlp, compile) from `config`, inside `contexts`, with `counted` (a
    mock.patch ... wraps=) counting calls: the step and validation losses, the count, and the start
    event's device and warnings."""
    from benchmarks import train_throughput
    from nanogpt import train

    args = argparse.Namespace(
        depth=1, seq_len=16, total_batch=64, gpt2_dir=None, warmup_steps=1, timed_steps=3, profile_steps=0
    )
    run_dir = train_throughput.make_run_dir(args, micro_batch=2, **config)
    try:
        with contextlib.ExitStack() as stack:
            for context in contexts:
                stack.enter_context(context)
            calls = stack.enter_context(counted)
            assert train.run(run_dir / "config.json") == 0
        events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    finally:
        shutil.rmtree(run_dir.parent)
    start = next(e for e in events if e["kind"] == "start")
    return {
        "steps": [e["loss"] for e in events if e["kind"] == "step"],
        "val": [e["val_loss"] for e in events if e["kind"] == "val"],
        "calls": calls.call_count,
        "device": start["device"],
        "warnings": start.get("warnings", []),
    }
