"""A stand-in for `python -m nanogpt.chat CHECKPOINT --device D`, speaking the same JSON-lines protocol
(docs/chat.md) without a model, for the TUI's chat tests.

- A checkpoint path containing "broken" cannot load: one fatal error event, exit 2 (as the real one).
- A path containing "crash" dies before any event, with a line on stderr and exit code 1.
- Otherwise `ready` after FAKE_CHAT_LOAD_S seconds (default 0.1); mode "chat" when the path contains
  "mid", else "base". Each generate request is answered word by word, FAKE_CHAT_TOKEN_S apart (default
  0.01), with "<n> messages, t=<temperature> k=<top_k>: <the last message>"; a cancel stops it between two
  words (finish_reason "cancelled"); exit ends the process. A last message "too long" is refused with a
  non-fatal error event, as a conversation longer than the context is.
- With FAKE_CHAT_LOG set, every request received is appended to that file as a JSON line.
- With FAKE_CHAT_HOLD set to a path, a reply pauses after its first word until that file exists (a cancel
  still stops it), so a test can look at, or stop, a partial reply without racing the stream.
"""

import json
import os
import queue
import sys
import threading
import time
from pathlib import Path


def emit(event: dict) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def read_requests(requests: queue.Queue) -> None:
    log = os.environ.get("FAKE_CHAT_LOG")
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        if log:
            with open(log, "a") as file:
                file.write(json.dumps(request) + "\n")
        requests.put(request)
    requests.put(None)


def generate(request: dict, requests: queue.Queue, pending: list) -> bool:
    """Stream one reply; False when an exit request came meanwhile."""
    messages = request["messages"]
    if messages[-1]["content"] == "too long":
        message = "the conversation is 200 tokens, more than the model's context (128)"
        emit({"event": "error", "id": request["id"], "message": message, "fatal": False})
        return True
    text = f"{len(messages)} messages, t={request.get('temperature')} k={request.get('top_k')}: "
    text += messages[-1]["content"]
    emit({"event": "start", "id": request["id"], "prompt_tokens": len(text)})
    first, *rest = text.split(" ")
    words = [first, *(" " + word for word in rest)]
    sent, finish = "", "stop"
    hold = os.environ.get("FAKE_CHAT_HOLD")
    for word in words:
        time.sleep(float(os.environ.get("FAKE_CHAT_TOKEN_S", "0.01")))
        # After the first word, with FAKE_CHAT_HOLD: wait for its file (or a cancel or an exit).
        while True:
            while not requests.empty():
                other = requests.get()
                if other is None or other.get("type") == "exit":
                    return False
                if other.get("type") == "cancel":
                    finish = "cancelled"
                else:
                    pending.append(other)
            if finish == "cancelled" or not (sent and hold and not Path(hold).exists()):
                break
            time.sleep(0.01)
        if finish == "cancelled":
            break
        sent += word
        emit({"event": "token", "id": request["id"], "text": word})
    emit(
        {
            "event": "done",
            "id": request["id"],
            "finish_reason": finish,
            "text": sent,
            "prompt_tokens": len(text),
            "completion_tokens": len(sent.split()),
            "elapsed_s": 0.1,
            "tokens_per_s": 42.0,
        }
    )
    return True


def main() -> int:
    checkpoint = sys.argv[1]
    device = sys.argv[sys.argv.index("--device") + 1] if "--device" in sys.argv else "auto"
    if "crash" in checkpoint:
        print("Segmentation fault (core dumped)", file=sys.stderr)
        return 1
    if "broken" in checkpoint:
        emit(
            {
                "event": "error",
                "id": None,
                "message": f"{checkpoint}: model.pt does not fit meta.json",
                "fatal": True,
            }
        )
        return 2
    time.sleep(float(os.environ.get("FAKE_CHAT_LOAD_S", "0.1")))
    path = Path(checkpoint)
    emit(
        {
            "event": "ready",
            "protocol": 1,
            "model": f"{path.parent.parent.name}/{path.name}",
            "mode": "chat" if "mid" in checkpoint else "base",
            "checkpoint": checkpoint,
            "context_tokens": 128,
            "num_params": 1000,
            "device": device,
            "dtype": "float32",
        }
    )
    requests: queue.Queue = queue.Queue()
    threading.Thread(target=read_requests, args=(requests,), daemon=True).start()
    pending: list = []
    while True:
        request = pending.pop(0) if pending else requests.get()
        if request is None or request.get("type") == "exit":
            return 0
        if request.get("type", "generate") == "generate" and not generate(request, requests, pending):
            return 0


if __name__ == "__main__":
    sys.exit(main())
