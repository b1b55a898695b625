"""Cell ids of studies: a change that alters what a cell trains gives it a new id."""

import shutil

from trainer_fixtures import make_data_dir, tiny_config, write_run

from nanogpt.train import EXIT_DONE, run
from runner.plan import plan
from runner.study import load


def _mid_training_ids(tmp_path, init_from) -> list[str]:
    chats = tmp_path / "x.jsonl"
    chats.write_text("")
    study = tmp_path / "mid.yaml"
    study.write_text(
        "name: mid\nmode: mid-training\ngrid: {seed: [0, 1]}\n"
        "train: {total_batch_tokens: 256, device_batch_size: 8, device: cpu}\n"
        f"mid_training:\n  init_from: '{init_from}'\n"
        f"  data: {{source: {{name: local, paths: '{chats}', format: chat}}}}\n  steps: 3\n"
    )
    return [cell.id for cell in plan(load(study)).cells]


def test_a_mid_training_study_from_another_checkpoint_has_other_cells(tmp_path):
    """Mode mid-training: init_from (a path) is not in the id, so the checkpoint's identity is; a study
    pointed at another checkpoint had the same ids, and its finished cells were never trained again."""
    config = tiny_config(make_data_dir(tmp_path / "data"), checkpoint={"every_steps": 6, "keep_last": 5})
    assert run(write_run(tmp_path / "init-run", config)) == EXIT_DONE
    checkpoints = tmp_path / "init-run" / "checkpoints"
    final = _mid_training_ids(tmp_path, checkpoints / "step_000012")
    earlier = _mid_training_ids(tmp_path, checkpoints / "step_000006")
    assert len(set(final)) == 2 and set(final).isdisjoint(earlier)
    # The same checkpoint elsewhere (another machine's path) is the same cell.
    shutil.copytree(checkpoints / "step_000012", tmp_path / "moved")
    assert _mid_training_ids(tmp_path, tmp_path / "moved") == final
