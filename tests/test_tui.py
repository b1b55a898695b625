"""The terminal UI driven by keys (Textual's Pilot), headless, against a store the tests fill (the demo
study of tui_fixtures, in every state), a fake NVML and a fake chat process speaking the real protocol;
one test with the real `python -m nanogpt.chat` on a tiny real checkpoint. Every poll reads the database
from a worker thread, as in use; the tests wait for what the screen shows, with generous time bounds.
"""

import asyncio
import contextlib
import io
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from rich.console import Console
from textual.css.query import NoMatches
from textual.widgets import DataTable, Input, Static
from tui_fixtures import (
    STUDY,
    LostGpuNvml,
    TelemetryNvml,
    UncountableNvml,
    demo_study,
    finish_cell,
    unfinished_study,
)

from runner.cli import main
from store import CellState, cell_statuses, get_cell, ingest, open_store, upsert_study
from tui.app import NanostudyApp
from tui.cell_screen import CellScreen
from tui.chat_screen import ChatScreen
from tui.checkpoint_picker import CheckpointPicker
from tui.confirm import ConfirmScreen
from tui.format import UNKNOWN
from tui.gpu_screen import NO_NVML, GpuScreen
from tui.problem import ProblemBanner
from tui.studies_screen import StudiesScreen
from tui.study_screen import StudyScreen

ROOT = Path(__file__).resolve().parents[1]
FAKE_CHAT = ROOT / "tests" / "fake_chat.py"
SIZE = (160, 50)


def fake_chat(prefix: str = ""):
    """A chat command running the fake chat process; `prefix` is put before the checkpoint's path (e.g.
    "broken-" for a checkpoint that cannot load)."""
    return lambda path, device: [sys.executable, str(FAKE_CHAT), f"{prefix}{path}", "--device", device]


def make_app(db: Path, study: str | None = STUDY, **overrides) -> NanostudyApp:
    options = dict(poll_s=0.2, nvml_loader=lambda: None, chat_command=fake_chat(), hostname="here")
    return NanostudyApp(str(db), study, **{**options, **overrides})


