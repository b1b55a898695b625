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
