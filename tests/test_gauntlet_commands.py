"""The gauntlet around the trainer: study files plumb it to every cell (outside the cell id), the runner
applies it at launch and fetches the bundle, `nanostudy eval` scores finished checkpoints and stores the
scores (new rows on done cells only), and the report charts the averages."""

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from gauntlet_fixtures import TINY_TASKS, write_bundle
from report_fixtures import build_study
from runner_fixtures import tiny_study_yaml
from trainer_fixtures import make_data_dir, tiny_config, write_run

from nanogpt.events import read_events
from nanogpt.train import EXIT_DONE, run
from runner.cli import main
from runner.eval_commands import ensure_bundles
from runner.ingest import rows_of
from runner.plan import plan
from runner.study import StudyError, load
from store import (
    CellMode,
    CellState,
    NewCell,
    add_cells,
    add_evals,
    evals_of,
    get_study,
    ingest,
    open_store,
    transition,
    upsert_study,
)

TASKS = "copa,lambada_openai"

STUDY = """\
name: g
mode: {mode}
data:
  source: {{name: local, paths: 'corpus/*.txt'}}
  tokenizer: gpt2
grid:
  depth: [1, 2]
  flops: [3e9]
model:
  aspect_ratio: 16
  head_dim: 16
  sequence_len: 32
train:
  total_batch_tokens: 256
  device: cpu
eval:
  every_steps: null
{eval}"""

MID = """\
mid_training:
  data:
    source: {name: local, paths: 'chats.jsonl', format: chat}
  steps: 4
  eval:
    preset: chat
"""


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _study(tmp_path: Path, eval_lines: str = "", *, mode: str = "pretraining", mid: str = "") -> Path:
    # The loader checks that local paths match files (relative ones from the current directory).
    (tmp_path / "corpus").mkdir(exist_ok=True)
    (tmp_path / "corpus" / "a.txt").write_text("text")
    (tmp_path / "chats.jsonl").write_text("")
    text = STUDY.format(mode=mode, eval=eval_lines) + mid
    text = text.replace("'corpus/*.txt'", f"'{tmp_path}/corpus/*.txt'").replace(
        "'chats.jsonl'", f"'{tmp_path}/chats.jsonl'"
    )
    path = tmp_path / "g.yaml"
    path.write_text(text)
    return path


# --- study files and plans -------------------------------------------------------------------------------


def test_a_study_plumbs_the_gauntlet_to_every_cell_without_changing_the_cell_ids(tmp_path):
    plain = plan(load(_study(tmp_path)))
    path = _study(tmp_path, "  preset: quick\n  bundle: evals\n  gauntlet_every: 50\n  max_examples: 20\n")
    study = load(path)
    assert (study.eval.preset, study.eval.bundle, study.eval.gauntlet_every) == ("quick", "evals", 50)
    planned = plan(study)
    assert [cell.id for cell in planned.cells] == [cell.id for cell in plain.cells]
    for cell in planned.cells:
        assert cell.config["eval"] == {
            "every_steps": None,
            "val_tokens": 10_485_760,
            "preset": "quick",
            "bundle": str((tmp_path / "evals").resolve()),
            "gauntlet_every": 50,
            "max_examples": 20,
        }
    assert not any("gauntlet" in warning or "in-context" in warning for warning in planned.warnings)


def test_a_bad_gauntlet_setting_is_reported_at_its_study_line(tmp_path):
    with pytest.raises(StudyError) as caught:
        load(_study(tmp_path, "  preset: qick\n"))
    assert caught.value.problems == (
        f"{tmp_path / 'g.yaml'}:18: eval.preset: unknown task 'qick' (did you mean 'quick'?)",
    )
    with pytest.raises(StudyError) as caught:
        load(_study(tmp_path, "  preset: quick\n  gauntlet_every: 0\n"))
    assert caught.value.problems == (
        f"{tmp_path / 'g.yaml'}:19: eval.gauntlet_every: must be a positive integer, got 0",
    )


