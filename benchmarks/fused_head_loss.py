"""A candidate for the head: the soft-capped cross-entropy and its gradient in one Triton kernel.

`GPT.head` in training is the lm_head's matmul, then a compiled loss: the logits (bf16, tokens × 50,304 at
depth 12) are read by a forward kernel and by a backward kernel that writes their gradient. On an H100
those two kernels took 7.4 ms of a 63 ms micro-batch (the profile of 2026-12-06), several times their
memory traffic; most likely libdevice's tanh, which each recomputes for every logit.

Here one kernel does both, as Liger-Kernel's fused cross-entropy does: for each row it finds the log-sum-exp
of the soft-capped logits in one streaming pass, then writes the gradient of the row's loss over the
logits in place of the logits (a second pass over a row just read, mostly from L2). The backward has no
loss kernel left: the upstream gradient (one number per row) scales the two small matmul operands instead
of the gradient's tokens × vocabulary entries.

`FusedFP8HeadLoss` also runs the lm_head's three matmuls in FP8, with the kernel writing the gradient
directly in e5m2 at a fixed scale (the gradient lies in [-1, 1]): no amax pass over it, half the bytes,
and only its one transposed copy beyond the kernel. `fp8_head`'s dynamic scaling of that gradient cost
more than the FP8 matmuls saved (docs/benchmarks.md).

The head's exact function, bit for bit aside: the soft-cap is cap·(2·sigmoid(2z/cap) - 1) = cap·tanh(z/cap)
(the GPU's fast exp), the padding columns (vocab_size and up) are out of the softmax, targets of -1 are
ignored, and the loss is float32. Measured in benchmarks/train_breakdown.py beside the compiled head, and
in the trainer by train_throughput's `--ours-head`, which patches it in for a run; not part of the
trainer. Runs on CUDA, and on the CPU under the Triton interpreter (TRITON_INTERPRET=1, set before this
module is imported), which the tests use.
"""

import torch
import triton
import triton.language as tl

from nanogpt.model import FP8_GRAD, FP8_INPUT, GPT, fp8_fits, to_fp8

BLOCK = 4096  # logits per iteration of a row's loops
NUM_WARPS = 8


@triton.jit
def _softcap(z, cap, HAS_CAP: tl.constexpr):
    if HAS_CAP:
        z = cap * (2 * tl.sigmoid(z * (2 / cap)) - 1)
    return z


