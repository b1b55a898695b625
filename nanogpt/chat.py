"""`python -m nanogpt.chat CHECKPOINT`: a chat engine behind a JSON-lines protocol on stdin and stdout.

The TUI's chat screen runs this as a subprocess. One JSON object per line each way; stdout carries only
events (anything else the process prints goes to stderr). docs/chat.md lists every field.

    → {"type": "generate", "id": "1", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 200}
    ← {"event": "start", "id": "1", "prompt_tokens": 12}
    ← {"event": "token", "id": "1", "text": "Hel"}
    ← {"event": "token", "id": "1", "text": "lo"}
    ← {"event": "done", "id": "1", "finish_reason": "stop", "text": "Hello", ...}

Requests: `generate` (the default type), `cancel` (stops the running generation: it ends with
finish_reason "cancelled"), `exit` (stops at once). The process starts with a `ready` event (or one fatal
`error` event and exit code 2 when the checkpoint cannot be loaded), answers a bad request with an `error`
event and goes on, and exits 0 after `exit`, or at the end of its input once every request received is
answered.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from nanogpt.events import utf8_json

PROTOCOL_VERSION = 1
SAMPLING_KEYS = ("max_tokens", "temperature", "top_k", "top_p", "stop", "seed")
REQUEST_KEYS = {
    "generate": {"type", "id", "messages", *SAMPLING_KEYS},
    "cancel": {"type", "id"},
    "exit": {"type"},
}
EXIT_OK, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 2, 130

Emit = Callable[[dict[str, Any]], None]


class Session:
    """Requests in (lines of JSON from a queue, None at the end of the input), events out through `emit`.

    Generations run one at a time, in order. While one runs, the queue is read between tokens: a `cancel`
    or `exit` takes effect at once, a `generate` waits its turn.
    """

    def __init__(self, engine, emit: Emit) -> None:
        self.engine = engine
        self.emit = emit
        self._waiting: list[dict[str, Any]] = []  # generate requests that came during a generation
        self._input_closed = False  # no more requests will come; those received are still answered
        self._exiting = False  # an exit request: stop now

    def run(self, lines: queue.Queue[str | None]) -> int:
        while not self._exiting:
            if self._waiting:
                request = self._waiting.pop(0)
            elif self._input_closed:
                break
            else:
                request = self._parse(lines.get())
            if request is None:
                continue
            if request["type"] == "generate":
                self._generate(request, lines)
            elif request["type"] == "cancel":
                self._cancel_waiting(request.get("id"))
        return EXIT_OK

    def _cancel_waiting(self, request_id: Any) -> None:
        """Cancel a generation that waits its turn (it ends at once, with nothing generated), else say
        that no generation has that id."""
        found = [r for r in self._waiting if r["type"] == "generate" and r.get("id") == request_id]
        if not found or request_id is None:
            self._error(request_id, f"cancel: no generation with id {request_id!r} is running or waiting")
            return
        self._waiting.remove(found[0])
        done = {"event": "done", "id": request_id, "finish_reason": "cancelled", "text": ""}
        self.emit(done | {"prompt_tokens": 0, "completion_tokens": 0, "elapsed_s": 0.0, "tokens_per_s": None})

    def _parse(self, line: str | None) -> dict[str, Any] | None:
        """A checked request; None for a blank or bad line (answered with an error event) or the end."""
        if line is None:
            self._input_closed = True
            return None
        if not line.strip():
            return None
        try:
            request = json.loads(line)
        except ValueError as e:  # JSONDecodeError, or an integer of over 4300 digits
            self._error(None, f"not a JSON object: {e}")
            return None
        except RecursionError:  # json's decoder recurses once per level of nesting
            self._error(None, "not a JSON object: nested too deeply")
            return None
        if not isinstance(request, dict):
            self._error(None, f"a request is a JSON object, got {type(request).__name__}")
            return None
        request_id = request.get("id")
        kind = request.setdefault("type", "generate")
        if not isinstance(kind, str) or kind not in REQUEST_KEYS:
            self._error(request_id, f"type: must be one of {', '.join(REQUEST_KEYS)}, got {kind!r}")
            return None
        unknown = sorted(set(request) - REQUEST_KEYS[kind])
        if unknown:
            allowed = ", ".join(sorted(REQUEST_KEYS[kind]))
            self._error(request_id, f"{unknown[0]}: unknown field of a {kind} request (fields: {allowed})")
            return None
        if request_id is not None and not isinstance(request_id, str | int):
            self._error(None, f"id: must be a string or an integer, got {request_id!r}")
            return None
        if kind == "exit":
            self._exiting = True
            return None
        return request

    def _generate(self, request: dict[str, Any], lines: queue.Queue[str | None]) -> None:
        from nanogpt.chat_engine import Sampling, messages_from_json

        request_id = request.get("id")
        try:
            messages = messages_from_json(request.get("messages"))
            stop = request.get("stop")
            settings = {k: request[k] for k in SAMPLING_KEYS if request.get(k) is not None}
            if isinstance(stop, str):
                settings["stop"] = (stop,)
            elif isinstance(stop, list):
                settings["stop"] = tuple(stop)
            deltas = self.engine.stream(messages, Sampling(**settings))
        except ValueError as e:  # RequestError, SamplingError, PromptTooLongError
            self._error(request_id, str(e))
            return
        except Exception as e:  # a request no check foresaw: answered, and the session goes on
            self._error(request_id, f"the request failed: {type(e).__name__}: {e}")
            return
        start = time.perf_counter()
        prompt_tokens = len(self.engine.prompt_tokens(messages))
        self.emit({"event": "start", "id": request_id, "prompt_tokens": prompt_tokens})
        parts: list[str] = []
        finish_reason, completion_tokens = "cancelled", 0
        try:
            for delta in deltas:
                completion_tokens = delta.completion_tokens
                if delta.text:
                    parts.append(delta.text)
                    self.emit({"event": "token", "id": request_id, "text": delta.text})
                if delta.finish_reason is not None:
                    finish_reason = delta.finish_reason
                    break
                if self._cancelled(request_id, lines):
                    break
        except Exception as e:  # the model failed (out of memory, ...): say so and stay up
            self._error(request_id, f"generation failed: {type(e).__name__}: {e}")
            return
        finally:
            deltas.close()
        elapsed_s = time.perf_counter() - start
        self.emit(
            {
                "event": "done",
                "id": request_id,
                "finish_reason": finish_reason,
                "text": "".join(parts),
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "elapsed_s": round(elapsed_s, 4),
                "tokens_per_s": round(completion_tokens / elapsed_s, 2) if elapsed_s > 0 else None,
            }
        )

    def _cancelled(self, running_id: Any, lines: queue.Queue[str | None]) -> bool:
        """Read what has arrived: True to stop the running generation (cancelled, or the session ends)."""
        stop = False
        while True:
            try:
                line = lines.get_nowait()
            except queue.Empty:
                return stop
            request = self._parse(line)
            if self._exiting:
                return True
            if request is None:
                continue
            if request["type"] == "generate":
                self._waiting.append(request)
            elif request.get("id") == running_id:
                stop = True
            else:
                self._cancel_waiting(request.get("id"))

    def _error(self, request_id: Any, message: str, *, fatal: bool = False) -> None:
        self.emit({"event": "error", "id": request_id, "message": message, "fatal": fatal})


def writer(stream: TextIO) -> Emit:
    lock = threading.Lock()

    def emit(event: dict[str, Any]) -> None:
        line = utf8_json(event) + "\n"
        with lock:
            stream.write(line)
            stream.flush()

    return emit


def read_lines(stream: TextIO, lines: queue.Queue[str | None]) -> None:
    """The reader thread: every line of `stream`, then None."""
    try:
        for line in stream:
            lines.put(line)
    finally:
        lines.put(None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nanogpt.chat",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "checkpoint", help="a checkpoint directory (step_*), a run directory or its checkpoints/"
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu or cuda[:N]")
    parser.add_argument("--tokenizer", help="the tokenizer, when the training data it came with is gone")
    args = parser.parse_args(argv)

    # Events only on stdout: whatever else is printed (warnings, a library's chatter) goes to stderr.
    emit = writer(sys.stdout)
    sys.stdout = sys.stderr
    try:
        from nanogpt.chat_engine import ChatEngine

        try:
            engine = ChatEngine.load(args.checkpoint, device=args.device, tokenizer=args.tokenizer)
        except ValueError as e:  # EngineError, CheckpointError
            emit({"event": "error", "id": None, "message": str(e), "fatal": True})
            return EXIT_BAD_INPUT
        emit({"event": "ready", "protocol": PROTOCOL_VERSION, **engine.describe()})
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=read_lines, args=(sys.stdin, lines), daemon=True, name="stdin").start()
        return Session(engine, emit).run(lines)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        sys.stdout = sys.__stdout__


if __name__ == "__main__":
    sys.exit(main())
