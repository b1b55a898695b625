"""Candidates beside the trainer's fused loss (nanogpt/fused_loss.py): its FP8 variant, and the same trick
by torch.compile.

`FusedFP8HeadLoss` also runs the lm_head's three matmuls in FP8, with the kernel writing the gradient
directly in e5m2 at a fixed scale (the gradient lies in [-1, 1]): no amax pass over it, half the bytes,
and only its one transposed copy beyond the kernel. `fp8_head`'s dynamic scaling of that gradient cost
more than the FP8 matmuls saved (docs/benchmarks.md), and so did this (measured there).

`CompiledHeadLoss` takes the loss and its gradient in the forward as the kernel does, from torch
operations compiled by torch.compile (no Triton source of ours); it measured no faster than the model's
compiled head.

`fused_head` runs any of them on a model: measured in benchmarks/train_breakdown.py beside the compiled
head, and in the trainer by train_throughput's `--ours-head`, which patches it in for a run. Runs on CUDA,
and on the CPU under the Triton interpreter (TRITON_INTERPRET=1, set before this module is imported),
which the tests use.
"""

import torch
from torch.autograd.function import once_differentiable

from nanogpt.fused_loss import BLOCK, NUM_WARPS, FusedHeadLoss, head_loss, losses_writing_grad
from nanogpt.model import FP8_GRAD, FP8_INPUT, GPT, fp8_fits, to_fp8


def _losses_and_grad_reference(logits, targets, cap, vocab_size):
    """The kernel's two passes in torch operations, for torch.compile to fuse (no Triton source of ours):
    each row's loss (float32) and the gradient over the logits, in the logits' dtype."""
    cols = torch.arange(logits.size(1), device=logits.device)
    is_token = cols < vocab_size
    z = logits.float()
    if cap is not None:
        z = cap * (2 * torch.sigmoid(z * (2 / cap)) - 1)
    z = z.masked_fill(~is_token, float("-inf"))
    lse = torch.logsumexp(z, dim=1)
    ignored = targets < 0
    losses = torch.where(ignored, 0.0, lse - z.gather(1, targets.clamp_min(0)[:, None]).squeeze(1))
    grad = torch.exp(z - lse[:, None]) - (cols == targets[:, None]).float()
    if cap is not None:
        grad = grad * (1 - (z / cap) * (z / cap))  # NaN in the padding columns, where the mask puts 0
    grad = torch.where(is_token & ~ignored[:, None], grad, 0.0)
    return losses, grad.to(logits.dtype)


_compiled_losses_and_grad = torch.compile(_losses_and_grad_reference, dynamic=False)


class CompiledHeadLoss(FusedHeadLoss):
    """FusedHeadLoss with the loss and its gradient compiled by torch.compile from torch operations in place
    of the hand-written kernel: the same trick (the gradient taken in the forward, no loss kernel in the
    backward) within nanogpt's own dependencies. The gradient is a new tensor, the logits freed after."""

    @staticmethod
    def forward(ctx, x, weight, targets, cap, vocab_size, block, num_warps):
        w = weight.to(x.dtype)
        losses, grad_logits = _compiled_losses_and_grad(x @ w.t(), targets, cap, vocab_size)
        ctx.save_for_backward(x, w, grad_logits)
        ctx.weight_dtype = weight.dtype
        return losses


# The FP8 variant's gradient, d loss_row / d logits = softmax - one-hot through the soft-cap's derivative,
# lies in [-1, 1] whatever the logits: a fixed scale puts 1 at 2^15, below e5m2's largest 57,344, and
# leaves probabilities down to about 2^-29 representable. No amax pass over the logits' gradient.
GRAD_MULTIPLIER = 2.0**15


