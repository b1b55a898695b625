"""Learning-rate and momentum schedules, as pure functions of the step (so resume needs no scheduler state).

`step` is the 0-based index of the optimizer step about to be taken; a run takes steps 0..total_steps-1.
"""

import math

from nanogpt.config import OptimSection, ScheduleSection


def lr_multiplier(step: int, total_steps: int, schedule: ScheduleSection) -> float:
    """The factor applied to every group's initial learning rate at `step`.

    Linear warmup over the first round(warmup_frac × total_steps) steps, from 1/warmup up to 1. Then
    - "wsd" (warmup-stable-decay, Hägele et al. 2024, "Scaling Laws and Compute-Optimal Training Beyond
      Fixed Training Durations"): 1 until the last round(cooldown_frac × total_steps) steps, which decay
      linearly towards final_lr_frac;
    - "cosine": half a cosine from 1 towards final_lr_frac over the remaining steps.
    Both reach final_lr_frac at the end of the run, one step after the last, so that the last step still
    updates the weights when final_lr_frac is 0 (as nanochat's schedule does).
    """
    assert 0 <= step < total_steps, f"step {step} outside [0, {total_steps})"
    warmup_steps = round(schedule.warmup_frac * total_steps)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    final = schedule.final_lr_frac
    if schedule.kind == "wsd":
        cooldown_steps = round(schedule.cooldown_frac * total_steps)
        steps_left = total_steps - step  # 1 at the last step
        if steps_left > cooldown_steps:
            return 1.0
        return final + (1.0 - final) * steps_left / cooldown_steps
    progress = (step - warmup_steps) / (total_steps - warmup_steps)  # 0 after warmup, < 1 at the last step
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def muon_momentum(step: int, optim: OptimSection) -> float:
    """Muon's momentum warms up linearly from muon_momentum_start (modded-nanogpt, nanochat): a lower
    momentum early, while the gradient direction changes fast, trains more stably."""
    warmup = optim.muon_momentum_warmup_steps
    if step >= warmup:
        return optim.muon_momentum
    frac = step / warmup
    return (1.0 - frac) * optim.muon_momentum_start + frac * optim.muon_momentum
