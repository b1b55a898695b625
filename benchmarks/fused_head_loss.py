"""A candidate for the head: the soft-capped cross-entropy and its gradient in one Triton kernel.

`GPT.head` in training is the lm_head's matmul, then a compiled loss: the logits (bf16, tokens × 50,304 at
depth 12) are read by a forward kernel and by a backward kernel that writes their gradient. On an H100
those two kernels took 7.4 ms of a 63 ms micro-batch (the profile of 2026-12-06), several times their
memory traffic: each recomputes the soft-cap with libdevice's tanh, the forward one in two passes.

Here one kernel does both, as Liger-Kernel's fused cross-entropy does: for each row it finds the log-sum-exp
of the soft-capped logits in one streaming pass, then writes the gradient of the row's loss over the
logits in place of the logits (a second pass over a row just read, mostly from L2). The backward has no
loss kernel left: the upstream gradient (one number per row) scales the two small matmul operands instead
of the gradient's tokens × vocabulary entries.

The head's exact function, bit for bit aside: the soft-cap is cap·(2·sigmoid(2z/cap) - 1) = cap·tanh(z/cap)
(the GPU's fast exp), the padding columns (vocab_size and up) are out of the softmax, targets of -1 are
ignored, and the loss is float32. Measured in benchmarks/train_breakdown.py beside the compiled head; not
used by the trainer. Runs on CUDA, and on the CPU under the Triton interpreter (TRITON_INTERPRET=1, set
before this module is imported), which the tests use.
"""

import torch
import triton
import triton.language as tl

from nanogpt.model import GPT

BLOCK = 4096  # logits per iteration of a row's loops
NUM_WARPS = 8


@triton.jit
def _softcap(z, cap, HAS_CAP: tl.constexpr):
    if HAS_CAP:
        z = cap * (2 * tl.sigmoid(z * (2 / cap)) - 1)
    return z


@triton.jit
def _loss_and_grad_kernel(
    logits_ptr,  # (rows, row_stride): read, then overwritten with d loss_row / d logits
    targets_ptr,  # (rows,) int64, -1 = ignored
    losses_ptr,  # (rows,) float32, written
    row_stride,
    vocab_size,  # columns [vocab_size, padded_vocab) are padding: out of the softmax, gradient 0
    padded_vocab,
    cap,
    HAS_CAP: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * row_stride
    target = tl.load(targets_ptr + row)
    ignored = target < 0
    # Pass 1: the row's log-sum-exp, streaming (a running max and a sum rescaled to it).
    running_max = tl.max(tl.full((BLOCK,), float("-inf"), tl.float32), 0)
    running_sum = tl.sum(tl.zeros((BLOCK,), tl.float32), 0)
    for start in range(0, vocab_size, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        in_vocab = cols < vocab_size
        capped = _softcap(tl.load(base + cols, mask=in_vocab, other=0.0).to(tl.float32), cap, HAS_CAP)
        capped = tl.where(in_vocab, capped, float("-inf"))
        new_max = tl.maximum(running_max, tl.max(capped, 0))
        running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(capped - new_max), 0)
        running_max = new_max
    lse = running_max + tl.log(running_sum)
    target_logit = _softcap(tl.load(base + tl.where(ignored, 0, target)).to(tl.float32), cap, HAS_CAP)
    tl.store(losses_ptr + row, tl.where(ignored, 0.0, lse - target_logit))
    # Pass 2: softmax - one-hot, through the soft-cap's derivative 1 - tanh², over the logits.
    for start in range(0, padded_vocab, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        in_row = cols < padded_vocab
        capped = _softcap(tl.load(base + cols, mask=in_row, other=0.0).to(tl.float32), cap, HAS_CAP)
        grad = tl.exp(capped - lse) - tl.where(cols == target, 1.0, 0.0)
        if HAS_CAP:
            grad = grad * (1 - (capped / cap) * (capped / cap))
        grad = tl.where((cols < vocab_size) & (target >= 0), grad, 0.0)
        tl.store(base + cols, grad.to(logits_ptr.dtype.element_ty), mask=in_row)


class FusedHeadLoss(torch.autograd.Function):
    """(x (N, C), weight (V, C), targets (N,)) → each row's loss (N,), float32; the matmul in x's dtype."""

    @staticmethod
    def forward(ctx, x, weight, targets, cap, vocab_size, block, num_warps):
        w = weight.to(x.dtype)
        logits = x @ w.t()
        losses = torch.empty(x.size(0), device=x.device, dtype=torch.float32)
        _loss_and_grad_kernel[(x.size(0),)](
            logits, targets, losses, logits.stride(0), vocab_size, logits.size(1), cap or 1.0,
            HAS_CAP=cap is not None, BLOCK=block, num_warps=num_warps,
        )  # fmt: skip
        ctx.save_for_backward(x, w, logits)  # the logits now hold their gradient
        ctx.weight_dtype = weight.dtype
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        x, w, grad_logits = ctx.saved_tensors
        scale = grad_losses.to(x.dtype)[:, None]  # one number per row: scale the small operands
        grad_x = (grad_logits @ w) * scale
        grad_w = grad_logits.t() @ (x * scale)
        return grad_x, grad_w.to(ctx.weight_dtype), None, None, None, None, None


def fused_head(
    model: GPT,
    x: torch.Tensor,
    targets: torch.Tensor,
    *,
    reduction: str = "mean",
    block: int = BLOCK,
    num_warps: int = NUM_WARPS,
) -> torch.Tensor:
    """GPT.head's loss (targets given) through FusedHeadLoss: hidden states (B, T, C) → the loss."""
    B, T, C = x.shape
    if torch.is_autocast_enabled(x.device.type):
        x = x.to(torch.get_autocast_dtype(x.device.type))
    flat_targets = targets.reshape(-1).contiguous()
    losses = FusedHeadLoss.apply(
        x.reshape(B * T, C).contiguous(), model.lm_head.weight, flat_targets,
        model.config.logit_softcap, model.config.vocab_size, block, num_warps,
    )  # fmt: skip
    if reduction == "none":
        return losses.view(B, T)
    if reduction == "sum":
        return losses.sum()
    return losses.sum() / (flat_targets >= 0).sum()
