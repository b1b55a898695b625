"""Slurm's command-line tools, called as subprocesses, and what their output means.

squeue knows a job while it is queued or running and for MinJobAge (300 s by default) after it ended;
`sacct` knows it for good where the cluster keeps accounting, `scontrol show job` only as long as squeue
does. A job's state is its first word in all three ("CANCELLED by 1234" in sacct).
"""

import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

COMMANDS = ("sbatch", "squeue", "scontrol", "scancel")
TIMEOUT_S = 60.0
# States in which a job has ended for good; any other state (PENDING, RUNNING, COMPLETING, REQUEUED,
# SUSPENDED, ...) means it may still run.
FINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "TIMEOUT",
        "PREEMPTED",
        "NODE_FAIL",
        "CANCELLED",
        "OUT_OF_MEMORY",
        "BOOT_FAIL",
        "DEADLINE",
    }
)


class SlurmError(RuntimeError):
    """Slurm is missing, unreachable, or refused a request; the message says which, for the user."""


class SlurmNoAnswer(SlurmError):
    """The controller did not answer (a timeout, a lost connection): the request may work a moment later."""


# Words of Slurm's client commands when the controller could not be reached, not when it refused.
NO_ANSWER_WORDS = (
    "socket timed out",
    "unable to contact slurm controller",
    "slurm temporarily unable to accept job",
    "connection refused",
    "connection reset",
)


@dataclass(frozen=True, kw_only=True, slots=True)
class JobInfo:
    job_id: str
    state: str  # PENDING, RUNNING, COMPLETED, ...: the first word of Slurm's state
    name: str | None = None
    reason: str | None = None
    exit_code: int | None = None  # the batch script's exit code, when known
    signal: int | None = None  # the signal that ended it, when one did (0: none)

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


