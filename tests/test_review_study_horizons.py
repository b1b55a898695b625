"""Horizons of a study's stages: what a cell trains is what the study asked for, within one step."""

import pytest
from test_study import GOOD

from runner.plan import plan
from runner.study import StudyError, parse

MID = "mid_training:\n  data: {source: {name: local, paths: x.jsonl, format: chat}}\n  HORIZON\n"


def _mode_all(horizon: str) -> str:
    return GOOD.replace("mode: pretraining", "mode: all") + MID.replace("HORIZON", horizon)


@pytest.mark.parametrize(
    "horizon, message",
    [
        ("tokens: 100", "100 tokens is less than one optimizer step (256 tokens); give at least that many"),
        (
            "flops: 1e3",
            "1e+03 FLOPs is less than one optimizer step at depth 1 (256 tokens × 55,296 FLOPs per token); "
            "the smallest for this depth is 1.42e+07 FLOPs",
        ),
    ],
)
def test_a_mid_training_horizon_below_one_step_is_refused(tmp_path, monkeypatch, horizon, message):
    """The trainer trains at least one step: 100 tokens became 256, 1e3 FLOPs 1.4e7, without a word (a
    pretraining budget below one step was already refused)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.jsonl").write_text("")
    text = _mode_all(horizon)
    with pytest.raises(StudyError) as caught:
        plan(parse(text, path="s.yaml"))
    line = text.splitlines().index(f"  {horizon}") + 1
    key = horizon.split(":")[0]
    assert caught.value.problems[0] == f"s.yaml:{line}: mid_training.{key}: {message}"
    # One step's worth is fine: the cells train exactly it.
    cells = plan(parse(_mode_all("tokens: 256"))).cells
    assert [cell.num_tokens for cell in cells if cell.mode == "mid-training"] == [256] * 8
