"""The study's resources.slurm keys: values that Slurm would take but that break the executor are refused
at their key."""

import pytest

from runner.slurm.settings import parse_settings


@pytest.mark.parametrize(
    ("option", "why"),
    [
        ("--job-name=mine", "nanostudy names each job itself"),
        ("#SBATCH -J mine", "nanostudy names each job itself"),
        ("--output=/tmp/x.out", "RUN_DIR/logs/attempt_N"),
        ("-e /tmp/x.err", "RUN_DIR/logs/attempt_N"),
        ("--nodes 2", "resources.slurm.nodes"),
        ("--array=0-3", "not an array"),
    ],
)
def test_sbatch_options_that_the_executor_sets_itself_are_refused_at_the_key(option, why):
    """A job renamed by `--job-name` was not found again by a restarted runner: it closed the attempt as
    ended and submitted a second job that trained beside the first on the same run directory."""
    settings, problems = parse_settings({"sbatch": ["--mem=0", option]})
    assert [key for key, _ in problems] == ["sbatch"]
    assert problems[0][1].startswith(f"{option!r}: ") and why in problems[0][1]
    assert settings.sbatch == ()


def test_other_sbatch_options_are_kept():
    settings, problems = parse_settings({"sbatch": ["--mem=0", "--exclusive", "-C h100", "--nodelist=n1"]})
    assert not problems and settings.sbatch == ("--mem=0", "--exclusive", "-C h100", "--nodelist=n1")


def test_an_account_written_as_a_bare_number_is_told_to_be_quoted():
    """YAML reads `account: 12345` as a number, and `0123` as 83: 'expected a name without spaces, got
    12345' named no problem the user could see."""
    _, problems = parse_settings({"account": 12345, "qos": 83})
    assert problems == [
        ("account", "expected a name, got the number 12345: write a name of digits in quotes"),
        ("qos", "expected a name, got the number 83: write a name of digits in quotes"),
    ]


def test_an_integer_above_the_range_is_refused_with_the_bound_it_passed():
    """70000 nodes were refused as 'expected an integer >= 1, got 70000'."""
    _, problems = parse_settings({"nodes": 70000, "rdzv_port": 65536, "gpus_per_node": 8})
    assert problems == [
        ("nodes", "expected an integer <= 65535, got 70000"),
        ("rdzv_port", "expected an integer <= 65535, got 65536"),
    ]
