"""A write of an event that the disk cuts short (a nearly full disk) is an error naming the events file, and
the next event starts on a fresh line, so a reader loses the cut line alone: never the event after it (the
run's `end`)."""

import os

import pytest
from trainer_fixtures import make_data_dir, tiny_config, write_run

from nanogpt.events import EventWriteError, EventWriter, read_events
from nanogpt.train import EXIT_ERROR, run


def cut_short(monkeypatch, when):
    """os.write writes only the first 20 bytes of the data for which `when(data)` holds."""
    real_write = os.write

    def write(fd, data):
        return real_write(fd, data[:20] if when(data) else data)

    monkeypatch.setattr(os, "write", write)


def test_a_short_write_is_an_error_and_the_next_event_starts_a_fresh_line(tmp_path, monkeypatch):
    path = tmp_path / "events.jsonl"
    with EventWriter(path) as events:
        events.write("eval", step=1, task="first", score=0.5, metrics={})
        cut_short(monkeypatch, lambda data: b'"second"' in data)
        with pytest.raises(EventWriteError, match=f"^{path}: cannot be written \\(20 of the eval event's"):
            events.write("eval", step=2, task="second", score=0.5, metrics={})
        events.write("eval", step=3, task="third", score=0.5, metrics={})
    assert [event["task"] for event in read_events(path)[0]] == ["first", "third"]
    assert path.read_text().count("\n") == 3  # the cut line was ended before the third event


def test_a_write_that_fails_names_the_file(tmp_path, monkeypatch):
    path = tmp_path / "events.jsonl"

    def no_space(fd, data):
        raise OSError(28, "No space left on device")

    with EventWriter(path) as events:
        monkeypatch.setattr(os, "write", no_space)
        message = f"^{path}: cannot be written \\(No space left on device\\)$"
        with pytest.raises(EventWriteError, match=message):
            events.write("eval", step=1, task="t", score=None, metrics={})


@pytest.mark.usefixtures("one_torch_thread")
def test_the_trainer_reports_a_cut_event_in_one_line_and_its_end_event_is_readable(
    tmp_path, monkeypatch, capsys
):
    config_path = write_run(tmp_path / "run", tiny_config(make_data_dir(tmp_path / "data")))
    cut_short(monkeypatch, lambda data: b'"kind":"step"' in data and b'"step":5,' in data)
    capsys.readouterr()
    assert run(config_path) == EXIT_ERROR
    monkeypatch.undo()
    err = capsys.readouterr().err
    events_path = tmp_path / "run" / "events.jsonl"
    assert err.startswith(f"error: {events_path}: cannot be written (20 of the step event's ")
    assert err.count("\n") == 1
    events = read_events(events_path)[0]
    assert [e["step"] for e in events if e["kind"] == "step"] == [1, 2, 3, 4]
    end = events[-1]
    assert (end["kind"], end["status"], end["step"]) == ("end", "error", 5)
    assert "cannot be written" in end["message"]


def test_a_file_ending_in_a_cut_line_is_ended_by_the_next_event_not_by_opening_it(tmp_path, monkeypatch):
    """Opening wrote the newline itself, outside any event: on a disk still full, a bare OSError naming no
    file from the constructor (in the trainer, a traceback before its `start` event)."""
    path = tmp_path / "events.jsonl"
    path.write_text('{"v":1,"kind":"eval","step":1,"task":"first","score":null,"metrics":{}}\n{"v":1,"ki')
    real_write = os.write

    def no_space(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", no_space)
    with EventWriter(path) as events:
        with pytest.raises(EventWriteError, match=f"^{path}: cannot be written"):
            events.write("eval", step=2, task="second", score=None, metrics={})
        monkeypatch.setattr(os, "write", real_write)
        events.write("eval", step=3, task="third", score=None, metrics={})
    assert [event["task"] for event in read_events(path)[0]] == ["first", "third"]


@pytest.mark.usefixtures("one_torch_thread")
def test_a_trainer_started_on_a_full_disk_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    config_path = write_run(tmp_path / "run", tiny_config(make_data_dir(tmp_path / "data")))
    events_path = tmp_path / "run" / "events.jsonl"
    events_path.write_text('{"v":1,"kind":"st')  # cut by the disk filling up

    def no_space(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", no_space)
    capsys.readouterr()
    assert run(config_path) == EXIT_ERROR
    monkeypatch.undo()
    assert capsys.readouterr().err == f"error: {events_path}: cannot be written (No space left on device)\n"
