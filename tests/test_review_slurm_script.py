"""The batch script of a run directory whose path holds characters that sbatch or bash read specially."""

import subprocess
from pathlib import Path

from runner.executor import LaunchRequest
from runner.slurm.script import EXIT_NOT_SHARED, batch_script
from runner.slurm.settings import parse_settings

ODD = 'runs "quoted" 100%j $HOME `true`'


def _script(run_dir: Path) -> str:
    settings, _ = parse_settings({"gpus_per_node": 0})
    request = LaunchRequest(cell_id="abc", attempt_id=1, attempt_number=1, run_dir=run_dir, gpus=None)
    return batch_script(request, settings, python="python3", env={})


def test_log_paths_with_a_quote_or_a_percent_sign_are_escaped_for_sbatch(tmp_path):
    """sbatch refused an unescaped quote ("Unmatched `"`"), and read %j as the job id: the job's log
    directory did not exist and the job failed to launch."""
    run_dir = tmp_path / ODD / "abc"
    options = [line for line in _script(run_dir).splitlines() if line.startswith("#SBATCH --output")]
    escaped = str(run_dir).replace("%", "%%").replace('"', '\\"')
    assert options == [f'#SBATCH --output="{escaped}/logs/attempt_1.out"']


def test_the_shared_filesystem_message_names_a_path_with_quotes_as_it_is(tmp_path):
    """The path was pasted into a double-quoted echo: a quote in it left bash an unterminated string (the
    job failed with a syntax error) and `$HOME` or backquotes were expanded."""
    run_dir = tmp_path / ODD / "abc"
    path = tmp_path / "job.sbatch"
    path.write_text(_script(run_dir))
    result = subprocess.run(["bash", str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == EXIT_NOT_SHARED, result.stderr
    assert result.stderr.startswith(f"nanostudy: {run_dir}/config.json is not readable on ")
