"""The planner: cells, their ids, and N, D, C from the model itself; `nanostudy plan`."""

import json
from pathlib import Path

import pytest
import torch
from data_fixtures import write_text_corpus
from test_study import GOOD

from nanogpt.model import GPT, GPTConfig
from runner.cli import main
from runner.data.prepare import PrepareConfig, find_prepared, prepare
from runner.plan import Throughput, cell_id, plan
from runner.study import StudyError, load, parse

ROOT = Path(__file__).resolve().parents[1]
MID = "mid_training:\n  data: {source: {name: local, paths: x.jsonl, format: chat}}\n  steps: 7\n"


def _ids(text: str) -> dict[tuple, str]:
    return {(c.mode, c.axes["depth"], c.axes["flops"], c.axes["seed"]): c.id for c in plan(parse(text)).cells}


def test_numbers_come_from_the_model_and_the_horizon_from_the_budget():
    planned = plan(parse(GOOD))
    assert len(planned.cells) == 8
    for cell in planned.cells:
        with torch.device("meta"):
            model = GPT(GPTConfig(depth=cell.axes["depth"], aspect_ratio=16, head_dim=16, sequence_len=32,
                                  vocab_size=300))  # fmt: skip
        assert cell.num_params == model.num_scaling_params()
        assert cell.flops_per_token == model.estimate_flops()
        assert cell.width == 16 * cell.axes["depth"]
        assert cell.num_steps == max(1, round(cell.axes["flops"] / (cell.flops_per_token * 256)))
        assert cell.num_tokens == cell.num_steps * 256
        assert cell.flops == cell.flops_per_token * cell.num_tokens
        assert cell.flops == pytest.approx(cell.axes["flops"], rel=0.5 / cell.num_steps + 1e-9)
        assert cell.config["train"]["target_flops"] == cell.axes["flops"]
        assert cell.epochs is None  # no data directory given


def test_ids_are_stable_and_only_new_settings_make_new_cells():
    base = _ids(GOOD)
    assert len(set(base.values())) == 8 and all(len(i) == 12 for i in base.values())
    assert _ids(GOOD) == base
    # One more depth: the old cells keep their ids.
    more = _ids(GOOD.replace("depth: [1, 2]", "depth: [1, 2, 3]"))
    assert {k: v for k, v in more.items() if k in base} == base and len(more) == 12
    # Settings that cannot change what a cell trains leave the ids alone...
    same = GOOD.replace(
        "  device: cpu",
        "  device: cpu\n  compile: false\n  fused_loss: false\n  fused_mlp: auto\n  log_every: 10\n"
        "  device_batch_size: 2",
    )
    assert _ids(same + "checkpoint: {every_steps: 5}\nwandb: {mode: offline}\n") == base
    # ...and any that can gives every cell a new id.
    changed = _ids(GOOD + "optim: {matrix_lr: 0.03}\n")
    assert set(changed.values()).isdisjoint(base.values())
    assert set(_ids(GOOD.replace("bpe:300", "bpe:400")).values()).isdisjoint(base.values())
    # fp8_head came after studies existed: at its default, auto (which pins no head, like fused_loss), a
    # cell keeps the id it had before fp8_head existed and while its default was false (this one's then);
    # true and false pin the head, so a study asking for one gets cells trained with it.
    assert _ids(GOOD.replace("  device: cpu", "  device: cpu\n  fp8_head: auto")) == base
    assert base[("pretraining", 1, 1e9, 0)] == "ecd7d830ae90"
    for value in ("true", "false"):
        pinned = _ids(GOOD.replace("  device: cpu", f"  device: cpu\n  fp8_head: {value}"))
        assert set(pinned.values()).isdisjoint(base.values())


