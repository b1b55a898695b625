"""`nanostudy chat` and `nanostudy serve` through runner.cli.main: checkpoints and studies as targets (the
best checkpoint by the TUI's rule, runner.api.best_checkpoint), the interactive loop, bad options, a taken
port, a non-loopback host; and `nanostudy serve` as a real process."""

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from chat_fixtures import CONTEXT, REPLY

from runner.api import best_checkpoint
from runner.cli import main
from store import (
    AttemptOutcome,
    CellMode,
    Executor,
    NewCell,
    add_cells,
    claim,
    end_attempt,
    ingest,
    open_store,
    upsert_study,
)

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def chat(monkeypatch, capsys, *args: str, typed: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(typed))
    code = main(["chat", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_conversation_with_the_chat_model(chat_runs, monkeypatch, capsys):
    typed = "the cat sees a book.\n\nand then?\n/reset\n" + "a" * CONTEXT + "\nhi\n"
    code, out, err = chat(
        monkeypatch, capsys, str(chat_runs.chat), "--device", "cpu", "--seed", "0", typed=typed
    )
    assert code == 0  # the input ended
    assert f"loading checkpoint {chat_runs.chat}" in err
    lines = out.splitlines()
    assert lines[0] == f"chat-run/step_000060 (chat model; context {CONTEXT} tokens; cpu)"
    assert lines[1].startswith("/reset starts over")
    replies = [re.sub(r"^(you> )*(model> )?", "", line) for line in lines[2:]]  # an empty line: 2 prompts
    assert replies[:2] == [REPLY, REPLY]  # the second turn sees the first one
    assert replies[2] == "(a new conversation)"
    assert replies[3].startswith(f"(the conversation is {CONTEXT + 20} tokens, more than the model's context")
    assert replies[4] == REPLY


def test_a_base_model_continues_each_line(chat_runs, monkeypatch, capsys):
    code, out, _ = chat(
        monkeypatch,
        capsys,
        str(chat_runs.base),
        "--max-tokens",
        "6",
        "--temperature",
        "0",
        typed="the cat\n/quit\nno\n",
    )
    assert code == 0
    lines = out.splitlines()
    assert "(base model: each line you type is continued as text;" in lines[0]
    assert lines[2].startswith("you> model> ") and len(lines[2]) == len("you> model> ") + 6
    assert lines[3] == "(cut at max tokens or the context end)"
    assert len(lines) == 5 and lines[4] == "you> "  # /quit: the last line was never read


def test_bad_targets_and_options(chat_runs, monkeypatch, capsys, tmp_path):
    code, _, err = chat(monkeypatch, capsys, str(tmp_path / "nowhere"), typed="")
    assert code == 2 and "neither a checkpoint directory, a run directory nor a study file" in err
    code, _, err = chat(monkeypatch, capsys, str(tmp_path), typed="")
    assert code == 2 and "holds no checkpoint" in err
    code, _, err = chat(monkeypatch, capsys, str(chat_runs.chat), "--temperature", "5", typed="")
    assert code == 2 and "--temperature: temperature: must be a number in [0, 2], got 5.0" in err
    # Checked once the model's context is known, before the first message (not a traceback at it).
    code, out, err = chat(monkeypatch, capsys, str(chat_runs.chat), "--max-tokens", "100000", typed="hi\n")
    assert code == 2 and "you>" not in out, out
    assert err.splitlines()[-1] == (
        f"nanostudy chat: error: --max-tokens: max_tokens: 100000 is more than the model's context of "
        f"{CONTEXT} tokens"
    ), err
    code, _, err = chat(monkeypatch, capsys, "tiny", "--db", str(tmp_path / "none.db"), typed="")
    assert code == 2 and "none.db" in err


def _study_db(path: Path, chat_runs, *, done: bool = True) -> Path:
    """A study of two done cells as the runner records them: a pretraining cell and its mid-training
    child, whose run directories are the fixture's, each with its final checkpoint."""
    store = open_store(path)
    study = upsert_study(store, name="tiny", path=str(path.parent / "tiny.yaml"), spec={"name": "tiny"})
    common = dict(
        depth=2, flops_budget=1e12, seed=0, num_params=1, num_tokens=1, flops_per_token=6, steps_total=1
    )
    add_cells(
        store,
        study.id,
        [
            NewCell(id="pre", mode=CellMode.PRETRAINING, config={}, run_dir=str(chat_runs.base), **common),
            NewCell(
                id="mid",
                mode=CellMode.MID_TRAINING,
                config={},
                run_dir=str(chat_runs.chat),
                parent_cell_id="pre",
                **common,
            ),
        ],
    )
    for cell_id, step, bpb in (("pre", 30, 2.0), ("mid", 60, 3.0)):
        attempt = claim(store, cell_id, executor=Executor.LOCAL, host="here", gpus="", num_gpus=0)
        checkpoint = {
            "step": step,
            "kind": "final",
            "path": f"checkpoints/step_{step:06d}",
            "tokens": 1,
            "flops": 6.0,
        }
        ingest(
            store,
            cell_id,
            attempt_id=attempt.id,
            val=[{"step": step, "tokens": 1, "val_loss": bpb, "val_bpb": bpb}],
            checkpoints=[{**checkpoint, "created_at": 1.0}],
        )
        if done:
            end_attempt(store, attempt.id, AttemptOutcome.DONE, exit_code=0)
    store.close()
    return path


def test_a_study_means_its_best_checkpoint(chat_runs, tmp_path, monkeypatch, capsys):
    db = _study_db(tmp_path / "nanostudy.db", chat_runs)
    with open_store(db, create=False) as store:
        best = best_checkpoint(store, "tiny")
    # Mid-training cells first, although the pretraining cell has the lower bpb: the TUI's rule.
    assert (best.cell_id, best.mode, best.step) == ("mid", "mid-training", 60)
    assert best.path == (chat_runs.chat / "checkpoints" / "step_000060").resolve()
    code, out, err = chat(monkeypatch, capsys, "tiny", "--db", str(db), "--seed", "0", typed="hi\n")
    assert code == 0 and f"model> {REPLY}" in out
    assert (
        "loading study tiny: cell mid (mid-training, depth 2, 1.0e+12 FLOPs, val bpb 3.0000), step 60" in err
    )
    code, _, err = chat(monkeypatch, capsys, "other", "--db", str(db), typed="")
    assert code == 2 and "no study named 'other'" in err

    unfinished = _study_db(tmp_path / "unfinished.db", chat_runs, done=False)
    code, _, err = chat(monkeypatch, capsys, "tiny", "--db", str(unfinished), typed="")
    assert code == 2 and "study 'tiny' has no finished cell with a final checkpoint yet" in err


def test_serve_never_takes_a_port_in_use(chat_runs, capsys):
    holder = socket.create_server(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    try:
        assert main(["serve", str(chat_runs.chat), "--port", str(port)]) == 2
        _, err = capsys.readouterr()
        assert err == f"port {port} is in use (by another process); choose --port\n"
        client = socket.create_connection(("127.0.0.1", port))  # the holder still listens
        conn, _ = holder.accept()
        conn.close()
        client.close()
    finally:
        holder.close()


def test_serve_warns_off_loopback(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "nowhere"), "--host", "0.0.0.0", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "warning: listening on 0.0.0.0: this server has no authentication" in err
    assert main(["serve", str(tmp_path / "nowhere"), "--port", "0"]) == 2
    assert "warning" not in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--port", "70000"]) == 2
    assert "--port 70000: must be in 0..65535" in capsys.readouterr().err


def test_serve_as_a_process(chat_runs):
    # PYTHONFAULTHANDLER: a server that does not stop is sent SIGABRT, and prints where each thread was.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PYTHONFAULTHANDLER": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "runner.cli", "serve", str(chat_runs.chat), "--port", "0", "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("serving chat-run/step_000060 (chat model) at http://127.0.0.1:"), line
        url = line.split(" at ", 1)[1].split("/ ", 1)[0]
        request = urllib.request.Request(
            f"{url}/v1/chat/completions",
            data=json.dumps({"messages": [{"role": "user", "content": "hi"}], "seed": 0}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            assert json.load(response)["choices"][0]["message"]["content"] == REPLY
        process.send_signal(signal.SIGINT)
        # It exits in about 1.5 s (torch's teardown, mostly). 30 s ran out once on this 2-core machine
        # while other processes kept both cores busy, and 120 s once on a fresh clone; 47 runs in a loop, half
        # of them beside two busy processes, took 0.8-1.6 s. A server still running shows its threads' stacks.
        try:
            code = process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGABRT)
            process.wait(timeout=30)
            pytest.fail(f"the server did not stop 120 s after SIGINT; its stderr:\n{process.stderr.read()}")
        assert code == 0
        assert "stopped after" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