def test_mid_training_cells_may_run_another_preset(tmp_path):
    (tmp_path / "chats.jsonl").write_text("")
    study = load(_study(tmp_path, "  preset: quick\n", mode="all", mid=MID))
    presets = {cell.mode: cell.config["eval"]["preset"] for cell in plan(study).cells}
    assert presets == {"pretraining": "quick", "mid-training": "chat"}


def test_the_runner_launches_a_cell_with_the_studys_current_gauntlet(tmp_path):
    from runner.executor import LocalExecutor
    from runner.gpus import GpuPool
    from runner.run import CellLaunch, LoopOptions, StudyLoop

    store = open_store(tmp_path / "nanostudy.db")
    study = upsert_study(store, name="g", path="g.yaml", spec={})
    config = tiny_config(tmp_path / "data")  # recorded before the study had a gauntlet
    add_cells(store, study.id, [_cell("c1", config, tmp_path / "runs" / "c1")])
    gauntlet = {"preset": "quick", "bundle": str(tmp_path), "gauntlet_every": 5, "max_examples": None}
    launches = {
        "c1": CellLaunch(cell_id="c1", num_gpus=1, run_dir=tmp_path / "runs" / "c1", gauntlet=gauntlet)
    }
    loop = StudyLoop(
        store, study.id, launches, executor=LocalExecutor(), pool=GpuPool(nvml=None), options=LoopOptions()
    )
    loop._write_config("c1", tmp_path / "runs" / "c1")
    written = json.loads((tmp_path / "runs" / "c1" / "config.json").read_text())
    assert written["eval"] == {**config["eval"], **gauntlet}


def test_the_bundle_is_fetched_before_a_study_runs_and_its_absence_stops_it(tmp_path, monkeypatch):
    source = write_bundle(tmp_path / "remote", TINY_TASKS)
    bundle = tmp_path / "bundle"
    configs = [{"eval": {"preset": "copa,lambada_openai,hellaswag", "bundle": str(bundle)}}, {"eval": {}}]
    monkeypatch.setenv("NANOSTUDY_EVAL_BUNDLE_URL", source.as_uri())
    logged = []
    ensure_bundles(configs, log=logged.append)
    assert (bundle / "commonsense_reasoning" / "copa.jsonl").is_file()
    assert logged[-1] == f"warning: eval bundle {bundle}: no data for hellaswag; they are not scored"
    monkeypatch.setenv("NANOSTUDY_EVAL_BUNDLE_URL", "http://127.0.0.1:9/")
    with pytest.raises(ValueError, match="no task of the eval gauntlet has its data there"):
        ensure_bundles(
            [{"eval": {"preset": "winogrande", "bundle": str(tmp_path / "empty")}}], log=logged.append
        )


# --- storing scores on done cells ------------------------------------------------------------------------