def test_a_mid_training_study_files_its_cells_under_the_checkpoints_flops(tmp_path):
    """Mode mid-training: each cell's budget is the FLOPs its checkpoint trained (meta.json's flops), else
    its tokens at the model's FLOPs per token; a checkpoint that records neither is a study problem at
    mid_training.init_from (its budget was NaN, which the store refused)."""
    from trainer_fixtures import make_data_dir, tiny_config, write_run

    from nanogpt import checkpoint as ckpt
    from nanogpt.train import EXIT_DONE, run

    init_run = tmp_path / "init-run"
    config = tiny_config(make_data_dir(tmp_path / "data"), checkpoint={"every_steps": None})
    assert run(write_run(init_run, config)) == EXIT_DONE
    meta_path = ckpt.latest_checkpoint(init_run) / ckpt.META_NAME
    meta = json.loads(meta_path.read_text())
    study = tmp_path / "mid.yaml"
    study.write_text(
        "name: mid\nmode: mid-training\ngrid: {seed: [0, 1]}\n"
        "train: {total_batch_tokens: 256, device_batch_size: 8, device: cpu}\n"
        f"mid_training:\n  init_from: '{init_run}'\n"
        f"  data: {{source: {{name: local, paths: '{tmp_path / 'x.jsonl'}', format: chat}}}}\n  steps: 3\n"
    )
    (tmp_path / "x.jsonl").write_text("")
    cells = plan(load(study)).cells
    assert [cell.axes["flops"] for cell in cells] == [meta["flops"]] * 2 and meta["flops"] > 0
    with torch.device("meta"):
        per_token = GPT(GPTConfig(**meta["model_config"])).estimate_flops()
    meta_path.write_text(json.dumps({key: value for key, value in meta.items() if key != "flops"}))
    assert [cell.axes["flops"] for cell in plan(load(study)).cells] == [meta["tokens"] * per_token] * 2
    meta_path.write_text(json.dumps({**meta, "flops": 0, "tokens": 0}))
    with pytest.raises(StudyError) as raised:
        plan(load(study))
    assert list(raised.value.problems) == [
        f"{study}:6: mid_training.init_from: {meta_path} records neither the FLOPs nor the tokens it "
        "trained (step 12): the cells of a mid-training study are filed under that budget"
    ]


def test_the_id_ignores_data_paths_but_not_the_data():
    config = {"model": {"depth": 1}, "data": {"train_dir": "/a"}, "train": {"num_steps": 1}}
    moved = {**config, "data": {"train_dir": "/elsewhere"}}
    assert cell_id(config, data={"source": "x"}) == cell_id(moved, data={"source": "x"})
    # The id of a config written before fp8_head existed, and of one at its default (auto), is the same.
    data = {"source": "x"}
    assert cell_id({**config, "fp8_head": "auto"}, data=data) == cell_id(config, data=data)
    for pinned in (True, False):
        assert cell_id({**config, "fp8_head": pinned}, data=data) != cell_id(config, data=data)
    assert cell_id(config, data={"source": "x"}) != cell_id(config, data={"source": "y"})
    assert cell_id(config, data={"source": "x"}) != cell_id(config, data={"source": "x"}, parent_id="p")


