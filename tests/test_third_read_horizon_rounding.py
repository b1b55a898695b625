"""A target_tokens the config accepts (at most 2^63 - 1) may still round up to a whole step past what a run
can count: the trainer refuses it in one line naming train.target_tokens, exit 2; its check read
train.target_flops (None) for the message, a TypeError traceback and exit 1."""

import pytest
from trainer_fixtures import make_data_dir, tiny_config, write_run

from nanogpt.train import EXIT_BAD_INPUT, run

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_target_tokens_rounding_past_the_limit_is_refused_in_one_line(tmp_path, capsys):
    config = tiny_config(make_data_dir(tmp_path / "data"))
    config["train"] = {"total_batch_tokens": 256, "device_batch_size": 4, "target_tokens": 2**63 - 1}
    run_dir = tmp_path / "run"
    config_path = write_run(run_dir, config)
    capsys.readouterr()
    assert run(config_path) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err == (
        f"error: {config_path}: train.target_tokens: 9,223,372,036,854,775,807 rounds to "
        "36,028,797,018,963,968 steps of 256 tokens, 9,223,372,036,854,775,808 tokens, more than the "
        "2^63 - 1 a run can count\n"
    )
    assert not (run_dir / "events.jsonl").exists() and not (run_dir / "checkpoints").exists()