async def until(pilot, predicate, *, timeout_s: float = 20.0, what: str = "the screen"):
    """Let the app run until `predicate()` is truthy; its value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except NoMatches:  # the screen is not composed yet
            value = None
        if value:
            return value
        await pilot.pause(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def run(scenario) -> None:
    asyncio.run(scenario())


def plain(renderable) -> str:
    """What a Rich renderable shows, as plain text."""
    console = Console(width=SIZE[0], record=True, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def row(app, cell_id: str) -> list[str]:
    return [str(value) for value in app.screen.query_one(DataTable).get_row(cell_id)]


def text_of(app, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).content)


def cursor_to(app, key: str) -> None:
    table = app.screen.query_one(DataTable)
    table.move_cursor(row=table.get_row_index(key))


@pytest.fixture
def demo(tmp_path):
    return demo_study(tmp_path)


# --- the study screen ------------------------------------------------------------------------------


def test_study_screen_shows_totals_heatmap_and_every_cell(demo):
    async def scenario():
        app = make_app(demo.db)
        async with app.run_test(size=SIZE) as pilot:
            await until(
                pilot, lambda: isinstance(app.screen, StudyScreen) and app.screen.status, what="status"
            )
            totals = text_of(app, "#totals")
            assert (
                "6 cells" in totals and "1 running" in totals and "3 done" in totals and "1 failed" in totals
            )
            assert app.screen.query_one(DataTable).row_count == 6
            running = row(app, "d2-c16")
            assert running[5] == "running" and running[7] == "40/200"
            assert running[11:15] == [
                "12.00k",
                "41%",
                "2m40s",
                "0",
            ]  # tok/s, MFU, ETA (160 steps at 1 s), GPU
            assert row(app, "d4-c15")[10] == "1.250" and row(app, "d8-c16")[13] == "8m12s"
            heatmap = plain(app.screen.query_one("#heatmap", Static).content)
            assert heatmap.splitlines()[0].startswith("pretraining cells: depth × FLOP budget")
            lines = {line.split()[0]: line.split()[1:] for line in heatmap.splitlines()[2:5]}
            assert lines == {"2": ["1.300", "20%"], "4": ["1.250", "failed"], "8": ["pending"]}
            await pilot.press("m")  # the heatmap's other mode: the mid-training cell
            await pilot.pause(0.1)
            heatmap = plain(app.screen.query_one("#heatmap", Static).content)
            assert heatmap.splitlines()[0].startswith("mid-training cells") and "1.400" in heatmap

    run(scenario)


def test_the_screen_follows_a_runner_writing_the_store(demo):
    """Progress, a new validation point and a state change made by another writer (as `nanostudy run`
    does, in WAL mode) show within a few polls."""

    async def scenario():
        app = make_app(demo.db)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: isinstance(app.screen, StudyScreen) and app.screen.status)
            with open_store(demo.db) as writer:
                steps = [
                    {"step": s, "tokens": 4096 * s, "loss": 3.0, "elapsed_s": float(s)}
                    for s in range(41, 101)
                ]
                ingest(writer, "d2-c16", train=steps, val=[{"step": 100, "tokens": 1, "val_bpb": 1.5}])
            await until(pilot, lambda: row(app, "d2-c16")[7] == "100/200", what="step 100")
            assert row(app, "d2-c16")[10] == "1.500" and "50%" in row(app, "d2-c16")[6]
            with open_store(demo.db) as writer:
                from store import AttemptOutcome, end_attempt, open_attempts

                [attempt] = open_attempts(writer)
                end_attempt(writer, attempt.id, AttemptOutcome.DONE, exit_code=0)
            await until(pilot, lambda: "done" in row(app, "d2-c16")[5], what="the cell done")
            assert "4 done" in text_of(app, "#totals")

    run(scenario)


def test_cell_detail_shows_curves_evals_attempts_reason_and_log(demo):
    async def scenario():
        app = make_app(demo.db)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: isinstance(app.screen, StudyScreen) and app.screen.status)
            cursor_to(app, "d4-c16")
            await pilot.press("enter")
            screen = await until(
                pilot, lambda: isinstance(app.screen, CellScreen) and app.screen.cell and app.screen
            )
            assert screen.cell_id == "d4-c16"
            assert "reason: CUDA out of memory" in text_of(app, "#summary")
            attempts = screen.query_one("#attempts", DataTable)
            assert [attempts.get_row_at(i)[1] for i in range(attempts.row_count)] == ["failed", "failed"]
            assert attempts.get_row_at(0)[5] == "killed by signal 9"
            assert attempts.get_row_at(1)[5] == "CUDA out of memory"
            log = text_of(app, "#log-text")
            assert "logs/attempt_2.err" in log and "CUDA out of memory" in log and "step 10 loss 3.9" in log
            assert screen.train_steps == list(range(1, 11)) and screen.val_bpb == []
            await pilot.press("escape")
            await until(pilot, lambda: isinstance(app.screen, StudyScreen))

            cursor_to(app, "d2-c15")
            await pilot.press("enter")
            screen = await until(
                pilot, lambda: isinstance(app.screen, CellScreen) and app.screen.cell and app.screen
            )
            evals = screen.query_one("#evals", DataTable)
            assert [str(v) for v in evals.get_row_at(0)] == ["hellaswag", "200", "0.3100", "0.3100"]
            assert len(screen.train_steps) == 200 and screen.val_bpb[-1] == 1.30
            assert "no log yet" in text_of(app, "#log-text")
            # Live: new steps of a running cell are appended, not read again from the start.
            await pilot.press("escape")
            cursor_to(app, "d2-c16")
            await pilot.press("enter")
            screen = await until(
                pilot, lambda: isinstance(app.screen, CellScreen) and app.screen.cell and app.screen
            )
            assert screen.train_steps[-1] == 40 and screen.val_steps == [20, 40]
            with open_store(demo.db) as writer:
                ingest(writer, "d2-c16", train=[{"step": 41, "tokens": 1, "loss": 3.5}])
            await until(pilot, lambda: screen.train_steps[-1] == 41, what="step 41 on the curve")
            assert screen.train_steps == list(range(1, 42))

    run(scenario)


def test_cancel_and_retry_go_through_the_runner_api(demo):
    async def scenario():
        app = make_app(demo.db)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: isinstance(app.screen, StudyScreen) and app.screen.status)
            cursor_to(app, "d8-c16")
            await pilot.press("c")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("n")  # no: nothing happens
            await pilot.pause(0.5)
            with open_store(demo.db, create=False) as store:
                assert get_cell(store, "d8-c16").state is CellState.PENDING
            await pilot.press("c")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("y")
            await until(pilot, lambda: "cancelled" in row(app, "d8-c16")[5], what="cancelled in the table")
            with open_store(demo.db, create=False) as store:
                assert get_cell(store, "d8-c16").state is CellState.CANCELLED

            cursor_to(app, "d4-c16")  # failed: retried
            await pilot.press("r")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("y")
            await until(pilot, lambda: "pending" in row(app, "d4-c16")[5], what="pending again")

            cursor_to(app, "d4-c15")  # done: neither
            await pilot.press("r", "c")
            await pilot.pause(0.3)
            assert isinstance(app.screen, StudyScreen)  # no question asked
            with open_store(demo.db, create=False) as store:
                assert get_cell(store, "d4-c15").state is CellState.DONE
            messages = [str(n.message) for n in app._notifications]
            assert (
                "cell d8-c16 cancelled" in messages
                and "cell d4-c16 is pending again: a runner will start it" in messages
            )
            assert "cell d4-c15 is done: nothing to cancel" in messages

    run(scenario)


# --- several studies -------------------------------------------------------------------------------


def test_without_a_study_the_list_opens_one(demo):
    with open_store(demo.db) as store:
        upsert_study(store, name="other", path="other.yaml", spec={})

    async def scenario():
        app = make_app(demo.db, study=None)
        async with app.run_test(size=SIZE) as pilot:
            await until(
                pilot,
                lambda: (
                    isinstance(app.screen, StudiesScreen) and app.screen.query_one(DataTable).row_count == 2
                ),
            )
            table = app.screen.query_one(DataTable)
            assert [str(v) for v in table.get_row(STUDY)][:6] == [STUDY, "6", "3", "1", "1", "1"]
            assert [str(v) for v in table.get_row("other")][:2] == ["other", "0"]
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, StudyScreen) and app.screen.status)
            assert app.screen.study == STUDY
            await pilot.press("escape")
            await until(pilot, lambda: isinstance(app.screen, StudiesScreen))
            await pilot.press("down", "enter")
            await until(pilot, lambda: isinstance(app.screen, StudyScreen) and app.screen.status)
            assert app.screen.study == "other" and "0 cells" in text_of(app, "#totals")
            assert "no cells yet" in str(app.screen.query_one("#heatmap", Static).content)

    run(scenario)


# --- bad input: messages in the UI, never a traceback ---------------------------------------------


def test_a_missing_database_is_a_message_until_the_runner_creates_it(tmp_path):
    async def scenario():
        db = tmp_path / "nanostudy.db"
        app = make_app(db)
        async with app.run_test(size=SIZE) as pilot:
            banner = await until(pilot, lambda: app.screen.query_one(ProblemBanner).message)
            assert "no nanostudy database here yet (the runner creates it)" in banner
            demo_study(tmp_path)
            await until(pilot, lambda: app.screen.status, what="the study once the database exists")
            assert app.screen.query_one(ProblemBanner).message is None
            assert app.screen.query_one(DataTable).row_count == 6

    run(scenario)


def test_an_older_schema_and_an_unknown_study_are_messages(demo, tmp_path):
    async def scenario():
        app = make_app(demo.db, study="nope")
        async with app.run_test(size=SIZE) as pilot:
            banner = await until(pilot, lambda: app.screen.query_one(ProblemBanner).message)
            assert "no study named 'nope' (studies here: demo)" in banner
        with sqlite3.connect(demo.db) as conn:
            conn.execute("UPDATE meta SET value = '0' WHERE key = 'schema_version'")
        for study in (STUDY, None):
            app = make_app(demo.db, study=study)
            async with app.run_test(size=SIZE) as pilot:
                banner = await until(pilot, lambda app=app: app.screen.query_one(ProblemBanner).message)
                assert "database schema version 0 is older than this nanostudy's" in banner

    run(scenario)


def test_the_command_line(tmp_path, monkeypatch, capsys):
    started = []
    monkeypatch.setattr(
        NanostudyApp, "run", lambda self: started.append((self.source.target, self.study, self.poll_s))
    )
    monkeypatch.chdir(tmp_path)
    assert main(["tui"]) == 0 and started[-1] == ("nanostudy.db", None, 1.0)
    assert main(["tui", "demo", "--db", "x.db", "--refresh-s", "0.5"]) == 0
    assert started[-1] == ("x.db", "demo", 0.5)
    study_file = ROOT / "studies" / "quickstart.yaml"
    assert main(["tui", str(study_file)]) == 0
    assert started[-1][:2] == (str(ROOT / "studies" / "nanostudy.db"), "quickstart")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [1]\n")
    assert main(["tui", str(bad)]) == 2
    assert "nanostudy tui: error:" in capsys.readouterr().err and len(started) == 3


# --- the GPU screen --------------------------------------------------------------------------------


async def _gpu_table(app, pilot) -> DataTable:
    """From the study screen, `g`: the GPU screen's table."""
    await until(pilot, lambda: isinstance(app.screen, StudyScreen) and app.screen.status)
    await pilot.press("g")
    return await until(pilot, lambda: isinstance(app.screen, GpuScreen) and app.screen.query_one(DataTable))


