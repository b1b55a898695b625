"""The runner's decisions in isolation: placement, how an attempt ended, and the executor's safety checks."""

import os
import subprocess
import sys
import time

import psutil
import pytest

from runner.executor import Exited, LaunchRequest, LocalExecutor, error_tail, verified_process
from runner.ingest import AttemptTrace
from runner.scheduler import Candidate, assign, decide_outcome, with_recorded_exit
from store import AttemptOutcome


def _cell(cell_id: str, flops: float, num_gpus: int = 1) -> Candidate:
    return Candidate(cell_id=cell_id, flops=flops, num_gpus=num_gpus)


def test_largest_cells_take_the_free_gpus_first():
    cells = [_cell("s", 1e15), _cell("l", 4e15, num_gpus=2), _cell("m", 2e15)]
    chosen = assign(cells, free_gpus=[0, 2, 3, 5], slots=8)
    assert [(cell.cell_id, gpus) for cell, gpus in chosen] == [("l", (0, 2)), ("m", (3,)), ("s", (5,))]


def test_a_cell_that_does_not_fit_lets_smaller_ones_backfill():
    cells = [_cell("big", 8e15, num_gpus=4), _cell("a", 2e15), _cell("b", 1e15)]
    chosen = assign(cells, free_gpus=[1, 2], slots=8)
    assert [(cell.cell_id, gpus) for cell, gpus in chosen] == [("a", (1,)), ("b", (2,))]


def test_slots_cap_the_cells_started_and_the_cpu_takes_one_slot_each():
    cells = [_cell("a", 3.0), _cell("b", 2.0), _cell("c", 1.0)]
    assert [c.cell_id for c, _ in assign(cells, free_gpus=[0, 1, 2], slots=2)] == ["a", "b"]
    assert assign(cells, free_gpus=None, slots=1) == [(cells[0], None)]
    assert assign(cells, free_gpus=[], slots=3) == []


def _trace(*events: dict) -> AttemptTrace:
    trace = AttemptTrace()
    for event in events:
        trace.see(event)
    return trace


START = {"kind": "start"}
STEP = {"kind": "step", "step": 7}
CHECKPOINT = {"kind": "checkpoint", "step": 7, "final": False, "stopping": True}
PERIODIC = {"kind": "checkpoint", "step": 7, "final": False, "stopping": False}
OLD_TRAINERS = {"kind": "checkpoint", "step": 7, "final": False}  # written before `stopping` existed
FINAL = {"kind": "checkpoint", "step": 9, "final": True}


@pytest.mark.parametrize(
    ("events", "exited", "stop", "expected"),
    [
        (
            (START, STEP, FINAL, {"kind": "end", "status": "done"}),
            Exited(code=0, from_trainer=True),
            False,
            AttemptOutcome.DONE,
        ),
        # An end event decides even if the process then died badly (e.g. in its teardown).
        (
            (START, FINAL, {"kind": "end", "status": "done"}),
            Exited(code=-9, from_trainer=True),
            False,
            AttemptOutcome.DONE,
        ),
        (
            (START, {"kind": "end", "status": "diverged", "message": "nan"}),
            Exited(code=3, from_trainer=True),
            False,
            AttemptOutcome.DIVERGED,
        ),
        (
            (START, {"kind": "end", "status": "error", "message": "boom"}),
            Exited(code=1, from_trainer=True),
            False,
            AttemptOutcome.FAILED,
        ),
        ((START, STEP, CHECKPOINT), Exited(code=143, from_trainer=True), False, AttemptOutcome.INTERRUPTED),
        ((START, STEP), Exited(code=143, from_trainer=True), True, AttemptOutcome.INTERRUPTED),
        # torchrun exits 1 whatever its worker did; the checkpoint on the way out shows a clean stop.
        ((START, STEP, CHECKPOINT), Exited(code=1, from_trainer=False), False, AttemptOutcome.INTERRUPTED),
        ((START, CHECKPOINT, STEP), Exited(code=1, from_trainer=False), False, AttemptOutcome.FAILED),
        ((START, STEP, CHECKPOINT), Exited(code=None, from_trainer=False), False, AttemptOutcome.INTERRUPTED),
        ((START, STEP), Exited(code=None, from_trainer=False), False, AttemptOutcome.FAILED),
        # Killed (unwatched, or under torchrun) just after a periodic checkpoint: a crash, not a stop.
        ((START, STEP, PERIODIC), Exited(code=None, from_trainer=False), False, AttemptOutcome.FAILED),
        ((START, STEP, PERIODIC), Exited(code=1, from_trainer=False), False, AttemptOutcome.FAILED),
        (
            (START, STEP, OLD_TRAINERS),
            Exited(code=None, from_trainer=False),
            False,
            AttemptOutcome.INTERRUPTED,
        ),
        ((START, STEP, CHECKPOINT), Exited(code=-9, from_trainer=True), False, AttemptOutcome.FAILED),
        ((), Exited(code=2, from_trainer=True), False, AttemptOutcome.FAILED),
        # A run found already done writes no events and exits 0 (torchrun: 0 when every rank did).
        ((), Exited(code=0, from_trainer=True), False, AttemptOutcome.DONE),
        ((), Exited(code=0, from_trainer=False), False, AttemptOutcome.DONE),
        ((), Exited(code=0, from_trainer=False, job_state="COMPLETED"), False, AttemptOutcome.DONE),
        # A Slurm job cancelled while queued: exit code 0, no events, never trained.
        ((), Exited(code=0, from_trainer=False, job_state="CANCELLED"), True, AttemptOutcome.INTERRUPTED),
        ((), Exited(code=0, from_trainer=False, job_state="CANCELLED"), False, AttemptOutcome.FAILED),
        ((START, STEP), Exited(code=0, from_trainer=True), False, AttemptOutcome.FAILED),
    ],
)
def test_decide_outcome(events, exited, stop, expected):
    outcome, reason = decide_outcome(_trace(*events), exited, stop_requested=stop, error_tail="stderr tail")
    assert outcome is expected
    if outcome is AttemptOutcome.FAILED:
        assert reason.endswith("stderr tail")
    if outcome is AttemptOutcome.DONE:
        assert reason is None


