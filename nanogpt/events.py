"""The trainer's events: one JSON object per line in `RUN_DIR/events.jsonl`, written by rank 0 only.

This module is the schema, the writer and the reader; the runner imports it (no torch here). Every event
has `v` (the schema version), `kind` and `time` (unix seconds), then the fields its kind lists in SCHEMA.
A field type ending in "?" may be null: every float metric is, because non-finite numbers are written as
null, never as NaN or Infinity (which are not JSON). docs/internals.md describes each kind.

    with EventWriter(run_dir / "events.jsonl") as events:
        events.write("step", step=1, tokens=524288, ..., loss=float("nan"))  # written with "loss": null
    new_events, offset = read_events(path, offset)  # complete lines only: safe while the file grows
"""

import json
import math
import numbers
import os
import time
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
EVENTS_NAME = "events.jsonl"
# The file (set by the runner) where each trainer process appends its exit code: a launcher's own code
# (torchrun's 1 for any failed worker, a Slurm job's) does not say that the trainer refused its input.
EXIT_RECORD_ENV = "NANOSTUDY_EXIT_RECORD"
END_STATUSES = ("done", "diverged", "error")

COMMON_FIELDS = {"v": "int", "kind": "str", "time": "float"}
# Fields added to a kind after its schema version was fixed: events written before may lack them (readers
# say what an absent one means).
LATER_FIELDS = {"checkpoint": {"stopping"}, "start": {"optim_state_bytes", "setup_s"}}
SCHEMA: dict[str, dict[str, str]] = {
    # Once per process start (a resumed run appends another `start` with resumed_from set).
    "start": {
        "config": "dict",  # the config file, as parsed (every default filled in)
        "mode": "str",  # pretraining | mid-training
        "resumed_from": "str?",  # checkpoint directory, relative to the run directory
        "init_from": "str?",  # mid-training: the checkpoint directory the weights came from
        "git_sha": "str?",
        "versions": "dict",  # python, torch, numpy, cuda, nanostudy
        # type, name, count, capability, dtype, peak_flops, memory_bytes (CUDA), and what the run trains
        # with: compile, fused_loss, fused_mlp, weight_copies, fp8_head
        "device": "dict",
        "world_size": "int",
        "num_params": "int",
        "num_scaling_params": "int",
        "flops_per_token": "int",
        "total_steps": "int",
        "total_tokens": "int",
        "total_flops": "float",
        "total_batch_tokens": "int",
        "device_batch_size": "int",
        "grad_accum": "int",
        "data_epochs": "float",  # passes over the training split the whole run makes
        "optim": "dict",  # the effective learning rates and weight decay after the scaling rules
        "optim_state_bytes": "list",  # bytes of optimizer state each rank holds (its shard), by rank
        # seconds of each set-up phase from the trainer's `run` (after its imports), in order: runtime
        # (config, CUDA, process group), model, batch_probe, data_and_optimizer, other (ranks agreeing, W&B);
        # gpu_wait (for a GPU lock) and warm_up (a trainer on standby) where they happened
        "setup_s": "dict",
        "warnings": "list",  # strings, e.g. when the run repeats data
    },
    # After an optimizer step; every `log_every` steps and after the last.
    "step": {
        "step": "int",  # optimizer steps done
        "tokens": "int",  # training tokens seen so far
        "flops": "float",  # training FLOPs so far (flops_per_token × tokens)
        "loss": "float?",  # mean training loss of this step over all ranks
        "lr": "float?",  # the matrix (Muon) learning rate used by this step
        "lr_frac": "float?",  # the schedule's multiplier
        "tok_per_s": "float?",
        "mfu": "float?",  # model FLOPs utilisation in [0, 1]; null on the CPU or an unknown GPU
        "step_s": "float?",  # wall time of this step
        "elapsed_s": "float?",  # training wall time so far, over all sessions of the run
    },
    "val": {
        "step": "int",
        "tokens": "int",
        "flops": "float",
        "val_loss": "float?",  # mean nats per target token
        "val_bpb": "float?",  # bits per byte of the targets' text
        "val_tokens": "int",  # target tokens evaluated
        "elapsed_s": "float?",
    },
    "eval": {
        "step": "int",
        "task": "str",
        "score": "float?",
        "metrics": "dict",
    },
    "checkpoint": {
        "step": "int",
        "path": "str",  # the checkpoint directory, relative to the run directory
        "tokens": "int",
        "flops": "float",
        "final": "bool",  # the run's last step
        "stopping": "bool",  # taken on the way out of a stop (SIGTERM, max_seconds): the trainer exits next
        "elapsed_s": "float?",
    },
    # The last event of a run that will not continue (an interrupted run writes none: it is resumable).
    "end": {
        "status": "str",  # done | diverged | error
        "message": "str?",
        "step": "int",
        "tokens": "int",
        "flops": "float",
        "elapsed_s": "float?",
        "val_loss": "float?",  # the last validation's
        "val_bpb": "float?",
    },
}

