"""Chat with the study's best checkpoint: a `nanogpt.chat` subprocess, its reply streamed token by token.

The model is `runner.api.best_checkpoint`'s (done mid-training cells first, then the largest budget, then
the lowest val bpb); Ctrl+O picks another from `runner.api.checkpoint_candidates`, read again at each press
(cells finish while the chat is open). A study with no finished cell yet is looked at again every
LOOK_AGAIN_POLLS polls until one is, and its model loads then. It loads on a free GPU when there is one,
else on the CPU. A chat model (mid-trained) gets the whole conversation, rendered with
its chat template by the process; a base model gets the last message alone, to continue as plain text.
Loading and generating happen in the subprocess and its events arrive as messages, so the screen stays
responsive; a checkpoint that cannot load is a message on the screen.
"""

import itertools
import threading
from typing import Any, ClassVar

from rich.markup import escape
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Input, Label, Static
from textual.worker import Worker

from runner import api
from tui.chat_process import ChatProcess, Placement, choose_placement
from tui.checkpoint_picker import CheckpointPicker, describe_checkpoint
from tui.polling import still_open
from tui.problem import ProblemBanner
from tui.source import StoreProblem

DEFAULT_TEMPERATURE, DEFAULT_TOP_K, DEFAULT_MAX_TOKENS = 0.9, 200, 256
LOOK_AGAIN_POLLS = 5  # without a checkpoint, look for one every 5 polls (5 s by default): a cheap query


class ChatEvent(Message):
    """One event of the chat process, delivered on the UI thread; `load` is the number of the load that
    started the process."""

    def __init__(self, event: dict[str, Any], process: ChatProcess, load: int) -> None:
        super().__init__()
        self.event = event
        self.process = process
        self.load = load


def sampling_settings(temperature: str, top_k: str, max_tokens: str) -> dict[str, Any]:
    """The request's sampling fields from the three inputs; ValueError naming the one that is wrong."""
    settings: dict[str, Any] = {}
    try:
        settings["temperature"] = float(temperature or DEFAULT_TEMPERATURE)
    except ValueError:
        raise ValueError(f"temperature: {temperature!r} is not a number") from None
    if not 0 <= settings["temperature"] <= 2:
        raise ValueError(f"temperature: must be in [0, 2], got {temperature}")
    for name, text in (("top_k", top_k), ("max_tokens", max_tokens)):
        if text.strip():
            if not text.strip().isdigit() or int(text) < 1:
                raise ValueError(f"{name.replace('_', '-')}: must be a positive integer, got {text!r}")
            settings[name] = int(text)
    return settings


