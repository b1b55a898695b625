"""The eval gauntlet of a run stopped or failed around it is scored when the run starts again, as a straight
run scores it:
- a stop at a step whose gauntlet is due skips it (the run's last event stays its stopping checkpoint); the
  resumed run scores it before its first step (it had none: the resumed run went on from the next step);
- a run that failed or was killed after its final checkpoint, before the gauntlet that follows it, scores
  that gauntlet on the final weights, then ends `done` (it said 'already done' and exited 0, so the runner
  took the cell for done without the final step's scores, a failed gauntlet's `end` `error` staying last)."""

import os
import signal
from pathlib import Path

import pytest
from gauntlet_fixtures import TINY_TASKS, write_bundle
from trainer_fixtures import make_data_dir, tiny_config, write_run

from nanogpt.events import read_events
from nanogpt.train import EXIT_DONE, EXIT_ERROR, EXIT_STOPPED, Trainer, run

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def scores(run_dir: Path) -> dict[tuple[int, str], float | None]:
    events = read_events(run_dir / "events.jsonl")[0]
    return {(e["step"], e["task"]): e["score"] for e in events if e["kind"] == "eval"}


def straight_run(tmp_path: Path, **eval_settings) -> tuple[dict, Path]:
    """The config of a run with the tiny gauntlet (and `eval_settings`), and that run done straight."""
    bundle = write_bundle(tmp_path / "bundle", TINY_TASKS)
    eval_section = {"preset": "quick", "bundle": str(bundle), **eval_settings}
    config = tiny_config(make_data_dir(tmp_path / "data"), eval=eval_section)
    assert run(write_run(tmp_path / "straight", config)) == EXIT_DONE
    return config, tmp_path / "straight"


def test_the_gauntlet_a_stop_skipped_is_scored_when_the_run_resumes(tmp_path, monkeypatch):
    config, straight = straight_run(tmp_path, gauntlet_every=5)
    stopped = tmp_path / "stopped"
    train_step = Trainer._train_step

    def sigterm_during_step_5(trainer):
        if trainer.step == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return train_step(trainer)

    monkeypatch.setattr(Trainer, "_train_step", sigterm_during_step_5)
    assert run(write_run(stopped, config)) == EXIT_STOPPED
    last = read_events(stopped / "events.jsonl")[0][-1]
    assert (last["kind"], last["step"], last["stopping"]) == ("checkpoint", 5, True)
    monkeypatch.undo()
    assert run(stopped / "config.json") == EXIT_DONE
    assert sorted({step for step, _ in scores(stopped)}) == [5, 10, 12]
    assert scores(stopped) == scores(straight)


def test_a_final_gauntlet_that_failed_is_scored_when_the_run_is_started_again(tmp_path, monkeypatch, capsys):
    config, straight = straight_run(tmp_path, gauntlet_every=5)
    failed = tmp_path / "failed"
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
    config, straight = straight_run(tmp_path)
    killed = tmp_path / "killed"
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