def _cell(cell_id: str, config: dict, run_dir: Path) -> NewCell:
    return NewCell(
        id=cell_id, mode=CellMode.PRETRAINING, depth=config["model"]["depth"], flops_budget=1e9, seed=0,
        num_params=1, num_tokens=1, flops_per_token=1, steps_total=12, config=config, run_dir=str(run_dir),
    )  # fmt: skip


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A study in a database with one done cell (its run trained here, its events ingested), one pending
    cell, and a bundle."""
    root = tmp_path_factory.mktemp("eval")
    data_dir = make_data_dir(root / "data")
    run_dir = root / "runs" / "c1"
    config = tiny_config(data_dir)
    assert run(write_run(run_dir, config)) == EXIT_DONE
    db = root / "nanostudy.db"
    store = open_store(db)
    study = upsert_study(store, name="g", path=str(root / "g.yaml"), spec={})
    add_cells(store, study.id, [_cell("c1", config, run_dir), _cell("c2", config, root / "runs" / "c2")])
    transition(store, "c1", CellState.PENDING, CellState.RUNNING)
    ingest(store, "c1", **rows_of(read_events(run_dir / "events.jsonl")[0]))
    transition(store, "c1", CellState.RUNNING, CellState.DONE)
    store.close()
    return {"db": db, "run_dir": run_dir, "bundle": write_bundle(root / "bundle", TINY_TASKS)}


def test_add_evals_adds_only_new_keys_and_only_to_done_cells(tmp_path):
    store = open_store(tmp_path / "nanostudy.db")
    study = upsert_study(store, name="g", path="g.yaml", spec={})
    config = tiny_config(tmp_path)
    add_cells(store, study.id, [_cell("c1", config, tmp_path / "c1")])
    row = {"step": 12, "task": "copa", "score": 0.5, "metrics": {"accuracy": 0.75}, "accuracy": 0.75}
    with pytest.raises(ValueError, match="is pending; evals are added from outside only to done cells"):
        add_evals(store, "c1", [row])
    transition(store, "c1", CellState.PENDING, CellState.RUNNING)
    transition(store, "c1", CellState.RUNNING, CellState.DONE)
    assert add_evals(store, "c1", [row]) == 1
    assert (
        add_evals(store, "c1", [{**row, "score": 0.9}, {**row, "task": "piqa"}]) == 1
    )  # copa kept as it was
    assert {(r.task, r.score) for r in evals_of(store, cell_id="c1")} == {("copa", 0.5), ("piqa", 0.5)}
    with pytest.raises(ValueError, match="not in the database"):
        add_evals(store, "nope", [row])
    with pytest.raises(ValueError, match="unknown column"):
        add_evals(store, "c1", [{**row, "task": "x", "colour": 1}])


def test_nanostudy_eval_scores_a_checkpoint_and_stores_it_with_db(finished, capsys):
    args = ["eval", str(finished["run_dir"]), "--tasks", TASKS, "--eval-bundle", str(finished["bundle"])]
    assert main([*args, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "copa" in out and "lambada_openai" in out and "not stored: give --db" in out
    with open_store(finished["db"], create=False) as store:
        assert evals_of(store, cell_id="c1") == []
    assert main([*args, "--db", str(finished["db"]), "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)  # one entry per checkpoint scored
    assert result["step"] == 12 and result["cell"] == "c1" and result["added"] == 2 and result["kept"] == 0
    with open_store(finished["db"], create=False) as store:
        rows = {(r.step, r.task): r for r in evals_of(store, cell_id="c1")}
    assert set(rows) == {(12, "copa"), (12, "lambada_openai")}  # a list of tasks: no averages
    event = next(e for e in result["events"] if e["task"] == "copa")
    assert rows[(12, "copa")].score == pytest.approx(event["score"]) and rows[(12, "copa")].num_examples == 3
    assert main([*args, "--db", str(finished["db"])]) == 0  # again: nothing new
    assert "0 rows stored, 2 kept" in capsys.readouterr().out


def test_nanostudy_eval_of_a_study_scores_every_done_cells_final_checkpoint(finished, capsys):
    db = str(finished["db"])
    args = ["eval", "g", "--db", db, "--eval-bundle", str(finished["bundle"]), "--device", "cpu"]
    assert main([*args, "--tasks", "winograd"]) == 0
    out = capsys.readouterr().out
    assert "cell c1 (depth 2, 1.0e+09 FLOPs, step 12): winograd " in out
    assert "c2" not in out  # pending: nothing to score
    assert main([*args, "--tasks", "winograd"]) == 0
    assert "cell c1: step 12 already scored on winograd; skipped" in capsys.readouterr().out
    with open_store(db, create=False) as store:
        tasks = {r.task for r in evals_of(store, cell_id="c1")}
    assert "winograd" in tasks


def test_nanostudy_eval_of_a_study_scores_the_other_cells_when_one_checkpoint_is_gone(
    finished, tmp_path, capsys
):
    """A done cell whose final checkpoint was deleted is named, not scored, and the others are scored
    (the first such cell stopped the whole study's evaluation); the exit is 1."""
    run_dirs = {name: tmp_path / "runs" / name for name in ("gone", "kept")}
    for run_dir in run_dirs.values():
        shutil.copytree(finished["run_dir"], run_dir)
    shutil.rmtree(run_dirs["gone"] / "checkpoints" / "step_000012")
    db = tmp_path / "nanostudy.db"
    with open_store(db) as store:
        study = upsert_study(store, name="e", path=str(tmp_path / "e.yaml"), spec={})
        config = json.loads((finished["run_dir"] / "config.json").read_text())
        add_cells(store, study.id, [_cell(name, config, run_dir) for name, run_dir in run_dirs.items()])
        for name, run_dir in run_dirs.items():
            transition(store, name, CellState.PENDING, CellState.RUNNING)
            ingest(store, name, **rows_of(read_events(run_dir / "events.jsonl")[0]))
            transition(store, name, CellState.RUNNING, CellState.DONE)
    args = ["eval", "e", "--db", str(db), "--eval-bundle", str(finished["bundle"]), "--device", "cpu"]
    assert main([*args, "--tasks", "winograd"]) == 1
    captured = capsys.readouterr()
    assert "cell gone: error: " in captured.out and "cell kept (depth 2" in captured.out
    assert captured.err == "nanostudy eval: 1 cell(s) not scored: gone\n"
    with open_store(db, create=False) as store:
        assert evals_of(store, cell_id="kept") and not evals_of(store, cell_id="gone")


def test_nanostudy_eval_of_a_study_with_no_done_cell_says_so(tmp_path, capsys):
    store = open_store(tmp_path / "nanostudy.db")
    study = upsert_study(store, name="early", path=str(tmp_path / "early.yaml"), spec={})
    add_cells(store, study.id, [_cell("p1", tiny_config(tmp_path), tmp_path / "runs" / "p1")])
    store.close()
    bundle = write_bundle(tmp_path / "bundle", TINY_TASKS)
    args = ["eval", "early", "--db", str(tmp_path / "nanostudy.db"), "--eval-bundle", str(bundle)]
    assert main([*args, "--tasks", "winograd"]) == 0
    assert "study early: no finished cells to evaluate (0 of 1 done)" in capsys.readouterr().out


def test_nanostudy_eval_refuses_bad_input_in_one_line(finished, tmp_path, capsys):
    assert main(["eval", str(finished["run_dir"]), "--tasks", "copaa"]) == 2
    assert "unknown task 'copaa' (did you mean 'copa'?)" in capsys.readouterr().err
    args = ["eval", str(finished["run_dir"]), "--tasks", "copa", "--device", "cpu"]
    assert main([*args, "--eval-bundle", str(tmp_path / "nowhere")]) == 2
    assert "no eval bundle here" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "no-run"), "--eval-bundle", str(finished["bundle"])]) == 2
    assert "no such checkpoint or run directory" in capsys.readouterr().err
    assert (
        main(["eval", "nostudy", "--db", str(finished["db"]), "--eval-bundle", str(finished["bundle"])]) == 2
    )
    assert "study 'nostudy': not in" in capsys.readouterr().err