def test_gpu_screen_shows_telemetry_history_and_who_runs_where(demo):
    nvml = TelemetryNvml(2, foreign={1: [999_999]})

    async def scenario():
        app = make_app(demo.db, nvml_loader=lambda: nvml)
        async with app.run_test(size=SIZE) as pilot:
            table = await _gpu_table(app, pilot)
            await until(pilot, lambda: table.row_count == 2)
            first = [str(v) for v in table.get_row("0")]
            assert first[1] == "NVIDIA H100 80GB HBM3" and first[4] == "0.0 / 80 GiB" and first[6] == "40°C"
            assert first[7] == "250 W / 700" and first[8] == "1980 MHz / mem 2619"
            assert first[9] == "cell d2-c16"  # the running cell's attempt was given GPU 0 on this host
            second = [str(v) for v in table.get_row("1")]
            assert second[4] == "1.0 / 80 GiB" and second[9].startswith("foreign pid 999999")
            await until(pilot, lambda: len(str(table.get_row("0")[3])) >= 3, what="a utilisation history")
            history = str(table.get_row("0")[3])
            assert len(set(history)) > 1  # utilisation moved between samples: the sparkline shows it

    run(scenario)


def test_gpu_screen_shows_a_gpu_nvml_cannot_read_as_an_error_row(demo):
    # GPU 1 is lost after the first samples (an Xid error): its row says so, GPU 0's goes on updating.
    nvml = LostGpuNvml(2, lost=1, lost_at=3)

    async def scenario():
        app = make_app(demo.db, nvml_loader=lambda: nvml)
        async with app.run_test(size=SIZE) as pilot:
            table = await _gpu_table(app, pilot)
            lost = "NVML cannot read it: NVMLError_GpuIsLost: GPU is lost"
            await until(
                pilot, lambda: table.row_count == 2 and lost in str(table.get_row("1")[9]), what="GPU 1 lost"
            )
            second = [str(v) for v in table.get_row("1")]
            assert second[:3] == ["1", "NVIDIA H100 80GB HBM3", UNKNOWN] and second[4] == UNKNOWN
            ticks = nvml.tick
            await until(pilot, lambda: nvml.tick > ticks + 1, what="more samples")
            assert isinstance(app.screen, GpuScreen)
            assert [str(v) for v in table.get_row("0")][6] == "40°C"

    run(scenario)


