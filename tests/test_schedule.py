"""LR multiplier (warmup, WSD, cosine) and Muon momentum warmup, as functions of the step."""

import itertools
import math

import pytest

from nanogpt.config import OptimSection, ScheduleSection
from nanogpt.schedule import lr_multiplier, muon_momentum


def curve(total: int, **schedule) -> list[float]:
    section = ScheduleSection(**schedule)
    return [lr_multiplier(step, total, section) for step in range(total)]


def test_wsd_warms_up_holds_then_decays_linearly():
    lrs = curve(10, kind="wsd", warmup_frac=0.2, cooldown_frac=0.4, final_lr_frac=0.0)
    assert lrs[:2] == [0.5, 1.0]  # two warmup steps, reaching 1
    assert lrs[2:6] == [1.0] * 4
    # The last 4 steps decay linearly; final_lr_frac would be reached one step after the last.
    assert lrs[6:] == pytest.approx([1.0, 0.75, 0.5, 0.25])
    assert lrs[-1] > 0  # the last step still trains


def test_wsd_decays_towards_final_lr_frac():
    lrs = curve(100, kind="wsd", cooldown_frac=0.5, final_lr_frac=0.1)
    assert lrs[0] == 1.0 and lrs[50] == 1.0
    assert lrs[-1] == pytest.approx(0.1 + 0.9 / 50)
    assert all(a >= b for a, b in itertools.pairwise(lrs))


def test_cosine_follows_half_a_cosine_after_warmup():
    lrs = curve(20, kind="cosine", warmup_frac=0.25, final_lr_frac=0.1)
    assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert lrs[5] == 1.0
    middle = 5 + 15 // 2
    assert lrs[middle] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 7 / 15)))
    assert all(a > b for a, b in itertools.pairwise(lrs[5:]))
    assert 0.1 < lrs[-1] < 0.11


def test_no_warmup_and_no_cooldown_is_constant():
    assert curve(5, kind="wsd", warmup_frac=0.0, cooldown_frac=0.0) == [1.0] * 5


def test_muon_momentum_warms_up_linearly():
    optim = OptimSection(muon_momentum=0.95, muon_momentum_start=0.85, muon_momentum_warmup_steps=100)
    assert muon_momentum(0, optim) == 0.85
    assert muon_momentum(50, optim) == pytest.approx(0.90)
    assert muon_momentum(100, optim) == muon_momentum(10_000, optim) == 0.95
    assert muon_momentum(0, OptimSection(muon_momentum_warmup_steps=0)) == 0.95
