"""A checkpoint that cannot be written for want of disk space ends the run in one line naming it, exit 1,
with an `end` `error` event; what was written of it is removed, the checkpoints before it are untouched,
and the run resumes from the last of those once there is room. The same for `LATEST`, written after it."""

import builtins
import io

import pytest
from trainer_fixtures import make_data_dir, snapshot, tiny_config, write_run

from nanogpt.events import read_events
from nanogpt.train import EXIT_DONE, EXIT_ERROR, run

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run_on_a_full_disk(config_path, full, monkeypatch, capsys) -> tuple[str, dict]:
    """Run the trainer where every open() that `full(file, mode)` picks writes to /dev/full (ENOSPC): its
    stderr and its last event."""
    real_open = io.open

    def open_on_a_full_disk(file, mode="r", *args, **kwargs):
        return real_open("/dev/full" if full(str(file), mode) else file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", open_on_a_full_disk)
    capsys.readouterr()
    assert run(config_path) == EXIT_ERROR
    monkeypatch.undo()
    return capsys.readouterr().err, read_events(config_path.parent / "events.jsonl")[0][-1]


def test_a_full_disk_at_a_checkpoint_is_one_line_and_leaves_the_earlier_ones_whole(
    tmp_path, capsys, monkeypatch
):
    config_path = write_run(tmp_path / "run", tiny_config(make_data_dir(tmp_path / "data")))
    checkpoints = tmp_path / "run" / "checkpoints"
    earlier = {}

    def at_step_12(file, mode):
        if ".tmp-step_000012" in file and "w" in mode:
            earlier.update(snapshot(checkpoints / "step_000006"))
            return True
        return False

    err, end = _run_on_a_full_disk(config_path, at_step_12, monkeypatch, capsys)
    message = f"{checkpoints / 'step_000012'}: cannot be written (No space left on device)"
    assert err == f"error: {message}\n"
    assert (end["kind"], end["status"], end["step"]) == ("end", "error", 12)
    assert message in end["message"]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["LATEST", "step_000006"]
    assert earlier and snapshot(checkpoints / "step_000006") == earlier
    assert run(config_path) == EXIT_DONE
    assert sorted(p.name for p in checkpoints.iterdir()) == ["LATEST", "step_000006", "step_000012"]


def test_a_full_disk_when_latest_is_written_is_one_line_and_the_checkpoint_resumes(
    tmp_path, capsys, monkeypatch
):
    """The checkpoint took the disk's last space and LATEST (written after it) could not be: a traceback,
    where a full disk during the checkpoint itself is one line naming the file."""
    config_path = write_run(tmp_path / "run", tiny_config(make_data_dir(tmp_path / "data")))
    checkpoints = tmp_path / "run" / "checkpoints"

    def after_step_12(file, mode):
        return ".LATEST.tmp" in file and (checkpoints / "step_000012").is_dir()

    err, end = _run_on_a_full_disk(config_path, after_step_12, monkeypatch, capsys)
    message = f"{checkpoints / 'LATEST'}: cannot be written (No space left on device)"
    assert err == f"error: {message}\n"
    assert (end["kind"], end["status"]) == ("end", "error") and message in end["message"]
    assert not any(p.name.startswith(".LATEST.tmp") for p in checkpoints.iterdir())
    assert run(config_path) == EXIT_DONE
    # Its weights are final, so the run is done: its events say so too (they ended in the `end` `error`).
    end = read_events(config_path.parent / "events.jsonl")[0][-1]
    assert (end["kind"], end["status"], end["step"]) == ("end", "done", 12)
