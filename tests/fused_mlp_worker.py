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
# programs looping over 16 tiles, groups of rows of tiles; the same through TMA descriptors (which clip the
# edge tiles themselves), on a grid and persistent, and persistent with the epilogue in two halves.
LAUNCHES = [
    Tiles(32, 64, 32, 2, 1, 4),
    Tiles(64, 128, 64, 1, 1, 4),
    Tiles(32, 64, 32, 4, 1, 4, persistent=True),
    Tiles(32, 64, 32, 2, 1, 4, tma=True),
    Tiles(32, 64, 32, 4, 1, 4, persistent=True, tma=True),
    Tiles(32, 64, 32, 4, 1, 4, persistent=True, tma=True, subtile=True),
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
        post = linear_relu2(x, w_fc, tiles)
        grad_pre = relu2_backward(grad_y, w_proj, post, tiles)
        grad_post = (grad_y.float() @ w_proj.float()).bfloat16()
        cases.append({
            "tiles": list(tiles),
            "post": relative_error(post, F.relu(h.float()).square()),
            "grad_pre": relative_error(grad_pre, grad_post.float() * 2 * F.relu(h.float())),
            "dtypes": [str(t.dtype) for t in (post, grad_pre)],
            # relu(h)² where h < 0 is exactly 0, and so is the gradient there.
            "zeros_kept": bool((post[h < 0] == 0).all() and (grad_pre[h < 0] == 0).all()),
        })  # fmt: skip
    # Every element written: over outputs poisoned with NaN, no NaN is left (x and the weights are finite).
    poisoned = torch.full((rows, hidden), float("nan"), dtype=torch.bfloat16)
    written = []
    for tiles in (LAUNCHES[0], *LAUNCHES[-2:]):  # by address; through TMA, whole and in halves
        with (
            mock.patch.object(torch, "empty", lambda *a, **k: poisoned.clone()),
            mock.patch.object(torch, "empty_like", lambda *a, **k: poisoned.clone()),
        ):
            post = linear_relu2(x, w_fc, tiles)
            grad_pre = relu2_backward(grad_y, w_proj, post, tiles)
        written += [bool(t.isfinite().all()) for t in (post, grad_pre)]
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


def edges() -> dict:
    """relu2_mlp where a user could trip it: compiled, the TMA launches eagerly and compiled after a
    compile without them, an empty batch, x needing no gradient, frozen weights, a second derivative,
    float16."""
    torch.manual_seed(0)
    x, grad_y = torch.randn(2, 37, 64), torch.randn(2, 37, 64)
    w_fc, w_proj = torch.randn(256, 64) / 8, torch.randn(64, 256) / 16

    def errors(fn, x=x, needs=(True, True, True)) -> list[float | None]:
        leaves = [t.clone().requires_grad_(need) for t, need in zip((x, w_fc, w_proj), needs, strict=True)]
        exact = [t.detach().double().requires_grad_(need) for t, need in zip(leaves, needs, strict=True)]
        y = fn(*leaves)
        y.backward(grad_y[:, : x.size(1)])
        y_exact = F.relu(exact[0] @ exact[1].t()).square() @ exact[2].t()
        y_exact.backward(grad_y[:, : x.size(1)].double())
        pairs = [(y, y_exact)] + [(a.grad, b.grad) for a, b in zip(leaves, exact, strict=True)]
        # No gradient where none is asked for; an empty batch's outputs and gradients compared by their sums.
        return [
            None if a is None else relative_error(a, b) if b.numel() and b.norm() else a.abs().sum().item()
            for a, b in pairs
        ]

    compiled = torch.compile(relu2_mlp)
    result = {"plain": errors(relu2_mlp), "compiled": errors(compiled)}
    tma = Tiles(64, 128, 64, 8, 1, 4, tma=True)
    with mock.patch.object(fused_mlp, "TILES", tma), mock.patch.object(fused_mlp, "BACKWARD_TILES", tma):
        torch._dynamo.reset()  # a new graph
        result["TMA"] = errors(relu2_mlp)
        result["TMA, compiled"] = errors(torch.compile(relu2_mlp))
    # A subtiled epilogue by address is not a launch there is: an error naming it, before anything runs.
    try:
        linear_relu2(x[0], w_fc, Tiles(64, 128, 64, 8, 1, 4, subtile=True))
        result["subtile by address"] = "ran"
    except ValueError as e:
        result["subtile by address"] = str(e)
    # The epilogue in halves of 32 columns where the hidden width, 272, ends inside the last tile's left half.
    subtile = Tiles(32, 64, 32, 4, 1, 4, persistent=True, tma=True, subtile=True)
    x16, grad_y16 = x[0].bfloat16(), grad_y[0].bfloat16()
    w_fc16, w_proj16 = (torch.randn(272, 64) / 8).bfloat16(), (torch.randn(64, 272) / 16).bfloat16()
    relu = F.relu((x16.float() @ w_fc16.float().t()).bfloat16().float())
    post = linear_relu2(x16, w_fc16, subtile)
    grad_pre = relu2_backward(grad_y16, w_proj16, post, subtile)
    expected_grad = (grad_y16.float() @ w_proj16.float()).bfloat16().float() * 2 * relu
    result["subtile, column edge"] = [
        relative_error(post, relu.square()),
        relative_error(grad_pre, expected_grad),
    ]
    result["empty batch"] = errors(relu2_mlp, x=x[:, :0])
    result["x needs no gradient"] = errors(relu2_mlp, needs=(False, True, True))
    result["frozen weights"] = errors(relu2_mlp, needs=(True, False, False))
    leaves = [t.clone().requires_grad_() for t in (x, w_fc, w_proj)]
    (grad_w_proj,) = torch.autograd.grad(relu2_mlp(*leaves).square().sum(), leaves[2], create_graph=True)
    try:
        torch.autograd.grad(grad_w_proj.square().sum(), leaves[0])
        result["second derivative"] = "computed"
    except RuntimeError as e:
        result["second derivative"] = str(e).splitlines()[0]
    try:
        relu2_mlp(x.half(), w_fc, w_proj)
        result["float16"] = "ran"
    except ValueError as e:
        result["float16"] = str(e)
    return result


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


def copies() -> dict:
    """bf16 runs of the trainer with both Triton kernels (the fused loss reads the lm_head's copy, the
    fused MLP its two), with and without weight copies, eager and with the whole model compiled."""
    from nanogpt import fused_loss

    runs = {}
    for compile_ in (False, True):
        for weight_copies in (True, False):
            calls = mock.patch.object(fused_loss, "head_loss", wraps=fused_loss.head_loss)
            config = dict(fused_loss=True, fused_mlp=True, weight_copies=weight_copies, dtype="bfloat16")
            run = small_training_run(calls, compile_=compile_, **config)
            runs[f"{'compiled' if compile_ else 'eager'}, copies {weight_copies}"] = run
    return runs


if __name__ == "__main__":
    mode = sys.argv[1]
    workers = {"kernels": kernels, "mlp": mlp, "trainer": trainer, "edges": edges, "copies": copies}
    print(json.dumps(workers[mode]()))
