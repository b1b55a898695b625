"""A small training scenario for MuonAdamW, run by 1 process or by N gloo ranks (see test_optim.py).

Every rank builds the same parameters. At each step the "batch" gradient of a parameter is the mean of
`num_parts` contributions; rank r holds contribution r (the mean over its own micro-batches), while a
single process holds their mean. Contributions are multiples of 1/128 in [-4, 4], so their sum is exact
in any order and one rank's mean and the ranks' reduce-scatter mean are the same floats.
"""

import gc
import io
import time
import weakref
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from nanogpt.optim import MuonAdamW

NUM_STEPS = 4
RESUME_AFTER_STEP = 2

# name → shape. Five (16, 24) and two (24, 8) matrices: counts no world size of 2..4 divides.
# The AdamW tensors' sizes (592, 176, 5, 1) leave padding at some world sizes as well.
SHAPES: dict[str, tuple[int, ...]] = {
    **{f"h.{i}": (16, 24) for i in range(5)},
    **{f"v.{i}": (24, 8) for i in range(2)},
    "wte": (37, 16),
    "lm_head": (11, 16),
    "gain": (5,),
    "lam": (),
}


def build_params(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=gen).requires_grad_() for name, shape in SHAPES.items()}


def build_groups(params: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    hidden = [params[n] for n in params if n.startswith(("h.", "v."))]
    return [
        {"params": hidden, "kind": "muon", "lr": 0.02, "weight_decay": 0.1, "momentum": 0.9, "ns_steps": 5},
        {"params": [params["wte"]], "kind": "adamw", "lr": 0.01, "betas": (0.8, 0.95), "weight_decay": 0.05},
        {"params": [params["lm_head"]], "kind": "adamw", "lr": 0.004, "betas": (0.9, 0.99), "eps": 1e-10},
        {"params": [params["gain"], params["lam"]], "kind": "adamw", "lr": 0.03},
    ]


def contribution(step: int, name: str, part: int, num_parts: int) -> torch.Tensor:
    """Gradient contribution `part` of `num_parts` to parameter `name` at `step`."""
    index = list(SHAPES).index(name)
    gen = torch.Generator().manual_seed(1_000_003 * step + 1009 * index + num_parts)
    parts = torch.randint(-512, 513, (num_parts, *SHAPES[name]), generator=gen).float() / 128
    return parts[part]


def set_grads(params: dict[str, torch.Tensor], step: int, rank: int, world_size: int, num_parts: int) -> None:
    for name, p in params.items():
        if world_size == 1:
            total = sum(contribution(step, name, k, num_parts) for k in range(num_parts))
            p.grad = total.div_(num_parts)
        else:
            p.grad = contribution(step, name, rank, num_parts)


def train_step(opt: MuonAdamW, params: dict[str, torch.Tensor], step: int, num_parts: int) -> None:
    set_grads(params, step, opt.rank, opt.world_size, num_parts)
    for group in opt.param_groups:  # a schedule, as the trainer applies one
        group["lr"] = group["initial_lr"] * (1 - 0.1 * step)
    opt.step()


def balanced_state_bytes(process_group: Any) -> int:
    """State bytes of an optimizer whose sizes every world size of 1, 2 and 4 divides."""
    muon = [torch.zeros(8, 12, requires_grad=True) for _ in range(8)]
    adamw = [torch.zeros(16, 8, requires_grad=True), torch.zeros(64, requires_grad=True)]
    groups = [{"params": muon, "kind": "muon", "lr": 0.1}, {"params": adamw, "kind": "adamw", "lr": 0.1}]
    return MuonAdamW(groups, process_group=process_group).state_bytes()


def run_scenario(num_parts: int, orth_dtype: torch.dtype, process_group: Any = None) -> dict[str, Any]:
    """Train NUM_STEPS steps; halfway, also resume a copy from a serialized state_dict and keep both going."""
    params = build_params()
    opt = MuonAdamW(build_groups(params), process_group=process_group, orth_dtype=orth_dtype)
    for step in range(RESUME_AFTER_STEP):
        train_step(opt, params, step, num_parts)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    resumed_params = {n: p.detach().clone().requires_grad_() for n, p in params.items()}
    resumed = MuonAdamW(build_groups(resumed_params), process_group=process_group, orth_dtype=orth_dtype)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for step in range(RESUME_AFTER_STEP, NUM_STEPS):
        train_step(opt, params, step, num_parts)
        train_step(resumed, resumed_params, step, num_parts)
    resume_diff = max((params[n] - resumed_params[n]).abs().max().item() for n in params)
    return {
        "params": {n: p.detach().clone() for n, p in params.items()},
        "state_bytes": opt.state_bytes(),
        "balanced_state_bytes": balanced_state_bytes(process_group),
        "resume_max_abs_diff": resume_diff,
        "state_dict": opt.state_dict(),
    }


def _storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind `tensors` (a view and its base count once)."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def memory_scenario(process_group: Any = None) -> dict[str, int]:
    """One step of the scenario's optimizer; the bytes of gradients and optimizer state a rank holds.

    `peak_gradient_bytes` is the largest amount of full-size gradient memory (the parameters' `.grad`
    plus every reduce-scatter input still alive) seen at the launch of any reduce-scatter; `grad_bytes`
    and `state_bytes` are what the parameters' `.grad` and the optimizer's state hold after `step()`.
    """
    params = build_params()
    opt = MuonAdamW(build_groups(params), process_group=process_group, orth_dtype=torch.float32)
    set_grads(params, 0, opt.rank, opt.world_size, opt.world_size)
    for p in params.values():  # a gradient of its own, as backward leaves it (not a view of all parts)
        p.grad = p.grad.clone()
    inputs: list[weakref.ref] = []
    peak = 0
    reduce_scatter_mean = opt._comm.reduce_scatter_mean

    def tracked(full: torch.Tensor):
        nonlocal peak
        inputs.append(weakref.ref(full))
        alive = [t for ref in inputs if (t := ref()) is not None]
        grads = [p.grad for p in params.values() if p.grad is not None]
        peak = max(peak, _storage_bytes(alive + grads))
        return reduce_scatter_mean(full)

    opt._comm.reduce_scatter_mean = tracked
    opt.step()
    # gloo's work objects let go of a collective's input on their own thread, a moment after wait()
    # returns (about 1 run in 3 still held one at the first look, 2026-12-07): give them up to 2 s.
    for _ in range(200):
        if all(ref() is None for ref in inputs):
            break
        gc.collect()
        time.sleep(0.01)
    state = [t for group in opt.state_dict()["groups"] for entry in group["shards"] for t in entry.values()]
    return {
        "full_gradient_bytes": sum(p.numel() * p.element_size() for p in params.values()),
        "peak_gradient_bytes": peak,
        "grad_bytes": _storage_bytes(p.grad for p in params.values() if p.grad is not None),
        "state_bytes": _storage_bytes(t for t in state if isinstance(t, torch.Tensor)),
        "inputs_alive_after_step": sum(ref() is not None for ref in inputs),
    }


def spawn_memory_entry(rank: int, world_size: int, port: int, out_dir: str) -> None:
    """torch.multiprocessing.spawn target: run the memory scenario and save rank's numbers."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=120),
    )
    try:
        torch.save(memory_scenario(), Path(out_dir) / f"memory{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def spawn_entry(rank: int, world_size: int, port: int, out_dir: str) -> None:
    """torch.multiprocessing.spawn target: run the scenario in fp32 and bf16 and save rank's results."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=120),
    )
    try:
        results = {
            # One run names the group, the other relies on the default group.
            "fp32": run_scenario(world_size, torch.float32, process_group=dist.group.WORLD),
            "bf16": run_scenario(world_size, torch.bfloat16, process_group=None),
        }
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
        # No rank tears gloo down while another may still be in a collective with it.
        dist.barrier()
    finally:
        dist.destroy_process_group()
