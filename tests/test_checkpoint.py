"""Checkpoints: atomic layout, weights_only loading, pruning, latest lookup, RNG capture (one process)."""

import json
import random

import numpy as np
import pytest
import torch

from nanogpt import checkpoint as ckpt


def save(run_dir, step, *, keep_last=None, weight=1.0):
    model_state = {"w": torch.full((2, 3), weight), "b": torch.arange(3.0)}
    optim_state = {"format": "x/1", "groups": [{"kind": "muon", "shards": [{"buf": torch.ones(4) * step}]}]}
    return ckpt.save_checkpoint(
        run_dir,
        step,
        model_state=model_state,
        optim_state=optim_state,
        meta={"model_config": {"depth": 2}, "tokens": step * 100},
        rank_state={"loader": {"epoch": 0, "step_in_epoch": step}, "rng": ckpt.rng_state()},
        keep_last=keep_last,
    )


def test_layout_and_weights_only_round_trip(tmp_path):
    path = save(tmp_path, 7, weight=2.5)
    assert path == tmp_path / "checkpoints" / "step_000007"
    assert sorted(p.name for p in path.iterdir()) == ["meta.json", "model.pt", "optim_rank0.pt"]
    assert (tmp_path / "checkpoints" / "LATEST").read_text() == "step_000007\n"
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))

    model = ckpt.load_model_state(path, "cpu")  # weights_only=True inside
    assert torch.equal(model["w"], torch.full((2, 3), 2.5))
    optim = ckpt.load_optim_state(path, 0, "cpu")
    assert torch.equal(optim["groups"][0]["shards"][0]["buf"], torch.full((4,), 7.0))
    # The files are plain tensors and containers: torch's safe loader takes them as they are.
    torch.load(path / "model.pt", weights_only=True)
    meta = ckpt.read_meta(path)
    assert meta["step"] == 7 and meta["world_size"] == 1 and meta["tokens"] == 700
    assert meta["rank_states"][0]["loader"] == {"epoch": 0, "step_in_epoch": 7}


def test_keep_last_prunes_older_steps_and_crash_leftovers(tmp_path):
    leftover = tmp_path / "checkpoints" / ".tmp-step_000004"
    leftover.mkdir(parents=True)
    (leftover / "model.pt").write_bytes(b"half")
    for step in (1, 2, 3, 4):
        save(tmp_path, step, keep_last=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_000003", "step_000004"]
    assert not leftover.exists()


def test_an_existing_step_is_kept_as_it_is(tmp_path):
    path = save(tmp_path, 5, weight=1.0)
    again = save(tmp_path, 5, weight=9.0)  # a resumed run stopped again at the step it resumed from
    assert again == path
    assert torch.equal(ckpt.load_model_state(path, "cpu")["w"], torch.full((2, 3), 1.0))


def test_latest_is_the_newest_complete_directory(tmp_path):
    assert ckpt.latest_checkpoint(tmp_path) is None
    save(tmp_path, 9)
    save(tmp_path, 10)
    # A crash between the rename and the LATEST pointer: the directory listing is the truth.
    (tmp_path / "checkpoints" / "LATEST").write_text("step_000009\n")
    (tmp_path / "checkpoints" / ".tmp-step_000011").mkdir()
    assert ckpt.latest_checkpoint(tmp_path).name == "step_000010"


def test_resolve_accepts_a_step_a_run_or_its_checkpoints_dir(tmp_path):
    step = save(tmp_path, 3)
    save(tmp_path, 6)
    assert ckpt.resolve_checkpoint(step) == step
    assert ckpt.resolve_checkpoint(tmp_path).name == "step_000006"
    assert ckpt.resolve_checkpoint(tmp_path / "checkpoints").name == "step_000006"
    with pytest.raises(ckpt.CheckpointError, match="no such checkpoint or run directory"):
        ckpt.resolve_checkpoint(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ckpt.CheckpointError, match="holds no checkpoint"):
        ckpt.resolve_checkpoint(tmp_path / "empty")


def test_damaged_checkpoints_are_errors_naming_the_file(tmp_path):
    path = save(tmp_path, 2)
    meta_path = path / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps(meta | {"format_version": 99}))
    with pytest.raises(ckpt.CheckpointError, match=r"meta\.json: checkpoint format 99"):
        ckpt.read_meta(path)
    for key in ("loader", "rng"):
        states = [{k: v for k, v in meta["rank_states"][0].items() if k != key}]
        meta_path.write_text(json.dumps(meta | {"rank_states": states}))
        with pytest.raises(ckpt.CheckpointError, match=rf"meta\.json: rank_states\[0\] has no '{key}' state"):
            ckpt.read_meta(path)
    meta_path.write_text(json.dumps(meta | {"rank_states": []}))
    with pytest.raises(ckpt.CheckpointError, match=r"meta\.json: rank_states must list one entry per rank"):
        ckpt.read_meta(path)
    meta_path.write_text("{not json")
    with pytest.raises(ckpt.CheckpointError, match=r"meta\.json: not valid JSON"):
        ckpt.read_meta(path)
    (path / "model.pt").write_bytes(b"\x80\x02garbage")
    with pytest.raises(ckpt.CheckpointError, match=r"model\.pt: cannot be loaded"):
        ckpt.load_model_state(path, "cpu")
    with pytest.raises(ckpt.CheckpointError, match=r"optim_rank3\.pt: missing"):
        ckpt.load_optim_state(path, 3, "cpu")


