"""A horizon past what a run can count (2^63 - 1 tokens: a typo in the exponent) is refused in one line
naming its key, exit 2, before anything is written; it was an OverflowError traceback once the model was
built (the start event's totals, the data's epochs, resolve_compile), or a run that trained forever."""

import json

import pytest
from trainer_fixtures import make_data_dir, tiny_config, write_run

from nanogpt.config import RunConfig
from nanogpt.train import EXIT_BAD_INPUT, EXIT_DONE, run

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MINIMAL = {"model": {"depth": 2}, "data": {"train_dir": "data"}}


@pytest.mark.parametrize(
    ("train", "message"),
    [
        (
            {"num_steps": 10**400},
            "train.num_steps: ~1e+400 steps of 524,288 tokens is ~1e+405 tokens, more than the 2^63 - 1 a "
            "run can count; a typo in the exponent?",
        ),
        (
            {"num_steps": 2**44},
            "train.num_steps: 1.76e+13 steps of 524,288 tokens is 9.22e+18 tokens, more than the 2^63 - 1 a "
            "run can count; a typo in the exponent?",
        ),
        (
            {"target_tokens": 10**320},
            "train.target_tokens: ~1e+320 is more than the 2^63 - 1 tokens a run can count; a typo in the "
            "exponent?",
        ),
        (
            {"num_steps": 2, "total_batch_tokens": 2**63},
            "train.total_batch_tokens: 9.22e+18 is more than the 2^63 - 1 tokens a run can count; a typo in "
            "the exponent?",
        ),
    ],
)
def test_the_config_refuses_a_horizon_past_what_a_run_can_count(train, message):
    with pytest.raises(ValueError) as caught:
        RunConfig.from_dict({**MINIMAL, "train": train}, source="c.json")
    assert str(caught.value) == f"c.json: {message}"


def test_the_largest_countable_horizon_is_accepted():
    config = RunConfig.from_dict({**MINIMAL, "train": {"target_tokens": 2**63 - 1}})
    assert config.train.target_tokens == 2**63 - 1
    RunConfig.from_dict({**MINIMAL, "train": {"num_steps": (2**63 - 1) // 524_288}})


@pytest.mark.parametrize(
    ("train", "key"),
    [
        ({"num_steps": 10**400}, "train.num_steps"),
        ({"target_tokens": 10**320}, "train.target_tokens"),
        ({"target_flops": 1e300}, "train.target_flops"),
        ({"target_flops": 1.7e308}, "train.target_flops"),
    ],
)
def test_the_trainer_refuses_an_absurd_horizon_in_one_line(tmp_path, capsys, train, key):
    config = tiny_config(make_data_dir(tmp_path / "data"))
    config["train"] = {"total_batch_tokens": 256, "device_batch_size": 4, **train}
    run_dir = tmp_path / "run"
    config_path = write_run(run_dir, config)
    capsys.readouterr()
    assert run(config_path) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith(f"error: {config_path}: {key}: ") and err.count("\n") == 1
    assert err.endswith("more than the 2^63 - 1 a run can count; a typo in the exponent?\n") or err.endswith(
        "more than the 2^63 - 1 tokens a run can count; a typo in the exponent?\n"
    )
    assert not (run_dir / "events.jsonl").exists() and not (run_dir / "checkpoints").exists()


def test_a_flops_horizon_below_one_step_still_trains_its_one_step(tmp_path):
    """The documented rounding: at least one step (a study's plan refuses such a budget at its line)."""
    config = tiny_config(make_data_dir(tmp_path / "data"), checkpoint={"every_steps": None})
    config["train"] = {"target_flops": 1.0, "total_batch_tokens": 256, "device_batch_size": 4}
    config_path = write_run(tmp_path / "run", config)
    assert run(config_path) == EXIT_DONE
    lines = (tmp_path / "run" / "events.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    assert events[0]["total_steps"] == 1
    assert [e["step"] for e in events if e["kind"] == "step"] == [1]
    assert (events[-1]["kind"], events[-1]["status"], events[-1]["step"]) == ("end", "done", 1)
