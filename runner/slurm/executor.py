"""The Slurm executor: each attempt is one batch job; the runner stays on the login node and watches.

It implements runner.executor.Executor, so the runner's loop is the same for both engines:

- submit: write `RUN_DIR/slurm/attempt_N.sbatch` (runner.slurm.script) and `sbatch` it; the job id is the
  handle, recorded in the attempt.
- poll: one `squeue` for all our jobs every `poll_s`; a job that has ended is looked up once with `sacct`
  (accounting) or `scontrol show job` for its final state and exit code. Slurm's final state travels in
  `Exited.job_state`; runner.scheduler.decide_outcome maps it (with the events) to the cell's state.
  A controller that does not answer for a while is waited out: the job counts as running meanwhile.
- cancel: `scancel --signal=TERM` reaches every process of the job's step once (torchrun forwards one more,
  which the trainer takes for the same request), so the trainer checkpoints and exits; a job still there
  `stop_grace_s` later, or one that has not started, is cancelled outright. Only job ids this executor
  submitted or adopted are ever cancelled.
- adopt: the recorded job id, if Slurm still knows it under our job name; else (the runner died between
  sbatch and the database write) the job found by that name.

The attempt's `host` is the cluster's name, so a runner restarted on another login node of the same
cluster adopts the jobs too.
"""

import contextlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from nanogpt.events import EXIT_RECORD_ENV
from runner.executor import (
    INDUCTOR_CACHE_DIR,
    MARKER_ENV,
    BackendUnavailable,
    Exited,
    Handle,
    LaunchRequest,
    Running,
    error_tail,
    exit_record_path,
    log_paths,
    trainer_pythonpath,
)
from runner.slurm import commands
from runner.slurm.commands import JobInfo, SlurmError, SlurmNoAnswer
from runner.slurm.script import batch_script, job_name, script_path
from runner.slurm.settings import SlurmSettings
from store import Attempt
from store import Executor as ExecutorKind

# How long a failed sbatch waits for squeue to answer whether the job was queued all the same.
SUBMIT_LOOKUP_S = 180.0


@dataclass(slots=True)
class _Job:
    job_id: str
    info: JobInfo | None = None  # the latest state seen
    stop_deadline: float | None = None  # set by cancel(); cancelled outright after it
    stop_asked: bool = False  # Slurm took the stop request (asked again at each poll until it does)
    killed: bool = False
    gone: bool = False  # Slurm no longer knows the job: ended, how is unknown

    @property
    def ended(self) -> bool:
        return self.gone or (self.info is not None and self.info.final)


