"""A config file holding a number of more digits than Python reads (4,300) is refused in one line naming the
file; the message was Python's alone, naming no file."""

import sys

import pytest

from nanogpt.config import RunConfig


def test_a_number_too_long_to_read_names_the_file(tmp_path):
    path = tmp_path / "config.json"
    digits = "9" * (sys.get_int_max_str_digits() + 1)
    head = '{"model": {"depth": 2}, "data": {"train_dir": "d"}, "train": {"num_steps": '
    path.write_text(head + digits + "}}")
    with pytest.raises(ValueError) as caught:
        RunConfig.from_json(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: not valid JSON (Exceeds the limit (") and "\n" not in message
