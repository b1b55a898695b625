"""A stop at a step whose gauntlet is due skips it (the run's last event stays its stopping checkpoint); the
resumed run scores it before its first step, so the step has its `eval` events, those of a straight run
(it had none: the resumed run went on from the next step)."""

import os
import signal
from pathlib import Path

import pytest
from gauntlet_fixtures import TINY_TASKS, write_bundle
from trainer_fixtures import make_data_dir, tiny_config, write_run

from nanogpt.events import read_events
from nanogpt.train import EXIT_DONE, EXIT_STOPPED, Trainer, run

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def scores(run_dir: Path) -> dict[tuple[int, str], float | None]:
    events = read_events(run_dir / "events.jsonl")[0]
    return {(e["step"], e["task"]): e["score"] for e in events if e["kind"] == "eval"}


def test_the_gauntlet_a_stop_skipped_is_scored_when_the_run_resumes(tmp_path, monkeypatch):
    data_dir = make_data_dir(tmp_path / "data")
    bundle = write_bundle(tmp_path / "bundle", TINY_TASKS)
    config = tiny_config(data_dir, eval={"preset": "quick", "bundle": str(bundle), "gauntlet_every": 5})
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert run(write_run(straight, config)) == EXIT_DONE
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