def test_gpu_screen_says_when_nvml_cannot_list_the_gpus_and_shows_them_once_it_can(demo):
    # The count fails at the 2nd to 4th samples (a driver reload): a note, not a crash; then the rows again.
    nvml = UncountableNvml(2, failing=range(2, 5))

    async def scenario():
        app = make_app(demo.db, nvml_loader=lambda: nvml)
        async with app.run_test(size=SIZE) as pilot:
            await _gpu_table(app, pilot)
            problem = "NVML cannot list this machine's GPUs (NVMLError_Unknown: Unknown Error)"
            await until(pilot, lambda: problem in text_of(app, "#note"), what="the listing problem")
            await until(pilot, lambda: nvml.tick >= 6, what="samples after the failures")
            assert isinstance(app.screen, GpuScreen)
            await until(pilot, lambda: text_of(app, "#note") == "", what="the note cleared")
            assert app.screen.query_one(DataTable).row_count == 2

    run(scenario)


def test_gpu_screen_without_nvml_says_so(demo):
    async def scenario():
        app = make_app(demo.db, study=None)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: isinstance(app.screen, StudiesScreen))
            await pilot.press("g")
            await until(pilot, lambda: isinstance(app.screen, GpuScreen) and text_of(app, "#note") == NO_NVML)
            assert app.screen.query_one(DataTable).row_count == 0

    run(scenario)


# --- the chat screen -------------------------------------------------------------------------------


def chat_log(tmp_path, monkeypatch) -> Path:
    log = tmp_path / "requests.jsonl"
    monkeypatch.setenv("FAKE_CHAT_LOG", str(log))
    return log


