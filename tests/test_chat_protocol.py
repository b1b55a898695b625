"""`python -m nanogpt.chat`: the JSON-lines protocol of the TUI's chat subprocess. The session is driven
in-process (requests in a queue, events in a list); then the real process, through its pipes."""

import json
import os
import queue
import subprocess
import sys
from pathlib import Path

import pytest
from chat_fixtures import CONTEXT, REPLY

from nanogpt.chat import Session
from nanogpt.chat_engine import ChatEngine

ROOT = Path(__file__).resolve().parents[1]
HI = [{"role": "user", "content": "the cat sees a book."}]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def chat(chat_runs) -> ChatEngine:
    return ChatEngine.load(chat_runs.chat)


@pytest.fixture(scope="module")
def base(chat_runs) -> ChatEngine:
    return ChatEngine.load(chat_runs.base)


def converse(engine: ChatEngine, *requests, end: bool = True) -> tuple[int, list[dict]]:
    """Run a session over these requests (dicts are sent as JSON, strings as they are)."""
    lines: queue.Queue = queue.Queue()
    for request in requests:
        lines.put(request if isinstance(request, str) else json.dumps(request) + "\n")
    if end:
        lines.put(None)
    events: list[dict] = []
    code = Session(engine, events.append).run(lines)
    assert all(json.loads(json.dumps(e)) == e for e in events)  # JSON-able as they are
    return code, events


def test_a_reply_streams_as_token_events(chat):
    code, events = converse(chat, {"type": "generate", "id": "a", "messages": HI, "seed": 0})
    assert code == 0
    assert [e["event"] for e in events][:2] == ["start", "token"] and events[-1]["event"] == "done"
    assert {e["id"] for e in events} == {"a"}
    assert events[0]["prompt_tokens"] == len(chat.prompt_tokens(chat_messages(HI)))
    tokens = [e["text"] for e in events if e["event"] == "token"]
    assert len(tokens) == len(REPLY)  # one byte per token: one event each
    done = events[-1]
    assert done["text"] == "".join(tokens) == REPLY
    assert (done["finish_reason"], done["completion_tokens"]) == ("stop", len(REPLY) + 1)
    assert done["elapsed_s"] > 0 and done["tokens_per_s"] > 0


def chat_messages(raw):
    from nanogpt.chat_engine import messages_from_json

    return messages_from_json(raw)


def test_a_role_that_is_not_a_string_is_named_as_the_bad_field():
    from nanogpt.chat_engine import RequestError

    for role in (["user"], {"name": "user"}, 1, None):
        with pytest.raises(RequestError) as raised:
            chat_messages([{"role": role, "content": "hi"}])
        assert raised.value.param == "messages[0].role", role
        assert str(raised.value).startswith("messages[0].role: must be one of system, user, assistant"), role


def test_sampling_settings_and_defaults(base):
    request = {"id": 7, "messages": HI, "max_tokens": 12, "temperature": 0.5, "top_k": 20, "top_p": 0.9}
    _, first = converse(base, {**request, "seed": 1, "stop": []})  # type defaults to generate
    _, again = converse(base, {**request, "seed": 1, "stop": None})
    assert first[-1] == {
        **again[-1],
        "elapsed_s": first[-1]["elapsed_s"],
        "tokens_per_s": first[-1]["tokens_per_s"],
    }
    assert (first[-1]["finish_reason"], first[-1]["completion_tokens"]) == ("length", 12)
    text = first[-1]["text"]
    _, cut = converse(base, {**request, "seed": 1, "stop": text[4:6]})  # one string or a list
    assert cut[-1]["text"] == text[: text.index(text[4:6])] and cut[-1]["finish_reason"] == "stop"


