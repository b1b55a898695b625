"""The runner's loop: keep the free GPUs busy with a study's pending cells until every cell is finished.

Each turn (every `poll_s`):
1. for each running attempt: ingest the events that arrived, then poll its process; an exited trainer's
   attempt is closed with the outcome its events and exit code imply, and a failed cell is retried while
   its failed attempts number fewer than `retry.max_attempts` (it resumes from its last checkpoint);
2. read every cell's state (one SELECT): a running cell of ours that is no longer running was cancelled
   through the store (`nanostudy cancel`, the TUI), so its trainer is told to stop;
3. start pending cells, largest first, on free GPUs (or one at a time on the CPU; or, with no GPU pool,
   as batch jobs that the cluster's queue places); a mid-training cell waits until its parent is done and
   starts from the parent's final checkpoint as the store records it. With `overlap_startup`, a GPU whose
   cell has begun training also gets the next cell *on standby* (nanogpt.gpu_lock): it sets up and
   compiles while the GPU trains the other, and trains the moment the other's process exits;
4. every `heartbeat_s`, a heartbeat for all open attempts.

The loop ends when none of our trainers runs and no cell can start. The runner is the only writer of the
database, and every write is one of the store's named, transactional functions, so a runner killed at
any moment leaves a consistent database: on the next start `recover()` re-adopts the trainers that still
run (they live in their own sessions and outlive the runner) and closes the attempts of those that ended
meanwhile, deciding from their events (see `scheduler.decide_outcome`). Each attempt records the study
whose runner looks after it: a cell shared with another study whose runner is live is left to that runner,
and one whose runner died is taken over, at the start or, while the loop runs, as soon as it is noticed.

Ctrl-C or SIGTERM: every trainer is asked to stop (it checkpoints and exits), the loop waits for them,
ingests the rest and puts their cells back to pending; a second Ctrl-C leaves at once (the trainers still
stop on their own; the next run finds their checkpoints).
"""

import contextlib
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nanogpt.config import RunConfig
from nanogpt.events import recorded_exits
from nanogpt.gpu_lock import default_lock_dir, lock_path
from runner.executor import (
    CONFIG_NAME,
    BackendUnavailable,
    Executor,
    Exited,
    Handle,
    LaunchRequest,
    describe_exit,
    exit_record_path,
    stop_record_path,
)
from runner.gpus import GpuPool
from runner.ingest import EventTail
from runner.lock import held_if_free, is_locked
from runner.lock import lock_path as study_lock_path
from runner.scheduler import (
    BAD_INPUT_REASON,
    EXIT_BAD_INPUT,
    Candidate,
    assign,
    decide_outcome,
    refused_input,
    retry_budget_left,
    with_recorded_exit,
)
from store import (
    Attempt,
    AttemptOutcome,
    CellMode,
    CellState,
    CellStatus,
    CheckpointKind,
    Store,
    attempts_of,
    cell_statuses,
    claim,
    end_attempt,
    final_checkpoint,
    get_cell,
    heartbeat,
    ingest,
    list_studies,
    open_attempts,
    record_launch,
    rewind,
    studies_of_cell,
    take_over_attempt,
    transition,
)

# Parent states that `nanostudy run --rerun STATE` moves back to pending.
RERUN_HINTS = ("failed", "diverged", "cancelled")
# The trainer's checkpoint directories (nanogpt.checkpoint, which imports torch, so not imported here).
_STEP_DIR = re.compile(r"^step_(\d{6,})$")
# A launch the executor's backend did not answer (a Slurm controller restarting): the attempt ends as not
# started, the cell is pending again, and no cell is launched for this long.
NOT_STARTED_REASON = "not started"
BACKEND_RETRY_S = 60.0


