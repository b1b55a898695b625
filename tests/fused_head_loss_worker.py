"""Runs benchmarks/fused_head_loss.py's kernel under the Triton interpreter on the CPU beside GPT.head and
prints, as JSON, how far its loss and gradients are from the head's (see test_fused_head_loss.py).

TRITON_INTERPRET=1 must be in the environment before triton is imported, hence a process of its own.
"""

import contextlib
import json
import sys
from unittest import mock

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from interpreted import small_training_run

from benchmarks.fused_head_loss import CompiledHeadLoss, fused_head
from nanogpt import fused_loss
from nanogpt.fused_loss import FusedFP8HeadLoss, FusedHeadLoss, _round_to_e5m2_grid
from nanogpt.model import GPT, GPTConfig


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return (
        (got.float() - expected.float()).abs().max() / expected.float().abs().max().clamp_min(1e-12)
    ).item()


def trainer_losses(head: str, compile_: bool | str = False) -> dict[str, list[float]]:
    """The step and validation losses of a small CPU run of the trainer (2 micro-batches a step, so the
    upstream gradient is a scale): "unfused" with `fused_loss: false`, "fused" with `fused_loss: true`
    (the trainer's own, under the Triton interpreter), "fused-fp8" with `fp8_head: true` too (its FP8
    head), a candidate patched in as `train_throughput --ours-head` does it."""
    from benchmarks import train_throughput

    function = {"fused-fp8": FusedFP8HeadLoss, "fused-compiled": CompiledHeadLoss}.get(head, FusedHeadLoss)
    calls = mock.patch.object(function, "apply", wraps=function.apply)
    ours = head in ("fused", "fused-fp8")  # the trainer's own heads, by the config
    variant = train_throughput.head_variant("default" if ours else head)
    run = small_training_run(calls, variant, compile_=compile_, fused_loss=ours, fp8_head=head == "fused-fp8")
    return {key: run[key] for key in ("steps", "val")} | {
        "kernel_calls": run["calls"], "fused_loss": run["device"]["fused_loss"]
    }  # fmt: skip


@triton.jit
def _e5m2_cast(x_ptr, out_ptr, BLOCK: tl.constexpr):
    cols = tl.arange(0, BLOCK)
    tl.store(out_ptr + cols, _round_to_e5m2_grid(tl.load(x_ptr + cols)).to(out_ptr.dtype.element_ty))


def e5m2_rounding() -> dict[str, list[float]]:
    """The kernel's rounding to e5m2's grid, then its cast, beside torch's e5m2 cast, over carries into the
    exponent, ties (to even), both signs and e5m2's largest normal values."""
    values = [7.99, 32767.7, 0.999, 1.125, 1.375, 1.124, 3.5, 2.5, 6e-5, 1e-3, 0.3, 57344.0, 49152.0]
    values += [-v for v in values]
    values += torch.empty(256 - len(values)).uniform_(-4, 4).tolist()
    x = torch.tensor(values)
    out = torch.empty(256, dtype=torch.float8_e5m2)
    _e5m2_cast[(1,)](x, out, BLOCK=256)
    return {"kernel": out.float().tolist(), "torch": x.to(torch.float8_e5m2).float().tolist()}


