"""The event schema, the append-only writer (non-finite → null) and the tailing reader."""

import json
import math

import numpy as np
import pytest

from nanogpt.events import (
    EXIT_RECORD_ENV,
    SCHEMA,
    SCHEMA_VERSION,
    EventWriter,
    read_events,
    record_exit,
    recorded_exits,
    sanitize,
    validate,
)

STEP = dict(
    step=3,
    tokens=3072,
    flops=7.2e8,
    loss=2.5,
    lr=0.02,
    lr_frac=1.0,
    tok_per_s=1e4,
    mfu=None,
    step_s=0.01,
    elapsed_s=0.05,
)
END = dict(
    status="done", message=None, step=3, tokens=3072, flops=7.2e8, elapsed_s=1.0, val_loss=2.0, val_bpb=None
)


def event(kind: str, **fields) -> dict:
    return {"v": SCHEMA_VERSION, "kind": kind, "time": 1.7e9, **fields}


def test_valid_events_pass():
    validate(event("step", **STEP))
    validate(event("end", **END))
    validate(event("eval", step=10, task="hellaswag", score=0.3, metrics={"n": 100}))
    checkpoint = dict(step=3, path="checkpoints/step_000003", tokens=1, flops=1.0, final=True, elapsed_s=2)
    validate(event("checkpoint", **checkpoint, stopping=False))
    validate(event("checkpoint", **checkpoint))  # `stopping` came later: older trainers' events lack it


@pytest.mark.parametrize(
    ("broken", "expected"),
    [
        (event("step", **{k: v for k, v in STEP.items() if k != "loss"}), "step event: missing field 'loss'"),
        (event("step", **(STEP | {"step": "3"})), "field 'step' must be int"),
        (event("step", **(STEP | {"step": True})), "field 'step' must be int"),
        (event("step", **(STEP | {"tokens": None})), "field 'tokens' must be int"),
        (
            event("step", **(STEP | {"loss": math.nan})),
            "field 'loss' is nan; write non-finite numbers as null",
        ),
        (event("step", **STEP, extra=1), "step event: unknown field 'extra'"),
        (
            event("checkpoint", step=3, path="c", tokens=1, flops=1.0, final=True, elapsed_s=2, stopping=1),
            "field 'stopping' must be bool",
        ),
        (
            event("end", **(END | {"status": "interrupted"})),
            "status 'interrupted' is not one of done, diverged",
        ),
        (event("finish", **END), "unknown event kind 'finish'"),
        (event("step", **STEP) | {"v": SCHEMA_VERSION + 1}, "schema version"),
        ([1, 2], "an event must be a JSON object"),
    ],
)
def test_schema_violations_are_named(broken, expected):
    with pytest.raises(ValueError) as info:
        validate(broken)
    assert expected in str(info.value)


def test_every_kind_of_the_contract_has_a_schema():
    assert set(SCHEMA) == {"start", "step", "val", "eval", "checkpoint", "end"}


def test_sanitize_turns_non_finite_into_null_and_numpy_into_python():
    out = sanitize(
        {"a": np.float32(1.5), "b": [math.inf, -math.inf, np.int64(3)], "c": (math.nan,), "d": True}
    )
    assert out == {"a": 1.5, "b": [None, None, 3], "c": [None], "d": True}
    assert type(out["b"][2]) is int
    with pytest.raises(TypeError, match="cannot write a set"):
        sanitize({"x": {1}})


def test_writer_appends_flushed_lines_with_null_for_nan(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text('{"kind": "earlier"}\n')
    with EventWriter(path) as writer:
        written = writer.write("step", **(STEP | {"loss": math.nan, "tok_per_s": math.inf}))
        # Flushed per line: visible to a reader before the writer closes.
        events, _ = read_events(path)
        assert [e["kind"] for e in events] == ["earlier", "step"]
    text = path.read_text()
    assert text.startswith('{"kind": "earlier"}\n')  # the existing line is untouched
    assert "NaN" not in text and "Infinity" not in text
    line = json.loads(text.splitlines()[1])
    assert line == written and line["loss"] is None and line["tok_per_s"] is None
    assert line["v"] == SCHEMA_VERSION and line["kind"] == "step"


def test_writer_rejects_a_bad_event_and_writes_nothing(tmp_path):
    path = tmp_path / "events.jsonl"
    with EventWriter(path) as writer, pytest.raises(ValueError, match="missing field 'loss'"):
        writer.write("step", **{k: v for k, v in STEP.items() if k != "loss"})
    assert path.read_bytes() == b""


def test_writer_terminates_a_fragment_left_by_a_crash(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"v":1,"kind":"step","ste')  # a writer died mid-line
    with EventWriter(path) as writer:
        writer.write("end", **END)
    events, offset = read_events(path)
    assert [e["kind"] for e in events] == ["end"]  # the fragment is skipped, the new event intact
    assert offset == path.stat().st_size


def test_reader_returns_complete_lines_only_and_resumes_from_its_offset(tmp_path):
    path = tmp_path / "events.jsonl"
    assert read_events(path) == ([], 0)  # not yet created
    first = json.dumps(event("step", **STEP)) + "\n"
    second = json.dumps(event("end", **END)) + "\n"
    path.write_text(first + second[:20])
    events, offset = read_events(path)
    assert len(events) == 1 and offset == len(first.encode())
    assert read_events(path, offset) == ([], offset)  # the half line is not returned
    with open(path, "a") as f:
        f.write(second[20:])
    events, offset = read_events(path, offset)
    assert [e["kind"] for e in events] == ["end"] and offset == path.stat().st_size


def test_each_process_records_its_exit_code_where_the_runner_asked(tmp_path, monkeypatch):
    record = tmp_path / "attempt_1.exit"
    monkeypatch.delenv(EXIT_RECORD_ENV, raising=False)
    record_exit(2)  # not asked: nothing written anywhere
    assert not record.exists() and recorded_exits(record) == []
    monkeypatch.setenv(EXIT_RECORD_ENV, str(record))
    monkeypatch.setenv("RANK", "1")
    record_exit(2)
    monkeypatch.setenv("RANK", "0")
    record_exit(143)
    with open(record, "a") as f:
        f.write('{"rank": 2, "code": true}\n{"rank": 3, "co')  # not a code; a line cut short
    assert record.read_text().splitlines()[:2] == ['{"rank": 1, "code": 2}', '{"rank": 0, "code": 143}']
    assert recorded_exits(record) == [2, 143]
    monkeypatch.setenv(EXIT_RECORD_ENV, str(tmp_path / "missing" / "attempt_1.exit"))
    record_exit(2)  # a directory that is gone: the exit goes on