class SlurmExecutor:
    kind = ExecutorKind.SLURM

    def __init__(
        self,
        settings: SlurmSettings,
        *,
        python: str = sys.executable,
        env: dict[str, str] | None = None,
        stop_grace_s: float = 180.0,
    ):
        config = commands.cluster_config()
        self.settings = settings
        self.python = settings.python or python
        self.extra_env = dict(env or {})
        self.stop_grace_s = stop_grace_s
        self.host = config.get("ClusterName") or "slurm"
        self.accounting = commands.has_accounting(config)
        self._jobs: dict[int, _Job] = {}
        self._refreshed_at = float("-inf")

    # -- starting --------------------------------------------------------------------------------------

    def environment(self, request: LaunchRequest) -> dict[str, str]:
        """The variables the script exports (sbatch passes the runner's own environment too)."""
        env = {
            MARKER_ENV: request.marker,
            EXIT_RECORD_ENV: str(exit_record_path(request.run_dir, request.attempt_number)),
            "PYTHONPATH": trainer_pythonpath(os.environ.get("PYTHONPATH")),
            "TORCHINDUCTOR_CACHE_DIR": os.environ.get("TORCHINDUCTOR_CACHE_DIR", str(INDUCTOR_CACHE_DIR)),
        }
        if not self.settings.gpus_per_node:
            env["CUDA_VISIBLE_DEVICES"] = ""
            env["OMP_NUM_THREADS"] = "1"
        return {**env, **self.extra_env}

    def submit(self, request: LaunchRequest) -> Handle:
        """Write the attempt's script and sbatch it; SlurmError (sbatch's message) when Slurm refuses it."""
        path = script_path(request.run_dir, request.attempt_number)
        path.parent.mkdir(parents=True, exist_ok=True)
        log_paths(request.run_dir, request.attempt_number)[0].parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            batch_script(request, self.settings, python=self.python, env=self.environment(request))
        )
        try:
            job_id = commands.submit(path)
        except SlurmError as error:
            # sbatch can fail after the controller queued the job (a reply that timed out): that job would
            # train unwatched beside the retry. Found by its name (each attempt's own), it is this attempt's.
            name = job_name(request.cell_id, request.attempt_number)
            found = [info for info in self._named_once_answered(name) if not info.final]
            if len(found) != 1 and isinstance(error, SlurmNoAnswer):
                raise BackendUnavailable(str(error)) from None  # nothing queued: not a failure of the cell
            if len(found) != 1:
                raise
            job_id = found[0].job_id
        self._jobs[request.attempt_id] = _Job(job_id=job_id)
        self._refreshed_at = float("-inf")
        return Handle(attempt_id=request.attempt_id, job_id=job_id, launcher="sbatch")

    def _named_once_answered(self, name: str) -> list[JobInfo]:
        """The jobs of that name, asked again while squeue does not answer (for up to SUBMIT_LOOKUP_S): a
        controller too busy to answer sbatch may queue its job once it recovers, and "none found" then was
        a second job training beside it."""
        deadline = time.monotonic() + SUBMIT_LOOKUP_S
        while True:
            try:
                return commands.named(name)
            except SlurmError:
                if time.monotonic() >= deadline:
                    return []
                time.sleep(self.settings.poll_s)

    # -- watching --------------------------------------------------------------------------------------

    def poll(self, handle: Handle) -> Running | Exited:
        job = self._jobs[handle.attempt_id]
        self._refresh()
        if job.stop_deadline is not None and not job.stop_asked and time.monotonic() < job.stop_deadline:
            job.stop_asked = self._ask_to_stop(job)
        if job.stop_deadline is not None and not job.killed and time.monotonic() >= job.stop_deadline:
            with contextlib.suppress(SlurmError):  # Slurm did not answer: tried again at the next poll
                commands.cancel(job.job_id)
                job.killed = True
        if job.gone:
            return Exited(code=None, from_trainer=False)
        if job.info is None or not job.info.final:
            return Running()
        code = -job.info.signal if job.info.signal else job.info.exit_code
        return Exited(code=code, from_trainer=False, job_state=job.info.state)

    def _refresh(self) -> None:
        """Every `poll_s`: one squeue for all our jobs; sacct/scontrol for those that ended or left it."""
        watched = [job for job in self._jobs.values() if not job.ended]
        if time.monotonic() - self._refreshed_at < self.settings.poll_s or not watched:
            return
        try:
            seen = commands.queued(job.job_id for job in watched)
            for job in watched:
                info = seen.get(job.job_id)
                if info is None or info.final:
                    # Ended (or gone from squeue): the final state and exit code from sacct or scontrol.
                    info = commands.finished(job.job_id, accounting=self.accounting)
                    job.gone = info is None  # ended long ago on a cluster without accounting
                job.info = info
        except SlurmError:
            return  # the controller is busy or restarting: the jobs run on; ask again next time
        self._refreshed_at = time.monotonic()

    def pids(self, handle: Handle) -> set[int]:
        return set()  # nothing of a batch job runs on this machine's GPUs

    def forget(self, handle: Handle) -> None:
        self._jobs.pop(handle.attempt_id, None)

    def error_tail(self, run_dir: Path, attempt_number: int) -> str | None:
        return error_tail(log_paths(run_dir, attempt_number)[1])

    # -- stopping --------------------------------------------------------------------------------------

    def cancel(self, handle: Handle) -> None:
        """Ask the job to stop: SIGTERM to its step (the trainer checkpoints and exits), outright when the
        trainers' step has not started (a queued job, or one still running its setup lines, which a
        signal to the steps would not reach); poll() cancels it outright after `stop_grace_s`."""
        job = self._jobs[handle.attempt_id]
        if job.stop_deadline is not None:
            return
        job.stop_deadline = time.monotonic() + self.stop_grace_s
        job.stop_asked = self._ask_to_stop(job)
        self._refreshed_at = float("-inf")

    def _ask_to_stop(self, job: _Job) -> bool:
        """SIGTERM to the job's step, or scancel when its step has not started; False when Slurm did not
        answer (poll() asks again until the grace period ends: an outright cancel at once would lose the
        trainer's work since its last checkpoint to a moment of a busy controller)."""
        try:
            info = (
                commands.queued([job.job_id]).get(job.job_id) or job.info
            )  # fresh: it may have just started
            running = info is not None and info.state not in ("PENDING", "CONFIGURING")
            started = running and commands.has_launched_step(job.job_id)
            commands.cancel(job.job_id, signal="TERM" if started else None)
        except SlurmError:
            return False
        return True

    # -- finding again ---------------------------------------------------------------------------------

    def adopt(self, attempt: Attempt, run_dir: Path) -> Handle | None:
        """The attempt's job, running or ended, if Slurm knows it under the attempt's job name; None when
        Slurm knows no such job (never submitted, or ended and forgotten)."""
        assert attempt.id is not None
        name = job_name(attempt.cell_id, attempt.number)
        if attempt.job_id is not None:
            info = commands.queued([attempt.job_id]).get(attempt.job_id)
        else:
            found = commands.named(name)
            info = max(found, key=lambda job: int(job.job_id)) if found else None
        job_id = attempt.job_id or (info.job_id if info is not None else None)
        if job_id is not None and (info is None or info.final):
            # squeue lists an ended job without its exit code (a COMPLETED job that trained nothing is done
            # with exit 0 only): that comes from sacct or scontrol, as for a job seen to end.
            info = commands.finished(job_id, accounting=self.accounting) or info
        if info is None or info.name != name:
            return None
        self._jobs[attempt.id] = _Job(job_id=info.job_id, info=info)
        return Handle(attempt_id=attempt.id, job_id=info.job_id, launcher="adopted")