_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "bool": (bool,),
    "dict": (dict,),
    "list": (list,),
}


def sanitize(value: Any) -> Any:
    """A JSON-safe copy: non-finite floats become None; numpy-like scalars become Python numbers."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): sanitize(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [sanitize(v) for v in value]
    raise TypeError(f"cannot write a {type(value).__name__} into an event: {value!r}")


def validate(event: Any) -> None:
    """Raise ValueError naming the kind and field if `event` does not follow the schema."""
    if not isinstance(event, dict):
        raise ValueError(f"an event must be a JSON object, got {type(event).__name__}")
    kind = event.get("kind")
    if kind not in SCHEMA:
        raise ValueError(f"unknown event kind {kind!r}; known: {', '.join(SCHEMA)}")
    fields = COMMON_FIELDS | SCHEMA[kind]
    for name, spec in fields.items():
        if name not in event:
            if name in LATER_FIELDS.get(kind, ()):
                continue
            raise ValueError(f"{kind} event: missing field {name!r}")
        value = event[name]
        nullable = spec.endswith("?")
        if value is None and nullable:
            continue
        allowed = _TYPES[spec.rstrip("?")]
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise ValueError(f"{kind} event: field {name!r} must be {spec}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{kind} event: field {name!r} is {value}; write non-finite numbers as null")
    unknown = [name for name in event if name not in fields]
    if unknown:
        raise ValueError(f"{kind} event: unknown field {unknown[0]!r}")
    if event["v"] != SCHEMA_VERSION:
        raise ValueError(f"{kind} event: schema version {event['v']}, this code reads {SCHEMA_VERSION}")
    if kind == "end" and event["status"] not in END_STATUSES:
        raise ValueError(f"end event: status {event['status']!r} is not one of {', '.join(END_STATUSES)}")


def utf8_json(data: Any) -> str:
    """JSON with text as it is (not escaped to ASCII), which UTF-8 can always encode: a lone surrogate
    ("\\ud800", which a request may hold and an error may echo) has no UTF-8 form, so then everything
    outside ASCII is escaped. The chat process's lines and the chat server's replies."""
    text = json.dumps(data, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(data)
    return text


class EventWriteError(OSError):
    """An event that could not be written whole (a full disk); the message starts with the events file."""


class EventWriter:
    """Appends validated events to a JSON-lines file, one write and flush per line.

    The file is opened for appending only: existing lines are never rewritten. If a previous writer died
    in the middle of a line, the first event written ends that fragment first, so it stays a single
    unreadable line that `read_events` skips instead of corrupting the next event. A write that fails or is
    cut short (a full disk) raises EventWriteError, and the next event starts on a fresh line: the cut line
    alone is lost.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        size = os.fstat(self._fd).st_size
        # The file ends in part of a line (a writer that died, or a write cut short): the next write ends it.
        self._cut = False
        if size > 0:
            with open(self.path, "rb") as f:
                f.seek(size - 1)
                self._cut = f.read(1) != b"\n"

    def write(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Write one event (non-finite floats as null) and return it as written."""
        event = sanitize({"v": SCHEMA_VERSION, "kind": kind, "time": time.time(), **fields})
        validate(event)
        line = json.dumps(event, allow_nan=False, separators=(",", ":")) + "\n"
        data = ("\n" if self._cut else "").encode() + line.encode()
        # One write(2) on an O_APPEND descriptor: a reader sees the line whole or not at all.
        try:
            written = os.write(self._fd, data)
        except OSError as e:
            raise EventWriteError(f"{self.path}: cannot be written ({e.strerror or e})") from None
        self._cut = written < len(data)
        if self._cut:
            what = f"{written} of the {kind} event's {len(data)} bytes written: a full disk?"
            raise EventWriteError(f"{self.path}: cannot be written ({what})")
        return event

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "EventWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_events(path: str | os.PathLike, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Events from byte `offset` to the last complete line, and the offset to continue from.

    A missing file reads as no events. A trailing line without its newline is left for the next call;
    lines that are not JSON objects (a fragment left by a crash) are skipped.
    """
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    events = []
    for line in data[:end].splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events, offset + end


def record_exit(code: int) -> None:
    """Append this process's exit code, as one JSON line {"rank", "code"}, to the file named in
    EXIT_RECORD_ENV, if any. Best effort: a plain launcher sees the code anyway."""
    path = os.environ.get(EXIT_RECORD_ENV)
    if not path:
        return
    line = json.dumps({"rank": int(os.environ.get("RANK", "0")), "code": code}) + "\n"
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)
    except OSError:
        pass


def recorded_exits(path: str | os.PathLike) -> list[int]:
    """The exit codes that trainer processes recorded in `path` (record_exit); none for a missing file."""
    return [
        event["code"]
        for event in read_events(path)[0]
        if isinstance(event.get("code"), int) and not isinstance(event["code"], bool)
    ]
