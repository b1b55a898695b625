"""Input files the trainer may not read (no permission, an I/O error on a network filesystem): one line
naming the file, exit 2, nothing written; they were a traceback and exit 1."""

import builtins
import io
import shutil
from pathlib import Path

import pytest
from trainer_fixtures import make_data_dir, snapshot, tiny_config, write_run

from nanogpt.train import EXIT_BAD_INPUT, EXIT_DONE, run

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def half_run(tmp_path_factory) -> Path:
    """A run directory whose newest checkpoint is step 6 of 12, beside its data directory `data`."""
    root = tmp_path_factory.mktemp("half")
    data_dir = make_data_dir(root / "data")
    run_dir = root / "run"
    assert run(write_run(run_dir, tiny_config(data_dir))) == EXIT_DONE
    shutil.rmtree(run_dir / "checkpoints" / "step_000012")
    (run_dir / "events.jsonl").unlink()
    return root


@pytest.mark.parametrize(
    "unreadable",
    [
        "data/train_000000.bin",
        "data/val_000000.bin",
        "data/manifest.json",
        "run/checkpoints/step_000006/meta.json",
    ],
)
def test_an_unreadable_input_file_is_one_line_and_exit_2(tmp_path, half_run, capsys, monkeypatch, unreadable):
    shutil.copytree(half_run, tmp_path, dirs_exist_ok=True)
    write_run(tmp_path / "run", tiny_config(tmp_path / "data"))
    denied = str(tmp_path / unreadable)
    before = snapshot(tmp_path)
    real_open = io.open

    def permission_denied(file, *args, **kwargs):  # what chmod 000 does to anyone but root
        if str(file) == denied:
            raise PermissionError(13, "Permission denied", denied)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", permission_denied)
    monkeypatch.setattr(io, "open", permission_denied)  # pathlib's read_text
    capsys.readouterr()
    assert run(tmp_path / "run" / "config.json") == EXIT_BAD_INPUT
    assert capsys.readouterr().err == f"error: {denied}: cannot be read (Permission denied)\n"
    monkeypatch.undo()
    assert snapshot(tmp_path) == before
