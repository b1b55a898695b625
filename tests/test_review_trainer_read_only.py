"""A run directory that became read-only after an earlier start left its lock file in it: refused in one
line before the set-up, exit 2, like one without the lock file (it was a traceback and exit 1 once the
whole set-up was done, at the creation of events.jsonl)."""

import errno
import os
from pathlib import Path

import pytest
from trainer_fixtures import make_data_dir, tiny_config, write_run

from nanogpt.train import EXIT_BAD_INPUT, run

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_read_only_run_directory_holding_a_lock_file_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    config_path = write_run(run_dir, tiny_config(tmp_path / "no-data"))
    assert run(config_path) == EXIT_BAD_INPUT  # bad input: the lock file is all it leaves
    assert sorted(p.name for p in run_dir.iterdir()) == [".trainer.lock", "config.json"]
    write_run(run_dir, tiny_config(make_data_dir(tmp_path / "data")))
    run_dir.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: refuse what a read-only directory refuses anyone else
        real_open, real_access = os.open, os.access

        def read_only_open(path, flags, *args, **kwargs):  # an existing file opens, a new one cannot be made
            if Path(path).parent == run_dir and flags & os.O_CREAT and not os.path.exists(path):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", read_only_open)
        monkeypatch.setattr(
            os, "access", lambda p, mode: not (Path(p) == run_dir and mode & os.W_OK) and real_access(p, mode)
        )
    capsys.readouterr()
    try:
        assert run(config_path) == EXIT_BAD_INPUT
    finally:
        run_dir.chmod(0o755)
    assert capsys.readouterr().err == (
        f"error: {run_dir}: cannot write in the run directory (no permission, or a read-only filesystem)\n"
    )
    assert sorted(p.name for p in run_dir.iterdir()) == [".trainer.lock", "config.json"]
