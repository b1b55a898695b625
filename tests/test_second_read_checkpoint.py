"""Checkpoints, read again after the day's changes: a full disk at the very end of a save."""

import builtins
import io

import pytest
from trainer_fixtures import make_data_dir, tiny_config, write_run

from nanogpt.events import read_events
from nanogpt.train import EXIT_DONE, EXIT_ERROR, run

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_full_disk_when_latest_is_written_is_one_line_and_the_checkpoint_resumes(
    tmp_path, capsys, monkeypatch
):
    """The checkpoint took the disk's last space and LATEST (written after it) could not be: a traceback,
    where a full disk during the checkpoint itself is one line naming the file."""
    run_dir = tmp_path / "run"
    config_path = write_run(run_dir, tiny_config(make_data_dir(tmp_path / "data")))
    checkpoints = run_dir / "checkpoints"
    real_open = io.open

    def disk_full_after_step_12(file, mode="r", *args, **kwargs):
        if ".LATEST.tmp" in str(file) and (checkpoints / "step_000012").is_dir():
            return real_open("/dev/full", mode, *args, **kwargs)  # every write fails with ENOSPC
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", disk_full_after_step_12)
    capsys.readouterr()
    assert run(config_path) == EXIT_ERROR
    monkeypatch.undo()
    message = f"{checkpoints / 'LATEST'}: cannot be written (No space left on device)"
    assert capsys.readouterr().err == f"error: {message}\n"
    end = read_events(run_dir / "events.jsonl")[0][-1]
    assert (end["kind"], end["status"]) == ("end", "error") and message in end["message"]
    assert not any(p.name.startswith(".LATEST.tmp") for p in checkpoints.iterdir())
    assert run(config_path) == EXIT_DONE
