"""A checkpoint that cannot be written for want of disk space ends the run in one line naming it, exit 1,
with an `end` `error` event; what was written of it is removed, the checkpoints before it are untouched,
and the run resumes from the last of those once there is room."""

import builtins
import io

import pytest
from trainer_fixtures import make_data_dir, snapshot, tiny_config, write_run

from nanogpt.events import read_events
from nanogpt.train import EXIT_DONE, EXIT_ERROR, run

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_full_disk_at_a_checkpoint_is_one_line_and_leaves_the_earlier_ones_whole(
    tmp_path, capsys, monkeypatch
):
    data_dir = make_data_dir(tmp_path / "data")
    run_dir = tmp_path / "run"
    config_path = write_run(run_dir, tiny_config(data_dir))
    checkpoints = run_dir / "checkpoints"
    real_open = io.open
    earlier = {}

    def disk_full_at_step_12(file, mode="r", *args, **kwargs):
        if ".tmp-step_000012" in str(file) and "w" in mode:
            earlier.update(snapshot(checkpoints / "step_000006"))
            return real_open("/dev/full", mode, *args, **kwargs)  # every write fails with ENOSPC
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", disk_full_at_step_12)
    capsys.readouterr()
    assert run(config_path) == EXIT_ERROR
    monkeypatch.undo()
    message = f"{checkpoints / 'step_000012'}: cannot be written (No space left on device)"
    assert capsys.readouterr().err == f"error: {message}\n"
    end = read_events(run_dir / "events.jsonl")[0][-1]
    assert (end["kind"], end["status"], end["step"]) == ("end", "error", 12)
    assert message in end["message"]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["LATEST", "step_000006"]
    assert earlier and snapshot(checkpoints / "step_000006") == earlier
    assert run(config_path) == EXIT_DONE
    assert sorted(p.name for p in checkpoints.iterdir()) == ["LATEST", "step_000006", "step_000012"]
