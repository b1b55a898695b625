"""resources.slurm and the Slurm docs, read again after the day's changes."""

import pytest

from runner.slurm.settings import parse_settings


@pytest.mark.parametrize(
    ("option", "why"),
    [
        ("--job=mine", "nanostudy names each job itself"),
        ("#SBATCH --j mine", "nanostudy names each job itself"),
        ("--out=/tmp/x.out", "RUN_DIR/logs/attempt_N"),
        ("--er=/tmp/x.err", "RUN_DIR/logs/attempt_N"),
        ("--arr=0-3", "not an array"),
    ],
)
def test_an_abbreviated_sbatch_option_that_the_executor_sets_itself_is_refused(option, why):
    """sbatch takes any unambiguous start of a long option (--job=mine renames the job as --job-name=mine
    does); only the full names were refused, so the renamed job was lost to a restarted runner."""
    settings, problems = parse_settings({"sbatch": [option]})
    assert [key for key, _ in problems] == ["sbatch"]
    assert problems[0][1].startswith(f"{option!r}: ") and why in problems[0][1]
    assert settings.sbatch == ()


@pytest.mark.parametrize("option", ["--nodelist=n1", "--open-mode=append", "--export=ALL", "--account=a"])
def test_options_that_only_share_a_start_with_ours_are_kept(option):
    settings, problems = parse_settings({"sbatch": [option]})
    assert not problems and settings.sbatch == (option,)