def requests(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


async def send(pilot, app, text: str) -> str:
    """Type a message, press Enter, wait for the whole reply; the reply's text."""
    prompt = app.screen.query_one("#prompt", Input)
    prompt.focus()
    prompt.value = text
    await pilot.press("enter")
    await until(pilot, lambda: app.screen.generating is None and app.screen.reply is None, what="the reply")
    replies = [w for w in app.screen.query(".model")]
    return str(replies[-1].content).strip()


def test_chat_loads_the_best_checkpoint_and_streams_replies(demo, tmp_path, monkeypatch):
    log = chat_log(tmp_path, monkeypatch)
    monkeypatch.setenv("FAKE_CHAT_TOKEN_S", "0.05")
    release = tmp_path / "release"
    monkeypatch.setenv("FAKE_CHAT_HOLD", str(release))  # the first reply waits after its first word

    async def scenario():
        app = make_app(demo.db)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: isinstance(app.screen, StudyScreen) and app.screen.status)
            await pilot.press("t")
            screen = await until(
                pilot, lambda: isinstance(app.screen, ChatScreen) and app.screen.ready and app.screen
            )
            assert screen.checkpoint.cell_id == "mid-d4"  # mid-trained first, although its bpb is the highest
            assert "cell mid-d4 (mid-training, depth 4, 1e15 FLOPs, val bpb 1.4000)" in text_of(app, "#model")
            assert text_of(app, "#status").startswith("ready on CPU: mid-d4/step_000200 (chat model")
            assert text_of(app, "#model").endswith("chat model on CPU")
            assert screen.query_one("#max-tokens", Input).value == "128"  # the model's context

            prompt = screen.query_one("#prompt", Input)
            prompt.value = "hello there model"
            await pilot.press("enter")
            # Token by token: a partial reply shows before the end.
            await until(pilot, lambda: screen.reply_text and screen.generating, what="the first tokens")
            partial = screen.reply_text
            release.touch()
            await until(pilot, lambda: screen.generating is None)
            full = str(list(screen.query(".model"))[-1].content).strip()
            assert full == "1 messages, t=0.9 k=200: hello there model" and len(partial) < len(full)

            screen.query_one("#temperature", Input).value = "0.5"
            screen.query_one("#top-k", Input).value = "7"
            reply = await send(pilot, app, "and again")
            assert reply == "3 messages, t=0.5 k=7: and again"  # the chat model sees the conversation
            sent = requests(log)
            assert [m["role"] for m in sent[-1]["messages"]] == ["user", "assistant", "user"]
            assert sent[-1]["max_tokens"] == 128  # 256 by default, lowered to the model's context
            assert sent[-1]["messages"][1]["content"] == full

            await pilot.press("ctrl+n")  # a new conversation
            assert await send(pilot, app, "fresh") == "1 messages, t=0.5 k=7: fresh"
            # Refused by the process (longer than the context): said so, and left out of the conversation.
            assert (
                await send(pilot, app, "too long")
                == "(refused: the conversation is 200 tokens, more than the model's context (128))"
            )
            assert [m["role"] for m in screen.history] == ["user", "assistant"]
            assert await send(pilot, app, "after") == "3 messages, t=0.5 k=7: after"

            screen.query_one("#temperature", Input).value = "9"
            await send_refused(pilot, app, "too hot")
            assert "temperature: must be in [0, 2], got 9" in [str(n.message) for n in app._notifications]

    async def send_refused(pilot, app, text):
        before = len(requests(log))
        prompt = app.screen.query_one("#prompt", Input)
        prompt.value = text
        prompt.focus()
        await pilot.press("enter")
        await pilot.pause(0.3)
        assert len(requests(log)) == before

    run(scenario)


def test_chat_with_another_checkpoint_a_base_model_continues_text(demo, tmp_path, monkeypatch):
    log = chat_log(tmp_path, monkeypatch)

    async def scenario():
        app = make_app(demo.db)
        async with app.run_test(size=SIZE) as pilot:
            app.open_chat(STUDY)
            screen = await until(
                pilot, lambda: isinstance(app.screen, ChatScreen) and app.screen.ready and app.screen
            )
            first_process = screen.process
            await pilot.press("ctrl+o")
            await until(pilot, lambda: type(app.screen).__name__ == "CheckpointPicker")
            await pilot.press("down", "enter")  # the second candidate: d4-c15, a base model
            await until(
                pilot,
                lambda: (
                    isinstance(app.screen, ChatScreen)
                    and screen.ready
                    and screen.checkpoint.cell_id == "d4-c15"
                ),
            )
            assert screen.process is not first_process and screen.ready["mode"] == "base"
            assert "base model: each message is continued as plain text" in text_of(app, "#status")
            assert await send(pilot, app, "once upon") == "1 messages, t=0.9 k=200: once upon"
            assert await send(pilot, app, "a time") == "1 messages, t=0.9 k=200: a time"  # no history
            assert requests(log)[-1]["messages"] == [{"role": "user", "content": "a time"}]

    run(scenario)


def live_chat_processes() -> list[int]:
    """The pids of this test's fake chat processes that still run."""
    return [
        child.pid
        for child in psutil.Process().children(recursive=True)
        if child.is_running()
        and child.status() != psutil.STATUS_ZOMBIE
        and any(str(FAKE_CHAT) == part for part in child.cmdline())
    ]