class RefusedConfig(ValueError):
    """A cell's recorded config that the trainer's own checks refuse (`RunConfig.from_dict`)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class CellLaunch:
    """What the loop needs to start a cell beyond its row in the store."""

    cell_id: str
    num_gpus: int  # processes (one per GPU) the planner asked for; the CPU always runs one
    run_dir: Path  # used when the store has no run directory for the cell yet
    # The study's current eval gauntlet keys (runner.study.GAUNTLET_KEYS), applied over the stored config
    # at each launch: they are not part of the cell id, so a cell recorded before the study changed them
    # would otherwise keep the old ones.
    gauntlet: Mapping[str, Any] = field(default_factory=dict)
    # Mode mid-training: the checkpoint the study names now. The cell's id holds the checkpoint's identity,
    # not its path, so a cell recorded while the checkpoint lay elsewhere starts from where it lies now.
    init_from: str | None = None
    # The prepared data's directory as this run found or made it. The cell's id holds the data's identity,
    # not its path, so a cell recorded under another --data-root (since moved or deleted) trains from here.
    train_dir: str | None = None

    def __post_init__(self) -> None:
        if self.num_gpus < 1:
            raise ValueError(f"cell {self.cell_id}: gpus must be >= 1, got {self.num_gpus}")


@dataclass(frozen=True, kw_only=True, slots=True)
class LoopOptions:
    max_parallel: int | None = None  # cells at once; None: as many as there are usable GPUs
    max_attempts: int = 3  # a failed cell is retried while it has fewer failed attempts than this
    rerun_diverged: bool = False  # retry diverged cells like failed ones
    poll_s: float = 0.5
    heartbeat_s: float = 5.0
    # A GPU's next cell sets up while its current one trains (study key resources.overlap_startup); the
    # GPUs' lock files live in gpu_lock_dir. Standby cells do not count toward max_parallel.
    overlap_startup: bool = False
    gpu_lock_dir: Path = field(default_factory=default_lock_dir)

    def __post_init__(self) -> None:
        if self.max_parallel is not None and self.max_parallel < 1:
            raise ValueError(f"max_parallel: must be >= 1, got {self.max_parallel}")
        if self.max_attempts < 1:
            raise ValueError(f"retry.max_attempts: must be >= 1, got {self.max_attempts}")
        if self.poll_s <= 0 or self.heartbeat_s <= 0:
            raise ValueError(
                f"poll_s and heartbeat_s must be positive, got {self.poll_s}, {self.heartbeat_s}"
            )


@dataclass(slots=True)
class _Active:
    """An attempt this runner watches."""

    attempt: Attempt
    handle: Handle
    tail: EventTail
    run_dir: Path
    gpus: tuple[int, ...] | None
    stop_requested: bool = False
    cancelled: bool = False  # the cell left `running` under us: cancelled through the store

    @property
    def cell_id(self) -> str:
        return self.attempt.cell_id


@dataclass(slots=True)
class _Signals:
    count: int = 0  # SIGINT/SIGTERM received; the handler only counts (the loop acts within poll_s)
    forwarded: bool = False


class StudyLoop:
    def __init__(
        self,
        store: Store,
        study_id: int,
        launches: Mapping[str, CellLaunch],
        *,
        executor: Executor,
        pool: GpuPool | None,
        options: LoopOptions,
        fresh_budget: frozenset[str] = frozenset(),
        log: Callable[[str], None] = print,
    ):
        self.store = store
        self.study_id = study_id
        self.launches = dict(launches)
        self.executor = executor
        self.pool = pool
        self.options = options
        # Cells moved back to pending by `--rerun` in this run: only their failures from now on count.
        self.fresh_budget = fresh_budget
        self.log = log
        self.started_at = time.time()
        self._active: dict[int, _Active] = {}
        self._signals = _Signals()
        self._waiting_logged = False
        self._claim_problem_logged = False
        self._launch_paused_until = float("-inf")  # after the executor's backend did not answer
        self._labels: dict[str, str] = {}
        if pool is not None and not pool.cpu:
            # A cell done or cancelled does not start again: it may have had more GPUs than this run has.
            finished = {
                status.id
                for status in cell_statuses(store, study_id)
                if status.state in (CellState.DONE, CellState.CANCELLED)
            }
            too_big = {
                c.cell_id: c.num_gpus
                for c in self.launches.values()
                if c.num_gpus > len(pool.usable) and c.cell_id not in finished
            }
            if too_big:
                cell_id, num_gpus = next(iter(too_big.items()))
                raise ValueError(
                    f"cell {cell_id} needs {num_gpus} GPUs but only {len(pool.usable)} are usable "
                    f"({pool.describe()}); {len(too_big)} cell(s) in all; give more GPUs with --gpus"
                )

    # -- the loop --------------------------------------------------------------------------------------

    def run(self) -> bool:
        """Run until no cell can start and none of ours runs; True if stopped by a signal."""
        with self._signal_handlers():
            self._labels.update(
                (status.id, label(status)) for status in cell_statuses(self.store, self.study_id)
            )
            self.recover()
            self._retry_failed_with_budget_left()
            last_heartbeat = time.monotonic()
            states: dict[str, CellStatus] = {}
            while self._signals.count < 2:
                if self._signals.count and not self._signals.forwarded:
                    self._stop_all()
                self._watch()
                states = {status.id: status for status in cell_statuses(self.store, self.study_id)}
                self._labels.update((cell_id, label(status)) for cell_id, status in states.items())
                self._notice_cancels(states)
                if not self._signals.count and self._recover_abandoned(states):
                    states = {status.id: status for status in cell_statuses(self.store, self.study_id)}
                if not self._signals.count:
                    self._schedule(states)
                if time.monotonic() - last_heartbeat >= self.options.heartbeat_s:
                    heartbeat(self.store, list(self._active))
                    last_heartbeat = time.monotonic()
                if not self._active and (self._signals.count or not self._runnable(states)):
                    break
                time.sleep(self.options.poll_s)
            if self._signals.count and not self._signals.forwarded:
                self._stop_all()  # two signals within one poll: the trainers still get their one SIGTERM
            if self.pool is not None:
                self.pool.keep_claims(())
            if self._active:
                self.log(
                    f"leaving {len(self._active)} trainer(s) to finish stopping on their own; "
                    "the next `nanostudy run` resumes their cells"
                )
            elsewhere = [
                cell_id
                for cell_id, status in states.items()
                if cell_id in self.launches and status.state is CellState.RUNNING
            ]
            if elsewhere and not self._signals.count:
                self.log(
                    f"{len(elsewhere)} cell(s) still train under another runner (a study that shares them); "
                    "`nanostudy status` shows them, and they count for this study once done"
                )
            if not self._signals.count:
                self._log_waiting_children(states)
        return self._signals.count > 0

    def _log_waiting_children(self, states: Mapping[str, CellStatus]) -> None:
        """Say why mid-training cells stay pending at the end: their parent ended without being done."""
        parents: Counter[str] = Counter()
        for cell_id, status in states.items():
            parent = status.parent_cell_id
            if cell_id in self.launches and status.state is CellState.PENDING and parent is not None:
                parent_state = states[parent].state if parent in states else None
                if parent_state is not CellState.DONE:
                    parents[parent_state.value if parent_state else "not in this study"] += 1
        for state, count in parents.items():
            rerun = f" (`nanostudy run --rerun {state}` trains it again)" if state in RERUN_HINTS else ""
            self.log(f"{count} mid-training cell(s) not started: their parent is {state}{rerun}")

    @contextlib.contextmanager
    def _signal_handlers(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handle(signum: int, _frame: object) -> None:
            self._signals.count += 1

        previous = {signum: signal.signal(signum, handle) for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _stop_all(self) -> None:
        self._signals.forwarded = True
        if self._active:
            self.log(f"stopping {len(self._active)} trainer(s): each checkpoints, then its cell is pending")
        for active in self._active.values():
            self._request_stop(active)

    def _request_stop(self, active: _Active) -> None:
        """Ask the attempt's trainer to stop, noting it first where a runner that recovers the attempt after
        this one has died finds it (a second Ctrl-C leaves at once; a kill -9 while waiting): its trainer
        may die of the SIGTERM without an event (still setting up), which is then no failure either."""
        active.stop_requested = True
        path = stop_record_path(active.run_dir, active.attempt.number)
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        self.executor.cancel(active.handle)

    # -- watching running attempts ---------------------------------------------------------------------

    def _watch(self) -> None:
        for active in list(self._active.values()):
            active.tail.pump()
            status = self.executor.poll(active.handle)
            if isinstance(status, Exited):
                self._finish(active, status)

    def _finish(self, active: _Active, exited: Exited) -> None:
        """Close the attempt with the outcome its events and exit code imply; retry per policy."""
        active.tail.pump()
        attempt = active.attempt
        trace = active.tail.trace
        exited = with_recorded_exit(exited, recorded_exits(exit_record_path(active.run_dir, attempt.number)))
        needs_stderr = trace.end is None or trace.end.get("status") == "error"
        tail = self.executor.error_tail(active.run_dir, attempt.number) if needs_stderr else None
        outcome, reason = decide_outcome(
            trace,
            exited,
            stop_requested=active.stop_requested,
            error_tail=tail,
            run_finished=trace.last_kind is not None or self._run_finished(active),
        )
        if outcome is AttemptOutcome.DONE:
            self._record_final_checkpoint(active)
        closed = end_attempt(self.store, attempt.id, outcome, exit_code=exited.code, reason=reason)
        self.executor.forget(active.handle)
        self._active.pop(attempt.id, None)
        name = self._name(attempt.cell_id)
        if not closed:
            self.log(f"{name}: cancelled; its trainer has stopped ({describe_exit(exited.code)})")
            return
        summary = (reason or "").splitlines()[0] if reason else ""
        self.log(f"{name}: attempt {attempt.number} {outcome.value}" + (f": {summary}" if summary else ""))
        self._maybe_retry(attempt.cell_id, outcome)

    def _run_finished(self, active: _Active) -> bool:
        """Whether the cell's final checkpoint exists (in the store, or as the run directory's newest at the
        last step): a trainer that exits 0 without an event found its run so, or it never trained."""
        cell = get_cell(self.store, active.cell_id)
        if cell is None or final_checkpoint(self.store, active.cell_id) is not None:
            return True
        newest = newest_checkpoint_step(active.run_dir)
        return newest is not None and newest >= cell.steps_total

    def _record_final_checkpoint(self, active: _Active) -> None:
        """Store the final checkpoint of a cell that is done without one in the store: its trainer was killed
        between renaming that checkpoint into place and writing the event that names it, and its next start
        found the run finished and wrote only the `end` event. A mid-training child, `nanostudy eval` and the
        chat look for the final checkpoint in the store; it is the run directory's newest, at the last
        step."""
        cell = get_cell(self.store, active.cell_id)
        if cell is None or final_checkpoint(self.store, active.cell_id) is not None:
            return
        end = active.tail.trace.end or {}
        last = end.get("step", cell.steps_total)
        if newest_checkpoint_step(active.run_dir) != last:
            return
        row = {"step": last, "kind": CheckpointKind.FINAL, "path": f"checkpoints/step_{last:06d}"}
        row.update((key, end[key]) for key in ("tokens", "flops") if key in end)
        ingest(self.store, active.cell_id, attempt_id=active.attempt.id, checkpoints=[row])

    def _maybe_retry(self, cell_id: str, outcome: AttemptOutcome, *, quiet: bool = False) -> None:
        if cell_id not in self.launches:
            return  # a cell the study file no longer plans (its attempt recovered): no run would start it
        retryable = {AttemptOutcome.FAILED: CellState.FAILED}
        if self.options.rerun_diverged:
            retryable[AttemptOutcome.DIVERGED] = CellState.DIVERGED
        if outcome not in retryable:
            return
        attempts = attempts_of(self.store, cell_id)
        if attempts and refused_input(attempts[-1].outcome, attempts[-1].exit_code, attempts[-1].reason):
            if not quiet:
                self.log(
                    f"{self._name(cell_id)}: not retried: the trainer refused its config or input (exit 2) "
                    "and would again; fix it, then `nanostudy run --rerun failed`"
                )
            return
        failures = self._failures(cell_id)
        if not retry_budget_left(failures=failures, max_attempts=self.options.max_attempts):
            if not quiet:
                self.log(f"{self._name(cell_id)}: {failures} failed attempt(s), no retry left")
            return
        reason = f"retry after {failures} of {self.options.max_attempts} allowed failed attempt(s)"
        if transition(self.store, cell_id, retryable[outcome], CellState.PENDING, reason=reason):
            self.log(f"{self._name(cell_id)}: {reason}; resumes from its last checkpoint")

    def _failures(self, cell_id: str) -> int:
        counted = {AttemptOutcome.FAILED}
        if self.options.rerun_diverged:
            counted.add(AttemptOutcome.DIVERGED)
        return sum(
            1
            for attempt in attempts_of(self.store, cell_id)
            if attempt.outcome in counted
            and (cell_id not in self.fresh_budget or attempt.started_at >= self.started_at)
        )

    def _retry_failed_with_budget_left(self) -> None:
        """Failed cells whose retries were not used up (a runner stopped between a failure and its retry,
        or a study whose retry.max_attempts grew) go back to pending."""
        outcomes = {CellState.FAILED: AttemptOutcome.FAILED}
        if self.options.rerun_diverged:
            outcomes[CellState.DIVERGED] = AttemptOutcome.DIVERGED
        for status in cell_statuses(self.store, self.study_id):
            if status.id in self.launches and status.state in outcomes:
                self._maybe_retry(status.id, outcomes[status.state], quiet=True)

    def _notice_cancels(self, states: Mapping[str, CellStatus]) -> None:
        for active in self._active.values():
            status = states.get(active.cell_id)
            if active.cancelled or status is None or status.state is CellState.RUNNING:
                continue
            active.cancelled = True
            if not active.stop_requested:
                self._request_stop(active)
            self.log(
                f"{self._name(active.cell_id)}: {status.state.value} through the store; stopping its trainer"
            )

    # -- starting cells --------------------------------------------------------------------------------

    def _runnable(self, states: Mapping[str, CellStatus]) -> list[Candidate]:
        busy = {active.cell_id for active in self._active.values()}
        candidates = []
        for status in states.values():
            launch = self.launches.get(status.id)
            if launch is None or status.state is not CellState.PENDING or status.id in busy:
                continue
            parent = status.parent_cell_id
            if (
                parent is not None
                and (states[parent].state if parent in states else None) is not CellState.DONE
            ):
                continue
            num_gpus = 1 if self.pool is None or self.pool.cpu else launch.num_gpus
            candidates.append(Candidate(cell_id=status.id, flops=status.flops, num_gpus=num_gpus))
        return candidates

    def _schedule(self, states: Mapping[str, CellStatus]) -> None:
        if self._launches_paused():
            return
        candidates = self._runnable(states)
        if not candidates:
            self._keep_claims()
            return
        training = [active for active in self._active.values() if not self._on_standby(active)]
        slots = self._capacity(len(candidates)) - len(training)
        free, standby_gpus = None, []
        if self.pool is not None and not self.pool.cpu:
            holders = Counter(gpu for active in self._active.values() for gpu in active.gpus or ())
            ours = {pid for active in self._active.values() for pid in self.executor.pids(active.handle)}
            without_others = self.pool.claim(self.pool.free(assigned=(), our_pids=ours))
            if self.pool.claim_problem and not self._claim_problem_logged:
                self._claim_problem_logged = True
                self.log(
                    "cannot claim GPUs, so another runner on this machine may start a cell on a GPU of ours "
                    f"while our trainer sets up: {self.pool.claim_problem}"
                )
            free = [gpu for gpu in without_others if not holders[gpu]]
            if self.options.overlap_startup:
                ready = self._ready_for_standby(training, holders)
                standby_gpus = [gpu for gpu in without_others if gpu in ready]
        chosen = assign(candidates, free_gpus=free, slots=slots) if slots > 0 else []
        if not chosen and not self._active and not self._waiting_logged:
            self.log(f"waiting for a free GPU ({len(candidates)} cell(s) ready; {self._why_no_gpu()})")
            self._waiting_logged = True
        for candidate, gpus in chosen:
            if self._launches_paused():
                break  # the backend did not answer this pass's last launch: the others wait too
            self._waiting_logged = False
            self._launch(candidate.cell_id, gpus)
        if standby_gpus and not self._launches_paused():
            started = {candidate.cell_id for candidate, _ in chosen}
            rest = [candidate for candidate in candidates if candidate.cell_id not in started]
            for candidate, gpus in assign(rest, free_gpus=standby_gpus, slots=len(standby_gpus)):
                if self._launches_paused():
                    break
                self._launch(candidate.cell_id, gpus, standby=True)
        self._keep_claims()

    def _launches_paused(self) -> bool:
        """Whether the executor's backend did not answer a launch a moment ago (BACKEND_RETRY_S)."""
        return time.monotonic() < self._launch_paused_until

    def _keep_claims(self) -> None:
        """Give other runners on this machine the GPUs that none of our cells runs on."""
        if self.pool is not None:
            self.pool.keep_claims({gpu for active in self._active.values() for gpu in active.gpus or ()})

    def _why_no_gpu(self) -> str:
        pool = self.pool
        if pool is None:
            return "other processes hold the GPUs"
        if pool.problem:
            return pool.problem
        # A GPU lost to an Xid error stays unreadable until a reset: say so, not that someone holds it.
        lost = [
            f"GPU {i} cannot be read ({why})"
            for i, why in sorted(pool.unreadable.items())
            if i in pool.usable
        ]
        if lost and len(lost) < len(pool.usable):
            lost.append("other processes hold the others")
        return "; ".join(lost) or "other processes hold the GPUs"

    def _on_standby(self, active: _Active) -> bool:
        """Whether an attempt started earlier still holds one of the attempt's GPUs (it waits for them)."""
        mine = set(active.gpus or ())
        return any(
            other.attempt.started_at < active.attempt.started_at and mine & set(other.gpus or ())
            for other in self._active.values()
        )

    @staticmethod
    def _ready_for_standby(training: list[_Active], holders: Mapping[int, int]) -> set[int]:
        """GPUs that one training attempt of ours holds alone and trains on (its `start` event, written
        once it holds the GPUs' locks, has arrived): each may take one cell on standby."""
        return {
            gpu
            for active in training
            if active.tail.trace.start is not None
            for gpu in active.gpus or ()
            if holders[gpu] == 1
        }

    def _capacity(self, num_ready: int) -> int:
        """Cells at once: one on the CPU; as many as GPUs (or max_parallel); without a pool (a cluster's
        queue places the jobs) max_parallel, or every cell that is ready."""
        if self.pool is None:
            return self.options.max_parallel or len(self._active) + num_ready
        if self.pool.cpu:
            return 1
        return self.options.max_parallel or len(self.pool.usable)

    def _launch(self, cell_id: str, gpus: tuple[int, ...] | None, *, standby: bool = False) -> None:
        cell = get_cell(self.store, cell_id)
        assert cell is not None, f"cell {cell_id} vanished from the database"
        run_dir = Path(cell.run_dir) if cell.run_dir else self.launches[cell_id].run_dir
        resume_step = newest_checkpoint_step(run_dir)
        attempt = claim(
            self.store,
            cell_id,
            executor=self.executor.kind,
            host=self.executor.host,
            gpus=None if gpus is None else ",".join(map(str, gpus)),
            num_gpus=0 if gpus is None else len(gpus),
            resume_step=resume_step,
            study_id=self.study_id,
        )
        if attempt is None:
            return  # no longer pending: cancelled or taken a moment ago
        assert attempt.id is not None
        # Another study's `run --runs-dir` may have moved this never-tried cell between the read above and
        # the claim; once claimed (an attempt exists) it moves no more, so its directory is read again.
        # A never-tried cell has no checkpoint in either directory: resume_step holds for both.
        claimed = get_cell(self.store, cell_id)
        if claimed is not None and claimed.run_dir and Path(claimed.run_dir) != run_dir:
            run_dir = Path(claimed.run_dir)
        try:
            # Lines nobody ingested yet (the end of an attempt cancelled while no runner watched), then
            # forget what comes after the checkpoint the trainer will resume from: it re-emits those steps.
            EventTail(self.store, cell_id, run_dir).pump()
            rewind(self.store, cell_id, to_step=resume_step or 0)
            self._write_config(cell_id, run_dir)
            tail = EventTail(self.store, cell_id, run_dir, attempt_id=attempt.id, since=attempt.started_at)
            request = LaunchRequest(
                cell_id=cell_id,
                attempt_id=attempt.id,
                attempt_number=attempt.number,
                run_dir=run_dir,
                gpus=None if gpus is None else tuple(map(str, gpus)),
                num_procs=1 if gpus is None else len(gpus),
                gpu_locks=self._gpu_locks(gpus),
            )
            handle = self.executor.submit(request)
        except BackendUnavailable as error:  # nothing started; the cell is pending again, no failure counted
            reason = f"{NOT_STARTED_REASON}: {error}"
            end_attempt(self.store, attempt.id, AttemptOutcome.INTERRUPTED, reason=reason)
            self._launch_paused_until = time.monotonic() + BACKEND_RETRY_S
            self.log(f"{self._name(cell_id)}: not started: {error}; trying again in {BACKEND_RETRY_S:.0f} s")
            return
        except RefusedConfig as error:  # the trainer would refuse it too (exit 2): no retry fixes it
            reason = f"{BAD_INPUT_REASON}: {error}"
            end_attempt(
                self.store, attempt.id, AttemptOutcome.FAILED, exit_code=EXIT_BAD_INPUT, reason=reason
            )
            self.log(f"{self._name(cell_id)}: could not start the trainer: {reason}")
            self._maybe_retry(cell_id, AttemptOutcome.FAILED)
            return
        except Exception as error:  # a run directory we cannot write, a failed fork
            reason = f"could not start the trainer: {type(error).__name__}: {error}"
            end_attempt(self.store, attempt.id, AttemptOutcome.FAILED, reason=reason)
            self.log(f"{self._name(cell_id)}: {reason}")
            self._maybe_retry(cell_id, AttemptOutcome.FAILED)
            return
        record_launch(
            self.store, attempt.id, pid=handle.pid, pid_start_time=handle.pid_start_time, job_id=handle.job_id
        )
        self._active[attempt.id] = _Active(
            attempt=attempt, handle=handle, tail=tail, run_dir=run_dir, gpus=gpus
        )
        where = "the CPU" if gpus is None else f"GPU {','.join(map(str, gpus))}"
        if standby:
            where += ", on standby until the cell training there ends"
        started = f"started on {where}" if handle.job_id is None else f"submitted to {self.executor.host}"
        resumed = f", resuming from step {resume_step}" if resume_step else ""
        self.log(f"{self._name(cell_id)}: attempt {attempt.number} {started} ({handle.where}{resumed})")

    def _gpu_locks(self, gpus: tuple[int, ...] | None) -> tuple[str, ...]:
        """With overlap_startup, every trainer on GPUs takes their locks: the one training holds them, the
        one on standby waits for them."""
        if gpus is None or not self.options.overlap_startup or self.pool is None:
            return ()
        return tuple(str(lock_path(self.options.gpu_lock_dir, gpu)) for gpu in gpus)

    def _write_config(self, cell_id: str, run_dir: Path) -> None:
        """RUN_DIR/config.json from the planned config; a mid-training cell gets its parent's final
        checkpoint as `init_from`, as the store recorded it (never a guessed path). One without a parent
        (mode mid-training) starts from the checkpoint the study names now (CellLaunch.init_from), else from
        the one the store recorded with the cell. The data directory is the one this run prepared or found
        (CellLaunch.train_dir), where the store recorded another."""
        cell = get_cell(self.store, cell_id)
        assert cell is not None
        config = dict(cell.config)
        launch = self.launches.get(cell_id)
        if launch is not None and launch.gauntlet:
            config["eval"] = {**config.get("eval", {}), **launch.gauntlet}
        if cell.mode is CellMode.MID_TRAINING and cell.parent_cell_id is not None:
            parent = get_cell(self.store, cell.parent_cell_id)
            checkpoint = final_checkpoint(self.store, cell.parent_cell_id)
            if parent is None or parent.run_dir is None or checkpoint is None:
                raise RuntimeError(f"parent cell {cell.parent_cell_id}: no final checkpoint in the database")
            config["init_from"] = str((Path(parent.run_dir) / checkpoint.path).resolve())
        elif launch is not None and launch.init_from is not None:
            config["init_from"] = launch.init_from
        if launch is not None and launch.train_dir is not None:
            config["data"] = {**config.get("data", {}), "train_dir": launch.train_dir}
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / CONFIG_NAME
        try:
            run_config = RunConfig.from_dict(config, source=str(path))
        except ValueError as error:
            raise RefusedConfig(str(error)) from None
        run_config.write(path)

    # -- after a restart -------------------------------------------------------------------------------

    def recover(self) -> None:
        """Re-adopt the trainers of open attempts that still run; close the attempts of those that ended
        while no runner watched them. Those on another host, and those of a shared cell that another
        study's live runner looks after, are left to them (see `_take`)."""
        for attempt in open_attempts(self.store, self.study_id):
            if not self._here(attempt):
                self.log(
                    f"{self._name(attempt.cell_id)}: attempt {attempt.number} runs on {attempt.host} "
                    f"({attempt.executor.value}); left to it"
                )
                continue
            if (left := self._take(attempt)) is not None:
                self.log(f"{self._name(attempt.cell_id)}: attempt {attempt.number} {left}; left to it")
                continue
            self._recover(attempt)

    def _recover_abandoned(self, states: Mapping[str, CellStatus]) -> bool:
        """Recover the open attempts of our cells that run elsewhere once the runner looking after them has
        died (another study's that shares the cell; see `_take`): a runner recovers only at its own start,
        so such a cell would otherwise stay running until that study ran again. True if any was recovered
        (its cell's state changed)."""
        busy = {active.cell_id for active in self._active.values()}
        elsewhere = {
            cell_id
            for cell_id, status in states.items()
            if status.state is CellState.RUNNING and cell_id in self.launches and cell_id not in busy
        }
        if not elsewhere:
            return False
        recovered = False
        for attempt in open_attempts(self.store, self.study_id):
            if attempt.cell_id not in elsewhere or not self._here(attempt):
                continue
            if self._take(attempt) is not None:
                continue  # its runner is live: it looks after the attempt
            runner = self._study_name(attempt.study_id) if attempt.study_id is not None else None
            self.log(
                f"{self._name(attempt.cell_id)}: attempt {attempt.number} was left by "
                + (f"the runner of study {runner!r}" if runner else "a runner")
                + ", which has stopped; taking it over"
            )
            self._recover(attempt)
            recovered = True
        return recovered

    def _here(self, attempt: Attempt) -> bool:
        """Whether this runner's executor could have started the attempt (same kind, same host)."""
        return attempt.executor == self.executor.kind and attempt.host == self.executor.host

    def _take(self, attempt: Attempt) -> str | None:
        """Make the open attempt this runner's to recover; or, left to another runner, say why.

        Ours: our study's previous runner made it, and that runner is dead (we hold the study's lock).
        Another study's (the cell is shared): left to its runner while that one is live, else taken over
        under that study's lock, so that its runner, restarting in that instant, cannot recover it too.
        One made before schema version 3 (no study recorded): left while any other study sharing the cell
        has a live runner, as then; else taken. Taking over is a compare-and-swap: of two runners taking
        the same attempt, one wins.
        """
        assert attempt.id is not None
        owner = attempt.study_id
        if owner == self.study_id:
            return None
        if owner is None:
            if (runner := self._other_runner(attempt.cell_id)) is not None:
                return f"belongs to the runner of study {runner!r} (the cell is shared)"
            taken = take_over_attempt(self.store, attempt.id, study_id=self.study_id, from_study_id=None)
        else:
            name = self._study_name(owner)
            lock = held_if_free(study_lock_path(self.store, name)) if name else contextlib.nullcontext(True)
            with lock as free:
                if not free:
                    return f"belongs to the runner of study {name!r} (the cell is shared)"
                taken = take_over_attempt(self.store, attempt.id, study_id=self.study_id, from_study_id=owner)
        return None if taken else "was closed or taken over by another runner meanwhile"

    def _recover(self, attempt: Attempt) -> None:
        """Re-adopt the attempt's trainer if it still runs, else close the attempt from its events."""
        assert attempt.id is not None
        cell = get_cell(self.store, attempt.cell_id)
        assert cell is not None
        launch = self.launches.get(attempt.cell_id)
        run_dir = Path(cell.run_dir) if cell.run_dir else launch.run_dir if launch else None
        if run_dir is None:
            end_attempt(self.store, attempt.id, AttemptOutcome.LOST, reason="no run directory recorded")
            return
        tail = EventTail(
            self.store, attempt.cell_id, run_dir, attempt_id=attempt.id, since=attempt.started_at
        )
        tail.recover_trace()
        handle = self.executor.adopt(attempt, run_dir)
        gpus = tuple(int(gpu) for gpu in attempt.gpus.split(",")) if attempt.gpus else None
        # The runner that died had asked the trainer to stop: however it ends, that is no failure.
        stop_requested = stop_record_path(run_dir, attempt.number).exists()
        if handle is not None:
            recorded = (attempt.pid, attempt.pid_start_time, attempt.job_id)
            if (handle.pid, handle.pid_start_time, handle.job_id) != recorded:
                record_launch(
                    self.store,
                    attempt.id,
                    pid=handle.pid,
                    pid_start_time=handle.pid_start_time,
                    job_id=handle.job_id,
                )
            tail.pump()
            active = _Active(
                attempt=attempt,
                handle=handle,
                tail=tail,
                run_dir=run_dir,
                gpus=gpus,
                stop_requested=stop_requested,
            )
            self._active[attempt.id] = active
            self.log(f"{self._name(attempt.cell_id)}: re-adopted attempt {attempt.number} ({handle.where})")
            if attempt.cell_id not in self.launches:
                # The study file was edited since: nobody would see it in the study, nor be able to cancel it.
                name = self._name(attempt.cell_id)
                self.log(
                    f"{name}: no longer in the study file's plan; stopping its trainer (it checkpoints, and "
                    "resumes if a study plans the cell again)"
                )
                self._request_stop(active)
            return
        tail.pump()
        if attempt.pid is None and attempt.job_id is None and tail.trace.start is None:
            end_attempt(
                self.store,
                attempt.id,
                AttemptOutcome.LOST,
                reason="the runner stopped before this attempt's trainer started",
            )
            self.log(f"{self._name(attempt.cell_id)}: attempt {attempt.number} never started; pending again")
            return
        gone = Handle(
            attempt_id=attempt.id,
            pid=attempt.pid,
            pid_start_time=attempt.pid_start_time,
            job_id=attempt.job_id,
        )
        self._finish(
            _Active(
                attempt=attempt,
                handle=gone,
                tail=tail,
                run_dir=run_dir,
                gpus=gpus,
                stop_requested=stop_requested,
            ),
            Exited(code=None, from_trainer=False),
        )

    def _other_runner(self, cell_id: str) -> str | None:
        """The name of another study that shares the cell and whose runner is running now, if any."""
        ours = self._study_name(self.study_id)
        for name in studies_of_cell(self.store, cell_id):
            if name != ours and is_locked(study_lock_path(self.store, name)):
                return name
        return None

    def _study_name(self, study_id: int) -> str | None:
        return next((study.name for study in list_studies(self.store) if study.id == study_id), None)

    def _name(self, cell_id: str) -> str:
        return self._labels.get(cell_id, f"cell {cell_id}")


def label(status: CellStatus) -> str:
    """'cell 3f2a9c1b0d4e (d4 7.5e+15 FLOPs seed 0)': how the log names a cell (budgets to 3 digits)."""
    mode = " mid" if status.mode is CellMode.MID_TRAINING else ""
    return f"cell {status.id} (d{status.depth} {status.flops_budget:.3g} FLOPs seed {status.seed}{mode})"


def newest_checkpoint_step(run_dir: Path) -> int | None:
    """The step of the run directory's newest complete checkpoint: where its trainer will resume.

    Mirrors `nanogpt.checkpoint.latest_checkpoint` (complete checkpoints are renamed into `step_NNNNNN`
    directories; a crash leaves only `.tmp-` ones), without importing torch into the runner."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return None
    steps = [int(m.group(1)) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return max(steps, default=None)