class ChatScreen(Screen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+n", "new_conversation", "New conversation"),
        Binding("ctrl+o", "choose_checkpoint", "Another checkpoint"),
        Binding("escape", "stop_or_leave", "Stop reply / back"),
    ]
    DEFAULT_CSS = """
    ChatScreen #model { padding: 0 1; height: auto; }
    ChatScreen #status { padding: 0 1; height: 1; color: $text-muted; }
    ChatScreen #settings { height: 3; padding: 0 1; }
    ChatScreen #settings Label { padding: 1 1 0 2; }
    ChatScreen #settings Input { width: 12; }
    ChatScreen #conversation { height: 1fr; border: round $primary; padding: 0 1; }
    ChatScreen .user { color: $accent; padding-top: 1; }
    ChatScreen .model { padding-left: 2; }
    ChatScreen .note { color: $text-muted; padding-left: 2; }
    """

    def __init__(self, study: str) -> None:
        super().__init__()
        self.study = study
        self.candidates: list[api.BestCheckpoint] = []
        self.checkpoint: api.BestCheckpoint | None = None
        self.process: ChatProcess | None = None
        self.placement: Placement | None = None
        self.ready: dict[str, Any] | None = None  # the process's ready event
        self.history: list[dict[str, str]] = []  # the conversation so far (chat models)
        self.generating: str | None = None  # the id of the reply being streamed
        self.reply: Static | None = None
        self.reply_text = ""
        self._ids = itertools.count(1)
        self._finding: Worker | None = None  # the lookup of the candidates under way
        # Loads are numbered on the UI thread; only the newest may start a process, one load at a time.
        self._loads = 0
        self._load_lock = threading.Lock()

    def compose(self) -> ComposeResult:
        yield Static(f"[b]chat[/] with the best checkpoint of {escape(self.study)}", id="model")
        yield ProblemBanner(id="problem")
        # The status quotes a checkpoint's path and the model's name as the process gave it: never markup.
        yield Static("finding the best checkpoint…", id="status", markup=False)
        with Horizontal(id="settings"):
            yield Label("temperature")
            yield Input(str(DEFAULT_TEMPERATURE), id="temperature", type="number")
            yield Label("top-k")
            yield Input(str(DEFAULT_TOP_K), id="top-k", type="integer")
            yield Label("max tokens")
            yield Input(str(DEFAULT_MAX_TOKENS), id="max-tokens", type="integer")
        yield VerticalScroll(id="conversation")
        yield Input(placeholder="type a message, Enter sends", id="prompt", disabled=True)
        yield Footer()

    def on_mount(self) -> None:
        self._finding = self._find_checkpoints()
        # Opened before any cell finished (or before the database exists), the chat waits for a model.
        self.set_interval(LOOK_AGAIN_POLLS * self.app.poll_s, self._look_again)

    # --- choosing and loading a checkpoint --------------------------------------------------------

    def _look_again(self) -> None:
        """While no checkpoint is chosen, read the candidates again (unless a lookup is under way)."""
        if self.checkpoint is None and (self._finding is None or self._finding.is_finished):
            self._finding = self._find_checkpoints()

    @work(thread=True, group="chat-find")
    def _find_checkpoints(self, *, pick: bool = False) -> None:
        """Off the UI thread: the candidates, best first; with `pick`, then the picker (Ctrl+O)."""
        try:
            candidates = self.app.source.read(api.checkpoint_candidates, self.study)
        except StoreProblem as problem:
            self.app.call_from_thread(self._no_candidates, str(problem), pick)
            return
        self.app.call_from_thread(self._got_candidates, candidates, pick)

    def _no_candidates(self, problem: str, pick: bool) -> None:
        """The store could not be read. Before any model: the banner says why, and the status no longer
        says it is looking. Ctrl+O over a loaded model: a notice, and the candidates read before."""
        if not still_open(self):
            return
        if self.checkpoint is None:
            self._problem(problem)
            self._status("")
        elif pick:
            self.notify(problem, severity="error", markup=False)
            self._pick()

    def _got_candidates(self, candidates: list[api.BestCheckpoint], pick: bool) -> None:
        if not still_open(self):  # closed while the lookup ran
            return
        self.candidates = candidates
        if self.checkpoint is None:
            if not candidates:
                self._problem(
                    f"study {self.study!r} has no finished cell with a final checkpoint yet: nothing to chat "
                    f"with (looking again every {LOOK_AGAIN_POLLS * self.app.poll_s:g} s)"
                )
                self._status("")
            else:
                self._load(candidates[0])
        if pick:
            self._pick()

    def _load(self, checkpoint: api.BestCheckpoint) -> None:
        self._loads += 1
        self.checkpoint = checkpoint
        self.ready, self.generating = None, None
        self.query_one("#prompt", Input).disabled = True
        self.query_one(ProblemBanner).clear()
        self.query_one("#model", Static).update(f"[b]chat[/] {escape(describe_checkpoint(checkpoint))}")
        self._status(f"loading {checkpoint.path} …")
        self._start_process(checkpoint, self._loads)

    @work(thread=True, group="chat-load")
    def _start_process(self, checkpoint: api.BestCheckpoint, load: int) -> None:
        """Off the UI thread: stop the old process, look for a free GPU, start the new one.

        Closing the old process may take seconds (it finishes loading first), and checkpoints can be picked
        faster than that: the lock lets one load at a time replace the process, and a load that a newer one
        has overtaken starts nothing (or closes what it started), so the header, the process and the replies
        are of one checkpoint and at most one process lives.
        """
        with self._load_lock:
            if load != self._loads:  # a newer load waits for the lock: it closes the old process
                return
            old, self.process = self.process, None  # from now on the old one's events (its exit) are ignored
            if old is not None:
                old.close()
            if self.placement is not None:
                self.placement.release()  # its GPU, claimed for the old process
            if load != self._loads:
                return
            placement = choose_placement(self.app.nvml())
            process = ChatProcess(self.app.chat_command(checkpoint.path, placement.device), placement.env)
            # Set before it starts, so that its first event already finds it current.
            self.process, self.placement = process, placement
            try:
                # Each event is tagged with its process and load: a late event of a replaced one is ignored.
                process.start(lambda event: self.post_message(ChatEvent(event, process, load)))
            except OSError as error:
                self.process = None
                placement.release()
                self.app.call_from_thread(self._problem, f"cannot start the chat process: {error}")
                return
            if load != self._loads:  # picked again, or the screen closed, while it started
                self.process = None
                process.close()
                placement.release()

    # --- the process's events ---------------------------------------------------------------------

    def on_chat_event(self, message: ChatEvent) -> None:
        if message.process is not self.process or message.load != self._loads:
            return
        event = message.event
        kind = event.get("event")
        if kind == "ready":
            self.ready = event
            where = self.placement.label if self.placement else event.get("device")
            if event.get("mode") == "chat":
                what = "chat model: the conversation is kept"
            else:
                what = "base model: each message is continued as plain text"
            context = event.get("context_tokens")
            self._status(f"ready on {where}: {event.get('model')} ({what}; context {context} tokens)")
            if self.checkpoint is not None:
                described = f"{describe_checkpoint(self.checkpoint)}  │  {event.get('mode')} model on {where}"
                self.query_one("#model", Static).update(f"[b]chat[/] {escape(described)}")
            max_tokens = self.query_one("#max-tokens", Input)
            if isinstance(context, int) and max_tokens.value.isdigit() and int(max_tokens.value) > context:
                max_tokens.value = str(context)
            prompt = self.query_one("#prompt", Input)
            prompt.disabled = False
            prompt.focus()
        elif kind == "token" and event.get("id") == self.generating and self.reply is not None:
            self.reply_text += event.get("text", "")
            self.reply.update(self.reply_text)
            self.query_one("#conversation", VerticalScroll).scroll_end(animate=False)
        elif kind == "done" and event.get("id") == self.generating:
            self._finish_reply(event)
        elif kind == "error":
            self._on_error(event)
        elif kind == "exit":
            self._on_exit(event)

    def _finish_reply(self, event: dict[str, Any]) -> None:
        text = event.get("text", self.reply_text)
        if self.reply is not None:
            self.reply.update(text)
        if self.ready and self.ready.get("mode") == "chat":
            # A stopped reply stays in the conversation as far as it got, as in `nanostudy chat`.
            self.history.append({"role": "assistant", "content": text})
        reason = {"stop": "", "length": " (cut at max tokens)", "cancelled": " (stopped)"}.get(
            event.get("finish_reason"), ""
        )
        rate = event.get("tokens_per_s")
        speed = f"{rate:.1f} tok/s" if isinstance(rate, int | float) else ""
        self._status(f"{event.get('completion_tokens', '?')} tokens, {speed}{reason}")
        self.generating, self.reply, self.reply_text = None, None, ""

    def _on_error(self, event: dict[str, Any]) -> None:
        if event.get("fatal"):
            path = self.checkpoint.path if self.checkpoint else "the checkpoint"
            self._problem(f"cannot load {path}: {event.get('message')}")
            self._status("Ctrl+O chooses another checkpoint")
            return
        # The process's own words (a line of its stdout that was not JSON): shown as written.
        self.notify(str(event.get("message")), severity="error", markup=False)
        if event.get("id") is not None and event.get("id") == self.generating:
            if self.history and self.history[-1]["role"] == "user":
                self.history.pop()  # the refused message is not part of the conversation
            if self.reply is not None:
                self.reply.update(f"(refused: {event.get('message')})")
            self._status("Ctrl+N starts a new conversation")
            self.generating, self.reply, self.reply_text = None, None, ""

    def _on_exit(self, event: dict[str, Any]) -> None:
        self.query_one("#prompt", Input).disabled = True
        self.generating = None
        if self.placement is not None:
            self.placement.release()  # the runners may use its GPU again
        if self.query_one(ProblemBanner).message:  # the fatal error already said why
            return
        stderr = (event.get("stderr") or "").strip().splitlines()
        last = f": {stderr[-1]}" if stderr else ""
        self._problem(f"the chat process exited (code {event.get('code')}){last}")

    # --- the conversation -------------------------------------------------------------------------

    def on_input_submitted(self, submitted: Input.Submitted) -> None:
        if submitted.input.id != "prompt":
            return
        text = submitted.value
        if not text.strip():
            return
        if self.process is None or self.ready is None:
            self.notify("the model is not loaded yet", severity="warning")
            return
        if self.generating is not None:
            self.notify("a reply is still coming (Esc stops it)", severity="warning")
            return
        try:
            settings = sampling_settings(
                self.query_one("#temperature", Input).value,
                self.query_one("#top-k", Input).value,
                self.query_one("#max-tokens", Input).value,
            )
        except ValueError as error:
            self.notify(str(error), severity="error", markup=False)  # it quotes what was typed
            return
        context = self.ready.get("context_tokens")
        if isinstance(context, int) and settings.get("max_tokens", 0) > context:
            settings["max_tokens"] = context  # the process refuses more than the model's context
        submitted.input.value = ""
        user = {"role": "user", "content": text}
        chat = self.ready.get("mode") == "chat"
        messages = [*self.history, user] if chat else [user]
        if chat:
            self.history.append(user)
        request_id = str(next(self._ids))
        conversation = self.query_one("#conversation", VerticalScroll)
        conversation.mount(Static(f"you: {text}", classes="user", markup=False))
        self.reply, self.reply_text, self.generating = (
            Static("", classes="model", markup=False),
            "",
            request_id,
        )
        conversation.mount(self.reply)
        conversation.scroll_end(animate=False)
        self.process.send({"type": "generate", "id": request_id, "messages": messages, **settings})
        self._status("generating…")

    def action_stop_or_leave(self) -> None:
        """Esc stops the reply that is coming; with none, it leaves the chat."""
        if self.generating is not None:
            self._stop_reply()
        else:
            self.app.pop_screen()

    def _stop_reply(self) -> None:
        if self.process is not None and self.generating is not None:
            self.process.send({"type": "cancel", "id": self.generating})

    def action_new_conversation(self) -> None:
        self._stop_reply()
        self.history = []
        self.generating, self.reply, self.reply_text = None, None, ""
        conversation = self.query_one("#conversation", VerticalScroll)
        conversation.remove_children()
        conversation.mount(Static("(a new conversation)", classes="note"))

    def action_choose_checkpoint(self) -> None:
        """Ctrl+O: the candidates as they are now (a cell may have finished since the last look), to pick."""
        self._find_checkpoints(pick=True)

    def _pick(self) -> None:
        if not self.candidates:
            self.notify("no checkpoint to choose from", severity="warning")
            return
        current = self.checkpoint.cell_id if self.checkpoint else None
        self.app.push_screen(CheckpointPicker(self.candidates, current), self._picked)

    def _picked(self, checkpoint: api.BestCheckpoint | None) -> None:
        if checkpoint is not None and checkpoint != self.checkpoint:
            self.action_new_conversation()
            self._load(checkpoint)

    def on_unmount(self) -> None:
        self._loads += 1  # a load still under way closes the process it starts
        process, self.process = self.process, None
        if process is not None:
            process.close(timeout_s=2.0)
        if self.placement is not None:
            self.placement.release()

    def _status(self, text: str) -> None:
        self.query_one("#status", Static).update(text)

    def _problem(self, message: str) -> None:
        if still_open(self):  # called from the loading worker too, which may outlive the screen
            self.query_one(ProblemBanner).report(message)
