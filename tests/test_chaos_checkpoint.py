"""Checkpoints under a crash at the worst moment: what a kill leaves behind is never a `step_*` directory
that cannot be loaded."""

import shutil

import pytest
import torch

from nanogpt import checkpoint as ckpt


def _save(run_dir, step, *, keep_last=None):
    return ckpt.save_checkpoint(
        run_dir,
        step,
        model_state={"w": torch.full((2, 3), float(step))},
        optim_state={"format": "x/1", "groups": []},
        meta={"model_config": {"depth": 1}},
        rank_state={"loader": {"epoch": 0, "step_in_epoch": step}, "rng": ckpt.rng_state()},
        keep_last=keep_last,
    )


def test_a_crash_while_pruning_leaves_only_complete_checkpoints(tmp_path, monkeypatch):
    """Killed while deleting an old checkpoint (after its model.pt, before the rest): that directory was left
    as a `step_*` one, listed with the complete ones but missing its weights."""
    _save(tmp_path, 1)
    _save(tmp_path, 2)
    real_rmtree = shutil.rmtree

    def killed_midway(path, *args, **kwargs):
        if (path / ckpt.MODEL_NAME).is_file():
            (path / ckpt.MODEL_NAME).unlink()
            raise KeyboardInterrupt  # the process dies here
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(ckpt.shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, 3, keep_last=2)
    monkeypatch.setattr(ckpt.shutil, "rmtree", real_rmtree)
    listed = ckpt.list_checkpoints(tmp_path)
    assert [path.name for path in listed] == ["step_000002", "step_000003"]
    for path in listed:
        assert ckpt.load_model_state(path, "cpu")["w"][0, 0] == int(path.name[-6:])
    _save(tmp_path, 4, keep_last=2)  # the next save clears what the crash left
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "LATEST",
        "step_000003",
        "step_000004",
    ]
