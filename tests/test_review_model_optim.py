"""MuonAdamW.load_state_dict refuses a shard whose AdamW step count is negative (its bias corrections would
divide by zero or turn complex at the next step) with the ValueError it gives any malformed shard."""

import pytest
import torch

from nanogpt.optim import MuonAdamW


@pytest.mark.parametrize("step", [-1, -5])
def test_a_negative_adamw_step_is_a_malformed_shard(step):
    p = torch.randn(4, requires_grad=True)
    opt = MuonAdamW([{"params": [p], "kind": "adamw", "lr": 0.1}])
    saved = opt.state_dict()
    saved["groups"][0]["shards"][0]["step"] = step
    with pytest.raises(ValueError, match=rf"^optimizer state: param group 0 shard 0 step is {step}$"):
        opt.load_state_dict(saved)
    p.grad = torch.ones(4)
    opt.step()  # nothing was loaded: the first step runs as on a fresh optimizer
    assert opt.state_dict()["groups"][0]["shards"][0]["step"] == 1