@triton.jit
def _round_to_e5m2_grid(x):
    """x rounded to 2 mantissa bits, half to even, in float32: the e5m2 cast of the result is then exact
    (in e5m2's normal range), whoever converts. The Triton interpreter's float32 → float8 cast mishandles
    a rounding carry into the exponent (7.99 → 4.0), which would fail the CPU tests of this kernel."""
    bits = x.to(tl.int32, bitcast=True)
    bits = (bits + 0xFFFFF + ((bits >> 21) & 1)) & -0x200000  # drop the low 21 of 23 mantissa bits
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _loss_and_grad_kernel(
    logits_ptr,  # (rows, row_stride), read
    targets_ptr,  # (rows,) int64, -1 = ignored
    losses_ptr,  # (rows,) float32, written
    grad_ptr,  # (rows, row_stride): d loss_row / d logits × grad_multiplier, written (may be logits_ptr)
    row_stride,
    vocab_size,  # columns [vocab_size, padded_vocab) are padding: out of the softmax, gradient 0
    padded_vocab,
    cap,
    grad_multiplier,
    HAS_CAP: tl.constexpr,
    BLOCK: tl.constexpr,
    GRAD_E5M2: tl.constexpr = False,
):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * row_stride
    grad_base = grad_ptr + row * row_stride
    target = tl.load(targets_ptr + row)
    ignored = target < 0
    # Pass 1: the row's log-sum-exp, streaming (a running max and a sum rescaled to it).
    running_max = tl.max(tl.full((BLOCK,), float("-inf"), tl.float32), 0)
    running_sum = tl.sum(tl.zeros((BLOCK,), tl.float32), 0)
    for start in range(0, vocab_size, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        # Loaded up to the padded width (a multiple of 16, so the loads vectorise; masked on vocab_size,
        # odd, they went one element at a time), then the padding is taken out of the softmax.
        logits = tl.load(base + cols, mask=cols < padded_vocab, other=0.0).to(tl.float32)
        capped = tl.where(cols < vocab_size, _softcap(logits, cap, HAS_CAP), float("-inf"))
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
        grad = tl.where((cols < vocab_size) & (target >= 0), grad * grad_multiplier, 0.0)
        if GRAD_E5M2:
            grad = _round_to_e5m2_grid(grad)
        tl.store(grad_base + cols, grad.to(grad_ptr.dtype.element_ty), mask=in_row)


def _losses_writing_grad(logits, targets, grad, cap, vocab_size, grad_multiplier, block, num_warps, e5m2):
    """Each row's loss (float32), the kernel writing the logits' gradient × grad_multiplier into grad."""
    losses = torch.empty(logits.size(0), device=logits.device, dtype=torch.float32)
    _loss_and_grad_kernel[(logits.size(0),)](
        logits, targets, losses, grad, logits.stride(0), vocab_size, logits.size(1), cap or 1.0,
        grad_multiplier, HAS_CAP=cap is not None, BLOCK=block, GRAD_E5M2=e5m2, num_warps=num_warps,
    )  # fmt: skip
    return losses


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


class FusedHeadLoss(torch.autograd.Function):
    """(x (N, C), weight (V, C), targets (N,)) → each row's loss (N,), float32; the matmul in x's dtype."""

    @staticmethod
    def forward(ctx, x, weight, targets, cap, vocab_size, block, num_warps):
        w = weight.to(x.dtype)
        logits = x @ w.t()
        losses = _losses_writing_grad(logits, targets, logits, cap, vocab_size, 1.0, block, num_warps, False)
        ctx.save_for_backward(x, w, logits)  # the logits now hold their gradient
        ctx.weight_dtype = weight.dtype
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        x, w, grad_logits = ctx.saved_tensors
        # One number per row scales the small operands, in float32: rounded to bf16 first, the trainer's
        # 1/tokens would bias the whole gradient whenever the token count is not a power of two.
        scale = grad_losses.float()[:, None]
        grad_x = ((grad_logits @ w).float() * scale).to(x.dtype)
        grad_w = grad_logits.t() @ (x.float() * scale).to(x.dtype)
        return grad_x, grad_w.to(ctx.weight_dtype), None, None, None, None, None


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
        losses = _losses_writing_grad(logits, targets, grad8, *args)
        ctx.save_for_backward(x, w8, w_scale, grad8)
        ctx.weight_dtype = weight.dtype
        return losses

    @staticmethod
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
    """GPT.head's loss (targets given) through FusedHeadLoss (fp8: FusedFP8HeadLoss; compiled:
    CompiledHeadLoss): hidden states (B, T, C) → the loss."""
    if fp8 and compiled:
        raise ValueError("fused_head: fp8 and compiled are separate candidates, not one")
    B, T, C = x.shape
    if torch.is_autocast_enabled(x.device.type):
        x = x.to(torch.get_autocast_dtype(x.device.type))
    flat_targets = targets.reshape(-1).contiguous()
    weight = model.lm_head.weight
    if fp8 and not fp8_fits(B * T, C, weight.size(0)):
        raise ValueError(f"FP8 head: {B * T} rows of {C} by {weight.size(0)} are not all multiples of 16")
    function = FusedFP8HeadLoss if fp8 else CompiledHeadLoss if compiled else FusedHeadLoss
    losses = function.apply(
        x.reshape(B * T, C).contiguous(), weight, flat_targets,
        model.config.logit_softcap, model.config.vocab_size, block, num_warps,
    )  # fmt: skip
    if reduction == "none":
        return losses.view(B, T)
    if reduction == "sum":
        return losses.sum()
    return losses.sum() / (flat_targets >= 0).sum()
