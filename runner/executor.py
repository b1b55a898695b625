"""Executors: start a cell's trainer, watch it, stop it, and find it again after the runner restarts.

The interface is small so that the Slurm executor (runner/slurm/executor.py) sits beside the local one:

    handle = executor.submit(request)          # start the trainer; Handle names the process (or job)
    executor.poll(handle)                      # Running() or Exited(code)
    executor.cancel(handle)                    # ask it to stop: it checkpoints and exits; forced later
    executor.adopt(attempt, run_dir)           # a restarted runner finds a live trainer again, or None

and three small ones for bookkeeping: `pids` (this machine's processes of an attempt, which the GPU pool
must not count as someone else's), `forget` (drop an ended attempt) and `error_tail` (its stderr's last
lines).

The local executor starts each trainer in its own session (a Ctrl-C at the runner's terminal does not reach
it; the runner forwards the stop itself), with CUDA_VISIBLE_DEVICES set to the chosen GPU indices exactly as
given and stdout/stderr in `RUN_DIR/logs/attempt_N.{out,err}`. A process is identified by its pid *and* its
start time, so a pid the OS reused for someone else's process is never signalled.

Launchers. Several processes per cell run under `torchrun --standalone` (rendezvous on a free port). One
process runs as plain `python -m nanogpt.train`: the trainer needs no rendezvous then, its own exit code
reaches us (torchrun exits 1 for any failed worker, also for a clean stop with code 143), and it saves the
second interpreter start that torchrun costs (a torch import: about 3.5 s on a small CPU machine, see
docs/running.md). `launcher="torchrun"` forces torchrun for every cell.

torchrun starts each worker in a session of its own, so signalling torchrun's process group does not reach
the workers. A stop is therefore a single SIGTERM to the launcher: the plain trainer checkpoints and exits
143; torchrun forwards one SIGTERM to each worker and waits for them (up to its own 30 s, after which it
kills them; a checkpoint that takes longer is lost and the cell resumes from the one before). A second
SIGTERM is never sent: the trainer treats a second signal as "die now". After `stop_grace_s` without an
exit, every process of the attempt (the launcher, its process group and the workers we saw) is SIGKILLed.
"""

import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import psutil

from nanogpt.events import EXIT_RECORD_ENV
from nanogpt.gpu_lock import GPU_LOCKS_ENV
from store import Attempt
from store import Executor as ExecutorKind

TRAINER_MODULE = "nanogpt.train"
CONFIG_NAME = "config.json"
LOGS_DIR = "logs"
# Every trainer process carries this variable (workers inherit it from torchrun): after a runner restart,
# processes of an attempt whose launcher is gone are found by it, and only then signalled.
MARKER_ENV = "NANOSTUDY_ATTEMPT"
INDUCTOR_CACHE_DIR = Path.home() / ".cache" / "nanostudy" / "inductor"
LAUNCHERS = ("auto", "torchrun")  # auto: plain python for one process, torchrun for several
# Tolerance when comparing a process's start time with the recorded one (psutil derives it from clock
# ticks since boot, which can differ in the last digits between reads).
_START_TIME_TOLERANCE_S = 0.05


@dataclass(frozen=True, kw_only=True, slots=True)
class LaunchRequest:
    """One attempt to start: the trainer runs `RUN_DIR/config.json` on `gpus` (None: on the CPU)."""

    cell_id: str
    attempt_id: int
    attempt_number: int
    run_dir: Path
    gpus: tuple[str, ...] | None  # CUDA_VISIBLE_DEVICES values, used exactly as given
    num_procs: int = 1
    # One lock file per GPU, in the order of `gpus` (nanogpt.gpu_lock): the trainer trains only while it
    # holds its GPUs' locks; empty: no lock (it trains as soon as it is set up).
    gpu_locks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.num_procs < 1:
            raise ValueError(f"cell {self.cell_id}: num_procs must be >= 1, got {self.num_procs}")
        if self.gpus is not None and len(self.gpus) != self.num_procs:
            raise ValueError(
                f"cell {self.cell_id}: {self.num_procs} processes need as many GPUs, got {list(self.gpus)}"
            )
        if self.gpu_locks and (self.gpus is None or len(self.gpu_locks) != len(self.gpus)):
            raise ValueError(f"cell {self.cell_id}: one GPU lock per GPU, got {list(self.gpu_locks)}")

    @property
    def config_path(self) -> Path:
        return self.run_dir / CONFIG_NAME

    @property
    def marker(self) -> str:
        return attempt_marker(self.cell_id, self.attempt_number)