def setting(cap: float | None) -> tuple[GPT, torch.Tensor, torch.Tensor]:
    """A depth-1 model (vocabulary 300, padded to 320: blocks of 64 end inside the padding), hidden
    states, and targets with ignored positions, a sequence of nothing to learn, the first and last token."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(depth=1, vocab_size=300, sequence_len=16, aspect_ratio=32, head_dim=16,
                          logit_softcap=cap))  # fmt: skip
    model.init_weights()
    torch.nn.init.normal_(model.lm_head.weight, std=1.0)  # logits well past the cap, both ways
    x = torch.randn(3, 16, 32, requires_grad=True)
    targets = torch.randint(0, 300, (3, 16))
    targets[0, :5] = -1  # ignored positions
    targets[2, :] = -1  # a sequence with nothing to learn: loss 0, gradients 0
    targets[1, 0], targets[1, 1] = 0, 299
    return model, x, targets


def both_heads(model, x, targets, reduction: str, *, autocast: bool, **fused_kwargs) -> dict:
    """GPT.head's and fused_head's losses, and their gradients (x's, the weight's) under one weighting of
    the losses, as plain numbers: how far apart, finite, zero where nothing is learned."""
    weights = torch.rand(3, 16) if reduction == "none" else torch.tensor(1e-3)
    context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with context:
        expected = model.head(x, targets, reduction=reduction)
        got = fused_head(model, x, targets, reduction=reduction, **fused_kwargs)
    wanted = (x, model.lm_head.weight)
    expected_grads = torch.autograd.grad((expected * weights).sum(), wanted)
    got_grads = torch.autograd.grad((got * weights).sum(), wanted)
    cosines = [
        torch.nn.functional.cosine_similarity(g.flatten().float(), e.flatten().float(), dim=0).item()
        for g, e in zip(got_grads, expected_grads, strict=True)
    ]
    return {
        "reduction": reduction, "autocast": autocast,
        "loss": relative_error(got, expected),
        "grad_x": relative_error(got_grads[0], expected_grads[0]),
        "grad_w": relative_error(got_grads[1], expected_grads[1]),
        "cosine_x": cosines[0], "cosine_w": cosines[1],
        # Scale as well as direction: ‖got - expected‖ / ‖expected‖ (a cosine ignores a wrong scale).
        "norm_error_x": ((got_grads[0] - expected_grads[0]).norm() / expected_grads[0].norm()).item(),
        "norm_error_w": ((got_grads[1] - expected_grads[1]).norm() / expected_grads[1].norm()).item(),
        "ignored_grad_x": got_grads[0][2].abs().max().item(),
        "finite": bool(got.isfinite().all() and all(g.isfinite().all() for g in got_grads)),
        "loss_dtype": str(got.dtype), "grad_w_dtype": str(got_grads[1].dtype),
    }  # fmt: skip


def fp8_cases() -> list[dict]:
    """FusedFP8HeadLoss against GPT.head in bf16."""
    cases = []
    for cap in (15.0, None):
        model, x, targets = setting(cap)
        for reduction in ("sum", "mean", "none"):
            case = both_heads(
                model, x, targets, reduction, autocast=True, block=64, num_warps=1, function=FusedFP8HeadLoss
            )
            cases.append({"cap": cap, **case})
    return cases


def fp8_chunked_cases() -> list[dict]:
    """FusedFP8HeadLoss over 48 rows in chunks of 16 (FP8_CHUNK_ROWS) against the whole at once: the
    largest difference in the losses and each gradient, relative to the largest value."""
    cases = []
    for reduction in ("mean", "none"):
        model, x, targets = setting(15.0)
        weights = torch.rand(3, 16) if reduction == "none" else torch.tensor(1.0)
        results, loss_kernel_calls = [], []
        for chunk in (fused_loss.FP8_CHUNK_ROWS, 16):
            counted = mock.Mock(wraps=fused_loss.losses_writing_grad)
            with (
                mock.patch.object(fused_loss, "FP8_CHUNK_ROWS", chunk),
                mock.patch.object(fused_loss, "losses_writing_grad", counted),
                torch.autocast("cpu", torch.bfloat16),
            ):
                got = fused_head(model, x, targets, reduction=reduction, block=64, num_warps=1,
                                 function=FusedFP8HeadLoss)  # fmt: skip
            grads = torch.autograd.grad((got * weights).sum(), (x, model.lm_head.weight))
            results.append((got, *grads))
            loss_kernel_calls.append(counted.call_count)
        whole, chunked = results
        errors = [relative_error(c, w) for c, w in zip(chunked, whole, strict=True)]
        names = ("loss", "grad_x", "grad_w")
        cases.append(
            {"reduction": reduction, "calls": loss_kernel_calls, **dict(zip(names, errors, strict=True))}
        )
    return cases


def transpose_cases() -> dict:
    """nanogpt.fused_loss.transpose against torch's: shapes that end inside a tile, both FP8 formats and
    bytes, a transposed (non-contiguous) input, an empty one; and the errors for what it does not take."""
    from nanogpt.fused_loss import transpose

    torch.manual_seed(0)
    result = {}
    for rows, cols, block in ((37, 300, 16), (64, 64, 64), (1, 5, 16), (130, 70, 32)):
        for dtype in (torch.float8_e5m2, torch.float8_e4m3fn, torch.uint8):
            t = (
                (torch.randn(rows, cols) * 8).to(dtype)
                if dtype != torch.uint8
                else torch.randint(0, 256, (rows, cols), dtype=dtype)
            )
            got = transpose(t, block)
            expected = t.t().contiguous()
            result[f"{rows}x{cols}/{block} {dtype}"] = (
                got.dtype == dtype and got.shape == expected.shape and got.is_contiguous()
                and torch.equal(got.view(torch.uint8), expected.view(torch.uint8))
            )  # fmt: skip
    t = torch.randint(0, 256, (40, 24), dtype=torch.uint8)
    result["non-contiguous"] = torch.equal(transpose(t.t(), 16), t)
    result["empty"] = transpose(torch.empty(0, 8, dtype=torch.uint8)).shape == (8, 0)
    errors = []
    wide = torch.zeros(1, 65_536 * 16 + 1, dtype=torch.uint8)  # one column tile more than the grid holds
    for bad in (torch.zeros(4, 4), torch.zeros(2, 2, 2, dtype=torch.uint8)):
        try:
            transpose(bad)
        except ValueError as e:
            errors.append(str(e))
    try:
        transpose(wide, 16)
    except ValueError as e:
        errors.append(str(e))
    result["errors"] = errors
    return result


def bf16_and_float32_cases() -> list[dict]:
    """FusedHeadLoss against GPT.head: soft-cap on and off, float32 and bf16 autocast, the three
    reductions, a row's loop of 5 blocks or one block past the row's end; CompiledHeadLoss in the same
    settings, reductions sum and none."""
    cases = []
    for cap in (15.0, None):
        model, x, targets = setting(cap)
        for autocast in (False, True):
            for reduction in ("sum", "mean", "none"):
                for block, num_warps in ((64, 1), (512, 2)):
                    case = both_heads(
                        model, x, targets, reduction, autocast=autocast, block=block, num_warps=num_warps
                    )
                    cases.append({"cap": cap, "block": block, **case})
            for reduction in ("sum", "none"):  # the same by torch.compile, no kernel of ours
                case = both_heads(model, x, targets, reduction, autocast=autocast, function=CompiledHeadLoss)
                cases.append({"cap": cap, "block": "compiled", **case})
    return cases


def edge_cases() -> dict:
    """What GPT.head and the fused loss do where a batch has no target to learn, and a target past the
    vocabulary; the self-test on the CPU."""
    from nanogpt.fused_loss import head_loss, self_test

    model, x, targets = setting(15.0)
    weight, cap, vocab = model.lm_head.weight, model.config.logit_softcap, model.config.vocab_size
    nothing = torch.full_like(targets, -1)
    result = {}
    for name, loss_fn in (
        ("head", lambda t: model.head(x, t)),
        ("fused", lambda t: head_loss(x, weight, t, cap=cap, vocab_size=vocab)),
    ):
        loss = loss_fn(nothing)
        grads = torch.autograd.grad(loss, (x, weight))
        grads_zero = all(bool((g == 0).all()) for g in grads)
        result[name] = {"loss_is_nan": bool(loss.isnan()), "grads_zero": grads_zero}
    past = targets.clone()
    past[1, 3] = vocab + 5  # in the padding columns: no token
    losses = head_loss(x, weight, past, cap=cap, vocab_size=vocab, reduction="none")
    nan_at = torch.nonzero(losses.isnan()).tolist()
    result["past_vocab"] = {"nan_at": nan_at, "finite_elsewhere": int(losses.isfinite().sum())}
    try:
        head_loss(x, weight, targets, cap=cap, vocab_size=vocab, reduction="avg")
    except ValueError as e:
        result["bad_reduction"] = str(e)
    self_test(torch.device("cpu"))  # raises if the kernel is off
    self_test(torch.device("cpu"), torch.bfloat16, cap=None)  # in the dtype of a bf16 run, uncapped
    self_test(torch.device("cpu"), torch.bfloat16, fp8=True)  # the FP8 head too
    result["self_test"] = "passed"
    # An FP8 head whose gradients come out 1000 times too large (a scale lost): its self-test fails.
    backward = FusedFP8HeadLoss.backward
    wrong = staticmethod(lambda ctx, grad: backward(ctx, grad * 1000))
    with mock.patch.object(FusedFP8HeadLoss, "backward", wrong):
        try:
            self_test(torch.device("cpu"), torch.bfloat16, fp8=True)
        except RuntimeError as e:
            result["fp8_wrong_scale"] = str(e)
    return result


def kernel_edges() -> dict:
    """The kernel where logits are extreme, against F.cross_entropy in float64 wherever torch's loss and
    gradient are finite: a -inf logit in a row's first block, logits in the thousands (float32's exp
    overflows without the running max), a NaN logit in an ignored row, a soft-cap of 50 (beyond
    FIXED_MAX_CAP: the running max under a cap), no soft-cap, a vocabulary of whole blocks and one shorter
    than a block. Three rows: a target inside the vocabulary, an ignored one, the last token."""
    from nanogpt.fused_loss import FIXED_MAX_CAP, losses_writing_grad

    assert FIXED_MAX_CAP < 50.0

    def against_torch(logits, cap, vocab, block=16):
        targets = torch.tensor([5, -1, vocab - 1])
        grad = torch.empty_like(logits)
        losses = losses_writing_grad(logits.clone(), targets, grad, cap, vocab, 1.0, block, 1, False)
        z = logits.double().requires_grad_()
        capped = z[:, :vocab] if cap is None else cap * torch.tanh(z[:, :vocab] / cap)
        expected = F.cross_entropy(capped, targets, ignore_index=-1, reduction="none")
        (expected_grad,) = torch.autograd.grad(expected.sum(), z)
        finite, grad_finite = expected.isfinite(), expected_grad.isfinite()
        loss_error = (losses.double() - expected).abs() / expected.abs().clamp_min(1.0)
        return {
            "loss_error": loss_error[finite].max().item(),
            "grad_error": (grad.double() - expected_grad)[grad_finite].abs().max().item(),
            "compared": int(finite.sum()) + int(grad_finite.sum()),
            "finite": bool(losses.isfinite().all() and grad.isfinite().all()),
            "ignored_row_zero": bool((losses[1] == 0) & (grad[1] == 0).all()),
        }

    torch.manual_seed(0)
    logits = 4 * torch.randn(3, 64)
    cases = {}
    with_inf = logits.clone()
    with_inf[:, 2] = float("-inf")
    cases["-inf logit, no soft-cap"] = against_torch(with_inf, None, 40)
    cases["-inf logit, soft-cap 15"] = against_torch(with_inf, 15.0, 40)
    huge = 1000 * torch.randn(3, 64)
    cases["logits in the thousands, no soft-cap"] = against_torch(huge, None, 40)
    cases["logits in the thousands, soft-cap 15"] = against_torch(huge, 15.0, 40)
    with_nan = logits.clone()
    with_nan[1, 7] = float("nan")  # row 1 is ignored
    cases["NaN logit in an ignored row"] = against_torch(with_nan, 15.0, 40)
    cases["logits of -1000, soft-cap 50"] = against_torch(torch.full((3, 64), -1000.0), 50.0, 40)
    cases["soft-cap 50"] = against_torch(10 * logits, 50.0, 40)
    cases["whole blocks"] = against_torch(logits, 15.0, 64)
    cases["whole blocks, no soft-cap"] = against_torch(logits, None, 64)
    cases["vocabulary under a block"] = against_torch(logits, 15.0, 10, block=32)
    return cases


def main() -> None:
    if sys.argv[1:] == ["edges"]:
        json.dump(edge_cases(), sys.stdout)
        return
    if sys.argv[1:] == ["trainer"]:
        runs = {head: trainer_losses(head) for head in ("unfused", "fused", "fused-fp8", "fused-compiled")}
        # Compiled as the GPU runs it: the fused loss behind a graph break, the blocks or the whole model.
        runs["fused, blocks compiled"] = trainer_losses("fused", "blocks")
        runs["fused, whole model compiled"] = trainer_losses("fused", True)
        json.dump(runs, sys.stdout)
        return
    if sys.argv[1:] == ["kernel-edges"]:
        json.dump(kernel_edges(), sys.stdout)
        return
    if sys.argv[1:] == ["transpose"]:
        json.dump(transpose_cases(), sys.stdout)
        return
    if sys.argv[1:] == ["fp8"]:
        json.dump(
            {"rounding": e5m2_rounding(), "cases": fp8_cases(), "chunked": fp8_chunked_cases()}, sys.stdout
        )
        return
    json.dump(bf16_and_float32_cases(), sys.stdout)


if __name__ == "__main__":
    main()