def test_a_bundle_without_any_of_the_presets_files_is_refused_and_stores_nothing(
    finished, tmp_path, capsys, monkeypatch
):
    """A wrong or empty bundle folder scored nothing, exited 0 and stored a null row for every task of every
    done cell: rows that no later `nanostudy eval` replaces."""
    empty = tmp_path / "empty"
    empty.mkdir()
    args = ["eval", "g", "--db", str(finished["db"]), "--eval-bundle", str(empty), "--device", "cpu"]
    assert main([*args, "--tasks", "quick"]) == 2
    err = capsys.readouterr().err
    assert f"nanostudy eval: error: {empty}: holds none of the files of the tasks of 'quick'" in err
    with open_store(finished["db"], create=False) as store:
        assert not [row for row in evals_of(store, cell_id="c1") if row.task.endswith("@100")]
    assert main(["eval", str(finished["run_dir"]), "--eval-bundle", str(empty), "--tasks", "copa"]) == 2
    err = capsys.readouterr().err
    assert "holds none of the files of the tasks of 'copa'" in err and "fetch them with --download" in err
    # After a --download that fetched nothing (no network), the advice is not to do it again.
    monkeypatch.setenv("NANOSTUDY_EVAL_BUNDLE_URL", f"file://{tmp_path}/nowhere")
    assert (
        main(["eval", str(finished["run_dir"]), "--eval-bundle", str(empty), "--tasks", "copa", "--download"])
        == 2
    )
    err = capsys.readouterr().err
    assert "(--download could not fetch them: see above)" in err and "fetch them with --download" not in err