class FusedFP8HeadLoss(torch.autograd.Function):
    """FusedHeadLoss with the lm_head's three matmuls in FP8 (torch._scaled_mm, as nanogpt.model.FP8Linear):
    x and the weight in e4m3 with scales from their largest magnitudes (small tensors), the logits' gradient
    written by the kernel directly in e5m2 at the fixed GRAD_MULTIPLIER (half the bytes of bf16, and the
    bf16 logits are freed after the kernel). Shapes must pass nanogpt.model.fp8_fits."""

    @staticmethod
    def forward(ctx, x, weight, targets, cap, vocab_size, block, num_warps):
        x8, x_scale = to_fp8(x, FP8_INPUT)
        w8, w_scale = to_fp8(weight, FP8_INPUT)
        # _scaled_mm takes its first operand row-major and its second column-major: w8ᵀ as a view is.
        logits = torch._scaled_mm(x8, w8.t(), scale_a=x_scale, scale_b=w_scale, out_dtype=x.dtype)
        grad8 = torch.empty(logits.shape, device=x.device, dtype=FP8_GRAD)
        args = (cap, vocab_size, GRAD_MULTIPLIER, block, num_warps, True)
        losses = losses_writing_grad(logits, targets, grad8, *args)
        ctx.save_for_backward(x, w8, w_scale, grad8)
        ctx.weight_dtype = weight.dtype
        return losses

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_losses):
        x, w8, w_scale, grad8 = ctx.saved_tensors
        # torch.full, not torch.tensor: a tensor from a Python number is copied to the GPU synchronously,
        # which would stall the host before every backward.
        g_scale = torch.full((), 1 / GRAD_MULTIPLIER, device=x.device, dtype=torch.float32)
        scale = grad_losses.float()[:, None]  # one number per row: scale the small operands, as above
        # grad_x = g @ w: w (out, in) is needed column-major, a small copy.
        grad_x = torch._scaled_mm(
            grad8, w8.t().contiguous().t(), scale_a=g_scale, scale_b=w_scale, out_dtype=torch.float32
        )
        grad_x = (grad_x * scale).to(x.dtype)
        # grad_w = ((x·scale)ᵀ @ g)ᵀ: (x·scale)ᵀ row-major is a small copy; g column-major is the one
        # transposed copy of the gradient (e5m2: half the bytes of bf16). One e4m3 scale for x·scale: rows
        # weighted very unevenly (reduction "none") lose precision; the trainer's weights are uniform.
        xs8, xs_scale = to_fp8(x.float() * scale, FP8_INPUT)
        grad_w = torch._scaled_mm(
            xs8.t().contiguous(), grad8.t().contiguous().t(), scale_a=xs_scale, scale_b=g_scale,
            out_dtype=torch.float32,
        ).t()  # fmt: skip
        return grad_x, grad_w.to(ctx.weight_dtype), None, None, None, None, None


def fused_head(
    model: GPT,
    x: torch.Tensor,
    targets: torch.Tensor,
    *,
    reduction: str = "mean",
    block: int = BLOCK,
    num_warps: int = NUM_WARPS,
    fp8: bool = False,
    compiled: bool = False,
) -> torch.Tensor:
    """GPT.head's loss (targets given) through the trainer's FusedHeadLoss, or a candidate (fp8:
    FusedFP8HeadLoss; compiled: CompiledHeadLoss): hidden states (B, T, C) → the loss."""
    if fp8 and compiled:
        raise ValueError("fused_head: fp8 and compiled are separate candidates, not one")
    B, T, C = x.shape
    weight = model.lm_head.weight
    if fp8 and not fp8_fits(B * T, C, weight.size(0)):
        raise ValueError(f"FP8 head: {B * T} rows of {C} by {weight.size(0)} are not all multiples of 16")
    function = FusedFP8HeadLoss if fp8 else CompiledHeadLoss if compiled else FusedHeadLoss
    cap, vocab_size = model.config.logit_softcap, model.config.vocab_size
    return head_loss(
        x, weight, targets, cap=cap, vocab_size=vocab_size, reduction=reduction, block=block,
        num_warps=num_warps, function=function,
    )  # fmt: skip
