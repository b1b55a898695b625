"""A checkpoint's recorded state that parses but cannot be resumed from is refused in one line, exit 2,
before anything is written."""

import json
import shutil
from pathlib import Path

import pytest
from trainer_fixtures import make_data_dir, snapshot, tiny_config, write_run

from nanogpt.train import EXIT_BAD_INPUT, EXIT_DONE, run

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_data_dir(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def half_run(tmp_path_factory, data_dir) -> Path:
    """A run stopped after 6 of 12 steps (micro-batches of 2, so 4 per step), its checkpoint at step 6."""
    run_dir = tmp_path_factory.mktemp("run")
    config = tiny_config(data_dir, train={"device_batch_size": 2})
    assert run(write_run(run_dir, config)) == EXIT_DONE
    shutil.rmtree(run_dir / "checkpoints" / "step_000012")
    (run_dir / "events.jsonl").unlink()
    return run_dir


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("step_in_epoch", -5, "step_in_epoch is -5 in the checkpoint, not an integer in [0, 156)"),
        ("step_in_epoch", 10**9, "step_in_epoch is 1000000000 in the checkpoint, not an integer in [0, 156)"),
        ("micro_batch", 7, "micro_batch is 7 in the checkpoint, not an integer in [0, 4)"),
        ("epoch", 1.5, "epoch is 1.5 in the checkpoint, not a non-negative integer"),
        ("epoch", "x", "epoch is 'x' in the checkpoint, not a non-negative integer"),
    ],
)
def test_a_data_position_outside_the_data_is_one_line_and_exit_2(
    tmp_path, half_run, capsys, key, value, problem
):
    """It was a traceback (a step with no sequences to read) after the start event, or, for a micro-batch
    past the step's, a run that trained on other tokens than the straight run and ended done."""
    run_dir = tmp_path / "run"
    shutil.copytree(half_run, run_dir)
    meta_path = run_dir / "checkpoints" / "step_000006" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["rank_states"][0]["loader"][key] = value
    meta_path.write_text(json.dumps(meta))
    before = snapshot(run_dir)
    capsys.readouterr()
    assert run(run_dir / "config.json") == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err == f"error: {meta_path}: loader state: {problem}\n"
    assert snapshot(run_dir) == before


def test_a_checkpoint_config_without_a_section_says_it_is_absent(tmp_path, half_run, capsys):
    """It said `train: <dataclasses._MISSING_TYPE object at 0x…> in the checkpoint`."""
    run_dir = tmp_path / "run"
    shutil.copytree(half_run, run_dir)
    meta_path = run_dir / "checkpoints" / "step_000006" / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["config"]["train"]
    meta_path.write_text(json.dumps(meta))
    capsys.readouterr()
    assert run(run_dir / "config.json") == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    expected = (
        f"error: {meta_path}: the run's config changed since this checkpoint (train: None in the checkpoint, "
    )
    assert err.startswith(expected) and err.count("\n") == 1, err