def test_bad_requests_get_error_events_and_the_session_goes_on(chat):
    code, events = converse(
        chat,
        "this is not json\n",
        "[1, 2]\n",
        "\n",
        {"type": "dance", "id": 1},
        {"id": 2, "messages": HI, "temprature": 0.5},
        {"id": 3, "messages": [{"role": "robot", "content": "hi"}]},
        {"id": 4, "messages": []},
        {"id": 5, "messages": HI, "temperature": 9},
        {"id": 6, "messages": HI, "max_tokens": 10**9},
        {"id": 7, "messages": [{"role": "user", "content": "a" * CONTEXT}]},
        {"id": [8], "messages": HI},
        {"type": "cancel", "id": 9},
        {"id": 10, "messages": HI, "seed": 0},
    )
    assert code == 0
    errors = [e for e in events if e["event"] == "error"]
    assert all(e["fatal"] is False for e in errors)
    messages = [(e["id"], e["message"]) for e in errors]
    expected = [
        (None, "not a JSON object"),
        (None, "a request is a JSON object, got list"),
        (1, "type: must be one of generate, cancel, exit, got 'dance'"),
        (2, "temprature: unknown field of a generate request"),
        (3, "messages[0].role: must be one of system, user, assistant; got 'robot'"),
        (4, "messages: must be a non-empty list"),
        (5, "temperature: must be a number in [0, 2], got 9"),
        (6, f"max_tokens: 1000000000 is more than the model's context of {CONTEXT} tokens"),
        (7, f"the conversation is {CONTEXT + 20} tokens, more than the model's context of {CONTEXT} tokens"),
        (None, "id: must be a string or an integer"),
        (9, "cancel: no generation with id 9 is running or waiting"),
    ]
    assert len(messages) == len(expected)
    for (got_id, got), (want_id, want) in zip(messages, expected, strict=True):
        assert got_id == want_id and got.startswith(want), (got_id, got)
    assert events[-1]["event"] == "done" and events[-1]["id"] == 10 and events[-1]["text"] == REPLY


def test_requests_that_once_ended_the_session_get_error_events_and_it_goes_on(chat):
    code, events = converse(
        chat,
        {"type": ["generate"], "id": 1},  # unhashable: not a key of the request types
        '{"id": 2, "max_tokens": 1' + "0" * 5000 + "}\n",  # Python reads no integer of over 4300 digits
        {"id": 3, "messages": [{"role": {"name": "user"}, "content": "hi"}]},
        {"id": 4, "messages": HI, "seed": 0},
    )
    assert code == 0
    errors = [(e["id"], e["message"], e["fatal"]) for e in events if e["event"] == "error"]
    assert len(errors) == 3, errors
    assert errors[0][:2] == (1, "type: must be one of generate, cancel, exit, got ['generate']")
    assert errors[1][0] is None and "4300 digits" in errors[1][1]
    assert errors[2][0] == 3 and not any(fatal for *_, fatal in errors)
    assert events[-1]["event"] == "done" and events[-1]["id"] == 4 and events[-1]["text"] == REPLY


def test_cancel_of_a_waiting_generation_ends_it_before_it_starts(base):
    """A cancel may name a generation still waiting its turn (docs/chat.md: it stops that generation): it
    ends at once, cancelled, with nothing generated, and the others go on."""
    long = {"messages": HI, "seed": 0}
    code, events = converse(
        base,
        {**long, "id": "x", "max_tokens": 20},
        {**long, "id": "y"},  # arrives while x runs: waits its turn
        {"type": "cancel", "id": "y"},
    )
    assert code == 0 and not [e for e in events if e["event"] == "error"]
    done = [(e["id"], e["finish_reason"], e["text"]) for e in events if e["event"] == "done"]
    assert done[0] == ("y", "cancelled", "") and done[1][:2] == ("x", "length")
    assert [e["id"] for e in events if e["event"] == "start"] == ["x"]


