"""A study's name: it names the study in the database and the folder of its run directories."""

import pytest
from test_study import GOOD, problems

from runner.study import StudyError, parse, study_name


@pytest.mark.parametrize("name", ["..", ".", "/tmp/elsewhere", "team/isoflop"])
def test_a_name_that_is_not_one_folder_is_a_problem(tmp_path, name):
    """The run directories go to runs/<name>/ beside the file: `..` put them beside the study file itself,
    an absolute name anywhere on the disk."""
    text = GOOD.replace("name: tiny", f"name: '{name}'")
    assert problems(text) == [
        f"s.yaml:1: name: {name!r} is not one folder name, which runs/<name>/ needs: no '/', and not . or .."
    ]
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(StudyError):
        study_name(path)


def test_other_names_are_kept_as_written():
    assert parse(GOOD.replace("name: tiny", "name: isoflop v2.1")).name == "isoflop v2.1"
