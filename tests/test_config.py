"""RunConfig: JSON round trip, strict keys and types, ranges, and errors that name the file and the key."""

import json

import pytest

from nanogpt.config import RunConfig, ScheduleSection, TrainSection

MINIMAL = {"model": {"depth": 4}, "data": {"train_dir": "data/tiny"}, "train": {"target_flops": 1e15}}


def with_changes(base: dict, section: str | None, **changes) -> dict:
    raw = json.loads(json.dumps(base))
    if section is None:
        raw.update(changes)
    else:
        raw.setdefault(section, {}).update(changes)
    return raw


def error_of(raw) -> str:
    with pytest.raises(ValueError) as info:
        RunConfig.from_dict(raw, source="run/config.json")
    return str(info.value)


def test_defaults_fill_in_and_round_trip_through_a_file(tmp_path):
    config = RunConfig.from_dict(MINIMAL)
    assert config.mode == "pretraining" and config.seed == 0 and config.compile == "auto"
    assert config.train.device_batch_size == "auto" and config.train.total_batch_tokens == 524_288
    assert config.schedule.kind == "wsd" and config.wandb.mode == "disabled"
    path = config.write(tmp_path / "config.json")
    again = RunConfig.from_json(path)
    assert again == config
    # The file holds every key, so a reader never needs this code's defaults.
    assert json.loads(path.read_text())["optim"]["matrix_lr"] == config.optim.matrix_lr
    assert not list(tmp_path.glob(".config.json.tmp-*"))


def test_a_full_config_round_trips_with_every_value_kept():
    raw = with_changes(
        MINIMAL, "train", target_flops=None, num_steps=100, device_batch_size=16, max_seconds=60
    )
    raw = with_changes(raw, "schedule", kind="cosine", warmup_frac=0.1, final_lr_frac=0.1)
    raw = with_changes(raw, "wandb", mode="offline", name="d4")
    raw = with_changes(raw, None, seed=7, dtype="float32", compile=False, log_every=10)
    config = RunConfig.from_dict(raw)
    assert config.train.num_steps == 100 and config.train.device_batch_size == 16
    assert config.train.max_seconds == 60.0 and isinstance(config.train.max_seconds, float)
    assert config.schedule == ScheduleSection(kind="cosine", warmup_frac=0.1, final_lr_frac=0.1)
    assert RunConfig.from_dict(json.loads(config.to_json())) == config


def test_unknown_keys_are_named_with_their_section():
    assert error_of(with_changes(MINIMAL, "optim", lrr=0.1)).startswith(
        "run/config.json: unknown key 'optim.lrr'"
    )
    message = error_of(with_changes(MINIMAL, "optim", matrix_lrr=0.1))
    assert "unknown key 'optim.matrix_lrr'" in message and "did you mean 'optim.matrix_lr'" in message
    assert "unknown key 'epochs'" in error_of(with_changes(MINIMAL, None, epochs=3))


@pytest.mark.parametrize(
    ("horizon", "expected"),
    [
        ({"target_flops": 1e15, "num_steps": 10}, "target_flops and num_steps are set"),
        ({"target_flops": None}, "none is set"),
        (
            {"target_flops": 1e15, "target_tokens": 10**6, "num_steps": 3},
            "target_flops and target_tokens and",
        ),
    ],
)
def test_exactly_one_horizon(horizon, expected):
    message = error_of(with_changes(MINIMAL, "train", **horizon))
    assert "train.target_flops/target_tokens/num_steps: give exactly one horizon" in message
    assert expected in message