def test_device_cuda_without_a_gpu_is_one_line_not_a_traceback(finished, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = ["eval", str(finished["run_dir"]), "--eval-bundle", str(finished["bundle"]), "--tasks", "copa"]
    assert main([*args, "--device", "cuda"]) == 2
    assert capsys.readouterr().err == (
        "nanostudy eval: error: --device cuda: no CUDA device here; give --device cpu (or auto)\n"
    )


def test_a_checkpoints_wrong_db_is_refused_before_the_scoring_not_after(finished, tmp_path, capsys):
    """Scoring a checkpoint takes minutes to hours: a --db that is missing, or holds no cell of that run,
    stops the command before it, not after it with the scores thrown away."""
    other_run = tmp_path / "runs" / "not-a-cell"
    shutil.copytree(finished["run_dir"], other_run)
    args = ["eval", "--eval-bundle", str(finished["bundle"]), "--tasks", "copa", "--device", "cpu"]
    assert main([*args, str(other_run), "--db", str(finished["db"])]) == 2
    captured = capsys.readouterr()
    assert f"{other_run}: not the run directory of a cell in" in captured.err
    assert "accuracy" not in captured.out  # nothing was scored
    assert main([*args, str(finished["run_dir"]), "--db", str(tmp_path / "none.db")]) == 2
    captured = capsys.readouterr()
    assert "none.db: no nanostudy database here yet" in captured.err and "accuracy" not in captured.out


# --- scoring again: a task scored once its file is there ----------------------------------------------


def _own_copy(finished, tmp_path) -> Path:
    """A copy of the module's database, without the eval rows other tests stored in it."""
    db = tmp_path / "nanostudy.db"
    shutil.copy(finished["db"], db)
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("DELETE FROM evals")
    conn.close()
    return db


def _eval_on_cpu(target: str, db: Path, bundle: Path) -> list[str]:
    return ["eval", target, "--db", str(db), "--eval-bundle", str(bundle), "--device", "cpu"]


def test_a_task_missing_from_the_bundle_is_scored_when_its_file_is_added(finished, tmp_path, capsys):
    db = _own_copy(finished, tmp_path)
    bundle = write_bundle(tmp_path / "bundle", {"copa": TINY_TASKS["copa"]})
    args = [*_eval_on_cpu("g", db, bundle), "--tasks", "copa,piqa"]
    assert main(args) == 0
    with open_store(db, create=False) as store:
        first = {row.task: row.score for row in evals_of(store, cell_id="c1")}
    assert first["copa"] is not None and first["piqa"] is None
    capsys.readouterr()
    assert main(args) == 0  # piqa's file is still missing: nothing new to score
    assert "cell c1: step 12 already scored on copa,piqa; skipped" in capsys.readouterr().out
    write_bundle(bundle, {"piqa": TINY_TASKS["piqa"]})
    assert main([*args, "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert "skipped" not in result
    with open_store(db, create=False) as store:
        rows = {row.task: row for row in evals_of(store, cell_id="c1")}
    piqa = next(event for event in result["events"] if event["task"] == "piqa")
    assert piqa["score"] is not None and rows["piqa"].score == pytest.approx(piqa["score"])
    assert rows["piqa"].num_examples == 3 and "skipped" not in rows["piqa"].metrics
    assert rows["copa"].score == first["copa"]
    assert main(args) == 0
    assert "already scored on copa,piqa; skipped" in capsys.readouterr().out


def test_a_checkpoints_null_row_is_filled_when_scored_again_with_db(finished, tmp_path, capsys):
    db = _own_copy(finished, tmp_path)
    bundle = write_bundle(tmp_path / "bundle", {"copa": TINY_TASKS["copa"]})
    args = _eval_on_cpu(str(finished["run_dir"]), db, bundle)
    assert main([*args, "--tasks", "copa,piqa"]) == 0
    assert "2 rows stored, 0 kept" in capsys.readouterr().out
    write_bundle(bundle, {"piqa": TINY_TASKS["piqa"]})
    assert main([*args, "--tasks", "copa,piqa"]) == 0
    assert "1 rows stored, 1 kept" in capsys.readouterr().out
    with open_store(db, create=False) as store:
        assert all(row.score is not None for row in evals_of(store, cell_id="c1"))


def test_the_averages_are_replaced_whole_once_more_tasks_are_scored(finished, tmp_path):
    """The first scoring lacked piqa (not in the bundle then): the averages that missed it are replaced, with
    every other average and task score of the new scoring, so no stored average mixes parts of two."""
    db = _own_copy(finished, tmp_path)
    all_but_piqa = {name: rows for name, rows in TINY_TASKS.items() if name != "piqa"}
    bundle = write_bundle(tmp_path / "bundle", all_but_piqa)
    args = ["eval", "g", "--db", str(db), "--eval-bundle", str(bundle), "--device", "cpu", "--tasks", "quick"]
    assert main(args) == 0
    with open_store(db, create=False) as store:
        first = {row.task: row for row in evals_of(store, cell_id="c1")}
    assert first["piqa@100"].score is None and first["jeopardy@100"].score is None
    assert first["quick/core_average@100"].metrics["missing"] == ["jeopardy", "piqa"]
    write_bundle(bundle, {"piqa": TINY_TASKS["piqa"]})
    assert main(args) == 0
    with open_store(db, create=False) as store:
        rows = {row.task: row for row in evals_of(store, cell_id="c1")}
    assert rows["piqa@100"].score is not None and rows["jeopardy@100"].score is None  # still no file
    core = rows["quick/core_average@100"]
    assert core.metrics["missing"] == ["jeopardy"]
    commonsense = rows["quick/category/commonsense_reasoning@100"]
    assert commonsense.metrics["missing"] == [] and commonsense.metrics["parts"] == ["copa", "piqa"]
    assert commonsense.score == pytest.approx((rows["copa@100"].score + rows["piqa@100"].score) / 2)
    categories = [rows[f"quick/{name}@100"].score for name in core.metrics["parts"]]
    assert core.score == pytest.approx(sum(categories) / len(categories))
    assert len({rows[name].time for name in rows if name.startswith("quick/")}) == 1  # one scoring


def _done_cell_store(tmp_path):
    store = open_store(tmp_path / "nanostudy.db")
    study = upsert_study(store, name="g", path="g.yaml", spec={})
    add_cells(store, study.id, [_cell("c1", tiny_config(tmp_path), tmp_path / "c1")])
    transition(store, "c1", CellState.PENDING, CellState.RUNNING)
    transition(store, "c1", CellState.RUNNING, CellState.DONE)
    return store


def _average(score, missing):
    return {
        "step": 12,
        "task": "core_average",
        "score": score,
        "metrics": {"parts": ["a"], "missing": missing},
    }


def test_a_stored_score_is_never_replaced_by_a_null(tmp_path):
    store = _done_cell_store(tmp_path)
    copa = {"step": 12, "task": "copa", "score": 0.5, "metrics": {"accuracy": 0.75}}
    piqa = {"step": 12, "task": "piqa", "score": None, "metrics": {"skipped": "unavailable"}}
    assert add_evals(store, "c1", [copa, piqa, _average(0.5, ["piqa"])]) == 3
    # copa's file gone, piqa's added: piqa is filled, copa and the average are kept (not a fuller scoring)
    lost = {**copa, "score": None, "metrics": {"skipped": "unavailable"}}
    assert add_evals(store, "c1", [lost, {**piqa, "score": 0.25}, _average(0.25, ["copa"])]) == 1
    stored = {row.task: (row.score, row.metrics) for row in evals_of(store, cell_id="c1")}
    assert stored["copa"] == (0.5, {"accuracy": 0.75})
    assert stored["piqa"][0] == 0.25
    assert stored["core_average"] == (0.5, {"parts": ["a"], "missing": ["piqa"]})
    # a null never replaces a null's neighbour's score either: the same rows again change nothing
    assert add_evals(store, "c1", [lost, {**piqa, "score": None}, _average(0.1, ["copa", "piqa"])]) == 0
    assert {row.task: row.score for row in evals_of(store, cell_id="c1")} == {
        "copa": 0.5,
        "piqa": 0.25,
        "core_average": 0.5,
    }


def test_a_fuller_scoring_replaces_the_averages_and_their_parts_together(tmp_path):
    store = _done_cell_store(tmp_path)
    copa = {"step": 12, "task": "copa", "score": 0.5, "metrics": {}}
    piqa = {"step": 12, "task": "piqa", "score": None, "metrics": {"skipped": "unavailable"}}
    other_step = {"step": 6, "task": "copa", "score": 0.1, "metrics": {}}
    assert add_evals(store, "c1", [copa, piqa, _average(0.5, ["piqa"]), other_step]) == 4
    fuller = [{**copa, "score": 0.4}, {**piqa, "score": 0.2, "metrics": {}}, _average(0.3, [])]
    assert add_evals(store, "c1", fuller) == 3
    stored = {(row.step, row.task): row.score for row in evals_of(store, cell_id="c1")}
    assert stored == {(12, "copa"): 0.4, (12, "piqa"): 0.2, (12, "core_average"): 0.3, (6, "copa"): 0.1}
    assert add_evals(store, "c1", [{**copa, "score": 0.9}, {**piqa, "score": 0.9}, _average(0.9, [])]) == 0
    assert {row.task: row.score for row in evals_of(store, cell_id="c1") if row.step == 12} == {
        "copa": 0.4,
        "piqa": 0.2,
        "core_average": 0.3,
    }


# --- the report ------------------------------------------------------------------------------------------


def test_the_report_charts_the_averages_with_their_errors(tmp_path):
    from reports.data import read_study
    from reports.report import _evals_section

    store = build_study(tmp_path / "r.db", evals=False)
    study = get_study(store, "synthetic")
    rows = [
        {"step": 10, "task": "arc_easy@100", "score": 0.2, "stderr": 0.05},
        {"step": 10, "task": "quick/category/world_knowledge@100", "score": 0.2, "stderr": 0.05},
        {"step": 10, "task": "quick/core_average@100", "score": 0.1, "stderr": 0.02},
    ]
    done = next(cell for cell in read_study(store, "synthetic").cells if cell.state == "done")
    assert study is not None and add_evals(store, done.id, rows) == 3
    section = _evals_section(read_study(store, "synthetic"))
    _, chart, note = section.charts[0]
    values = chart.to_dict()["data"]["values"]
    assert {v["task"] for v in values} == {"quick/category/world_knowledge@100", "quick/core_average@100"}
    core = next(v for v in values if v["task"] == "quick/core_average@100")
    assert (core["low"], core["high"]) == pytest.approx((0.08, 0.12))
    assert "1 per-task scores" in note


# --- the whole pipeline ----------------------------------------------------------------------------------

QUICK = [
    "arc_easy@100",
    "jeopardy@100",
    "copa@100",
    "piqa@100",
    "lambada_openai@100",
    "winograd@100",
    "simple_arithmetic_nospaces@100",
    "bigbench_operators@100",
    "boolq@100",
    "quick/category/world_knowledge@100",
    "quick/category/commonsense_reasoning@100",
    "quick/category/language_understanding@100",
    "quick/category/symbolic_problem_solving@100",
    "quick/category/reading_comprehension@100",
    "quick/core_average@100",
]


@pytest.mark.slow
def test_nanostudy_run_stores_the_gauntlet_per_task_and_step_and_eval_adds_more(tmp_path, capsys):
    from data_fixtures import write_text_corpus

    write_text_corpus(tmp_path / "corpus", num_files=30)
    write_bundle(tmp_path / "bundle", TINY_TASKS)
    study = tmp_path / "gauntlet.yaml"
    grid = "  depth: [1]\n  flops: [2e8]\n"
    eval_lines = "  preset: quick\n  bundle: bundle\n  gauntlet_every: 4\n"
    study.write_text(tiny_study_yaml("gauntlet", tmp_path / "corpus", grid, eval_lines=eval_lines))
    assert main(["run", str(study), "--data-root", str(tmp_path / "data")]) == 0
    with open_store(tmp_path / "nanostudy.db", create=False) as store:
        rows = evals_of(store, study_id=get_study(store, "gauntlet").id)
    cell_id, last = rows[0].cell_id, max(row.step for row in rows)
    config = json.loads((tmp_path / "runs" / "gauntlet" / cell_id / "config.json").read_text())
    assert config["eval"]["preset"] == "quick"
    assert config["eval"]["bundle"] == str((tmp_path / "bundle").resolve())
    by_step: dict[int, set[str]] = {}
    for row in rows:
        by_step.setdefault(row.step, set()).add(row.task)
    assert sorted(by_step) == sorted({*range(4, last + 1, 4), last})
    assert all(tasks == set(QUICK) for tasks in by_step.values())
    assert all(row.score is not None for row in rows if not row.task.startswith("jeopardy"))
    capsys.readouterr()
    assert main(["eval", str(study), "--tasks", "winograd", "--device", "cpu"]) == 0  # the study's bundle
    assert f"cell {cell_id} (depth 1, 2.0e+08 FLOPs, step {last}): winograd" in capsys.readouterr().out
    with open_store(tmp_path / "nanostudy.db", create=False) as store:
        final = {row.task for row in evals_of(store, cell_id=cell_id) if row.step == last}
    assert final == {*QUICK, "winograd"}
    report = (tmp_path / "reports" / "gauntlet.html").read_text()  # nanostudy run wrote it
    assert "quick/core_average@100" in report and "quick/category/reading_comprehension@100" in report


def test_a_study_file_edited_since_its_run_is_still_scored(tmp_path):
    # `status`, `report` and `chat` read only its name; eval loaded it whole, refusing a key added since.
    from runner.eval_commands import _study_target
    from runner.study import bundle_dir

    path = tmp_path / "s.yaml"
    path.write_text("name: edited\nbogus: 1\neval:\n  bundle: ../bundle\ndata: {source: {name: local}}\n")
    open_store(tmp_path / "nanostudy.db").close()
    store, name, bundle = _study_target(str(path), None)
    with store:
        assert name == "edited" and bundle == (tmp_path.parent / "bundle").resolve()
    path.write_text("name: edited\neval: {bundle: [1]}\n")  # not a folder: the default, as at run
    _, _, bundle = _study_target(str(path), None)
    assert bundle == bundle_dir(path, None)
