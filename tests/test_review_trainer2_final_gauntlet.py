"""A run that failed or was killed after its final checkpoint, before the gauntlet that follows it, scores
that gauntlet on the final weights when it is started again, then ends `done`; it said 'already done' and
exited 0, so the runner took the cell for done without the final step's scores (and a failed gauntlet's
`end` `error` stayed the run's last event)."""

from pathlib import Path

import pytest
from gauntlet_fixtures import TINY_TASKS, write_bundle
from trainer_fixtures import make_data_dir, tiny_config, write_run

from nanogpt.events import read_events
from nanogpt.train import EXIT_DONE, EXIT_ERROR, Trainer, run

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def scores(run_dir: Path) -> dict[tuple[int, str], float | None]:
    events = read_events(run_dir / "events.jsonl")[0]
    return {(e["step"], e["task"]): e["score"] for e in events if e["kind"] == "eval"}


def test_a_final_gauntlet_that_failed_is_scored_when_the_run_is_started_again(tmp_path, monkeypatch, capsys):
    data_dir = make_data_dir(tmp_path / "data")
    bundle = write_bundle(tmp_path / "bundle", TINY_TASKS)
    config = tiny_config(data_dir, eval={"preset": "quick", "bundle": str(bundle), "gauntlet_every": 5})
    straight, failed = tmp_path / "straight", tmp_path / "failed"
    assert run(write_run(straight, config)) == EXIT_DONE
    run_gauntlet = Trainer._run_gauntlet

    def fail_at_the_last_step(trainer):
        if trainer.step == trainer.total_steps:
            raise RuntimeError("out of memory")
        return run_gauntlet(trainer)

    monkeypatch.setattr(Trainer, "_run_gauntlet", fail_at_the_last_step)
    assert run(write_run(failed, config)) == EXIT_ERROR
    last = read_events(failed / "events.jsonl")[0][-1]
    assert (last["kind"], last["status"], last["step"]) == ("end", "error", 12)
    monkeypatch.undo()
    capsys.readouterr()
    assert run(failed / "config.json") == EXIT_DONE
    assert "already done" not in capsys.readouterr().out
    assert scores(failed) == scores(straight)
    events = read_events(failed / "events.jsonl")[0]
    start = [e for e in events if e["kind"] == "start"][-1]
    assert start["resumed_from"] == "checkpoints/step_000012"
    assert (events[-1]["kind"], events[-1]["status"], events[-1]["step"]) == ("end", "done", 12)
    # Scored now, the run is done: a third start writes nothing.
    size = (failed / "events.jsonl").stat().st_size
    assert run(failed / "config.json") == EXIT_DONE
    assert "already done at step 12" in capsys.readouterr().out
    assert (failed / "events.jsonl").stat().st_size == size


def test_a_run_killed_in_its_final_gauntlet_scores_it_before_its_end(tmp_path):
    """Killed (the node lost, kill -9) after the final checkpoint: the next start wrote `end` `done` alone."""
    data_dir = make_data_dir(tmp_path / "data")
    bundle = write_bundle(tmp_path / "bundle", TINY_TASKS)
    config = tiny_config(data_dir, eval={"preset": "quick", "bundle": str(bundle)})
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert run(write_run(straight, config)) == EXIT_DONE
    write_run(killed, config)
    assert run(killed / "config.json") == EXIT_DONE
    # As if killed right after the final checkpoint: the events up to its `checkpoint` event.
    path = killed / "events.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    cut = max(i for i, line in enumerate(lines) if '"kind":"checkpoint"' in line) + 1
    path.write_text("".join(lines[:cut]))
    assert run(killed / "config.json") == EXIT_DONE
    assert scores(killed) == scores(straight) and {step for step, _ in scores(killed)} == {12}
    assert read_events(path)[0][-1]["status"] == "done"
