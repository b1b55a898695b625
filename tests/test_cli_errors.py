"""Command-line mistakes are one line on stderr and exit 2, never a traceback: a --db that cannot hold a
database, a server that does not answer, a --data-root that cannot be made, bad option values."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from data_fixtures import write_text_corpus
from runner_fixtures import tiny_study_yaml

from runner.cli import main


@pytest.fixture
def study(tmp_path: Path) -> Path:
    write_text_corpus(tmp_path / "text", num_files=4)
    path = tmp_path / "s.yaml"
    path.write_text(tiny_study_yaml("s", tmp_path / "text", "  depth: [1]\n  flops: [2e8]\n  seed: [0]\n"))
    return path


def _one_error_line(capsys, command: str, *needles: str) -> None:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith(f"nanostudy {command}: error: "), err
    for needle in needles:
        assert needle in err, err


@pytest.mark.parametrize("command", ["run", "status", "plan", "cancel", "report"])
def test_a_db_that_is_no_database_is_one_line_and_exit_2(study: Path, tmp_path: Path, capsys, command):
    not_a_db = tmp_path / "notes.db"
    not_a_db.write_text("name: not a database, but a long enough text file to be read as one\n" * 20)
    assert main([command, str(study), "--db", str(not_a_db)]) == 2
    _one_error_line(capsys, command, str(not_a_db), "not a database")


@pytest.mark.parametrize("command", ["run", "status", "cancel"])
def test_a_directory_or_an_unopenable_path_as_db_is_one_line_and_exit_2(study, tmp_path, capsys, command):
    assert main([command, str(study), "--db", str(tmp_path)]) == 2
    _one_error_line(capsys, command, str(tmp_path), "directory")
    if command == "run":
        assert main([command, str(study), "--db", "/proc/nanostudy-test.db"]) == 2
        _one_error_line(capsys, command, "/proc/nanostudy-test.db", "cannot be opened")


def test_an_unreachable_server_is_one_line_and_exit_2(study: Path, capsys):
    pytest.importorskip("psycopg")
    url = "postgresql+psycopg://nobody@127.0.0.1:1/nothing"
    for command in ("run", "status"):
        assert main([command, str(study), "--db", url]) == 2
        _one_error_line(capsys, command, url, "cannot be opened")


def test_a_data_root_that_cannot_be_made_stops_run_before_the_database(study: Path, tmp_path: Path, capsys):
    db = tmp_path / "fresh" / "n.db"
    assert main(["run", str(study), "--db", str(db), "--data-root", "/proc/nanostudy-test"]) == 2
    _one_error_line(capsys, "run", "--data-root /proc/nanostudy-test")
    assert not db.exists()


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_max_parallel_below_one_is_refused_before_anything_runs(study: Path, tmp_path: Path, capsys, value):
    with pytest.raises(SystemExit) as exited:
        main(["run", str(study), "--max-parallel", value, "--data-root", str(tmp_path / "data")])
    assert exited.value.code == 2
    assert "--max-parallel" in capsys.readouterr().err
    assert not (tmp_path / "nanostudy.db").exists() and not (tmp_path / "data").exists()


SIGTERM_IN_A_COMMAND = """
import os, signal, sys, time, types
from runner import cli

def command(args):
    os.kill(os.getpid(), signal.SIGTERM)  # as `kill` during a run's data preparation
    time.sleep(30)
    return 0

args = types.SimpleNamespace(command="run", func=command)
cli.build_parser = lambda: types.SimpleNamespace(parse_args=lambda argv: args)
cli.AFTER_COMMAND = {}
sys.exit(cli.main([]))
"""


def test_sigterm_interrupts_a_command_as_ctrl_c_does(tmp_path):
    """Exit 130 and one line, not Python's silent 143; and the process's own handler comes back after."""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", SIGTERM_IN_A_COMMAND], cwd=root, capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stderr.strip()) == (130, "nanostudy: interrupted")
    before = signal.getsignal(signal.SIGTERM)
    assert main(["status", "no-such-study", "--db", str(tmp_path / "nanostudy.db")]) == 2
    assert signal.getsignal(signal.SIGTERM) is before


def test_ctrl_c_while_the_commands_load_is_an_interrupt_too(monkeypatch, capsys):
    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("runner.cli.build_parser", interrupted)  # the commands' imports, a second long
    assert main(["status", "x"]) == 130
    assert capsys.readouterr().err == "nanostudy: interrupted\n"


@pytest.mark.parametrize("command", ["status", "cancel", "eval", "tui"])
def test_a_study_file_that_is_not_there_is_named_as_one(tmp_path: Path, capsys, monkeypatch, command):
    # It read as a study's name: "no nanostudy database here yet", or "no study named 'wk/walkk.yaml'".
    monkeypatch.chdir(tmp_path)
    assert main([command, "wk/walkk.yaml"]) == 2
    _one_error_line(capsys, command, "wk/walkk.yaml: no such study file")


def test_a_reader_that_leaves_early_is_no_traceback(study: Path):
    # `nanostudy plan s.yaml --json | head -1`: every write after the reader left raised BrokenPipeError.
    read, write = os.pipe()
    os.close(read)
    with open(write, "wb") as stdout:
        done = subprocess.run(
            [sys.executable, "-m", "runner.cli", "plan", str(study), "--json"],
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    assert done.returncode == 141 and done.stderr == "", done.stderr
