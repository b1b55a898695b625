"""Problems of a study name what is wrong in the study's words."""

from test_study import GOOD, problems


def test_a_rule_between_a_key_and_a_default_names_both_keys():
    """warmup_frac 0.9 over the default cooldown_frac 0.2 read 'must be <= 1, got 0.9 + 0.2', which 0.9 is;
    given together the two keys were already named."""
    assert problems(GOOD + "schedule: {warmup_frac: 0.9}\n") == [
        "s.yaml:17: schedule.warmup_frac: warmup_frac + cooldown_frac: must be <= 1, got 0.9 + 0.2"
    ]
    assert problems(GOOD + "schedule: {cooldown_frac: 1.5}\n") == [
        "s.yaml:17: schedule.cooldown_frac: must be in [0, 1], got 1.5"
    ]


def test_a_depth_given_twice_in_gpus_per_cell_is_a_problem():
    """`1:` and `01:` are two YAML keys for one depth: the later one's GPUs were taken without a word."""
    assert problems(GOOD + "resources:\n  gpus_per_cell: {1: 1, 2: 1, 01: 4}\n") == [
        "s.yaml:18: resources.gpus_per_cell.01: depth 1 is given twice"
    ]


def test_a_merge_key_given_twice_is_a_key_given_twice():
    """`<<` twice in one mapping merged both, the first winning, without a word; a list merges several."""
    text = GOOD + "optim:\n  <<: {matrix_lr: 0.1}\n  <<: {matrix_lr: 0.2}\n"
    assert problems(text) == ["s.yaml:19: optim.<<: given twice (first at line 18)"]


def test_a_mid_training_horizon_or_checkpoint_in_the_wrong_place_is_pointed_to_its_key():
    """They read 'unknown key (known keys: ...)', which lists neither."""
    text = GOOD.replace("mode: pretraining", "mode: all")
    text += "init_from: runs/base\nmid_training:\n  train:\n    num_steps: 5\n    target_tokens: 9\n"
    found = problems(text)
    assert "s.yaml:17: init_from: not a key here; it belongs in mid_training.init_from" in found
    assert (
        "s.yaml:20: mid_training.train.num_steps: not a key here; it belongs in mid_training.steps" in found
    )
    assert (
        "s.yaml:21: mid_training.train.target_tokens: not a key here; it belongs in mid_training.tokens"
        in found
    )
