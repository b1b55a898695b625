"""The gauntlet inside the trainer: `eval` events every eval.gauntlet_every steps and after the last, stored
by the runner's ingest per task and step; the same scores as the finished checkpoint's; sharded ranks."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from gauntlet_fixtures import TINY_TASKS, write_bundle
from trainer_fixtures import make_data_dir, tiny_config, write_run

from nanogpt.events import read_events
from nanogpt.train import EXIT_BAD_INPUT, EXIT_DONE, run
from runner.ingest import rows_of
from store import CellMode, NewCell, add_cells, evals_of, ingest, open_store, upsert_study

ROOT = Path(__file__).resolve().parents[1]
PRESET = "quick"  # jeopardy has no file in the tiny bundle: unavailable
TASK_NAMES = [
    "arc_easy@100",
    "jeopardy@100",
    "copa@100",
    "piqa@100",
    "lambada_openai@100",
    "winograd@100",
    "simple_arithmetic_nospaces@100",
    "bigbench_operators@100",
    "boolq@100",
]
AVERAGES = [
    "quick/category/world_knowledge@100",
    "quick/category/commonsense_reasoning@100",
    "quick/category/language_understanding@100",
    "quick/category/symbolic_problem_solving@100",
    "quick/category/reading_comprehension@100",
    "quick/core_average@100",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_data_dir(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return write_bundle(tmp_path_factory.mktemp("bundle"), TINY_TASKS)


@pytest.fixture(scope="module")
def gauntlet_run(tmp_path_factory, data_dir, bundle) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    config = tiny_config(data_dir, eval={"preset": PRESET, "bundle": str(bundle), "gauntlet_every": 5})
    assert run(write_run(run_dir, config)) == EXIT_DONE
    return run_dir


def test_the_trainer_scores_the_gauntlet_every_n_steps_and_after_the_last(gauntlet_run):
    events = read_events(gauntlet_run / "events.jsonl")[0]
    evals = [e for e in events if e["kind"] == "eval"]
    assert sorted({e["step"] for e in evals}) == [5, 10, 12]
    for step in (5, 10, 12):
        assert [e["task"] for e in evals if e["step"] == step] == TASK_NAMES + AVERAGES
    final = {e["task"]: e for e in evals if e["step"] == 12}
    copa = final["copa@100"]
    assert copa["score"] == pytest.approx((copa["metrics"]["accuracy"] - 0.5) / 0.5)
    assert copa["metrics"]["num_examples"] == 3 and copa["metrics"]["preset"] == PRESET
    assert copa["metrics"]["stderr"] >= 0 and "accuracy_sum" in copa["metrics"]
    jeopardy = final["jeopardy@100"]
    assert jeopardy["score"] is None and "unavailable" in jeopardy["metrics"]["skipped"]
    assert final["quick/category/world_knowledge@100"]["metrics"]["parts"] == ["arc_easy"]
    assert final["quick/core_average@100"]["metrics"]["missing"] == ["jeopardy"]
    core = final["quick/core_average@100"]["score"]
    categories = [final[name]["score"] for name in AVERAGES[:-1]]
    assert core == pytest.approx(sum(categories) / 5)
    assert any("jeopardy" in warning for warning in events[0]["warnings"])  # the start event says so
    # The last scores come after the final checkpoint (never at the cost of the weights), before `end`.
    kinds = [e["kind"] for e in events]
    last_checkpoint = len(kinds) - 1 - kinds[::-1].index("checkpoint")
    assert kinds[last_checkpoint + 1 : -1] == ["eval"] * len(final) and kinds[-1] == "end"


def test_the_runner_stores_the_eval_events_per_task_and_step(tmp_path, gauntlet_run):
    store = open_store(tmp_path / "nanostudy.db")
    study = upsert_study(store, name="g", path="g.yaml", spec={})
    cell = NewCell(
        id="c1", mode=CellMode.PRETRAINING, depth=2, flops_budget=1e9, seed=0, num_params=1, num_tokens=1,
        flops_per_token=1, steps_total=12, config={}, run_dir=str(gauntlet_run),
    )  # fmt: skip
    add_cells(store, study.id, [cell])
    events = read_events(gauntlet_run / "events.jsonl")[0]
    ingest(store, "c1", **rows_of(events))
    rows = evals_of(store, cell_id="c1")
    assert len(rows) == 3 * (len(TASK_NAMES) + len(AVERAGES))
    copa = next(r for r in rows if r.step == 12 and r.task == "copa@100")
    assert copa.preset == PRESET and copa.num_examples == 3 and copa.centered == copa.score
    assert copa.accuracy is not None and copa.stderr is not None and copa.metrics["baseline"] == 0.5
    average = next(r for r in rows if r.step == 12 and r.task == "quick/core_average@100")
    assert average.score is not None and average.stderr is not None
    assert next(r for r in rows if r.task == "jeopardy@100").score is None


def test_scores_in_training_equal_the_finished_checkpoints(gauntlet_run, bundle):
    from runner.eval_commands import evaluate_checkpoint

    events = read_events(gauntlet_run / "events.jsonl")[0]
    during = {e["task"]: e["score"] for e in events if e["kind"] == "eval" and e["step"] == 12}
    step, result = evaluate_checkpoint(gauntlet_run, preset=PRESET, bundle=bundle, device="cpu")
    assert step == 12
    after = {e["task"]: e["score"] for e in result.events()}
    assert after == pytest.approx(during)


def test_a_missing_bundle_stops_the_run_before_anything_is_written(tmp_path, data_dir, capsys):
    run_dir = tmp_path / "run"
    config = tiny_config(data_dir, eval={"preset": "copa", "bundle": str(tmp_path / "nowhere")})
    assert run(write_run(run_dir, config)) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "eval.bundle:" in err and "no eval bundle here" in err
    # Only the run directory's lock, taken before any input is checked (docs/training.md), is new.
    assert sorted(p.name for p in run_dir.iterdir()) == [".trainer.lock", "config.json"]


@pytest.mark.slow
def test_two_ranks_shard_the_examples_and_agree_with_one(tmp_path, data_dir, bundle):
    """Each rank scores half of every task; the all-reduced result is the one-process result on the same
    checkpoint."""
    from runner.eval_commands import evaluate_checkpoint

    config = tiny_config(data_dir, eval={"preset": "copa,lambada_openai,winograd", "bundle": str(bundle)})
    config_path = write_run(tmp_path / "run", config)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [*command, "-m", "nanogpt.train", "--config", str(config_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == EXIT_DONE, out.stderr[-3000:]
    events = read_events(tmp_path / "run" / "events.jsonl")[0]
    sharded = {e["task"]: e for e in events if e["kind"] == "eval"}
    _, result = evaluate_checkpoint(
        tmp_path / "run", preset="copa,lambada_openai,winograd", bundle=bundle, device="cpu"
    )
    alone = {e["task"]: e for e in result.events()}
    assert set(sharded) == set(alone)
    for task, event in alone.items():
        assert sharded[task]["score"] == pytest.approx(event["score"]), task
        if "num_examples" in event["metrics"]:
            assert sharded[task]["metrics"]["num_examples"] == event["metrics"]["num_examples"] == 3