@pytest.mark.parametrize(
    ("exited", "recorded", "expected"),
    [
        # torchrun's 1 or a Slurm job's, where a rank recorded its refusal: the trainer's 2.
        (Exited(code=1, from_trainer=False), [2, 2], Exited(code=2, from_trainer=True)),
        (
            Exited(code=1, from_trainer=False, job_state="FAILED"),
            [2],
            Exited(code=2, from_trainer=True, job_state="FAILED"),
        ),
        (Exited(code=None, from_trainer=False), [2], Exited(code=2, from_trainer=True)),
        # Nothing refused, nothing recorded, or the trainer's own code already: as it was.
        (Exited(code=1, from_trainer=False), [1, 143], Exited(code=1, from_trainer=False)),
        (Exited(code=1, from_trainer=False), [], Exited(code=1, from_trainer=False)),
        (Exited(code=3, from_trainer=True), [2], Exited(code=3, from_trainer=True)),
    ],
)
def test_a_recorded_refusal_is_the_trainers_exit_2(exited, recorded, expected):
    assert with_recorded_exit(exited, recorded) == expected


def test_failure_reasons_say_what_happened():
    trace = _trace(START, STEP)
    _, reason = decide_outcome(
        trace, Exited(code=-9, from_trainer=True), stop_requested=False, error_tail=None
    )
    assert reason == "the trainer exited without an end event (killed by SIGKILL)"
    _, reason = decide_outcome(
        _trace(),
        Exited(code=2, from_trainer=True),
        stop_requested=False,
        error_tail="warn\nerror: c.json: bad",
    )
    assert reason == "bad config or input: c.json: bad\nwarn\nerror: c.json: bad"
    # Under torchrun its report of the worker's exit code follows the trainer's line.
    under_torchrun = "error: c.json: bad\nE1207 21:41:32 api.py:1002] failed (exitcode: 2) local_rank: 0"
    _, reason = decide_outcome(
        _trace(), Exited(code=2, from_trainer=True), stop_requested=False, error_tail=under_torchrun
    )
    assert reason.splitlines()[0] == "bad config or input: c.json: bad"
    _, reason = decide_outcome(
        _trace(), Exited(code=2, from_trainer=True), stop_requested=False, error_tail=None
    )
    assert reason == "bad config or input"
    end = {"kind": "end", "status": "error", "message": "ValueError: bad"}
    _, reason = decide_outcome(
        _trace(START, end), Exited(code=1, from_trainer=True), stop_requested=False, error_tail=None
    )
    assert reason == "ValueError: bad"


def test_a_new_start_event_resets_the_trace():
    """A trainer that resumed in the same attempt (it cannot, but a trace must not carry an old end)."""
    trace = _trace(START, {"kind": "end", "status": "error"}, START, STEP)
    assert trace.end is None and trace.last_step == 7


