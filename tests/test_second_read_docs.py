"""The docs' tables stay whole: a row after a paragraph is no longer part of the table above it."""

from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _rows_cut_off(text: str) -> list[str]:
    """Table rows (`| ... |`) that follow a line of prose: Markdown shows them as text, not in the table."""
    cut, previous, in_code = [], "", False
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("```"):
            in_code = not in_code
        is_row = line.startswith("|") and line.rstrip().endswith("|")
        if not in_code and is_row and previous.strip() and not previous.startswith("|"):
            cut.append(f"{number}: {line}")
        previous = line
    return cut


@pytest.mark.parametrize("name", ["slurm.md", "running.md", "study-files.md", "fits.md", "data.md"])
def test_no_table_row_is_cut_off_from_its_table(name):
    """docs/slurm.md's states table had a paragraph put in its middle: its two CANCELLED rows showed as a
    line of text after it."""
    assert _rows_cut_off((DOCS / name).read_text(encoding="utf-8")) == []