def test_rng_state_survives_json_and_restores_every_generator():
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = json.loads(json.dumps(ckpt.rng_state()))
    expected = (random.random(), np.random.rand(), torch.rand(2))
    random.seed(100)
    np.random.seed(100)
    torch.manual_seed(100)
    ckpt.set_rng_state(state)
    got = (random.random(), np.random.rand(), torch.rand(2))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda m: m["rank_states"][0]["rng"].update(torch="AAAA"), r"rank_states\[0\]\.rng\.torch: not a"),
        (lambda m: m["rank_states"][0]["rng"].update(numpy=[1, 2]), r"rank_states\[0\]\.rng\.numpy: not a"),
        (lambda m: m["rank_states"][0]["rng"].pop("python"), r"rank_states\[0\]\.rng\.python: missing"),
        (lambda m: m.update(step="6"), "step must be an integer, got '6'"),
        (lambda m: m.update(step=True), "step must be an integer, got True"),
        (lambda m: m.update(world_size=0, rank_states=[]), "world_size must be at least 1"),
        (lambda m: m.update(model_config=[]), "model_config must be an object"),
        (lambda m: m.update(config=[]), "config must be an object"),
        (lambda m: m.update(elapsed_s="1"), "elapsed_s must be a number"),
        (lambda m: m.update(last_val=[None, "x"]), r"last_val must be \[loss, bpb\]"),
    ],
)
def test_damaged_meta_fields_are_errors_naming_the_file(tmp_path, edit, problem):
    path = save(tmp_path, 2)
    meta_path = path / "meta.json"
    meta = json.loads(meta_path.read_text())
    edit(meta)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ckpt.CheckpointError, match=rf"meta\.json: {problem}"):
        ckpt.read_meta(path)


def test_a_resume_needs_the_batch_geometry_and_config_and_a_damaged_rng_state_changes_nothing(tmp_path):
    path = save(tmp_path, 2)
    assert "device_batch_size" not in ckpt.read_meta(path)  # enough for chat and mid-training's init
    with pytest.raises(ckpt.CheckpointError, match="missing key 'config'"):
        ckpt.read_meta(path, resume=True)
    state = ckpt.rng_state()
    torch.manual_seed(5)
    before = torch.get_rng_state()
    with pytest.raises(ValueError, match="torch: not a torch generator state"):
        ckpt.set_rng_state({**state, "torch": "AAAA"})
    assert torch.equal(torch.get_rng_state(), before)
