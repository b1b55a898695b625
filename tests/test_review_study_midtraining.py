"""Mode mid-training studies: checked against the checkpoint they start from before anything runs."""

import pytest
from trainer_fixtures import make_data_dir, tiny_config, write_run

from nanogpt.train import EXIT_DONE, run
from runner.study import StudyError, load


@pytest.fixture(scope="module")
def init_run(tmp_path_factory):
    """A finished run of the tiny model (sequence_len 32)."""
    root = tmp_path_factory.mktemp("init")
    config = tiny_config(make_data_dir(root / "data"), checkpoint={"every_steps": None})
    assert run(write_run(root / "run", config)) == EXIT_DONE
    return root / "run"


@pytest.mark.parametrize(
    "train, problem",
    [
        (
            "{total_batch_tokens: 100, device: cpu}",
            "train.total_batch_tokens: 100 tokens per step is not a multiple of the checkpoint's "
            "sequence_len × gpus_per_cell = 32 × 1",
        ),
        (
            "{total_batch_tokens: 256, device_batch_size: 3, device: cpu}",
            "train.device_batch_size: 3 does not divide the 8 sequences per GPU and step "
            "(total_batch_tokens / (sequence_len × gpus))",
        ),
    ],
)
def test_a_batch_the_checkpoints_sequence_len_does_not_split_is_a_problem(tmp_path, init_run, train, problem):
    """The batch rule was skipped for mode mid-training (no model section): such a study loaded and planned,
    and every cell's trainer refused it at launch."""
    (tmp_path / "x.jsonl").write_text("")
    study = tmp_path / "mid.yaml"
    study.write_text(
        "name: mid\nmode: mid-training\ngrid: {seed: [0, 1]}\n"
        f"train: {train}\n"
        f"mid_training:\n  init_from: '{init_run}'\n"
        f"  data: {{source: {{name: local, paths: '{tmp_path / 'x.jsonl'}', format: chat}}}}\n  steps: 3\n"
    )
    with pytest.raises(StudyError) as caught:
        load(study)
    assert list(caught.value.problems) == [f"{study}:4: {problem}"]
