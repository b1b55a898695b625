"""Centered scores, category averages, core_average and their standard errors, against numbers worked out by
hand; the events a result becomes."""

import math

import numpy as np
import pytest

from nanogpt.gauntlet.aggregate import TaskScore, aggregate, bootstrap_stderrs, centered
from nanogpt.gauntlet.evaluate import GauntletResult
from nanogpt.gauntlet.tasks import TASKS


def _score(name, category, baseline, right, *, core=True):
    return TaskScore(
        name=name, category=category, baseline=baseline, core=core, correct=np.array(right, dtype=bool)
    )


def _grid():
    """Six tasks over the five categories, with hand-checkable accuracies."""
    return [
        _score("a", "world_knowledge", 0.25, [1, 1, 1, 0]),  # 0.75 -> (0.75 - 0.25) / 0.75 = 2/3
        _score("b", "world_knowledge", 0.0, [1, 0, 0, 0]),  # 0.25 -> 0.25
        _score("c", "commonsense_reasoning", 0.5, [1, 0]),  # 0.5 -> 0
        _score("d", "language_understanding", 0.5, [1, 1, 1]),  # 1 -> 1
        _score("e", "symbolic_problem_solving", 0.0, [0, 0, 0, 0, 0]),  # 0 -> 0
        _score("f", "reading_comprehension", 0.25, [0, 0, 0]),  # 0 -> -1/3
        _score("extra", "world_knowledge", 0.0, [1, 1], core=False),  # not in any average
    ]


def test_centered_maps_chance_to_zero_and_perfect_to_one():
    assert centered(0.25, 0.25) == 0.0
    assert centered(1.0, 0.5) == 1.0
    assert centered(0.7, 0.25) == pytest.approx(0.6)
    assert centered(0.0, 0.25) == pytest.approx(-1 / 3)


def test_category_averages_and_core_average_by_hand():
    results = {r.name: r for r in aggregate(_grid(), missing={"language_understanding": ["hellaswag"]})}
    assert list(results) == [
        "category/world_knowledge",
        "category/commonsense_reasoning",
        "category/language_understanding",
        "category/symbolic_problem_solving",
        "category/reading_comprehension",
        "core_average",
    ]
    assert results["category/world_knowledge"].score == pytest.approx((2 / 3 + 1 / 4) / 2)  # 11/24
    assert results["category/world_knowledge"].parts == ("a", "b")  # the extra task is not averaged
    assert results["category/commonsense_reasoning"].score == 0.0
    assert results["category/language_understanding"].score == 1.0
    assert results["category/reading_comprehension"].score == pytest.approx(-1 / 3)
    assert results["core_average"].score == pytest.approx((11 / 24 + 0 + 1 + 0 - 1 / 3) / 5)  # 0.225
    assert results["core_average"].score == pytest.approx(0.225)
    assert results["category/language_understanding"].missing == ("hellaswag",)
    assert results["core_average"].missing == ("hellaswag",)

    # Standard errors: binomial per task, divided by (1 - baseline), combined as independent parts.
    se_a = math.sqrt(0.75 * 0.25 / 4) / 0.75
    se_b = math.sqrt(0.25 * 0.75 / 4)
    se_c = math.sqrt(0.5 * 0.5 / 2) / 0.5
    se_wk = math.sqrt(se_a**2 + se_b**2) / 2
    assert results["category/world_knowledge"].stderr == pytest.approx(se_wk)
    assert results["category/commonsense_reasoning"].stderr == pytest.approx(se_c)
    assert results["category/language_understanding"].stderr == 0.0  # all right: no spread
    assert results["core_average"].stderr == pytest.approx(math.sqrt(se_wk**2 + se_c**2) / 5)


def test_core_average_needs_all_five_categories_and_chat_tasks_have_their_own():
    partial = [s for s in _grid() if s.category != "reading_comprehension"]
    names = [r.name for r in aggregate(partial)]
    assert "core_average" not in names and len(names) == 4
    chat = [_score("chat_arc_easy", "chat", 0.25, [1, 1, 0, 0]), _score("chat_gsm8k", "chat", 0.0, [1, 0])]
    (only,) = aggregate(chat)
    assert only.name == "chatcore_average"
    assert only.score == pytest.approx((centered(0.5, 0.25) + 0.5) / 2)


def test_the_bootstrap_agrees_with_the_propagated_standard_errors():
    rng = np.random.default_rng(0)
    scores = [
        _score(name, category, baseline, rng.random(n) < p)
        for name, category, baseline, n, p in [
            ("a", "world_knowledge", 0.25, 400, 0.5),
            ("b", "world_knowledge", 0.0, 900, 0.2),
            ("c", "commonsense_reasoning", 0.5, 300, 0.6),
            ("d", "language_understanding", 0.5, 500, 0.7),
            ("e", "symbolic_problem_solving", 0.0, 200, 0.1),
            ("f", "reading_comprehension", 0.25, 250, 0.4),
        ]
    ]
    boot = bootstrap_stderrs(scores, num_resamples=4000, seed=1)
    for result in aggregate(scores, num_resamples=0):
        assert result.stderr_bootstrap is None
        assert boot[result.name] == pytest.approx(result.stderr, rel=0.08)
    assert bootstrap_stderrs(scores, num_resamples=500, seed=3) == bootstrap_stderrs(
        scores, num_resamples=500, seed=3
    )


def test_a_result_becomes_one_event_per_task_and_average_named_with_the_preset_and_cap():
    scores = [_score("copa", "commonsense_reasoning", 0.5, [1, 1, 1, 0])]
    result = GauntletResult(
        preset="quick",
        max_examples=4,
        scores=scores,
        aggregates=aggregate(scores, missing={"language_understanding": ["hellaswag"]}, num_resamples=0),
        skipped={"hellaswag": "unavailable (hellaswag.jsonl: not in the eval bundle)"},
        specs=(TASKS["copa"], TASKS["hellaswag"]),
        seconds={"copa": 1.5, "total": 2.0},
    )
    events = {event["task"]: event for event in result.events()}
    assert list(events) == ["copa@4", "hellaswag@4", "quick/category/commonsense_reasoning@4"]
    copa = events["copa@4"]
    assert copa["score"] == pytest.approx(0.5)  # centered (0.75 - 0.5) / 0.5
    assert copa["metrics"]["accuracy"] == 0.75 and copa["metrics"]["num_examples"] == 4
    assert copa["metrics"]["stderr"] == pytest.approx(math.sqrt(0.75 * 0.25 / 4) / 0.5)
    assert copa["metrics"]["preset"] == "quick" and copa["metrics"]["baseline"] == 0.5
    assert events["hellaswag@4"]["score"] is None
    assert "not in the eval bundle" in events["hellaswag@4"]["metrics"]["skipped"]
    assert events["quick/category/commonsense_reasoning@4"]["metrics"]["parts"] == ["copa"]
