"""`nanostudy run / status / cancel` end to end on the CPU: a study file in, data prepared, real trainers,
every result in the database; run again and nothing is trained twice; a new axis value adds only its cells."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from data_fixtures import chat_rows, write_jsonl, write_text_corpus
from runner_fixtures import tiny_study_yaml, wait_for

from runner.cli import main
from store import StoreNotFoundError, open_store, upsert_study

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

MID = """\
mid_training:
  data:
    source: {{name: local, paths: '{chats}', format: chat}}
    val_fraction: 0.2
  steps: 4
"""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli-corpus")
    write_text_corpus(root / "text", num_files=60)
    write_jsonl(root / "chats.jsonl", chat_rows(80))
    return root


def _study(tmp_path: Path, corpus: Path, *, depths: str = "[1, 2]", mode: str = "pretraining") -> Path:
    grid = f"  depth: {depths}\n  flops: [2e8]\n  seed: [0]\n"
    text = tiny_study_yaml("cli", corpus / "text", grid, sections=f"mode: {mode}\n")
    if mode == "all":
        text += MID.format(chats=corpus / "chats.jsonl")
    path = tmp_path / "cli.yaml"
    path.write_text(text)
    return path


def _run(path: Path, tmp_path: Path, *extra: str) -> int:
    return main(["run", str(path), "--data-root", str(tmp_path / "data"), *extra])


def _status(path: Path, capsys) -> dict:
    capsys.readouterr()
    assert main(["status", str(path), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _attempts(status: dict) -> dict[str, int]:
    return {cell["id"]: cell["attempts"] for cell in status["cells"]}


def test_a_copy_of_a_study_file_under_the_same_name_is_refused_until_the_original_moves(
    tmp_path, corpus, capsys
):
    """A copied study file, edited but not renamed, would run as the original's study: its cells in the
    same status and report. Refused (before any data is prepared) while the original file exists; once
    it is gone, the study moved, and the copy goes on with it."""
    original = _study(tmp_path, corpus)
    db = str(tmp_path / "nanostudy.db")
    with open_store(db) as store:
        upsert_study(store, name="cli", path=str(original), spec={})
    copy = tmp_path / "copy" / "cli-more-seeds.yaml"
    copy.parent.mkdir()
    copy.write_text(original.read_text().replace("seed: [0]", "seed: [0, 1]"))
    capsys.readouterr()
    assert _run(copy, tmp_path, "--db", db) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{copy}:1: name: 'cli' is the name of the study in ") and str(original) in err, err
    assert not any((tmp_path / "data").iterdir())  # refused before any data was prepared
    original.unlink()
    assert _run(copy, tmp_path, "--db", db, "--max-parallel", "1") == 0


def test_run_trains_every_cell_once_and_a_new_depth_adds_only_its_cell(tmp_path, corpus, capsys):
    path = _study(tmp_path, corpus)
    assert _run(path, tmp_path) == 0
    out = capsys.readouterr().out
    assert "study cli: 2 cells: 2 done; 100% of FLOPs" in out
    status = _status(path, capsys)
    assert status["study"] == "cli" and status["counts"]["done"] == 2
    keys = {
        "id",
        "state",
        "depth",
        "flops",
        "seed",
        "mode",
        "attempts",
        "step",
        "tokens",
        "val_loss",
        "val_bpb",
    }
    for cell in status["cells"]:
        assert keys <= set(cell)
        assert cell["state"] == "done" and cell["mode"] == "pretraining" and cell["attempts"] == 1
        assert cell["step"] == cell["steps_total"] > 0 and cell["tokens"] == 256 * cell["step"]
        assert cell["val_bpb"] > 0 and cell["val_loss"] > 0
        events = (tmp_path / "runs" / "cli" / cell["id"] / "events.jsonl").read_text().splitlines()
        assert json.loads(events[-1])["status"] == "done"
    first = _attempts(status)

    # Again: nothing to do, nothing trained.
    assert _run(path, tmp_path) == 0
    assert _attempts(_status(path, capsys)) == first

    # One more depth: one new cell; the finished ones keep their ids and are not retrained.
    path = _study(tmp_path, corpus, depths="[1, 2, 3]")
    assert _run(path, tmp_path) == 0
    after = _attempts(_status(path, capsys))
    assert len(after) == 3 and {k: after[k] for k in first} == first
    [new] = set(after) - set(first)
    assert after[new] == 1

    # A depth dropped from the grid: its cell leaves the status (and the report), and comes back, done, when
    # the grid has it again.
    path = _study(tmp_path, corpus, depths="[2, 3]")
    capsys.readouterr()
    assert _run(path, tmp_path) == 0
    assert "1 cell(s) that an earlier version of the study file planned are no longer in its plan" in (
        capsys.readouterr().out
    )
    dropped = _status(path, capsys)
    assert len(dropped["cells"]) == 2 and 1 not in {cell["depth"] for cell in dropped["cells"]}
    path = _study(tmp_path, corpus, depths="[1, 2, 3]")
    assert _run(path, tmp_path) == 0
    assert _attempts(_status(path, capsys)) == after  # nothing trained again

    # The store holds every step of every cell once.
    with open_store(tmp_path / "nanostudy.db", create=False) as store:
        from store import train_curve

        for cell_id in after:
            steps = [point.step for point in train_curve(store, cell_id)]
            assert steps == sorted(set(steps)) and steps[-1] == len(steps)


def test_a_second_study_shares_the_cells_the_first_trained(tmp_path, corpus, capsys):
    first_path = _study(tmp_path, corpus)
    assert _run(first_path, tmp_path) == 0
    trained = _attempts(_status(first_path, capsys))
    # A copy under another name with one more depth: the two shared cells are done already.
    second_path = tmp_path / "cli2.yaml"
    second_path.write_text(
        _study(tmp_path, corpus, depths="[1, 2, 3]").read_text().replace("name: cli", "name: cli2")
    )
    capsys.readouterr()
    assert main(["plan", str(second_path), "--data-root", str(tmp_path / "data"), "--json"]) == 0
    planned = {cell["id"]: cell["state"] for cell in json.loads(capsys.readouterr().out)["cells"]}
    assert {planned[cell_id] for cell_id in trained} == {"done"} and sorted(planned.values()).count(
        "new"
    ) == 1
    assert _run(second_path, tmp_path) == 0
    assert "2 cell(s) shared with study cli" in capsys.readouterr().out
    second = _attempts(_status(second_path, capsys))
    assert len(second) == 3 and {cell_id: second[cell_id] for cell_id in trained} == trained
    assert _attempts(_status(first_path, capsys)) == trained  # the first study keeps exactly its cells


def test_runs_dir_moves_cells_never_tried_and_warns_about_the_others(tmp_path, corpus, capsys):
    path = _study(tmp_path, corpus, depths="[1]")
    assert _run(path, tmp_path, "--runs-dir", str(tmp_path / "first")) == 0
    # One more depth, and a run into another directory: the done cell stays where its checkpoints are.
    path = _study(tmp_path, corpus, depths="[1, 2]")
    capsys.readouterr()
    assert main(["plan", str(path), "--data-root", str(tmp_path / "data"), "--json"]) == 0
    planned = json.loads(capsys.readouterr().out)["cells"]
    [fresh] = [cell["id"] for cell in planned if cell["state"] == "new"]
    assert _run(path, tmp_path, "--runs-dir", str(tmp_path / "second")) == 0
    out = capsys.readouterr().out
    assert "warning: 1 of 2 cell(s) keep their run directory from an earlier run" in out
    assert (tmp_path / "second" / fresh / "events.jsonl").is_file()
    assert not (tmp_path / "first" / fresh).exists()


def test_relative_paths_on_the_command_line_reach_the_trainers(tmp_path, corpus, capsys, monkeypatch):
    # A trainer runs in its run directory: a relative --data-root, --runs-dir or study path must reach it
    # resolved, or every cell fails with "no manifest" for data that was prepared.
    _study(tmp_path, corpus, depths="[1]")
    monkeypatch.chdir(tmp_path)
    argv = ["run", "cli.yaml", "--data-root", "data", "--runs-dir", "runs-here"]
    assert main(argv) == 0
    assert "study cli: 1 cells: 1 done; 100% of FLOPs" in capsys.readouterr().out
    [run_dir] = (tmp_path / "runs-here").iterdir()
    assert json.loads((run_dir / "events.jsonl").read_text().splitlines()[-1])["status"] == "done"
    config = json.loads((run_dir / "config.json").read_text())
    assert Path(config["data"]["train_dir"]).is_absolute()
    status = _status(tmp_path / "cli.yaml", capsys)
    assert status["counts"]["done"] == 1
    with open_store(tmp_path / "nanostudy.db", create=False) as store:
        from store import cells_of, get_study

        study = get_study(store, "cli")
        [cell] = cells_of(store, study.id)
        assert Path(cell.run_dir) == run_dir and Path(cell.run_dir).is_absolute()
        assert study.path == str(tmp_path / "cli.yaml")  # absolute, whatever the directory run started in


def test_cancel_reaches_the_running_runner_and_rerun_resumes_the_cell(tmp_path, corpus, capsys):
    path = _study(tmp_path, corpus, depths="[1]")
    path.write_text(
        path.read_text().replace("flops: [2e8]", "flops: [6e9]") + "checkpoint: {every_steps: 20}\n"
    )
    assert main(["cancel", str(path)]) == 2  # no database yet
    assert "no nanostudy database here yet" in capsys.readouterr().err
    command = [sys.executable, "-m", "runner.cli", "run", str(path), "--data-root", str(tmp_path / "data")]
    runner = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: _running_step(tmp_path) >= 30, timeout_s=180, what="the cell to train 30 steps")
        assert main(["cancel", str(path)]) == 0
        assert "cancelled 1 running cell(s) (the runner stops their trainers)" in capsys.readouterr().out
        assert runner.wait(timeout=120) == 1  # not every cell is done
    finally:
        runner.kill()
    output = runner.stdout.read()
    assert "cancelled through the store; stopping its trainer" in output
    [cell] = _status(path, capsys)["cells"]
    assert cell["state"] == "cancelled" and cell["attempts"] == 1 and cell["step"] >= 30

    assert _run(path, tmp_path) == 1  # a cancelled cell stays cancelled
    assert _status(path, capsys)["cells"][0]["attempts"] == 1
    assert _run(path, tmp_path, "--rerun", "cancelled") == 0
    [cell] = _status(path, capsys)["cells"]
    assert cell["state"] == "done" and cell["attempts"] == 2
    with open_store(tmp_path / "nanostudy.db", create=False) as store:
        from store import attempts_of, train_curve

        second = attempts_of(store, cell["id"])[1]
        assert second.resume_step is not None and second.resume_step >= 20  # resumed, not restarted
        steps = [point.step for point in train_curve(store, cell["id"])]
        assert steps == list(range(1, cell["steps_total"] + 1))


def _running_step(tmp_path: Path) -> int:
    try:
        store = open_store(tmp_path / "nanostudy.db", create=False)
    except StoreNotFoundError:  # the runner has not created the database (or its tables) yet
        return 0
    with store:
        from store import cell_statuses, get_study

        study = get_study(store, "cli")
        if study is None:
            return 0
        return max((s.steps_done for s in cell_statuses(store, study.id)), default=0)


def test_mode_all_mid_trains_each_cell_from_its_own_final_checkpoint(tmp_path, corpus, capsys):
    path = _study(tmp_path, corpus, depths="[1]", mode="all")
    assert _run(path, tmp_path) == 0
    status = _status(path, capsys)
    pre = next(cell for cell in status["cells"] if cell["mode"] == "pretraining")
    mid = next(cell for cell in status["cells"] if cell["mode"] == "mid-training")
    assert mid["parent_id"] == pre["id"] and mid["state"] == pre["state"] == "done" and mid["step"] == 4
    runs = tmp_path / "runs" / "cli"
    start = json.loads((runs / mid["id"] / "events.jsonl").read_text().splitlines()[0])
    final = (
        runs / pre["id"] / "checkpoints" / (runs / pre["id"] / "checkpoints" / "LATEST").read_text().strip()
    )
    assert start["init_from"] == str(final.resolve()) and start["mode"] == "mid-training"
    # The mid-training data was tokenized with the pretraining tokenizer plus the chat markers.
    manifests = sorted((tmp_path / "data").glob("local-*/manifest.json"))
    tokenizers = {json.loads(m.read_text())["tokenizer"]["name"] for m in manifests}
    assert tokenizers == {"bpe300"} or tokenizers == {"bpe300", "bpe300+chat"}


def test_mode_mid_training_trains_from_the_checkpoint_the_study_names(tmp_path, corpus, capsys):
    from trainer_fixtures import make_data_dir, tiny_config, write_run

    from nanogpt.train import EXIT_DONE, run

    init_run = tmp_path / "init-run"
    config = tiny_config(make_data_dir(tmp_path / "init-data"), checkpoint={"every_steps": None})
    assert run(write_run(init_run, config)) == EXIT_DONE
    path = tmp_path / "mid.yaml"
    path.write_text(
        "name: mid\n"
        "mode: mid-training\n"
        "grid: {seed: [0]}\n"
        "train: {total_batch_tokens: 256, device_batch_size: 8, device: cpu, compile: false}\n"
        "eval: {every_steps: null, val_tokens: 512}\n"
        "retry: {max_attempts: 1}\n"
        "mid_training:\n"
        f"  init_from: '{init_run}'\n"
        "  data:\n"
        f"    source: {{name: local, paths: '{corpus / 'chats.jsonl'}', format: chat}}\n"
        "    val_fraction: 0.2\n"
        "  steps: 3\n"
    )
    assert _run(path, tmp_path, "--db", str(tmp_path / "fresh.db")) == 0
    capsys.readouterr()
    assert main(["status", str(path), "--db", str(tmp_path / "fresh.db"), "--json"]) == 0
    [cell] = json.loads(capsys.readouterr().out)["cells"]
    assert cell["mode"] == "mid-training" and cell["parent_id"] is None
    assert cell["state"] == "done" and cell["step"] == 3 and cell["val_loss"] > 0
    start = json.loads((tmp_path / "runs" / "mid" / cell["id"] / "events.jsonl").read_text().splitlines()[0])
    # The run directory the study names, resolved to its newest checkpoint when planned; the store records it.
    final = init_run / "checkpoints" / "step_000012"
    assert start["mode"] == "mid-training" and start["init_from"] == str(final)
    with open_store(tmp_path / "fresh.db", create=False) as store:
        from store import get_cell

        assert get_cell(store, cell["id"]).config["init_from"] == str(final)


def test_an_invalid_study_exits_2_and_starts_nothing(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\ngrid: {depth: [1], flops: [0]}\n")
    result = subprocess.run(
        [sys.executable, "-m", "runner.cli", "run", str(path)], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{path}:1: data: missing; mode pretraining needs the pretraining data (source and tokenizer)",
        f"{path}:2: grid.flops[0]: must be a positive number, got 0",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def _nvml_gpus() -> int:
    from runner.gpus import discover, load_nvml

    nvml = load_nvml()
    return len(discover(nvml)) if nvml is not None else 0


@pytest.mark.gpu
@pytest.mark.skipif(_nvml_gpus() == 0, reason="needs a GPU that NVML sees")
def test_run_puts_cells_on_free_gpus(tmp_path, corpus, capsys):
    path = _study(tmp_path, corpus)
    path.write_text(
        path.read_text().replace("  device: cpu\n", "").replace("compile: false", "compile: true")
    )
    assert _run(path, tmp_path) == 0
    with open_store(tmp_path / "nanostudy.db", create=False) as store:
        from store import attempts_of

        for cell in _status(path, capsys)["cells"]:
            [attempt] = attempts_of(store, cell["id"])
            assert attempt.gpus is not None and attempt.num_gpus == 1
            start = json.loads(
                (tmp_path / "runs" / "cli" / cell["id"] / "events.jsonl").read_text().split("\n")[0]
            )
            assert start["device"]["type"] == "cuda" and start["device"]["count"] == 1


def test_a_cell_recorded_under_another_data_root_trains_from_the_data_this_run_prepared(
    tmp_path, corpus, capsys, monkeypatch
):
    """The cell's id holds the data's identity, not its directory: recorded under one --data-root (never
    started), then run under another after the first was deleted, it kept the deleted directory and
    failed for good ('bad config or input', not retried)."""
    import shutil

    import runner.run

    path = _study(tmp_path, corpus, depths="[1]")
    with monkeypatch.context() as patch:  # recorded, never started (a Ctrl-C before the first launch)
        patch.setattr(runner.run.StudyLoop, "run", lambda self: False)
        main(["run", str(path), "--data-root", str(tmp_path / "old-data")])
    shutil.rmtree(tmp_path / "old-data")
    assert main(["run", str(path), "--data-root", str(tmp_path / "new-data")]) == 0
    status = _status(path, capsys)
    assert [cell["state"] for cell in status["cells"]] == ["done"]
    [config] = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("cli/*/config.json")]
    assert config["data"]["train_dir"].startswith(str(tmp_path / "new-data"))
