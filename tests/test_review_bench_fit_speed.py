"""benchmarks/fit_speed.py's naive bootstrap does the work ours does: the same resamples from the starts ours
takes (the refined best fit and its rivals within 2x), not every distinct end point of the full fit."""

import numpy as np

from benchmarks import fit_speed
from reports import parametric
from reports.huber import HuberObjective
from reports.parametric import fit_parametric, start_grid


def test_the_naive_bootstrap_starts_where_ours_does(monkeypatch):
    points = fit_speed.synthetic_points(250)
    ours = []
    original = parametric._bootstrap

    def spy(objective, starts, n_boot, seed, pool):
        ours.append(objective.from_centred(starts))  # (ln A, ln B, ln E, α, β): the naive side's coordinates
        return original(objective, starts, n_boot, seed, pool)

    monkeypatch.setattr(parametric, "_bootstrap", spy)
    fit_parametric(points, n_boot=2, seed=0, workers=1)

    log_n, log_d, log_loss = (np.log([getattr(p, key) for p in points]) for key in ("n", "d", "loss"))
    naive = fit_speed.naive_fit(start_grid()[::150], log_n, log_d, log_loss)
    centred = HuberObjective.of(np.exp(log_n), np.exp(log_d), np.exp(log_loss)).to_centred
    # The full fit's end points part in several places...
    assert len(fit_speed.distinct_minima(naive, centred)) > 1
    refined = fit_speed.naive_fit(
        fit_speed.distinct_minima(naive, centred), log_n, log_d, log_loss, tight=True
    )
    starts = fit_speed.bootstrap_starts(refined, centred)
    # ... and refined they meet at ours' best: one start per resample on both sides.
    (ours_starts,) = ours
    assert starts.shape == ours_starts.shape == (1, 5)
    np.testing.assert_allclose(starts, ours_starts, atol=1e-3)
