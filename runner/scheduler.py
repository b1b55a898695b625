"""The runner's decisions, free of processes and databases: which cells start where, how an attempt ended,
and whether a failed cell is tried again. `runner.run` applies them.
"""

from collections.abc import Sequence
from dataclasses import dataclass, replace

from runner.executor import Exited, describe_exit
from runner.ingest import AttemptTrace
from store import AttemptOutcome

EXIT_DONE = 0  # nanogpt.train: done (also a run found already done, which writes no events)
EXIT_BAD_INPUT = 2  # nanogpt.train: bad config or input, nothing written
EXIT_STOPPED = 143  # nanogpt.train: stopped on request after writing a checkpoint
# Slurm's final job states that are not the trainer's doing: the cell goes back to pending and resumes
# from its last checkpoint in a new job (a TIMEOUT only when the job wrote one: else it can never finish).
REQUEUE_JOB_STATES = frozenset({"TIMEOUT", "PREEMPTED", "NODE_FAIL", "BOOT_FAIL"})  # the node, not the job
# The reason of an attempt whose trainer the runner stopped on its way out (Ctrl-C, SIGTERM).
STOPPED_BY_RUNNER = "stopped by the runner"
# How the reason of an attempt whose trainer refused its config or input (exit 2) begins.
BAD_INPUT_REASON = "bad config or input"


@dataclass(frozen=True, kw_only=True, slots=True)
class Candidate:
    """A pending cell that may start now (its parent, if any, is done)."""

    cell_id: str
    flops: float
    num_gpus: int

    def __post_init__(self) -> None:
        if self.num_gpus < 1:
            raise ValueError(f"cell {self.cell_id}: num_gpus must be >= 1, got {self.num_gpus}")


def assign(
    candidates: Sequence[Candidate], *, free_gpus: Sequence[int] | None, slots: int
) -> list[tuple[Candidate, tuple[int, ...] | None]]:
    """Start the largest cells first: each takes `num_gpus` of the free GPUs (None on the CPU, where a cell
    takes a slot only), at most `slots` cells in all.

    A cell that does not fit is skipped and smaller ones may take the GPUs left over (backfill), so a GPU
    never idles while some cell could use it; the price is that a many-GPU cell can wait behind a stream
    of small ones when other people's processes keep GPUs busy.
    """
    ordered = sorted(candidates, key=lambda cell: (-cell.flops, cell.cell_id))
    chosen: list[tuple[Candidate, tuple[int, ...] | None]] = []
    left = None if free_gpus is None else list(free_gpus)
    for cell in ordered:
        if len(chosen) >= slots:
            break
        if left is None:
            chosen.append((cell, None))
        elif cell.num_gpus <= len(left):
            chosen.append((cell, tuple(left[: cell.num_gpus])))
            del left[: cell.num_gpus]
    return chosen