def test_checkpoints_picked_faster_than_a_model_loads_end_in_the_last_one_alone(demo, monkeypatch):
    # Closing a loading process waits until it is ready (2 s): the second pick came while the first still
    # closed the old process, and the two loads then raced: the header named one checkpoint, the ready
    # process was the other's, and a second process stayed alive until the TUI exited.
    monkeypatch.setenv("FAKE_CHAT_LOAD_S", "2")

    async def pick(pilot, app, downs: int) -> None:
        await pilot.press("ctrl+o")
        await until(pilot, lambda: isinstance(app.screen, CheckpointPicker))
        await pilot.press(*["down"] * downs, "enter")

    async def scenario():
        app = make_app(demo.db)
        async with app.run_test(size=SIZE) as pilot:
            app.open_chat(STUDY)
            screen = await until(
                pilot, lambda: isinstance(app.screen, ChatScreen) and app.screen.process and app.screen
            )
            await pick(pilot, app, 1)  # d4-c15
            await pilot.pause(0.3)
            await pick(pilot, app, 2)  # d2-c15
            await until(pilot, lambda: screen.ready, timeout_s=30, what="a model")
            assert screen.checkpoint.cell_id == "d2-c15"
            assert screen.ready["model"] == "d2-c15/step_000200"
            await pilot.pause(2.5)  # any other load would have finished by now
            assert live_chat_processes() == [screen.process.pid]
            assert screen.ready["model"] == "d2-c15/step_000200"
        await until_gone(live_chat_processes)

    async def until_gone(pids):
        deadline = time.monotonic() + 10
        while pids() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert pids() == []  # none outlives the TUI's chat

    run(scenario)