def test_mode_all_gives_each_point_a_child_after_its_parent(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.jsonl").write_text("")  # the chats themselves are read only when the data is prepared
    cells = plan(parse(GOOD.replace("mode: pretraining", "mode: all") + MID)).cells
    assert [c.mode for c in cells[:2]] == ["pretraining", "mid-training"] and len(cells) == 16
    for parent, child in zip(cells[::2], cells[1::2], strict=True):
        assert child.parent_id == parent.id and parent.parent_id is None
        assert child.axes == parent.axes and child.num_params == parent.num_params
        assert child.num_steps == 7 and child.config["init_from"] is None


def test_a_mid_training_horizon_past_what_a_run_can_count_is_a_problem_at_its_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.jsonl").write_text("")
    text = GOOD.replace("mode: pretraining", "mode: all") + MID.replace("steps: 7", "flops: 1e30")
    with pytest.raises(StudyError) as caught:
        plan(parse(text, path="s.yaml"))
    line = text.splitlines().index("  flops: 1e30") + 1
    assert caught.value.problems[0].startswith(f"s.yaml:{line}: mid_training.flops: "), caught.value.problems
    assert caught.value.problems[0].endswith("a run can count; a typo in the exponent?")


def test_auto_gpus_take_the_fewest_whose_memory_holds_the_model():
    text = GOOD.replace("  device: cpu\n", "") + "resources: {gpus_per_cell: auto}\n"
    study = parse(text)
    small = plan(study, measured=Throughput(device_type="cuda", device_name="H100", memory_bytes=80 * 2**30))
    assert {cell.gpus for cell in small.cells} == {1}
    tight = plan(study, measured=Throughput(device_type="cuda", device_name="H100", memory_bytes=10_000))
    assert {cell.gpus for cell in tight.cells} == {8}  # nothing fits: the most, with a warning
    assert any("does not fit on 8 GPUs" in warning for warning in tight.warnings)


def test_gpus_given_per_depth_go_to_each_cell_of_that_depth():
    text = GOOD.replace("  device: cpu\n", "") + "resources:\n  gpus_per_cell: {1: 1, 2: 4}\n"
    cells = plan(parse(text), measured=Throughput(device_type="cuda", device_name="H100")).cells
    assert {(cell.axes["depth"], cell.gpus) for cell in cells} == {(1, 1), (2, 4)}


def test_measured_speed_is_used_for_the_same_shape_and_nearest_depth_only():
    study = parse(GOOD)
    shape = (1, 16, 16, 32)
    fast = Throughput(device_type="cpu", device_name="x", flops_per_s={shape: 1e12})
    cells = plan(study, measured=fast).cells
    by_depth = {c.axes["depth"]: c for c in cells}
    assert by_depth[1].eta_measured and not by_depth[2].eta_measured
    assert by_depth[1].eta_s == pytest.approx(by_depth[1].flops / 1e12 + 8.0)
    assert by_depth[2].eta_s == pytest.approx(by_depth[2].flops / 1e12 + 8.0)  # nearest depth, same shape
    other = Throughput(device_type="cpu", device_name="x", flops_per_s={(1, 64, 128, 1024): 1e12})
    assert not any(cell.eta_measured for cell in plan(study, measured=other).cells)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("plan-data")
    write_text_corpus(root / "corpus")
    study_text = GOOD.replace(
        "{name: python-source, max_bytes: 1MB}", f"{{name: local, paths: '{root}/corpus/*.txt'}}"
    )
    path = root / "tiny.yaml"
    path.write_text(study_text)
    return path, root / "data"


def test_find_prepared_sees_only_prepared_data(prepared):
    path, data_root = prepared
    config = parse(path.read_text(), path=path).data
    assert find_prepared(config, root=data_root) is None  # nothing trained, nothing prepared
    result = prepare(config, root=data_root, progress=False)
    assert find_prepared(config, root=data_root) == result.data_dir
    other = PrepareConfig(source=config.source, tokenizer=config.tokenizer, val_fraction=0.2)
    assert find_prepared(other, root=data_root) is None


def test_plan_command_prints_the_table_and_json_and_changes_nothing(prepared, capsys):
    path, data_root = prepared
    prepare(parse(path.read_text(), path=path).data, root=data_root, progress=False)
    assert main(["plan", str(path), "--data-root", str(data_root)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:6] == ["cell", "mode", "depth", "width", "params", "N"]
    rows = out[1:9]
    assert all(row.split()[1] == "pre" and row.split()[-1] == "new" for row in rows)
    assert out[9].startswith("study tiny (pretraining): 8 cells,") and "8 to train" in out[9]
    assert not (path.parent / "nanostudy.db").exists()
    assert main(["plan", str(path), "--data-root", str(data_root), "--json"]) == 0
    planned = json.loads(capsys.readouterr().out)
    assert planned["study"] == "tiny" and len(planned["cells"]) == 8
    assert all(cell["epochs"] is not None and cell["epochs"] > 0 for cell in planned["cells"])
    assert {cell["state"] for cell in planned["cells"]} == {"new"}


def test_plan_command_reports_an_invalid_study_and_exits_2(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD.replace("[1, 2]", "[0, 2]"))
    assert main(["plan", str(path)]) == 2
    assert capsys.readouterr().err.startswith(f"{path}:7: grid.depth[0]: must be positive, got 0")


def test_a_budget_below_one_optimizer_step_is_a_problem_at_its_line():
    text = GOOD.replace("flops: [1e9, 3e9]", "flops: [1e3, 3e9]")
    with pytest.raises(StudyError) as caught:
        plan(parse(text, path="s.yaml"))
    problems = caught.value.problems
    assert len(problems) == 2  # depths 1 and 2
    assert problems[0].startswith(
        "s.yaml:8: grid.flops[0]: budget 1e+03 FLOPs is less than one optimizer step"
    )
    assert problems[0].endswith("); the smallest budget for this depth is 1.42e+07 FLOPs"), problems[0]


def test_a_budget_past_what_a_run_can_count_is_a_problem_at_its_line():
    """1e30 FLOPs at a tiny depth is about 1e25 tokens: past a 64-bit count (the store refused it with an
    OverflowError traceback once the study ran)."""
    text = GOOD.replace("flops: [1e9, 3e9]", "flops: [1e9, 1e30]")
    with pytest.raises(StudyError) as caught:
        plan(parse(text, path="s.yaml"))
    problems = caught.value.problems
    assert len(problems) == 2  # depths 1 and 2
    assert problems[0].startswith("s.yaml:8: grid.flops[1]: budget 1e+30 FLOPs is "), problems[0]
    assert problems[0].endswith("more than the 9.22e+18 a run can count; a typo in the exponent?"), problems


def test_a_cell_two_studies_share_is_one_speed_measurement(tmp_path):
    import store as st
    from runner.plan import measured_throughput

    model = {"depth": 1, "aspect_ratio": 16, "head_dim": 16, "sequence_len": 32}
    with st.open_store(tmp_path / "nanostudy.db") as store:
        first, second = (st.upsert_study(store, name=n, path=f"{n}.yaml", spec={}).id for n in ("a", "b"))
        for cell_id, flops_per_s, studies in (("shared", 1e9, (first, second)), ("alone", 4e9, (first,))):
            for study_id in studies:
                st.add_cells(store, study_id, [st.NewCell(
                    id=cell_id, mode=st.CellMode.PRETRAINING, depth=1, flops_budget=1e9, seed=0, num_params=1,
                    num_tokens=1, flops_per_token=1, steps_total=2, config={"model": model},
                    axes={"depth": 1, "flops": 1e9, "seed": 0},
                )])  # fmt: skip
            attempt = st.claim(store, cell_id, executor=st.Executor.LOCAL, host="h")
            start = {"kind": "start", "device": {"name": "x"}, "world_size": 1}
            step = {"step": 2, "tokens": 64, "flops": 1e9, "loss": 1.0, "elapsed_s": 1e9 / flops_per_s}
            st.ingest(store, cell_id, attempt_id=attempt.id, train=[step], start=start)
            st.end_attempt(store, attempt.id, st.AttemptOutcome.DONE)
            st.transition(store, cell_id, st.CellState.RUNNING, st.CellState.DONE)
        measured = measured_throughput(store, Throughput(device_type="cpu", device_name="x"))
    # Once each: the median of 1e9 and 4e9 FLOP/s, not of 1e9, 1e9 and 4e9 (the shared cell per study).
    assert list(measured.flops_per_s.values()) == [pytest.approx(2.5e9)]