def decide_outcome(
    trace: AttemptTrace,
    exited: Exited,
    *,
    stop_requested: bool,
    error_tail: str | None,
    run_finished: bool = True,
) -> tuple[AttemptOutcome, str | None]:
    """How an attempt ended, from its events first and its exit code second.

    - An `end` event decides: done, diverged, or error (failed, with the trainer's message and stderr).
    - No event at all and exit 0: the trainer found its run already done (its final checkpoint and `end`
      were written by an earlier attempt) and wrote nothing: done (for a Slurm job, one that COMPLETED:
      a job cancelled while queued has exit code 0 too), if `run_finished` (the run directory or the
      store holds the cell's final checkpoint); else it never trained, and done would be final: failed.
    - No `end`, and we asked it to stop: interrupted, resumable from its last checkpoint; not a failure.
    - A Slurm job that ended TIMEOUT, PREEMPTED, NODE_FAIL or BOOT_FAIL: interrupted likewise (a TIMEOUT
      that wrote no checkpoint is failed: the next job would time out at the same place); CANCELLED by
      someone else (scancel outside nanostudy): failed, so that it is retried per policy and no more.
    - No `end`, and it exited 143, or (exit code unknown or a launcher's) its last event is a checkpoint
      taken on the way out: interrupted, resumable from that checkpoint.
    - Anything else is a crash: failed, with the last lines of stderr as the reason.
    """
    end = trace.end
    if end is not None:
        status = end.get("status")
        if status == "done":
            return AttemptOutcome.DONE, None
        if status == "diverged":
            return AttemptOutcome.DIVERGED, end.get("message") or "diverged"
        message = end.get("message") or "the trainer reported an error"
        return AttemptOutcome.FAILED, _join(message, error_tail)
    # A Slurm job cancelled while still queued also ends with exit code 0 and no events: not done.
    finished = exited.job_state in (None, "COMPLETED")
    if trace.start is None and trace.last_kind is None and exited.code == EXIT_DONE and finished:
        if run_finished:
            return AttemptOutcome.DONE, None
        return AttemptOutcome.FAILED, _join(
            "the trainer exited 0 without writing any event, and its run directory holds no final checkpoint",
            error_tail,
        )
    if stop_requested:
        return AttemptOutcome.INTERRUPTED, STOPPED_BY_RUNNER
    if exited.job_state is not None and (decided := _decide_job_state(trace, exited.job_state, error_tail)):
        return decided
    if exited.from_trainer and exited.code == EXIT_STOPPED:
        return (
            AttemptOutcome.INTERRUPTED,
            "the trainer stopped itself after a checkpoint (SIGTERM or max_seconds)",
        )
    if not exited.from_trainer and trace.stopped_at_checkpoint:
        return AttemptOutcome.INTERRUPTED, "the trainer stopped after a checkpoint (SIGTERM or max_seconds)"
    if exited.from_trainer and exited.code == EXIT_BAD_INPUT:
        # The trainer's one-line error is its last `error:` line on stderr (under torchrun, whose report of
        # the worker's exit code follows it), else its last line: lead with it, so a summary shows it.
        lines = (error_tail or "").strip().splitlines()
        errors = [line for line in lines if line.startswith("error: ")]
        detail = (errors or lines)[-1].removeprefix("error: ") if lines else None
        return AttemptOutcome.FAILED, _join(
            f"{BAD_INPUT_REASON}: {detail}" if detail else BAD_INPUT_REASON, error_tail
        )
    if exited.job_state is not None:
        what = f"the Slurm job ended {exited.job_state} without an end event ({describe_exit(exited.code)})"
    elif exited.code is None:
        what = "the trainer ended while no runner watched it, without an end event"
    else:
        what = f"the trainer exited without an end event ({describe_exit(exited.code)})"
    return AttemptOutcome.FAILED, _join(what, error_tail)


def _decide_job_state(
    trace: AttemptTrace, job_state: str, error_tail: str | None
) -> tuple[AttemptOutcome, str | None] | None:
    """The outcome a Slurm job's final state decides by itself (see decide_outcome), or None."""
    if job_state == "TIMEOUT" and not trace.num_checkpoints:
        return AttemptOutcome.FAILED, _join(
            "the Slurm job reached its time limit before writing a checkpoint; raise resources.slurm.time "
            "or checkpoint.every_steps",
            error_tail,
        )
    if job_state in REQUEUE_JOB_STATES:
        return AttemptOutcome.INTERRUPTED, (
            f"the Slurm job ended {job_state}; the cell resumes from its last checkpoint in a new job"
        )
    if job_state == "CANCELLED":
        return AttemptOutcome.FAILED, _join("the Slurm job was cancelled outside nanostudy", error_tail)
    return None


def with_recorded_exit(exited: Exited, recorded: Sequence[int]) -> Exited:
    """`exited`, or the trainer's exit 2 where a launcher's own code hides it (torchrun exits 1 for any
    failed worker; a Slurm job has srun's code) and one of the trainer's processes recorded that it refused
    its config or input (`recorded`: nanogpt.events.recorded_exits), so that the cell is not retried."""
    if exited.from_trainer or EXIT_BAD_INPUT not in recorded:
        return exited
    return replace(exited, code=EXIT_BAD_INPUT, from_trainer=True)


def refused_input(outcome: AttemptOutcome | None, exit_code: int | None, reason: str | None) -> bool:
    """Whether an attempt failed because its trainer refused its config or input (exit 2): a retry would
    fail the same way (a second trainer refused by the run directory's lock exits 2 too)."""
    return (
        outcome is AttemptOutcome.FAILED
        and exit_code == EXIT_BAD_INPUT
        and (reason or "").startswith(BAD_INPUT_REASON)
    )


def retry_budget_left(*, failures: int, max_attempts: int) -> bool:
    """A failed cell is tried again while its failed attempts number fewer than `max_attempts`."""
    return failures < max_attempts


def _join(message: str, tail: str | None) -> str:
    return f"{message}\n{tail}" if tail else message