def attempt_marker(cell_id: str, attempt_number: int) -> str:
    return f"{cell_id}:{attempt_number}"


def log_paths(run_dir: Path, attempt_number: int) -> tuple[Path, Path]:
    """The attempt's stdout and stderr files."""
    logs = run_dir / LOGS_DIR
    return logs / f"attempt_{attempt_number}.out", logs / f"attempt_{attempt_number}.err"


def exit_record_path(run_dir: Path, attempt_number: int) -> Path:
    """Where the attempt's trainer processes record their exit codes (nanogpt.events.record_exit)."""
    return run_dir / LOGS_DIR / f"attempt_{attempt_number}.exit"


def stop_record_path(run_dir: Path, attempt_number: int) -> Path:
    """Where a runner notes that it asked the attempt's trainer to stop, before it does (runner.run): a
    trainer still setting up dies of that SIGTERM without an event, and a runner that recovers the attempt
    after the one that asked has died reads there that the stop was asked for, not a crash."""
    return run_dir / LOGS_DIR / f"attempt_{attempt_number}.stop"


@dataclass(frozen=True, kw_only=True, slots=True)
class Handle:
    """What names a started trainer: its launcher process (pid + start time), or a batch job's id."""

    attempt_id: int
    pid: int | None = None
    pid_start_time: float | None = None
    job_id: str | None = None
    launcher: str = "python"  # python | torchrun | adopted (a process found again: exit code unknown)

    @property
    def where(self) -> str:
        """How the log names it: 'pid 1234' or 'Slurm job 56'."""
        return f"Slurm job {self.job_id}" if self.job_id is not None else f"pid {self.pid}"


@dataclass(frozen=True, slots=True)
class Running:
    pass


@dataclass(frozen=True, kw_only=True, slots=True)
class Exited:
    """The trainer is gone. `code` is None when nobody could collect it (an adopted process); negative
    codes are signals (Popen's convention). `from_trainer` says whether the code is the trainer's own
    (0 done, 2 bad input, 3 diverged, 143 stopped, ...) rather than a launcher's summary of it."""

    code: int | None
    from_trainer: bool
    job_state: str | None = None  # a batch job's final state (COMPLETED, TIMEOUT, CANCELLED, ...)


class BackendUnavailable(RuntimeError):
    """`submit` could not reach the executor's backend (a Slurm controller that does not answer) and
    nothing was started: the runner tries the cell again later, without counting a failure."""


class Executor(Protocol):
    kind: ExecutorKind
    host: str

    def submit(self, request: LaunchRequest) -> Handle: ...

    def poll(self, handle: Handle) -> Running | Exited: ...

    def cancel(self, handle: Handle) -> None: ...

    def adopt(self, attempt: Attempt, run_dir: Path) -> Handle | None: ...

    def pids(self, handle: Handle) -> set[int]: ...

    def forget(self, handle: Handle) -> None: ...

    def error_tail(self, run_dir: Path, attempt_number: int) -> str | None: ...


@dataclass(slots=True)
class _Tracked:
    """The local executor's live view of one attempt."""

    launcher: psutil.Process | None  # None: launcher gone, only `workers` remain (an adopted orphan)
    popen: subprocess.Popen | None  # only for processes this runner started: it collects the exit code
    from_trainer: bool
    workers: dict[int, psutil.Process] = field(default_factory=dict)  # descendants seen so far
    stop_deadline: float | None = None  # set by cancel(); SIGKILL after it
    killed: bool = False


