"""The chat screen's model: `python -m nanogpt.chat CHECKPOINT`, its JSON-lines protocol (docs/chat.md), in a
subprocess, so that loading a model and generating never block the UI, and torch stays out of the TUI.

A reader thread turns each line of the process's stdout into an event dict handed to `on_event`; when the
process ends, one last event `{"event": "exit", "code": N, "stderr": "<its last lines>"}` follows, so a
checkpoint that cannot load (a fatal `error` event, or a crash before any event) always reaches the
screen as a message. stderr is drained by a thread of its own so a chatty process never blocks on it.
"""

import collections
import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.gpus import GpuListError, GpuPool

Event = dict[str, Any]
STDERR_LINES = 20  # kept for the message when the process dies


@dataclass(frozen=True, kw_only=True, slots=True)
class Placement:
    """Where the chat model runs: `--device` and the environment that goes with it."""

    device: str  # "cuda" (the one GPU made visible) or "cpu"
    env: dict[str, str]
    label: str  # for the screen: "GPU 3" or "CPU"
    pool: GpuPool | None = field(default=None, compare=False, repr=False)  # holds the GPU's claim
    _lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    def release(self) -> None:
        """Give the GPU's claim back to the runners, once the chat process is gone; again is a no-op."""
        with self._lock:  # the screen and its loading worker may both end a chat
            if self.pool is not None:
                self.pool.keep_claims(())


def choose_placement(
    nvml: Any | None, visible_devices: str | None = None, *, claim_dir: Path | str | None = "auto"
) -> Placement:
    """A free GPU (no compute process on it, ours or anyone's: training keeps its GPUs, and none that a
    runner claims), else the CPU. The GPU is claimed as a runner claims it (`GpuPool.claim`), until
    `Placement.release`: a trainer, or the chat model, shows in NVML only seconds after its start, and a
    runner would start a cell on the chat's GPU meanwhile, or the chat on a runner's.

    The GPU is named by its NVML index in CUDA_VISIBLE_DEVICES with CUDA_DEVICE_ORDER=PCI_BUS_ID, as the
    executor does for trainers, so CUDA sees exactly that one GPU.
    """
    if nvml is None:
        return Placement(device="cpu", env={}, label="CPU")
    try:
        pool = GpuPool(nvml=nvml, visible_devices=visible_devices, claim_dir=claim_dir)
    except GpuListError as error:
        return Placement(device="cpu", env={}, label=f"CPU ({error})")
    free = pool.free(assigned=(), our_pids=())
    # A GPU skipped because NVML cannot read it is named: otherwise the chat's place looks like a choice.
    skipped = "".join(
        f"; GPU {index} cannot be read ({why})"
        for index, why in sorted(pool.unreadable.items())
        if index in pool.usable
    )
    if pool.problem is not None:
        skipped = f"; {pool.problem}"
    for index in reversed(free):  # the runner fills GPUs from the lowest index: take the other end
        if not pool.claim([index]):
            skipped += f"; GPU {index} is claimed by a runner"
            continue
        env = {"CUDA_VISIBLE_DEVICES": str(index), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
        return Placement(device="cuda", env=env, label=f"GPU {index}{skipped}", pool=pool)
    return Placement(device="cpu", env={}, label=f"CPU{skipped}")


def chat_command(checkpoint: Path, device: str) -> list[str]:
    """The real chat process: this interpreter, the nanogpt package of this checkout."""
    return [sys.executable, "-m", "nanogpt.chat", str(checkpoint), "--device", device]


class ChatProcess:
    """One chat subprocess; `start(on_event)` runs it, `send` writes a request, `close` ends it."""

    def __init__(self, command: Sequence[str], env: dict[str, str]):
        self.command = list(command)
        self.env = env
        self._on_event: Callable[[Event], None] = lambda event: None
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
        self._process: subprocess.Popen | None = None
        self._stderr_thread: threading.Thread | None = None

    def start(self, on_event: Callable[[Event], None]) -> None:
        """Start the process and the threads that read it; OSError when it cannot be started."""
        self._on_event = on_event
        self._process = subprocess.Popen(
            self.command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # A byte that is not UTF-8 (a library's message in another encoding) ended the thread reading
            # that stream: stderr no longer drained, the process blocked on the full pipe, and hung.
            errors="replace",
            bufsize=1,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            # Its own session: Ctrl-C in the terminal is the TUI's to handle, not the model's.
            start_new_session=True,
        )
        self._stderr_thread = threading.Thread(target=self._drain_stderr, daemon=True)
        self._stderr_thread.start()
        threading.Thread(target=self._read_events, daemon=True).start()

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def send(self, request: Event) -> bool:
        """Write one request; False when the process is gone (its exit event says why)."""
        if self._process is None or self._process.stdin is None:
            return False
        try:
            self._process.stdin.write(json.dumps(request) + "\n")
            self._process.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            return False
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Ask it to exit (a running generation stops between two tokens); kill it if it does not."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self.send({"type": "exit"})
            try:
                self._process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        for stream in (self._process.stdin, self._process.stdout, self._process.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def _read_events(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        try:
            for line in self._process.stdout:
                event = _parse(line)
                if event is not None:
                    self._on_event(event)
        except (OSError, ValueError):  # closed under us by `close`
            pass
        code = self._process.wait()
        if self._stderr_thread is not None:
            self._stderr_thread.join(timeout=5)
        self._on_event({"event": "exit", "code": code, "stderr": "\n".join(self._stderr)})

    def _drain_stderr(self) -> None:
        assert self._process is not None and self._process.stderr is not None
        try:
            for line in self._process.stderr:
                self._stderr.append(line.rstrip("\n"))
        except (OSError, ValueError):
            pass


def _parse(line: str) -> Event | None:
    """An event, or None for a blank line; a line that is not a JSON object becomes an error event."""
    if not line.strip():
        return None
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return {
            "event": "error",
            "id": None,
            "message": f"chat process said: {line.strip()[:200]}",
            "fatal": False,
        }
    if not isinstance(event, dict):
        return {
            "event": "error",
            "id": None,
            "message": f"chat process said: {line.strip()[:200]}",
            "fatal": False,
        }
    return event
