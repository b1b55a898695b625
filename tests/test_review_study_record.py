"""The store's record of a study (Study.to_dict) says what the study trains."""

import json

from test_study import GOOD

from runner.study import parse


def test_the_record_of_depths_per_budget_keeps_which_depths_each_budget_trains():
    """grid.depth as a mapping was recorded as its depths and budgets only, which read as their product."""
    study = parse(GOOD.replace("depth: [1, 2]", "depth: {1e9: [1], 3e9: [1, 2]}"))
    grid = json.loads(json.dumps(study.to_dict()))["grid"]
    assert grid["depth"] == [1, 2] and grid["flops"] == [1e9, 3e9]
    assert grid["depth_by_flops"] == [[1e9, [1]], [3e9, [1, 2]]]
    assert parse(GOOD).to_dict()["grid"]["depth_by_flops"] == []
