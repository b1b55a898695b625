"""`nanostudy fit` on bad arguments: exit 2 and one line naming the flag, as for a bad table."""

from pathlib import Path

import pytest

from runner import cli


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_a_negative_seed_is_bad_input(json_flag: list[str], tmp_path: Path, capsys) -> None:
    # Once: exit 1, "cannot fit t.csv: expected non-negative integer" (--json), or every fit listed as
    # failed with it, as if the table could not be fitted.
    table = tmp_path / "t.csv"
    table.write_text("n,d,loss\n1e8,2e9,3.1\n2e8,1e9,3.2\n")
    argv = ["fit", str(table), "--n", "n", "--d", "d", "--loss", "loss", "--seed", "-1", *json_flag]
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err == "nanostudy fit: error: --seed must be >= 0, got -1\n" and captured.out == ""
