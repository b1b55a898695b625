"""From a trainer's `events.jsonl` into the store: one `store.ingest` call per read, resumable by offset.

`EventTail` follows one cell's events file from the byte offset the store has committed (so a restarted
runner reads each line exactly once; rows are keyed by step, so even a line read twice is stored once).
Each `pump()` reads the complete lines that arrived, stores their rows and the new offset in one
transaction, and remembers what the runner needs to decide how an attempt ended: the `end` event, and
whether the last event was a checkpoint taken on the way out (the trace of a clean stop).

An events file holds every attempt of its cell, one after another. The events of an attempt are those
written after it was claimed (`since`, the attempt's start time: the same host clock for the local
executor), so an `end` left by an earlier attempt never decides a later one.
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nanogpt.events import EVENTS_NAME, read_events
from store import CheckpointKind, Store, ingest, ingest_offset

# Fields of an `eval` event's metrics dict that have columns of their own.
_EVAL_METRIC_COLUMNS = ("preset", "accuracy", "centered", "stderr", "num_examples")


@dataclass(slots=True)
class AttemptTrace:
    """What the events of one attempt said so far."""

    start: dict[str, Any] | None = None
    end: dict[str, Any] | None = None
    last_kind: str | None = None
    last_checkpoint_final: bool | None = None  # of the last event, when it is a checkpoint
    last_checkpoint_stopping: bool | None = None  # ditto: taken on the way out of a stop
    last_step: int | None = None
    num_checkpoints: int = 0  # written during this attempt

    @property
    def stopped_at_checkpoint(self) -> bool:
        """The attempt's last event is a non-final checkpoint and it wrote no `end`: the trainer stopped on
        request (SIGTERM, max_seconds), which is resumable, rather than crashing. A trainer killed just after
        a periodic checkpoint leaves the same last event, but without `stopping`."""
        return (
            self.end is None
            and self.last_kind == "checkpoint"
            and self.last_checkpoint_final is False
            and bool(self.last_checkpoint_stopping)
        )

    def see(self, event: Mapping[str, Any]) -> None:
        kind = event.get("kind")
        self.last_kind = kind
        self.last_checkpoint_final = bool(event.get("final")) if kind == "checkpoint" else None
        # Absent: a trainer from before the field, whose non-final last checkpoint was most likely a stop's.
        self.last_checkpoint_stopping = bool(event.get("stopping", True)) if kind == "checkpoint" else None
        if isinstance(event.get("step"), int):
            self.last_step = event["step"]
        if kind == "checkpoint":
            self.num_checkpoints += 1
        elif kind == "start":
            self.start, self.end = dict(event), None
        elif kind == "end":
            self.end = dict(event)


class EventTail:
    """Tails one cell's events file into the store on behalf of one attempt (or of none: a catch-up)."""

    def __init__(
        self,
        store: Store,
        cell_id: str,
        run_dir: Path,
        *,
        attempt_id: int | None = None,
        since: float | None = None,
    ):
        self.store = store
        self.cell_id = cell_id
        self.path = Path(run_dir).resolve() / EVENTS_NAME
        self.key = str(self.path)
        self.attempt_id = attempt_id
        self.since = since
        self.offset = ingest_offset(store, cell_id, self.key)
        self.trace = AttemptTrace()

    def recover_trace(self) -> None:
        """Rebuild the attempt's trace from the part of the file already ingested (after a restart, the
        `end` event may have been stored by the runner that died before it acted on it)."""
        try:
            with open(self.path, "rb") as f:
                data = f.read(self.offset)
        except FileNotFoundError:
            return
        for line in data.splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a fragment left by a crash, as read_events skips it
            if isinstance(event, dict) and self._belongs(event):
                self.trace.see(event)

    def pump(self) -> int:
        """Store the complete lines that arrived since the last call; returns how many events were read."""
        try:
            if self.path.stat().st_size <= self.offset:
                return 0
        except FileNotFoundError:
            return 0
        events, offset = read_events(self.path, self.offset)
        if offset == self.offset:
            return 0
        rows = rows_of(events)
        start = None
        for event in events:
            if self._belongs(event):
                self.trace.see(event)
                if event.get("kind") == "start" and self.attempt_id is not None:
                    start = event
        ingest(
            self.store,
            self.cell_id,
            attempt_id=self.attempt_id,
            start=start,
            events_path=self.key,
            events_offset=offset,
            **rows,
        )
        self.offset = offset
        return len(events)

    def _belongs(self, event: Mapping[str, Any]) -> bool:
        if self.attempt_id is None:
            return False
        time = event.get("time")
        return self.since is None or (isinstance(time, int | float) and time >= self.since)


def rows_of(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The store rows (train, val, evals, checkpoints) of a batch of events; start and end make none."""
    train, val, evals, checkpoints = [], [], [], []
    for event in events:
        kind = event.get("kind")
        if kind == "step":
            train.append(
                _pick(
                    event,
                    "step",
                    "tokens",
                    "flops",
                    "loss",
                    "lr",
                    "lr_frac",
                    "tok_per_s",
                    "mfu",
                    "step_s",
                    "elapsed_s",
                    "time",
                )
            )
        elif kind == "val":
            val.append(
                _pick(
                    event, "step", "tokens", "flops", "val_loss", "val_bpb", "val_tokens", "elapsed_s", "time"
                )
            )
        elif kind == "eval":
            metrics = event.get("metrics") or {}
            row = _pick(event, "step", "task", "score", "metrics", "time")
            row.update({key: metrics[key] for key in _EVAL_METRIC_COLUMNS if key in metrics})
            evals.append(row)
        elif kind == "checkpoint":
            row = _pick(event, "step", "path", "tokens", "flops")
            row["kind"] = CheckpointKind.FINAL if event.get("final") else CheckpointKind.PERIODIC
            row["created_at"] = event.get("time")
            checkpoints.append(row)
    return {"train": train, "val": val, "evals": evals, "checkpoints": checkpoints}


def _pick(event: Mapping[str, Any], *names: str) -> dict[str, Any]:
    return {name: event.get(name) for name in names}
