"""The trainer's fused loss (nanogpt/fused_loss.py), its FP8 head, and a candidate: the same trick by
torch.compile.

`FusedFP8HeadLoss` (nanogpt/fused_loss.py, the trainer's head under `fp8_head`) runs the lm_head's three
matmuls in FP8, with the kernel writing the gradient directly in e5m2 at a fixed scale (the gradient lies
in [-1, 1]): no amax pass over it, half the bytes, and its one transposed copy by a Triton kernel.

`CompiledHeadLoss` takes the loss and its gradient in the forward as the kernel does, from torch
operations compiled by torch.compile (no Triton source of ours); it measured no faster than the model's
compiled head.

`fused_head` runs any of them on a model: measured in benchmarks/train_breakdown.py beside the compiled
head, and in the trainer by train_throughput's `--ours-head`, which patches it in for a run. Runs on CUDA,
and on the CPU under the Triton interpreter (TRITON_INTERPRET=1, set before this module is imported),
which the tests use.
"""

import torch

from nanogpt.fused_loss import BLOCK, NUM_WARPS, FusedFP8HeadLoss, FusedHeadLoss, head_loss
from nanogpt.model import GPT, fp8_fits


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
    def forward(ctx, x, weight, targets, cap, vocab_size, block, num_warps, uniform):
        w = weight.to(x.dtype)
        losses, grad_logits = _compiled_losses_and_grad(x @ w.t(), targets, cap, vocab_size)
        ctx.save_for_backward(x, w, grad_logits)
        ctx.weight_dtype = weight.dtype
        return losses


def fused_head(
    model: GPT,
    x: torch.Tensor,
    targets: torch.Tensor,
    *,
    reduction: str = "mean",
    block: int = BLOCK,
    num_warps: int = NUM_WARPS,
    function: type[torch.autograd.Function] = FusedHeadLoss,
) -> torch.Tensor:
    """GPT.head's loss (targets given) through the trainer's FusedHeadLoss, or another head `function`
    (FusedFP8HeadLoss, the trainer's under fp8_head; the candidate CompiledHeadLoss): hidden states
    (B, T, C) → the loss."""
    B, T, C = x.shape
    weight = model.lm_head.weight
    if issubclass(function, FusedFP8HeadLoss) and not fp8_fits(B * T, C, weight.size(0)):
        raise ValueError(f"FP8 head: {B * T} rows of {C} by {weight.size(0)} are not all multiples of 16")
    cap, vocab_size = model.config.logit_softcap, model.config.vocab_size
    return head_loss(
        x, weight, targets, cap=cap, vocab_size=vocab_size, reduction=reduction, block=block,
        num_warps=num_warps, function=function,
    )  # fmt: skip
