"""`nanostudy tui --refresh-s`: a period the poll timer cannot keep is refused in one line, before the TUI
takes the terminal."""

import pytest

from runner.cli import main
from tui.app import NanostudyApp


@pytest.mark.parametrize("refresh_s", ["nan", "1e-9", "0", "-1"])
def test_a_refresh_period_that_would_freeze_the_screen_is_refused(refresh_s, monkeypatch, capsys, tmp_path):
    """NaN passed the check that it be positive, and NaN or a nanosecond fired the poll timer back to back:
    the screen froze, with the terminal in the TUI's hands."""
    started = []
    monkeypatch.setattr(NanostudyApp, "run", lambda self: started.append(self.poll_s))
    monkeypatch.chdir(tmp_path)
    assert main(["tui", "--refresh-s", refresh_s]) == 2
    assert capsys.readouterr().err == (
        f"nanostudy tui: error: --refresh-s must be at least 0.01 s, got {float(refresh_s)}\n"
    )
    assert started == []
    assert main(["tui", "--refresh-s", "0.01"]) == 0 and started == [0.01]