def test_cancel_stops_the_running_generation_and_queued_ones_follow(base):
    long = {"messages": HI, "seed": 0}  # until the context is full, unless cancelled
    code, events = converse(
        base,
        {**long, "id": "x"},
        {**long, "id": "y", "max_tokens": 3},  # arrives while x runs: waits its turn
        {"type": "cancel", "id": "x"},
    )
    assert code == 0
    done = [e for e in events if e["event"] == "done"]
    assert [(e["id"], e["finish_reason"]) for e in done] == [("x", "cancelled"), ("y", "length")]
    assert done[0]["completion_tokens"] < 5
    assert next(e["event"] for e in events if e["id"] == "y") == "start"


def test_exit_stops_at_once_and_the_end_of_input_after_the_last_answer(base):
    code, events = converse(base, {"messages": HI, "id": 1}, {"type": "exit"}, {"messages": HI, "id": 2})
    assert code == 0
    assert [(e["event"], e["id"]) for e in events if e["event"] != "token"] == [("start", 1), ("done", 1)]
    assert events[-1]["finish_reason"] == "cancelled"
    # The input ends right after a request: it is still answered in full.
    _, events = converse(base, {"messages": HI, "id": 3, "max_tokens": 6})
    assert events[-1]["finish_reason"] == "length" and events[-1]["completion_tokens"] == 6


def _process(*args: str, stdin: str) -> tuple[int, list[dict], str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "nanogpt.chat", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=ROOT,
    )
    return done.returncode, [json.loads(line) for line in done.stdout.splitlines()], done.stderr


def test_the_process_over_its_pipes(chat_runs, tmp_path):
    requests = [
        {"id": "q", "messages": HI, "seed": 0},
        "not json",
        {
            "id": "r",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "héllo ✓"}]}],
            "seed": 1,
        },
    ]
    stdin = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in requests)
    code, events, _ = _process(str(chat_runs.chat), "--device", "cpu", stdin=stdin)
    assert code == 0
    ready = events[0]
    assert ready["event"] == "ready" and ready["protocol"] == 1
    assert (ready["mode"], ready["model"], ready["context_tokens"]) == (
        "chat",
        "chat-run/step_000060",
        CONTEXT,
    )
    # The bad line is answered when it is read, which may be while q's reply streams.
    kinds = [(e["event"], e.get("id")) for e in events[1:] if e["event"] != "token"]
    assert [k for k in kinds if k[0] != "error"] == [
        ("start", "q"),
        ("done", "q"),
        ("start", "r"),
        ("done", "r"),
    ]
    assert kinds.count(("error", None)) == 1 and kinds.index(("error", None)) < kinds.index(("start", "r"))
    assert [e["text"] for e in events if e["event"] == "done"] == [REPLY, REPLY]

    code, events, _ = _process(str(tmp_path / "nowhere"), stdin="")
    assert code == 2
    assert events == [
        {
            "event": "error",
            "id": None,
            "message": f"{tmp_path / 'nowhere'}: no such checkpoint or run directory",
            "fatal": True,
        }
    ]


def test_a_line_nested_too_deeply_or_a_key_with_a_lone_surrogate_is_answered_and_the_process_goes_on(
    chat_runs,
):
    deep = "[" * 100_000 + "]" * 100_000
    surrogate = '{"id": "s", "messages": [], "\\ud800": 1}'  # the error message names the key
    stdin = "\n".join([deep, surrogate, json.dumps({"id": "q", "messages": HI, "seed": 0})]) + "\n"
    code, events, stderr = _process(str(chat_runs.chat), "--device", "cpu", stdin=stdin)
    assert code == 0, stderr
    errors = [e for e in events if e["event"] == "error"]
    assert [(e["id"], e["fatal"]) for e in errors] == [(None, False), ("s", False)]
    assert errors[0]["message"] == "not a JSON object: nested too deeply"
    assert errors[1]["message"].startswith("\ud800: unknown field of a generate request")
    assert events[-1]["event"] == "done" and events[-1]["id"] == "q" and events[-1]["text"] == REPLY
