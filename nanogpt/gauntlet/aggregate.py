"""From per-example results to scores: accuracy, centered score, category averages, core_average, errors.

- A task's accuracy is the fraction of its scored examples answered correctly; its standard error the
  binomial one, sqrt(p (1 - p) / n).
- Centered: (accuracy - baseline) / (1 - baseline), so random guessing scores 0 and a perfect model 1
  (the Eval Gauntlet's `subtract_random_baseline` + `rescale_accuracy`); its error is the accuracy's
  error / (1 - baseline).
- A category's score is the mean of its tasks' centered scores, core_average the mean of the five
  category scores (equal weights, as gauntlet v0.3), and chatcore_average the mean of the chat tasks'.
  Tasks are independent samples, so an average's standard error is sqrt(sum of its parts' squared errors)
  / number of parts. The same number by resampling: `bootstrap_stderrs` redraws every task's examples
  (with replacement) and recomputes every average; both are reported.

Two cells differ by more than noise when |a - b| is well above sqrt(se_a² + se_b²).
"""

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nanogpt.gauntlet.tasks import CATEGORIES, CHAT_CATEGORY

CORE_AVERAGE = "core_average"
CHATCORE_AVERAGE = "chatcore_average"
CATEGORY_PREFIX = "category/"


def centered(accuracy: float, baseline: float) -> float:
    """(accuracy - baseline) / (1 - baseline): 0 at chance, 1 when every answer is right."""
    return (accuracy - baseline) / (1.0 - baseline)


def binomial_stderr(accuracy: float, num_examples: int) -> float:
    """The standard error of an accuracy measured on `num_examples` independent examples."""
    if num_examples < 1:
        return math.nan
    return math.sqrt(max(accuracy * (1.0 - accuracy), 0.0) / num_examples)


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskScore:
    """One task's result: which examples were right, and what it says."""

    name: str  # the task's name (nanogpt.gauntlet.tasks)
    category: str
    baseline: float
    core: bool
    correct: np.ndarray  # (num_examples,) bool, one per scored example
    extra: Mapping[str, Any] = field(default_factory=dict)  # more metrics (e.g. accuracy_sum)

    @property
    def num_examples(self) -> int:
        return int(self.correct.size)

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean()) if self.correct.size else math.nan

    @property
    def stderr(self) -> float:
        return binomial_stderr(self.accuracy, self.num_examples)

    @property
    def centered(self) -> float:
        return centered(self.accuracy, self.baseline)

    @property
    def centered_stderr(self) -> float:
        return self.stderr / (1.0 - self.baseline)


@dataclass(frozen=True, kw_only=True, slots=True)
class AggregateScore:
    """An average of centered scores: a category, core_average or chatcore_average."""

    name: str  # "category/<name>", "core_average", "chatcore_average"
    score: float
    stderr: float  # propagated from the parts' binomial errors
    parts: tuple[str, ...]  # the tasks (for a category) or categories averaged
    missing: tuple[str, ...] = ()  # tasks of the preset that could not be scored (unavailable, malformed)
    stderr_bootstrap: float | None = None


def aggregate(
    scores: Sequence[TaskScore],
    *,
    missing: Mapping[str, Sequence[str]] | None = None,
    num_resamples: int = 1000,
    seed: int = 0,
) -> list[AggregateScore]:
    """Category averages (core tasks, every category that has one), core_average (when all five categories
    have a score) and chatcore_average (when a chat task was scored). `missing`: category -> the tasks of
    the preset in it that were not scored, recorded with the averages they are absent from.
    `num_resamples` > 0 adds the bootstrap's standard error."""
    missing = {category: tuple(names) for category, names in (missing or {}).items()}
    by_category: dict[str, list[TaskScore]] = {}
    for score in scores:
        if score.core or score.category == CHAT_CATEGORY:
            by_category.setdefault(score.category, []).append(score)
    results: list[AggregateScore] = []
    category_results: list[AggregateScore] = []
    for category in CATEGORIES:
        parts = by_category.get(category, [])
        if not parts:
            continue
        result = AggregateScore(
            name=CATEGORY_PREFIX + category,
            score=float(np.mean([p.centered for p in parts])),
            stderr=_mean_stderr([p.centered_stderr for p in parts]),
            parts=tuple(p.name for p in parts),
            missing=missing.get(category, ()),
        )
        category_results.append(result)
    results += category_results
    if len(category_results) == len(CATEGORIES):
        results.append(
            AggregateScore(
                name=CORE_AVERAGE,
                score=float(np.mean([c.score for c in category_results])),
                stderr=_mean_stderr([c.stderr for c in category_results]),
                parts=tuple(c.name for c in category_results),
                missing=tuple(name for category in CATEGORIES for name in missing.get(category, ())),
            )
        )
    chat = by_category.get(CHAT_CATEGORY, [])
    if chat:
        results.append(
            AggregateScore(
                name=CHATCORE_AVERAGE,
                score=float(np.mean([p.centered for p in chat])),
                stderr=_mean_stderr([p.centered_stderr for p in chat]),
                parts=tuple(p.name for p in chat),
                missing=missing.get(CHAT_CATEGORY, ()),
            )
        )
    if num_resamples > 0 and results:
        boot = bootstrap_stderrs(scores, num_resamples=num_resamples, seed=seed)
        results = [dataclasses.replace(result, stderr_bootstrap=boot.get(result.name)) for result in results]
    return results


def bootstrap_stderrs(
    scores: Sequence[TaskScore], *, num_resamples: int = 1000, seed: int = 0
) -> dict[str, float]:
    """The standard deviation of every average over `num_resamples` redraws of each task's examples with
    replacement. A redraw of n right-or-wrong examples has Binomial(n, accuracy) right ones, so each task
    is resampled by one binomial draw per resample: exact, and cheap for tasks of 20,000 examples."""
    rng = np.random.default_rng(seed)
    by_category: dict[str, list[np.ndarray]] = {}
    for score in scores:
        if not (score.core or score.category == CHAT_CATEGORY) or not score.num_examples:
            continue
        right = rng.binomial(score.num_examples, score.accuracy, size=num_resamples)
        accuracy = right / score.num_examples
        by_category.setdefault(score.category, []).append((accuracy - score.baseline) / (1 - score.baseline))
    out: dict[str, float] = {}
    category_draws = []
    for category in CATEGORIES:
        if category in by_category:
            draws = np.mean(by_category[category], axis=0)
            out[CATEGORY_PREFIX + category] = float(draws.std(ddof=1)) if num_resamples > 1 else math.nan
            category_draws.append(draws)
    if len(category_draws) == len(CATEGORIES):
        out[CORE_AVERAGE] = (
            float(np.mean(category_draws, axis=0).std(ddof=1)) if num_resamples > 1 else math.nan
        )
    if CHAT_CATEGORY in by_category:
        draws = np.mean(by_category[CHAT_CATEGORY], axis=0)
        out[CHATCORE_AVERAGE] = float(draws.std(ddof=1)) if num_resamples > 1 else math.nan
    return out


def _mean_stderr(stderrs: Sequence[float]) -> float:
    return math.sqrt(sum(s * s for s in stderrs)) / len(stderrs)