TORCHRUN_FAILURE = """\
error: runs/x/config.json: train.num_steps: must be positive
E1125 06:16:50.533000 19431 torch/distributed/elastic/multiprocessing/api.py:1002] failed (exitcode: 2)
Traceback (most recent call last):
  File "/venv/bin/torchrun", line 10, in <module>
    sys.exit(main())
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
nanogpt.train FAILED
"""


def test_error_tail_drops_torchruns_report_but_keeps_the_trainers_lines(tmp_path):
    path = tmp_path / "attempt_1.err"
    warning = "W1125 06:17:24.236000 19666 torch/distributed/run.py:982] Setting OMP_NUM_THREADS\n"
    path.write_text(
        warning
        + 'Traceback (most recent call last):\n  File "train.py"\nRuntimeError: x\n'
        + TORCHRUN_FAILURE
    )
    tail = error_tail(path)
    assert tail.splitlines() == [
        "Traceback (most recent call last):",
        '  File "train.py"',
        "RuntimeError: x",
        "error: runs/x/config.json: train.num_steps: must be positive",
        TORCHRUN_FAILURE.splitlines()[1],  # torchrun's one-line root cause, with the worker's exit code
    ]
    assert error_tail(path, num_lines=1) == tail.splitlines()[-1]
    assert error_tail(tmp_path / "missing.err") is None


def test_a_reused_pid_is_never_taken_for_our_process():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        start = psutil.Process(child.pid).create_time()
        assert verified_process(child.pid, start) is not None
        assert verified_process(child.pid, start - 5.0) is None  # same pid, another process
    finally:
        child.kill()
        child.wait()
    assert verified_process(child.pid, start) is None