class LocalExecutor:
    """Trainers as child processes of this runner, on this machine's GPUs or CPU."""

    kind = ExecutorKind.LOCAL

    def __init__(
        self,
        *,
        launcher: str = "auto",
        python: str = sys.executable,
        stop_grace_s: float = 180.0,
        env: dict[str, str] | None = None,
        cpu_threads: int | None = None,
    ):
        if launcher not in LAUNCHERS:
            raise ValueError(f"launcher: {launcher!r} is not one of {', '.join(LAUNCHERS)}")
        if stop_grace_s <= 0:
            raise ValueError(f"stop_grace_s: must be positive, got {stop_grace_s}")
        self.launcher = launcher
        self.python = python
        self.stop_grace_s = stop_grace_s
        self.extra_env = dict(env or {})
        self.cpu_threads = cpu_threads
        self.host = socket.gethostname()
        self._tracked: dict[int, _Tracked] = {}

    # -- starting --------------------------------------------------------------------------------------

    def command(self, request: LaunchRequest) -> list[str]:
        trainer = ["-m", TRAINER_MODULE, "--config", str(request.config_path)]
        if self._uses_torchrun(request):
            rendezvous = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
            return [self.python, *rendezvous, str(request.num_procs), *trainer]
        return [self.python, *trainer]

    def _uses_torchrun(self, request: LaunchRequest) -> bool:
        return self.launcher == "torchrun" or (self.launcher == "auto" and request.num_procs > 1)

    def environment(self, request: LaunchRequest) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.extra_env)
        env[MARKER_ENV] = request.marker
        env[EXIT_RECORD_ENV] = str(exit_record_path(request.run_dir, request.attempt_number))
        env.pop(GPU_LOCKS_ENV, None)
        if request.gpu_locks:
            env[GPU_LOCKS_ENV] = os.pathsep.join(request.gpu_locks)
        env["PYTHONPATH"] = trainer_pythonpath(env.get("PYTHONPATH"))
        # Cells of one shape compile the same graphs: one persistent compile cache for all of them (torch's
        # default lives in /tmp, which a reboot empties).
        env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(INDUCTOR_CACHE_DIR))
        if request.gpus is None:
            env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU, even on a machine whose GPUs we may not use
            threads = self.cpu_threads or max(1, (os.cpu_count() or 1) // request.num_procs)
            env.setdefault("OMP_NUM_THREADS", str(threads))
        else:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(request.gpus)
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # so the indices mean what NVML's mean
        return env

    def submit(self, request: LaunchRequest) -> Handle:
        out_path, err_path = log_paths(request.run_dir, request.attempt_number)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        torchrun = self._uses_torchrun(request)
        with open(out_path, "ab") as out, open(err_path, "ab") as err:
            popen = subprocess.Popen(
                self.command(request),
                cwd=request.run_dir,
                env=self.environment(request),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        try:
            process = psutil.Process(popen.pid)
            start_time = process.create_time()
        except psutil.NoSuchProcess:
            # It exited already (e.g. an interpreter that cannot start); poll() collects the code.
            process, start_time = None, None
        self._tracked[request.attempt_id] = _Tracked(launcher=process, popen=popen, from_trainer=not torchrun)
        return Handle(
            attempt_id=request.attempt_id,
            pid=popen.pid,
            pid_start_time=start_time,
            launcher="torchrun" if torchrun else "python",
        )

    # -- watching --------------------------------------------------------------------------------------

    def poll(self, handle: Handle) -> Running | Exited:
        tracked = self._tracked[handle.attempt_id]
        self._escalate(tracked)
        code: int | None = None
        launcher_alive = False
        if tracked.popen is not None:
            code = tracked.popen.poll()
            launcher_alive = code is None
        elif tracked.launcher is not None:
            launcher_alive = _alive(tracked.launcher)
        if launcher_alive:
            self._see_workers(tracked)
            return Running()
        workers = [worker for worker in tracked.workers.values() if _alive(worker)]
        if workers:
            # The launcher died under its workers (torchrun killed by someone): they are ours and would run
            # on unwatched; ask them to stop (they checkpoint), once.
            if tracked.stop_deadline is None:
                _signal_all(workers, signal.SIGTERM)
                tracked.stop_deadline = time.monotonic() + self.stop_grace_s
            return Running()
        return Exited(code=code, from_trainer=tracked.from_trainer and code is not None)

    def pids(self, handle: Handle) -> set[int]:
        """The attempt's launcher and every descendant seen (looked up afresh while the launcher runs)."""
        tracked = self._tracked.get(handle.attempt_id)
        if tracked is None:
            return set()
        if tracked.launcher is not None and _alive(tracked.launcher):
            self._see_workers(tracked)
        found = set(tracked.workers)
        if tracked.launcher is not None:
            found.add(tracked.launcher.pid)
        return found

    def forget(self, handle: Handle) -> None:
        """Drop an exited attempt's bookkeeping."""
        self._tracked.pop(handle.attempt_id, None)

    def error_tail(self, run_dir: Path, attempt_number: int) -> str | None:
        return error_tail(log_paths(run_dir, attempt_number)[1])

    # -- stopping --------------------------------------------------------------------------------------

    def cancel(self, handle: Handle) -> None:
        """Ask the trainer to stop (one SIGTERM to the launcher); poll() forces it after `stop_grace_s`."""
        tracked = self._tracked[handle.attempt_id]
        if tracked.stop_deadline is not None:
            return
        tracked.stop_deadline = time.monotonic() + self.stop_grace_s
        if tracked.launcher is not None and _alive(tracked.launcher):
            self._see_workers(tracked)
            _signal_all([tracked.launcher], signal.SIGTERM)
        else:
            _signal_all([w for w in tracked.workers.values() if _alive(w)], signal.SIGTERM)

    def _escalate(self, tracked: _Tracked) -> None:
        if tracked.stop_deadline is None or tracked.killed or time.monotonic() < tracked.stop_deadline:
            return
        tracked.killed = True
        if tracked.launcher is not None and _alive(tracked.launcher):
            self._see_workers(tracked)
        _signal_all([w for w in tracked.workers.values() if _alive(w)], signal.SIGKILL)
        if tracked.launcher is not None and _alive(tracked.launcher):
            try:
                # Our launcher leads its own session (start_new_session): its group holds only our processes.
                os.killpg(tracked.launcher.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                _signal_all([tracked.launcher], signal.SIGKILL)

    def _see_workers(self, tracked: _Tracked) -> None:
        """Remember the launcher's descendants (torchrun's workers), to stop them should it die first."""
        assert tracked.launcher is not None
        try:
            children = tracked.launcher.children(recursive=True)
        except psutil.Error:
            return
        for child in children:
            if child.pid not in tracked.workers:
                tracked.workers[child.pid] = child

    # -- finding again ---------------------------------------------------------------------------------

    def adopt(self, attempt: Attempt, run_dir: Path) -> Handle | None:
        """The attempt's trainer, if it still runs on this host: the recorded launcher (same pid *and* start
        time), or, when the launcher is gone or was never recorded, processes carrying the attempt's marker.
        None when nothing of it is alive. The exit code of an adopted process cannot be collected."""
        assert attempt.id is not None
        if attempt.host != self.host:
            return None
        launcher = None
        if attempt.pid is not None and attempt.pid_start_time is not None:
            launcher = verified_process(attempt.pid, attempt.pid_start_time)
        marker = attempt_marker(attempt.cell_id, attempt.number)
        orphans = [] if launcher is not None else find_marked(marker, run_dir / CONFIG_NAME)
        if launcher is None and not orphans:
            return None
        tracked = _Tracked(launcher=launcher, popen=None, from_trainer=False)
        tracked.workers = {process.pid: process for process in orphans}
        self._tracked[attempt.id] = tracked
        if launcher is not None:
            self._see_workers(tracked)
        main = launcher or min(orphans, key=lambda process: process.create_time())
        return Handle(
            attempt_id=attempt.id, pid=main.pid, pid_start_time=main.create_time(), launcher="adopted"
        )


def executor_for(attempt: Attempt) -> Executor:
    """An executor that can find an attempt's trainer again and stop it (`nanostudy cancel` with no runner):
    a process of this machine, or the attempt's Slurm job. SlurmError when Slurm cannot be reached."""
    if attempt.executor is ExecutorKind.SLURM:
        from runner.slurm.executor import SlurmExecutor  # it builds on this module
        from runner.slurm.settings import SlurmSettings

        return SlurmExecutor(SlurmSettings(poll_s=1.0))
    return LocalExecutor()


def trainer_pythonpath(current: str | None) -> str:
    """PYTHONPATH with this checkout first: the trainer runs the very code this runner is running."""
    spec = importlib.util.find_spec("nanogpt")
    root = str(Path(spec.origin).resolve().parents[1]) if spec is not None and spec.origin else None
    return os.pathsep.join(p for p in (root, current) if p)


def verified_process(pid: int, start_time: float) -> psutil.Process | None:
    """The live process `pid` if it started at `start_time` (so it is the one we launched), else None."""
    try:
        process = psutil.Process(pid)
        if abs(process.create_time() - start_time) > _START_TIME_TOLERANCE_S:
            return None
    except psutil.Error:
        return None
    return process if _alive(process) else None


def find_marked(marker: str, config_path: Path) -> list[psutil.Process]:
    """Live processes of this user running `config_path` with MARKER_ENV=marker in their environment."""
    needle = str(config_path)
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if needle not in (process.info["cmdline"] or ()):
                continue
            if process.environ().get(MARKER_ENV) == marker and _alive(process):
                found.append(process)
        except psutil.Error:
            continue
    return found


def _alive(process: psutil.Process) -> bool:
    """Running and not a zombie (an exited child whose parent has not collected it is gone for us)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _signal_all(processes: list[psutil.Process], signum: int) -> None:
    # psutil.Process.send_signal checks that the pid still names the process it was created for (same
    # start time), so a reused pid is never signalled.
    for process in processes:
        try:
            process.send_signal(signum)
        except psutil.Error:
            continue


def describe_exit(code: int | None) -> str:
    if code is None:
        return "exit code unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


# torchrun's own lines in a stderr file: its log records ("E1125 06:16:50.533000 19431 torch/distributed/...")
# and the traceback of its ChildFailedError report, which follows the workers' output.
_LAUNCHER_LOG_LINE = re.compile(r"^[IWE]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S*torch/distributed/")
_TAIL_BYTES = 64 * 1024


def error_tail(err_path: Path, *, num_lines: int = 12) -> str | None:
    """The last lines the trainer wrote to stderr, without torchrun's failure report (kept: its one-line
    root cause, which names the exit code of the rank that failed). None if there is nothing."""
    try:
        with open(err_path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - _TAIL_BYTES))
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return None
    lines = text.splitlines()
    for index, line in enumerate(lines):
        following = "\n".join(lines[index + 1 : index + 4])
        if line.startswith("Traceback (most recent call last):") and (
            "torchrun" in following or "torch/distributed/run.py" in following
        ):
            lines = lines[:index]
            break
    kept = [
        line.rstrip()
        for line in lines
        if line.strip() and (not _LAUNCHER_LOG_LINE.match(line) or "exitcode" in line)
    ]
    return "\n".join(kept[-num_lines:]) or None