def run(args: list[str], *, timeout_s: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    """One Slurm command; SlurmError when it is not installed or does not answer in time."""
    if shutil.which(args[0]) is None:
        raise SlurmError(
            f"{args[0]} not found on PATH: executor slurm needs Slurm's client commands "
            f"({', '.join(COMMANDS)}) on this machine, the cluster's login node"
        )
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise SlurmNoAnswer(f"{' '.join(args[:2])}: no answer from Slurm within {timeout_s:.0f} s") from None


def _failed(result: subprocess.CompletedProcess) -> str:
    return (result.stderr or result.stdout).strip() or f"exit code {result.returncode}"


# -- the cluster ----------------------------------------------------------------------------------------


def cluster_config() -> dict[str, str]:
    """`scontrol show config` as {key: value}; SlurmError when the controller cannot be reached."""
    result = run(["scontrol", "show", "config"])
    if result.returncode != 0:
        where = os.environ.get("SLURM_CONF", "the default slurm.conf")
        raise SlurmError(f"cannot reach the Slurm controller ({where}): {_failed(result)}")
    config = {}
    for line in result.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            config[key.strip()] = value.strip()
    return config


def has_accounting(config: dict[str, str]) -> bool:
    return config.get("AccountingStorageType", "accounting_storage/none") != "accounting_storage/none"


def check_submission(options: list[str]) -> None:
    """`sbatch --test-only` with the jobs' options: Slurm checks partition, account, QOS, GPUs, nodes and
    time limit as it would for a real job, and submits nothing. SlurmError with Slurm's words if refused."""
    result = run(["sbatch", "--test-only", *options, "--wrap=true"])
    if result.returncode != 0:
        raise SlurmError(_sbatch_error(result))


# -- jobs -----------------------------------------------------------------------------------------------


def submit(script: Path) -> str:
    """Submit a batch script; its job id. SlurmError with sbatch's message when refused."""
    result = run(["sbatch", "--parsable", str(script)])
    job_id = result.stdout.strip().split(";")[0]
    if result.returncode != 0 or not job_id.isdigit():
        message = _sbatch_error(result)
        if any(words in message.lower() for words in NO_ANSWER_WORDS):
            raise SlurmNoAnswer(message)
        raise SlurmError(message)
    return job_id


def _sbatch_error(result: subprocess.CompletedProcess) -> str:
    lines = [line.removeprefix("sbatch: error: ") for line in _failed(result).splitlines()]
    return "sbatch refused the job: " + "; ".join(line for line in lines if line.strip())


def cancel(job_id: str, *, signal: str | None = None) -> None:
    """scancel one job: all of it, or with `signal` only that signal to its steps (the batch shell and the
    job itself go on, so the trainer can checkpoint and exit)."""
    args = ["scancel", *([f"--signal={signal}"] if signal else []), job_id]
    result = run(args)
    if result.returncode != 0 and "already completing or completed" not in result.stderr:
        raise SlurmError(f"scancel {job_id}: {_failed(result)}")


def queued(job_ids: Iterable[str]) -> dict[str, JobInfo]:
    """The jobs squeue knows of, by id (ids it does not know are left out)."""
    ids = sorted(set(job_ids))
    if not ids:
        return {}
    args = ["squeue", "--noheader", "--states=all", f"--jobs={','.join(ids)}", "--format=%i|%T|%j|%r"]
    result = run(args)
    if result.returncode != 0:
        if "Invalid job id" in result.stderr:
            return {} if len(ids) == 1 else _queued_one_by_one(ids)
        raise SlurmError(f"squeue: {_failed(result)}")
    return parse_squeue(result.stdout)


def _queued_one_by_one(ids: list[str]) -> dict[str, JobInfo]:
    """squeue refuses a list holding an id it no longer knows; ask for each."""
    found: dict[str, JobInfo] = {}
    for job_id in ids:
        found.update(queued([job_id]))
    return found


def has_launched_step(job_id: str) -> bool:
    """Whether the job runs a step of its own (`srun`: the trainers), beyond its batch script (`ID.batch`,
    which runs the study's setup lines first) and Slurm's `extern` step."""
    result = run(["squeue", "--noheader", "--steps", f"--jobs={job_id}", "--format=%i"])
    if result.returncode != 0:
        raise SlurmError(f"squeue: {_failed(result)}")
    steps = [line.strip().rpartition(".")[2] for line in result.stdout.splitlines() if line.strip()]
    return any(step not in ("batch", "extern") for step in steps)


def named(name: str) -> list[JobInfo]:
    """This user's jobs of that name, in any state squeue still knows."""
    result = run(["squeue", "--noheader", "--states=all", "--me", f"--name={name}", "--format=%i|%T|%j|%r"])
    if result.returncode != 0:
        raise SlurmError(f"squeue: {_failed(result)}")
    return list(parse_squeue(result.stdout).values())


def finished(job_id: str, *, accounting: bool) -> JobInfo | None:
    """An ended job's state and exit code, from sacct where the cluster keeps accounting, else from
    `scontrol show job` (also when the accounting database has not caught up yet); None when Slurm no
    longer knows the job."""
    if accounting:
        fields = "--format=JobID,State,ExitCode,JobName,Reason"
        result = run(["sacct", "--noheader", "--parsable2", "--allocations", "-j", job_id, fields])
        if result.returncode == 0 and (info := parse_sacct(result.stdout).get(job_id)) is not None:
            return info
    result = run(["scontrol", "show", "job", "--oneliner", job_id])
    if result.returncode != 0:
        if "Invalid job id" in result.stderr:
            return None
        raise SlurmError(f"scontrol show job {job_id}: {_failed(result)}")
    return parse_scontrol_job(result.stdout)


# -- parsing --------------------------------------------------------------------------------------------


def parse_squeue(text: str) -> dict[str, JobInfo]:
    """Lines of `squeue --format=%i|%T|%j|%r`."""
    jobs = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 4 and parts[0]:
            job_id, state, name, reason = parts
            jobs[job_id] = JobInfo(
                job_id=job_id, state=_state(state), name=name, reason=None if reason == "None" else reason
            )
    return jobs


def parse_sacct(text: str) -> dict[str, JobInfo]:
    """Lines of `sacct --parsable2 --format=JobID,State,ExitCode,JobName,Reason`, such as
    "12|CANCELLED by 0|0:15|nanostudy-3f2a-1|None"."""
    jobs = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 3 and parts[0].isdigit():
            code, signal = _exit_code(parts[2])
            name = parts[3] if len(parts) > 3 else None
            reason = parts[4] if len(parts) > 4 and parts[4] != "None" else None
            jobs[parts[0]] = JobInfo(
                job_id=parts[0],
                state=_state(parts[1]),
                name=name,
                reason=reason,
                exit_code=code,
                signal=signal,
            )
    return jobs


def parse_scontrol_job(text: str) -> JobInfo | None:
    """`scontrol show job --oneliner ID`: space-separated key=value pairs."""
    fields = dict(re.findall(r"(\w+)=(\S*)", text))
    if "JobId" not in fields or "JobState" not in fields:
        return None
    code, signal = _exit_code(fields.get("ExitCode", ""))
    reason = fields.get("Reason")
    return JobInfo(
        job_id=fields["JobId"],
        state=_state(fields["JobState"]),
        name=fields.get("JobName"),
        reason=None if reason in (None, "None") else reason,
        exit_code=code,
        signal=signal,
    )


def _state(text: str) -> str:
    return text.split()[0].rstrip("+").upper() if text.strip() else "UNKNOWN"


def _exit_code(text: str) -> tuple[int | None, int | None]:
    """Slurm's "code:signal"."""
    code, _, signal = text.partition(":")
    if not code.isdigit():
        return None, None
    return int(code), int(signal) if signal.isdigit() else None