@pytest.mark.parametrize(
    ("section", "changes", "expected"),
    [
        ("model", {"depth": "four"}, "model.depth: expected an integer, got a string ('four')"),
        ("model", {"depth": True}, "model.depth: expected an integer, got a boolean"),
        ("model", {"depth": 2.5}, "model.depth: expected an integer, got a number (2.5)"),
        ("model", {"mlp": "swiglu"}, "model.mlp: expected one of 'relu2', 'gelu', got 'swiglu'"),
        # Past these, a typo (they once overflowed tensor sizes in torch: a C++ traceback, exit 1).
        ("model", {"depth": 10**30}, "model.depth: at most 4,096, got 1,000,000,000,000,000,"),
        ("model", {"depth": 2_000}, "model.aspect_ratio: depth × aspect_ratio, the model's width, is 128,0"),
        ("model", {"head_dim": 2**20}, "model.head_dim: at most 65,536, got 1,048,576"),
        ("model", {"sequence_len": 2**30}, "model.sequence_len: at most 16,777,216"),
        ("train", {"device_batch_size": "max"}, "train.device_batch_size: expected an integer or 'auto'"),
        ("train", {"device_batch_size": 0}, "train.device_batch_size: must be a positive integer, got 0"),
        ("optim", {"matrix_lr": "0.02"}, "optim.matrix_lr: expected a number, got a string"),
        ("optim", {"matrix_lr": -0.02}, "optim.matrix_lr: must be a finite number > 0"),
        ("optim", {"adam_beta2": 1.0}, "optim.adam_beta2: must be in [0, 1)"),
        ("optim", {"muon_nesterov": 1}, "optim.muon_nesterov: expected true or false"),
        ("schedule", {"warmup_frac": 0.5, "cooldown_frac": 0.6}, "warmup_frac + cooldown_frac: must be <= 1"),
        ("schedule", {"final_lr_frac": 2}, "schedule.final_lr_frac: must be in [0, 1]"),
        ("eval", {"val_tokens": 0}, "eval.val_tokens: must be a positive integer"),
        ("checkpoint", {"keep_last": 0}, "checkpoint.keep_last: must be a positive integer"),
        ("wandb", {"mode": "on"}, "wandb.mode: expected one of 'disabled', 'online', 'offline'"),
        ("data", {"train_dir": ""}, "data.train_dir: must not be empty"),
        (None, {"seed": -1}, "seed: must be an integer in [0, 2^63), got -1"),
        (None, {"seed": 1e20}, "seed: must be an integer in [0, 2^63), got 100000000000000000000"),
        (None, {"seed": 2**63}, "seed: must be an integer in [0, 2^63)"),
        (None, {"model": 4}, "model: expected an object, got a number"),
    ],
)
def test_bad_values_name_the_key(section, changes, expected):
    assert expected in error_of(with_changes(MINIMAL, section, **changes))


def test_integral_floats_are_accepted_as_counts():
    # JSON writers (and people) write 1e6 for a count; it is a whole number, so it is accepted as one.
    config = RunConfig.from_dict(with_changes(MINIMAL, "train", target_flops=None, target_tokens=1e6))
    assert config.train.target_tokens == 1_000_000 and isinstance(config.train.target_tokens, int)


def test_modes_need_the_right_sources():
    assert "model: required for pretraining" in error_of({k: v for k, v in MINIMAL.items() if k != "model"})
    assert "init_from: mid-training needs" in error_of(with_changes(MINIMAL, None, mode="mid-training"))
    assert "init_from: only for mid-training" in error_of(with_changes(MINIMAL, None, init_from="runs/a"))
    mid = {k: v for k, v in MINIMAL.items() if k != "model"} | {"mode": "mid-training", "init_from": "runs/a"}
    assert RunConfig.from_dict(mid).model is None


def test_missing_and_corrupt_files_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match=r"config\.json: config file not found"):
        RunConfig.from_json(tmp_path / "config.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": {"depth": 4},\n  "data": }')
    with pytest.raises(ValueError) as info:
        RunConfig.from_json(bad)
    assert str(info.value).startswith(f"{bad}: not valid JSON (line 2") and "\n" not in str(info.value)
    top = tmp_path / "list.json"
    top.write_text("[1, 2]")
    with pytest.raises(ValueError, match="top level: expected an object, got a list"):
        RunConfig.from_json(top)
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes(b'{"model": {"depth": 4}, "wandb": {"name": "caf\xe9"}}')
    with pytest.raises(ValueError) as info:
        RunConfig.from_json(latin1)
    assert str(info.value) == f"{latin1}: not UTF-8 text (invalid continuation byte at byte 46)"
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError) as info:
        RunConfig.from_json(deep)
    assert str(info.value) == f"{deep}: not valid JSON (nested too deeply)"


def test_sections_validate_when_built_in_python():
    with pytest.raises(ValueError, match="give exactly one horizon"):
        TrainSection()
    with pytest.raises(ValueError, match="max_seconds: must be a finite number > 0"):
        TrainSection(num_steps=1, max_seconds=float("inf"))