def test_chat_stays_responsive_while_the_model_loads_and_can_stop_a_reply(demo, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_CHAT_LOAD_S", "3")
    monkeypatch.setenv("FAKE_CHAT_TOKEN_S", "0.2")
    monkeypatch.setenv("FAKE_CHAT_HOLD", str(tmp_path / "never"))  # the reply waits after its first word

    async def scenario():
        app = make_app(demo.db)
        async with app.run_test(size=SIZE) as pilot:
            app.open_chat(STUDY)
            screen = await until(
                pilot, lambda: isinstance(app.screen, ChatScreen) and app.screen.process and app.screen
            )
            temperature = screen.query_one("#temperature", Input)
            temperature.focus()
            await pilot.press("backspace", "backspace", "backspace", "0", ".", "1")
            assert temperature.value == "0.1" and screen.ready is None  # keys handled while it loads
            await until(pilot, lambda: screen.ready, timeout_s=30)
            prompt = screen.query_one("#prompt", Input)
            prompt.focus()
            prompt.value = "one two three four five six seven eight"
            await pilot.press("enter")
            await until(pilot, lambda: screen.reply_text, what="the first token")
            await pilot.press("escape")
            await until(pilot, lambda: screen.generating is None, what="the stopped reply")
            assert "(stopped)" in text_of(app, "#status") and isinstance(app.screen, ChatScreen)
            # What was said stays in the conversation, as far as it got.
            assert [m["role"] for m in screen.history] == ["user", "assistant"]
            assert 0 < len(screen.history[-1]["content"].split()) < 11
            assert len(str(list(screen.query(".model"))[-1].content).split()) < 11

    run(scenario)


@pytest.mark.parametrize(
    ("prefix", "message"),
    [
        ("broken-", "model.pt does not fit meta.json"),
        ("crash-", "the chat process exited (code 1): Segmentation fault (core dumped)"),
    ],
)
def test_a_checkpoint_that_cannot_load_is_a_message(demo, prefix, message):
    async def scenario():
        app = make_app(demo.db, chat_command=fake_chat(prefix))
        async with app.run_test(size=SIZE) as pilot:
            app.open_chat(STUDY)
            banner = await until(
                pilot,
                lambda: isinstance(app.screen, ChatScreen) and app.screen.query_one(ProblemBanner).message,
            )
            assert message in banner
            assert app.screen.query_one("#prompt", Input).disabled

    run(scenario)


@pytest.mark.parametrize(
    ("study", "expected"),
    [
        ("empty", "has no finished cell with a final checkpoint yet"),
        ("nowhere", "nowhere"),  # a study the store lacks: the lookup itself fails
    ],
)
def test_chat_without_a_checkpoint_says_why(tmp_path, study, expected):
    with open_store(tmp_path / "nanostudy.db") as store:
        upsert_study(store, name="empty", path="empty.yaml", spec={})

    async def scenario():
        app = make_app(tmp_path / "nanostudy.db", study="empty")
        async with app.run_test(size=SIZE) as pilot:
            app.open_chat(study)
            banner = await until(
                pilot,
                lambda: isinstance(app.screen, ChatScreen) and app.screen.query_one(ProblemBanner).message,
            )
            assert expected in banner
            # After a failed lookup the status line kept saying "finding the best checkpoint…".
            assert str(app.screen.query_one("#status", Static).render()) == ""

    run(scenario)


def test_chat_waits_for_a_first_checkpoint_and_ctrl_o_sees_cells_finished_since(tmp_path):
    db = unfinished_study(tmp_path)

    async def scenario():
        app = make_app(db, study="later")
        async with app.run_test(size=SIZE) as pilot:
            app.open_chat("later")
            banner = await until(
                pilot,
                lambda: isinstance(app.screen, ChatScreen) and app.screen.query_one(ProblemBanner).message,
            )
            screen = app.screen
            assert "no finished cell with a final checkpoint yet" in banner
            assert "looking again every 1 s" in banner  # 5 polls of 0.2 s
            await pilot.press("ctrl+o")
            await until(
                pilot, lambda: "no checkpoint to choose from" in [n.message for n in app._notifications]
            )

            # A cell finishes while the chat is open: its model loads, without a key pressed.
            finish_cell(db, "c1", 1.5)
            await until(pilot, lambda: screen.ready, what="the first checkpoint's model", timeout_s=10)
            assert screen.checkpoint.cell_id == "c1" and screen.query_one(ProblemBanner).message is None
            assert not screen.query_one("#prompt", Input).disabled

            # Another finishes: Ctrl+O lists it, although the screen looked before it was done.
            finish_cell(db, "c2", 1.4)
            await pilot.press("ctrl+o")
            picker = await until(pilot, lambda: isinstance(app.screen, CheckpointPicker) and app.screen)
            assert [c.cell_id for c in picker.candidates] == ["c2", "c1"]  # the lower bpb first

    run(scenario)


def test_chat_with_the_real_model(tmp_path, tmp_path_factory, monkeypatch):
    """`python -m nanogpt.chat` itself on the tiny mid-trained checkpoint of the chat fixtures: it answers
    what it was taught, greedily."""
    from chat_fixtures import REPLY, chat_checkpoints

    runs = chat_checkpoints(tmp_path_factory)
    demo = demo_study(tmp_path, chat_runs=runs)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    async def scenario():
        app = make_app(demo.db, chat_command=NanostudyApp.__init__.__kwdefaults__["chat_command"])
        async with app.run_test(size=SIZE) as pilot:
            app.open_chat(STUDY)
            screen = await until(
                pilot,
                lambda: isinstance(app.screen, ChatScreen) and app.screen.ready and app.screen,
                timeout_s=90,
            )
            assert screen.ready["mode"] == "chat" and screen.ready["model"] == "chat-run/step_000060"
            screen.query_one("#temperature", Input).value = "0"
            assert await send(pilot, app, "the cat sees a book.") == REPLY

    run(scenario)


# --- opening: an empty store, a thousand cells -----------------------------------------------------


def test_opens_on_an_empty_store(tmp_path):
    open_store(tmp_path / "nanostudy.db").close()  # the schema, no study

    async def scenario():
        app = make_app(tmp_path / "nanostudy.db", study=None)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: "no study in this database yet" in text_of(app, "#empty"))
            assert app.screen.query_one(DataTable).row_count == 0
            assert app.screen.query_one(ProblemBanner).message is None

    run(scenario)


def test_first_frame_of_a_thousand_cells(tmp_path):
    """The first frame with every cell, in a generous bound (the measurement is
    benchmarks/tui_first_frame.py's, against an empty study in the same run)."""
    from benchmarks.tui_first_frame import STUDY as BENCH
    from benchmarks.tui_first_frame import fill_study

    db = fill_study(tmp_path / "big.db", num_cells=1000, steps=5)

    async def scenario():
        app = make_app(db, study=BENCH, poll_s=1.0)
        began = time.perf_counter()
        async with app.run_test(size=SIZE) as pilot:
            await until(
                pilot, lambda: app.screen.status and app.screen.query_one(DataTable).row_count == 1000
            )
            await pilot.pause()
            elapsed_s = time.perf_counter() - began
            totals = plain(app.screen.query_one("#totals", Static).content)
            assert all(part in totals for part in ("1000 cells", "400 running", "500 done", "100 failed"))
            heatmap = plain(app.screen.query_one("#heatmap", Static).content)
            assert heatmap.split("\n")[1].split() == ["depth", "1e15", "1e16", "1e17", "1e18", "1e19"]
            assert [line.split()[0] for line in heatmap.splitlines()[2:22]] == [str(d) for d in range(4, 24)]
        assert elapsed_s < 10, f"first frame of 1,000 cells after {elapsed_s:.1f} s"

    run(scenario)


