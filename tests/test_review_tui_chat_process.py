"""The chat subprocess's streams: whatever bytes it writes, its events keep coming and its stderr keeps
draining."""

import sys
import threading

from tui.chat_process import ChatProcess

# Not UTF-8 on both streams, then more stderr than a pipe holds, then the ready event.
NOT_UTF8 = r"""
import json, sys
sys.stderr.buffer.write(b"warning: caf\xe9 \xff\n" + b"x" * 200_000 + b"\n")
sys.stderr.flush()
sys.stdout.buffer.write(b"\xff\n")
print(json.dumps({"event": "ready", "model": "m"}), flush=True)
sys.stdin.readline()
"""


def test_bytes_that_are_not_utf8_neither_stop_the_events_nor_block_the_process():
    """A byte that is not UTF-8 ended the thread reading its stream: on stderr, nothing drained it any more
    and the process blocked on the full pipe before its ready event (the chat said 'loading' forever); on
    stdout, no event came after it."""
    events, ready = [], threading.Event()

    def on_event(event):
        events.append(event)
        if event.get("event") == "ready":
            ready.set()

    process = ChatProcess([sys.executable, "-c", NOT_UTF8], {})
    process.start(on_event)
    try:
        assert ready.wait(timeout=20), f"no ready event; events: {events}"
    finally:
        process.close(timeout_s=5)
    assert events[0] == {"event": "error", "id": None, "message": "chat process said: \ufffd", "fatal": False}
