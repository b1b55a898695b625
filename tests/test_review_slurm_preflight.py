"""The checks before anything is submitted: a refusal of `sbatch --test-only` is reported at the study key
that Slurm's words name."""

import pytest

from runner.slurm import commands, preflight
from runner.slurm.commands import SlurmError
from runner.slurm.settings import parse_settings

FAILED = "Batch job submission failed: "


@pytest.mark.parametrize(
    ("words", "key"),
    [
        ("invalid partition specified: nope", "resources.slurm.partition"),
        (FAILED + "Invalid account or account/partition combination specified", "resources.slurm.account"),
        (FAILED + "Invalid qos specification", "resources.slurm.qos"),
        (FAILED + "Requested time limit is invalid (missing or exceeds some limit)", "resources.slurm.time"),
        (FAILED + "Job violates accounting/QOS policy (job submit limit, user's size and/or time limits)",
         "resources.slurm.qos"),
        ("Socket timed out on send/recv operation", "resources.slurm"),
    ],
)  # fmt: skip
def test_a_refusal_is_reported_at_the_key_slurm_names(tmp_path, monkeypatch, words, key):
    """'timed out' was read as the time key's, and 'account/partition combination' as the partition's."""
    settings, _ = parse_settings({"partition": "gpu", "account": "lab", "qos": "high", "time": "10"})

    def refuse(options):
        raise SlurmError(f"sbatch refused the job: {words}")

    monkeypatch.setattr(preflight.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(commands, "cluster_config", lambda: {})
    monkeypatch.setattr(commands, "check_submission", refuse)
    with pytest.raises(SlurmError) as caught:
        preflight.check_cluster(settings, runs_dir=tmp_path, problem=lambda k, text: f"s.yaml:9: {k}: {text}")
    assert str(caught.value) == f"s.yaml:9: {key}: sbatch refused the job: {words}"
