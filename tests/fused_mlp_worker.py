"""Runs nanogpt/fused_mlp.py under the Triton interpreter on the CPU and prints, as JSON, how far its results
are from torch's (see test_fused_mlp.py).

TRITON_INTERPRET=1 must be in the environment before triton is imported, hence a process of its own.
"""

import json
import sys
from unittest import mock

import torch
import torch.nn.functional as F
from interpreted import small_training_run

from nanogpt import fused_mlp
from nanogpt.fused_mlp import Tiles, linear_relu2, relu2_backward, relu2_mlp

# Small launches: edges in rows and columns (100 rows by 32, 320 columns by 64), a persistent grid of 3
# programs looping over 16 tiles, groups of rows of tiles, h kept for the backward; the same through TMA
# descriptors (which clip the edge tiles themselves).
LAUNCHES = [
    Tiles(32, 64, 32, 2, 1, 4),
    Tiles(64, 128, 64, 1, 1, 4),
    Tiles(32, 64, 32, 4, 1, 4, persistent=True),
    Tiles(32, 64, 32, 2, 1, 4, store_h=True),
    Tiles(32, 64, 32, 2, 1, 4, tma=True),
    Tiles(32, 64, 32, 4, 1, 4, persistent=True, store_h=True, tma=True),
]


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.double() - expected.double()).norm() / expected.double().norm()).item()


def kernels() -> list[dict]:
    """Each launch's forward and backward kernels against torch on bf16 inputs: the same rounded products
    (torch's bf16 matmul on the CPU rounds its float32 sums once, as the kernel does)."""
    torch.manual_seed(0)
    rows, width, hidden = 100, 64, 320
    x, grad_y = torch.randn(rows, width).bfloat16(), torch.randn(rows, width).bfloat16()
    w_fc = (torch.randn(hidden, width) / 8).bfloat16()
    w_proj = (torch.randn(width, hidden) / 16).bfloat16()
    h = (x.float() @ w_fc.float().t()).bfloat16()
    cases = []
    for tiles in LAUNCHES:
        saved, post = linear_relu2(x, w_fc, tiles)
        grad_pre = relu2_backward(grad_y, w_proj, saved, tiles)
        grad_post = (grad_y.float() @ w_proj.float()).bfloat16()
        cases.append({
            "tiles": list(tiles),
            # h when the launch keeps it, else post itself
            "saved": relative_error(saved, h if tiles.store_h else post),
            "saved_is_post": saved is post,
            "post": relative_error(post, F.relu(h.float()).square()),
            "grad_pre": relative_error(grad_pre, grad_post.float() * 2 * F.relu(h.float())),
            "dtypes": [str(t.dtype) for t in (saved, post, grad_pre)],
            # relu(h)² where h < 0 is exactly 0, and so is the gradient there.
            "zeros_kept": bool((post[h < 0] == 0).all() and (grad_pre[h < 0] == 0).all()),
        })  # fmt: skip
    # Every element written: over outputs poisoned with NaN, no NaN is left (x and the weights are finite).
    poisoned = torch.full((rows, hidden), float("nan"), dtype=torch.bfloat16)
    written = []
    for tiles in (LAUNCHES[3], LAUNCHES[-1]):  # by address and through TMA, h kept: three outputs
        with (
            mock.patch.object(torch, "empty", lambda *a, **k: poisoned.clone()),
            mock.patch.object(torch, "empty_like", lambda *a, **k: poisoned.clone()),
        ):
            saved, post = linear_relu2(x, w_fc, tiles)
            grad_pre = relu2_backward(grad_y, w_proj, saved, tiles)
        written += [bool(t.isfinite().all()) for t in (saved, post, grad_pre)]
    cases.append({"all_written": written})
    return cases


def mlp() -> list[dict]:
    """relu2_mlp forward and backward (float32 weights, as the trainer holds them) against the unfused MLP
    by torch in float64 and in the same dtype, for x in float32 and bf16."""
    torch.manual_seed(0)
    cases = []
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(3, 40, 64).to(dtype)
        w_fc, w_proj = torch.randn(256, 64) / 8, torch.randn(64, 256) / 16
        grad_y = torch.randn(3, 40, 64).to(dtype)
        results = {}
        for name in ("fused", "unfused", "float64"):
            dt = torch.float64 if name == "float64" else None
            leaves = [t.clone().to(dt or t.dtype).requires_grad_() for t in (x, w_fc, w_proj)]
            if name == "fused":
                y = relu2_mlp(*leaves)
            else:
                wf, wp = (w.to(leaves[0].dtype) for w in leaves[1:])
                y = F.relu(leaves[0] @ wf.t()).square() @ wp.t()
            y.backward(grad_y.to(y.dtype))
            results[name] = [y.detach(), *(leaf.grad for leaf in leaves)]
        fused, unfused, exact = results["fused"], results["unfused"], results["float64"]
        cases.append({
            "dtype": str(dtype),
            "shape": list(fused[0].shape),
            "dtypes": [str(t.dtype) for t in fused],
            "fused": [relative_error(a, b) for a, b in zip(fused, exact, strict=True)],
            "unfused": [relative_error(a, b) for a, b in zip(unfused, exact, strict=True)],
        })  # fmt: skip
    return cases


def trainer_losses(fused: bool, compile_: bool | str) -> dict:
    """The step and validation losses of a small CPU run of the trainer with `fused_mlp` true or false,
    and how many times the fused MLP's kernels ran (counted at their launch, which compiled graphs call
    too)."""
    calls = mock.patch.object(fused_mlp, "_launch", wraps=fused_mlp._launch)
    run = small_training_run(calls, compile_=compile_, fused_loss=False, fused_mlp=fused)
    return run | {"fused_mlp": run["device"]["fused_mlp"]}


def trainer() -> dict:
    return {
        "unfused": trainer_losses(False, False),
        "fused": trainer_losses(True, False),
        "fused, blocks compiled": trainer_losses(True, "blocks"),
        "fused, whole model compiled": trainer_losses(True, True),
    }


if __name__ == "__main__":
    mode = sys.argv[1]
    print(json.dumps({"kernels": kernels, "mlp": mlp, "trainer": trainer}[mode]()))