def test_the_benchmark_runs_tiny(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run(
        [sys.executable, "-m", "benchmarks.tui_first_frame", "--cells", "30", "--steps", "2", "--rounds", "1",
         "--json", str(out)],
        cwd=ROOT, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    result = json.loads(out.read_text())
    assert result["cells"] == 30 and len(result["big_first_frame_s"]) == 1
    assert result["empty_median_s"] > 0 and result["big_median_s"] > 0 and result["ratio"] > 0


def test_watching_and_cancelling_under_a_live_runner(tmp_path):
    """A real runner process (the study loop over fake trainers, which step for a few seconds) writes the
    store while the TUI reads it: progress shows as it happens, and a cell cancelled from the TUI is
    stopped by that runner, which goes on with the other cell."""
    from runner_fixtures import add_tiny_cells, new_study, write_plan
    from trainer_fixtures import make_data_dir

    data = make_data_dir(tmp_path / "data", train_tokens=4_000, val_tokens=1_000)
    store, study_id = new_study(tmp_path / "nanostudy.db")
    add_tiny_cells(store, study_id, data, tmp_path / "runs", [{"id": "first"}, {"id": "second", "depth": 2}])
    store.close()
    plan = write_plan(tmp_path, {"first": ["slow"], "second": ["slow"]})
    runner = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "runner_fixtures.py"), str(tmp_path / "nanostudy.db"), "tiny",
         "--fake", str(plan)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip

    async def scenario():
        app = make_app(tmp_path / "nanostudy.db", study="tiny")
        async with app.run_test(size=SIZE) as pilot:
            # The screen's first poll may not have come back yet (status None): wait for it, then for a cell.
            running = await until(
                pilot,
                lambda: (
                    app.screen.status is not None
                    and next(
                        (c for c in app.screen.status.cells if c.state == "running" and c.step >= 2), None
                    )
                ),
                what="a cell stepping under the runner",
            )
            assert "runner active" in text_of(app, "#totals")
            step = running.step
            await until(pilot, lambda: int(row(app, running.id)[7].split("/")[0]) > step, what="more steps")
            cursor_to(app, running.id)
            await pilot.press("c")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("y")
            await until(pilot, lambda: row(app, running.id)[5] == "cancelled", what="the cell cancelled")
            other = "second" if running.id == "first" else "first"
            await until(pilot, lambda: row(app, other)[5] == "done", timeout_s=60, what="the other cell done")

    try:
        run(scenario)
        assert runner.wait(timeout=60) == 0, runner.stdout.read()  # the loop ended: every cell finished
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
    with open_store(tmp_path / "nanostudy.db", create=False) as store:
        states = {cell.id: cell.state for cell in cell_statuses(store, study_id)}
    assert sorted(states.values()) == [CellState.CANCELLED, CellState.DONE]


def test_the_real_command_in_a_terminal_shows_a_message_not_a_traceback(tmp_path):
    """`nanostudy tui` as a process on a pseudo-terminal, on a database that does not exist: the message is
    on the screen, `q` quits with exit code 0, and no traceback is ever printed."""
    import fcntl
    import os
    import pty
    import select
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "runner.cli", "tui", "demo", "--db", str(tmp_path / "none.db")],
        stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, start_new_session=True,
        env={**os.environ, "TERM": "xterm-256color"},
    )  # fmt: skip
    os.close(slave)
    screen = b""

    def read_until(done, timeout_s: float) -> None:
        nonlocal screen
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not done():
            if select.select([master], [], [], 0.1)[0]:
                try:
                    screen += os.read(master, 65536)
                except OSError:  # the terminal closed: the process has ended
                    return

    try:
        read_until(lambda: b"no nanostudy database here yet" in screen, timeout_s=60)
        assert b"no nanostudy database here yet" in screen
        # Keep reading while it quits: a terminal nobody reads fills up, and the app
        # restoring the screen would block on it. A `q` sent while the app is still
        # settling may be dropped, so it is sent again until the process ends.
        deadline = time.monotonic() + 60
        while process.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(OSError):  # the terminal closed: the process is ending
                os.write(master, b"q")
            read_until(lambda: process.poll() is not None, timeout_s=5)
        assert process.wait(timeout=5) == 0
        read_until(lambda: False, timeout_s=0.5)
        assert b"Traceback" not in screen
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