def test_the_executor_sets_the_environment_and_signals_once(tmp_path):
    executor = LocalExecutor(env={"OMP_NUM_THREADS": "1"}, stop_grace_s=5)
    gpu_request = LaunchRequest(
        cell_id="c", attempt_id=1, attempt_number=1, run_dir=tmp_path, gpus=("2", "3"), num_procs=2
    )
    env = executor.environment(gpu_request)
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3" and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert env["NANOSTUDY_ATTEMPT"] == "c:1"
    assert env["NANOSTUDY_EXIT_RECORD"] == str(tmp_path / "logs" / "attempt_1.exit")
    command = executor.command(gpu_request)
    assert command[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cpu_request = LaunchRequest(cell_id="c", attempt_id=2, attempt_number=2, run_dir=tmp_path, gpus=None)
    assert executor.environment(cpu_request)["CUDA_VISIBLE_DEVICES"] == ""
    assert executor.command(cpu_request)[1:3] == ["-m", "nanogpt.train"]
    assert LocalExecutor(launcher="torchrun").command(cpu_request)[1:3] == ["-m", "torch.distributed.run"]
    with pytest.raises(ValueError, match="2 processes need as many GPUs"):
        LaunchRequest(cell_id="c", attempt_id=1, attempt_number=1, run_dir=tmp_path, gpus=("0",), num_procs=2)

    # A process that counts the SIGTERMs it gets: a stop is one signal, then SIGKILL after the grace period.
    script = tmp_path / "count.py"
    script.write_text(
        "import signal, sys, time, pathlib\n"
        "n = []\n"
        "def count(*_):\n"
        "    n.append(1)\n"
        "    pathlib.Path('sigterms').write_text(str(len(n)))\n"
        "signal.signal(signal.SIGTERM, count)\n"
        "while True: time.sleep(0.05)\n"
    )
    executor = LocalExecutor(python=sys.executable, stop_grace_s=1.0)
    executor.command = lambda request: [sys.executable, str(script)]  # type: ignore[method-assign]
    handle = executor.submit(cpu_request)
    time.sleep(0.5)
    executor.cancel(handle)
    executor.cancel(handle)  # a second cancel sends nothing: a second SIGTERM would kill the trainer at once
    deadline = time.monotonic() + 10
    while not isinstance(status := executor.poll(handle), Exited) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status == Exited(code=-9, from_trainer=True)
    assert (tmp_path / "sigterms").read_text() == "1"
    assert os.path.exists(tmp_path / "logs" / "attempt_2.err")


def _simulate(cells: list[Candidate], duration_s: dict[str, float], num_gpus: int) -> list[tuple]:
    """The runner's placement over time, as StudyLoop applies `assign`: a pass at the start and after every
    cell's end, with every GPU not held by a running cell free. Checks at each pass that no GPU is given
    twice and that no GPU is left idle while a waiting cell would fit on the idle ones (backfill).
    Returns (start, end, cell, gpus) per cell."""
    pending = list(cells)
    running: dict[str, tuple[float, tuple[int, ...]]] = {}
    placed = []
    now = 0.0
    while pending or running:
        held = {gpu for _, gpus in running.values() for gpu in gpus}
        free = [gpu for gpu in range(num_gpus) if gpu not in held]
        chosen = assign(pending, free_gpus=free, slots=num_gpus - len(running))
        for cell, gpus in chosen:
            assert gpus is not None and len(gpus) == cell.num_gpus and not set(gpus) & held, (cell, gpus)
            held |= set(gpus)
            running[cell.cell_id] = (now + duration_s[cell.cell_id], gpus)
            placed.append((now, now + duration_s[cell.cell_id], cell.cell_id, gpus))
            pending.remove(cell)
        idle = num_gpus - len(held)
        assert not any(cell.num_gpus <= idle for cell in pending), (now, idle, pending)
        now = min(end for end, _ in running.values())
        running = {cell_id: run for cell_id, run in running.items() if run[0] > now}
    return placed


def _busy_fraction(placed: list[tuple], num_gpus: int) -> float:
    wall_s = max(end for _, end, _, _ in placed) - min(start for start, _, _, _ in placed)
    return sum((end - start) * len(gpus) for start, end, _, gpus in placed) / (num_gpus * wall_s)


def test_a_study_of_eight_one_gpu_and_two_four_gpu_cells_keeps_eight_gpus_busy():
    """Issue 11's study on an 8-GPU machine: the four-GPU cells (the larger models) start first on all 8
    GPUs; as each ends, four one-GPU cells take its GPUs. No GPU ever holds two cells, and every GPU stays
    busy until the cells run out: only the tail, where one-GPU cells of different lengths end at different
    times, leaves GPUs idle."""
    big = [_cell(f"big{i}", 8e18, num_gpus=4) for i in range(2)]
    small = [_cell(f"small{i}", 1e18) for i in range(8)]
    durations = {"big0": 100.0, "big1": 120.0} | {f"small{i}": 30.0 + i for i in range(8)}
    placed = _simulate(big + small, durations, num_gpus=8)
    by_cell = {cell: (start, gpus) for start, _, cell, gpus in placed}
    assert by_cell["big0"] == (0.0, (0, 1, 2, 3)) and by_cell["big1"] == (0.0, (4, 5, 6, 7))
    # big0's GPUs go to the four largest one-GPU cells at 100 s, big1's to the others at 120 s.
    assert {cell for cell, (start, _) in by_cell.items() if start == 100.0} == {f"small{i}" for i in range(4)}
    assert {cell for cell, (start, _) in by_cell.items() if start == 120.0} == {
        f"small{i}" for i in range(4, 8)
    }
    for gpu in range(8):  # each GPU: one four-GPU cell, then one one-GPU cell straight after it
        timeline = sorted((start, end) for start, end, _, gpus in placed if gpu in gpus)
        assert len(timeline) == 2 and timeline[0][1] == timeline[1][0], (gpu, timeline)
    # All 8 GPUs busy until the first one-GPU cell ends (130 s); the last ends at 157 s:
    # (4 × 100 + 4 × 120 + Σ(30..37)) / (8 × 157) = 0.91.
    one_gpu_s = sum(30.0 + i for i in range(8))
    expected = (4 * 100 + 4 * 120 + one_gpu_s) / (8 * (120 + 37))
    assert _busy_fraction(placed, 8) == pytest.approx(expected)


def test_smaller_four_gpu_cells_wait_for_four_free_gpus_while_one_gpu_cells_backfill():
    """The other order: the one-GPU cells are the larger and start first on all 8 GPUs. A four-GPU cell
    waits until four are free at once; meanwhile no GPU is double-booked (checked at every pass)."""
    big = [_cell(f"big{i}", 1e18, num_gpus=4) for i in range(2)]
    small = [_cell(f"small{i}", 8e18) for i in range(8)]
    durations = {"big0": 50.0, "big1": 50.0} | {f"small{i}": 10.0 * (i + 1) for i in range(8)}
    placed = _simulate(big + small, durations, num_gpus=8)
    starts = {cell: (start, gpus) for start, _, cell, gpus in placed}
    assert all(starts[f"small{i}"][0] == 0.0 for i in range(8))
    assert starts["big0"] == (40.0, (0, 1, 2, 3))  # the fourth one-GPU cell ends at 40 s
    assert starts["big1"] == (80.0, (4, 5, 6, 7))
