"""The runner's loop, read again after the day's changes (real processes, stand-in trainers)."""

import time

from runner_fixtures import FakeNvml, add_tiny_cells, fake_python, make_loop, new_study
from trainer_fixtures import make_data_dir

from runner.gpus import GpuPool
from runner.run import LoopOptions
from store import AttemptOutcome, CellState, attempts_of, cell_statuses


def test_no_cell_is_launched_while_launches_pause_after_the_backend_did_not_answer(tmp_path, monkeypatch):
    """A launch the backend did not answer pauses launches for BACKEND_RETRY_S; the other cells chosen in
    the same pass were still submitted one after another (each sbatch waiting out its own timeout, each
    attempt ended 'not started')."""
    import runner.run
    from runner.executor import BackendUnavailable

    data = make_data_dir(tmp_path / "data", train_tokens=4_000, val_tokens=1_000)
    store, study_id = new_study(tmp_path / "nanostudy.db")
    add_tiny_cells(store, study_id, data, tmp_path / "runs", [{"id": f"c{i}", "seed": i} for i in range(3)])
    monkeypatch.setattr(runner.run, "BACKEND_RETRY_S", 0.2)
    options = LoopOptions(poll_s=0.05, heartbeat_s=1.0, max_parallel=3)
    pool = GpuPool(nvml=FakeNvml(3), claim_dir=None)  # three cells chosen in one pass
    loop = make_loop(store, study_id, python=fake_python(tmp_path), options=options, pool=pool)
    real_submit, during_pause, calls = loop.executor.submit, [], []

    def submit_unanswered_once(request):
        during_pause.append(time.monotonic() < loop._launch_paused_until)
        calls.append(request.cell_id)
        if len(calls) == 1:
            raise BackendUnavailable("sbatch: error: Batch job submission failed: Socket timed out")
        return real_submit(request)

    monkeypatch.setattr(loop.executor, "submit", submit_unanswered_once)
    assert loop.run() is False
    store_states = [status.state for status in cell_statuses(store, study_id)]
    interrupted = [
        a for i in range(3) for a in attempts_of(store, f"c{i}") if a.outcome is AttemptOutcome.INTERRUPTED
    ]
    store.close()
    assert store_states == [CellState.DONE] * 3
    assert len(interrupted) == 1 and not any(during_pause), (calls, during_pause)


def test_a_mode_mid_training_cell_starts_from_where_its_checkpoint_lies_now(tmp_path, monkeypatch):
    """The cell's id is the checkpoint's identity, not its path, so a study pointed at the same checkpoint
    moved elsewhere keeps its cells; a cell recorded but not yet trained still started from the old path,
    and failed for good ('no such checkpoint'), --rerun failed too."""
    import shutil

    from data_fixtures import chat_rows, write_jsonl
    from trainer_fixtures import tiny_config, write_run

    import runner.run
    from nanogpt.train import EXIT_DONE, run
    from runner.cli import main
    from store import get_study, open_store

    write_jsonl(tmp_path / "chats.jsonl", chat_rows(80))
    init_config = tiny_config(make_data_dir(tmp_path / "init-data"), checkpoint={"every_steps": None})
    assert run(write_run(tmp_path / "a" / "init-run", init_config)) == EXIT_DONE

    def study(init_from):
        path = tmp_path / "mid.yaml"
        path.write_text(
            "name: mid\nmode: mid-training\ngrid: {seed: [0]}\n"
            "train: {total_batch_tokens: 256, device_batch_size: 8, device: cpu, compile: false}\n"
            "eval: {every_steps: null, val_tokens: 512}\nretry: {max_attempts: 1}\n"
            f"mid_training:\n  init_from: '{init_from}'\n  data:\n"
            f"    source: {{name: local, paths: '{tmp_path / 'chats.jsonl'}', format: chat}}\n"
            "    val_fraction: 0.2\n  steps: 3\n"
        )
        return str(path)

    with monkeypatch.context() as patch:  # recorded, never started (a Ctrl-C before the first launch)
        patch.setattr(runner.run.StudyLoop, "run", lambda self: False)
        main(["run", study(tmp_path / "a" / "init-run"), "--data-root", str(tmp_path / "data")])
    shutil.move(tmp_path / "a", tmp_path / "b")
    assert main(["run", study(tmp_path / "b" / "init-run"), "--data-root", str(tmp_path / "data")]) == 0
    with open_store(tmp_path / "nanostudy.db", create=False) as store:
        [status] = cell_statuses(store, get_study(store, "mid").id)
        [attempt] = attempts_of(store, status.id)
    assert status.state is CellState.DONE and attempt.outcome is AttemptOutcome.DONE
