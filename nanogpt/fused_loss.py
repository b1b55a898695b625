"""The training loss of the head (the lm_head's logits → soft-capped cross-entropy) and its gradient in one
Triton kernel, as Liger-Kernel's fused cross-entropy does it.

Compiled by torch.compile, `GPT.head`'s loss is two kernels: a forward that reads the logits (bf16, tokens ×
50,304 at depth 12) and a backward that reads them again and writes their gradient. Here one kernel, in the
forward, finds each row's log-sum-exp of the soft-capped logits in one streaming pass, then writes the
gradient of the row's loss over the logits in place of the logits (a second pass over a row just read).
The backward has no loss kernel: the upstream gradient, one number per row, scales the two small matmul
operands instead of the tokens × vocabulary gradient.

The kernel does little arithmetic per logit (exps in base 2, sums per lane, no running max under a soft-cap
of at most 40, the one-hot written once per row) and takes the soft-cap's tanh by the GPU's tanh.approx.f32.
Measured on an H100 on 2026-12-07 (docs/benchmarks.md), at depth 12's micro-batch: 2.88 ms, 1.31 times a
copy of the logits, against 4.60 ms for the kernel it replaced (a running max, the tanh through the
sigmoid, 4096 logits by 8 warps; programs taking turns over the rows were slower still); in the trainer,
at 4096 by 8 (3.36 ms alone; the default 8192 by 16 is not yet measured there), 542,820 tokens/s against
532,656 (+1.9%), and 517,751 with the compiled head.

The same function as `GPT.head` to rounding: the soft-cap is cap·tanh(z/cap), the padding columns
(vocab_size and up) are out of the softmax, targets of -1 are ignored, and the losses are float32;
tanh.approx errs by up to 2^-11 relative, which puts the losses within 5e-5 of torch's at depth 12. The
trainer uses it on CUDA (RunConfig.fused_loss); `GPT.head` imports this module only then, so nanogpt runs
without triton (which ships with torch's CUDA builds) elsewhere. On the CPU it runs under the Triton
interpreter (TRITON_INTERPRET=1, set before triton is imported), which the tests use, with the tanh through
the sigmoid (the same function to float32 rounding). `GRAD_E5M2` (the gradient written in e5m2) serves
the FP8 head, FusedFP8HeadLoss (the trainer's under `fp8_head`).
"""

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from nanogpt.model import FP8_GRAD, FP8_INPUT, to_fp8

BLOCK = 8192  # logits per iteration of a row's loops (fastest with 16 warps on an H100, 2026-12-07)
NUM_WARPS = 16
# Up to this soft-cap the kernel sums exp(capped - cap) without a running max: above e^-80 the terms stay
# in float32's normal range (the GPU's exp flushes subnormals to zero).
FIXED_MAX_CAP = 40.0
LOG2E = tl.constexpr(1.4426950408889634)  # the kernel's exps are in base 2


@triton.jit
def _round_to_e5m2_grid(x):
    """x rounded to 2 mantissa bits, half to even, in float32: the e5m2 cast of the result is then exact
    (in e5m2's normal range), whoever converts. The Triton interpreter's float32 → float8 cast mishandles
    a rounding carry into the exponent (7.99 → 4.0), which would fail the CPU tests of this kernel."""
    bits = x.to(tl.int32, bitcast=True)
    bits = (bits + 0xFFFFF + ((bits >> 21) & 1)) & -0x200000  # drop the low 21 of 23 mantissa bits
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _tanh(x, FAST: tl.constexpr):
    if FAST:  # the GPU's tanh.approx.f32 (one special-function instruction; FlashAttention's soft-cap)
        return tl.inline_asm_elementwise(
            "tanh.approx.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True, pack=1
        )
    else:  # through the sigmoid: the same function to float32 rounding, and the interpreter runs it
        return 2 * tl.sigmoid(2 * x) - 1


@triton.jit
def _capped2(z, inv_cap, scale, HAS_CAP: tl.constexpr, FAST_TANH: tl.constexpr):
    """Logits z, soft-capped, in base 2 (× log2 e)."""
    if HAS_CAP:
        return _tanh(z * inv_cap, FAST_TANH) * scale
    else:
        return z * LOG2E


@triton.jit
def _grad_of_logits(z, inv_cap, scale, lse2, multiplier, HAS_CAP, GRAD_E5M2, FAST_TANH):
    """softmax(capped) · d capped / d z · multiplier (without the one-hot) for logits z, in float32."""
    if HAS_CAP:
        t = _tanh(z * inv_cap, FAST_TANH)
        grad = tl.exp2(t * scale - lse2) * (1 - t * t) * multiplier
    else:
        grad = tl.exp2(z * LOG2E - lse2) * multiplier
    if GRAD_E5M2:
        grad = _round_to_e5m2_grid(grad)
    return grad


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
    FAST_TANH: tl.constexpr = False,
    FIXED_MAX: tl.constexpr = False,
):
    """One program per row. Little arithmetic per logit, for a kernel bound by it rather than by memory
    (the previous one took 2.1 times a copy of the logits): exps in base 2; sums kept per lane and reduced
    once; the blocks inside the vocabulary unmasked; the target's one-hot subtracted once, after the row's
    gradient is written, not compared at every logit; with FAST_TANH the soft-cap's tanh by tanh.approx.f32;
    and, with FIXED_MAX (a soft-cap of at most FIXED_MAX_CAP), no running max: the capped logits are below
    the cap, so exp(capped - cap) cannot overflow, and above e^-80 it stays in float32's normal range (the
    GPU's exp flushes below)."""
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * row_stride
    grad_base = grad_ptr + row * row_stride
    target = tl.load(targets_ptr + row)
    ignored = target < 0
    # F.cross_entropy refuses a target past the vocabulary; here its row's loss is NaN (the trainer then
    # ends the run as diverged) and nothing is read or written outside the row.
    out_of_range = target >= vocab_size
    inside = (vocab_size // BLOCK) * BLOCK  # whole blocks of real tokens (a multiple of BLOCK, known as one)
    inv_cap = 1 / cap
    scale = cap * LOG2E
    # Read before the reduction below, whose barrier orders it before any thread's store of pass 2 (the
    # gradient may be written over the logits).
    target2 = _capped2(
        tl.load(base + tl.where(ignored | out_of_range, 0, target)).to(tl.float32), inv_cap, scale, HAS_CAP,
        FAST_TANH,
    )  # fmt: skip
    # Pass 1: the row's log-sum-exp, in base 2 (lse2 = lse · log2 e).
    if FIXED_MAX:
        acc = tl.zeros((BLOCK,), tl.float32)
        for start in range(0, inside, BLOCK):
            z = tl.load(base + start + tl.arange(0, BLOCK)).to(tl.float32)
            acc += tl.exp2(_capped2(z, inv_cap, scale, HAS_CAP, FAST_TANH) - scale)
        for start in range(inside, vocab_size, BLOCK):  # the last, partial block: at most one
            cols = start + tl.arange(0, BLOCK)
            z = tl.load(base + cols, mask=cols < padded_vocab, other=0.0).to(tl.float32)
            term = tl.exp2(_capped2(z, inv_cap, scale, HAS_CAP, FAST_TANH) - scale)
            acc += tl.where(cols < vocab_size, term, 0.0)
        lse2 = scale + tl.log2(tl.sum(acc, 0))
    else:
        # Per lane, a running max and a sum rescaled to it, one exp per logit: 2^-|c - m| either rescales
        # the sum to a new max or is the new term. The max starts finite (not -inf), so that a -inf logit
        # adds 2^-inf = 0 rather than NaN; a lane that saw no logit is scaled away at the end.
        m = tl.full((BLOCK,), -3.4e38, tl.float32)
        acc = tl.zeros((BLOCK,), tl.float32)
        for start in range(0, vocab_size, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            # Loaded up to the padded width (a multiple of 16, so the loads vectorise; masked on vocab_size,
            # odd, they went one element at a time), then masked.
            z = tl.load(base + cols, mask=cols < padded_vocab, other=0.0).to(tl.float32)
            c = tl.where(cols < vocab_size, _capped2(z, inv_cap, scale, HAS_CAP, FAST_TANH), float("-inf"))
            e = tl.exp2(-tl.abs(c - m))
            above = c > m
            acc = tl.where(above, acc * e + 1, acc + e)
            m = tl.where(above, c, m)
        row_max = tl.max(m, 0)
        lse2 = row_max + tl.log2(tl.sum(acc * tl.exp2(m - row_max), 0))
    loss = tl.where(out_of_range, float("nan"), (lse2 - target2) / LOG2E)
    tl.store(losses_ptr + row, tl.where(ignored, 0.0, loss))
    # Pass 2: the softmax, through the soft-cap's derivative 1 - tanh²; an ignored row's gradient is 0
    # (selected, not multiplied: a NaN logit there must not make it NaN).
    for start in range(0, inside, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        z = tl.load(base + cols).to(tl.float32)
        grad = _grad_of_logits(z, inv_cap, scale, lse2, grad_multiplier, HAS_CAP, GRAD_E5M2, FAST_TANH)
        tl.store(grad_base + cols, tl.where(ignored, 0.0, grad).to(grad_ptr.dtype.element_ty))
    for start in range(inside, padded_vocab, BLOCK):  # the last real tokens, then the padding: gradient 0
        cols = start + tl.arange(0, BLOCK)
        z = tl.load(base + cols, mask=cols < padded_vocab, other=0.0).to(tl.float32)
        grad = _grad_of_logits(z, inv_cap, scale, lse2, grad_multiplier, HAS_CAP, GRAD_E5M2, FAST_TANH)
        grad = tl.where((cols < vocab_size) & ~ignored, grad, 0.0)
        tl.store(grad_base + cols, grad.to(grad_ptr.dtype.element_ty), mask=cols < padded_vocab)
    # The one-hot: the target's column rewritten, once every thread's store of the row is done.
    p_target = tl.exp2(target2 - lse2)
    if HAS_CAP:
        t_target = target2 / scale
        grad_target = (p_target - 1) * (1 - t_target * t_target) * grad_multiplier
    else:
        grad_target = (p_target - 1) * grad_multiplier
    if GRAD_E5M2:
        grad_target = _round_to_e5m2_grid(grad_target)
    tl.debug_barrier()
    tl.store(grad_base + target, grad_target.to(grad_ptr.dtype.element_ty), mask=~(ignored | out_of_range))


def losses_writing_grad(
    logits, targets, grad, cap, vocab_size, grad_multiplier, block, num_warps, e5m2, fast_tanh=True
):
    """Each row's loss (float32), the kernel writing the logits' gradient × grad_multiplier into grad (which
    may be the logits); one program per row. fast_tanh: the soft-cap's tanh by the GPU's tanh.approx.f32,
    as the trainer runs it, else through the sigmoid."""
    rows = logits.size(0)
    if logits.stride(1) != 1 or grad.stride() != logits.stride():
        raise ValueError(
            f"fused loss: rows must be contiguous and alike, strides {logits.stride()}, {grad.stride()}"
        )
    losses = torch.empty(rows, device=logits.device, dtype=torch.float32)
    # tanh.approx.f32 is inline PTX, which only a CUDA GPU runs: on the CPU, under the Triton interpreter
    # (the tests), the tanh goes through the sigmoid.
    _loss_and_grad_kernel[(rows,)](
        logits, targets, losses, grad, logits.stride(0), vocab_size, logits.size(1), cap or 1.0,
        grad_multiplier, HAS_CAP=cap is not None, BLOCK=block, GRAD_E5M2=e5m2,
        FAST_TANH=fast_tanh and logits.is_cuda, FIXED_MAX=cap is not None and cap <= FIXED_MAX_CAP,
        num_warps=num_warps,
    )  # fmt: skip
    return losses


class FusedHeadLoss(torch.autograd.Function):
    """(x (N, C), weight (V, C), targets (N,)) → each row's loss (N,), float32; the matmul in x's dtype.
    `uniform`: the losses' upstream gradient will be one number for every row (a mean or a sum), which
    FusedFP8HeadLoss uses; here each row's is applied, cheaply, whatever it is."""

    @staticmethod
    def forward(ctx, x, weight, targets, cap, vocab_size, block, num_warps, uniform):
        w = weight.to(x.dtype)
        logits = x @ w.t()
        args = (cap, vocab_size, 1.0, block, num_warps, False)
        losses = losses_writing_grad(logits, targets, logits, *args)
        ctx.save_for_backward(x, w, logits)  # the logits now hold their gradient
        ctx.weight_dtype = weight.dtype
        return losses

    @staticmethod
    @once_differentiable  # the saved gradient is a constant: a second derivative would be silently wrong
    def backward(ctx, grad_losses):
        x, w, grad_logits = ctx.saved_tensors
        # One number per row scales the small operands, in float32: rounded to bf16 first, the trainer's
        # 1/tokens would bias the whole gradient whenever the token count is not a power of two.
        scale = grad_losses.float()[:, None]
        grad_x = ((grad_logits @ w).float() * scale).to(x.dtype)
        grad_w = grad_logits.t() @ (x.float() * scale).to(x.dtype)
        return grad_x, grad_w.to(ctx.weight_dtype), None, None, None, None, None, None


# The FP8 head's gradient over the logits, d loss_row / d logits = softmax - one-hot through the soft-cap's
# derivative, lies in [-1, 1] whatever the logits: the kernel writes it in e5m2 at this fixed scale, which
# puts 1 at 2^15 (below e5m2's largest, 57,344) and keeps probabilities down to about 2^-31 (e5m2's
# smallest subnormal, 2^-16, over the scale). No amax pass over the largest tensor of the step.
FP8_GRAD_MULTIPLIER = 2.0**15
TRANSPOSE_BLOCK = 128  # a transposed tile: bytes by bytes
MAX_GRID_Y = 65_535  # CUDA's limit on a grid's second axis


@triton.jit
def _transpose_kernel(src_ptr, dst_ptr, rows, cols, BLOCK: tl.constexpr):
    """dst (cols, rows) = srcᵀ for a row-major src (rows, cols) of bytes, one BLOCK × BLOCK tile a program:
    read along src's rows and written along dst's, so that both sides are whole lines of memory (Triton
    turns the tile through shared memory)."""
    r = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    tile = tl.load(
        src_ptr + r[:, None].to(tl.int64) * cols + c[None, :], mask=(r[:, None] < rows) & (c[None, :] < cols)
    )
    tl.store(
        dst_ptr + c[:, None].to(tl.int64) * rows + r[None, :], tl.trans(tile),
        mask=(c[:, None] < cols) & (r[None, :] < rows),
    )  # fmt: skip


def transpose(t: torch.Tensor, block: int = TRANSPOSE_BLOCK) -> torch.Tensor:
    """tᵀ, contiguous, for a 2-D tensor of one-byte elements (the FP8 head's operands): cuBLAS's FP8
    matmuls take both operands along their inner dimension, so the weight's gradient, summed over the rows,
    needs the logits' gradient transposed. torch's own copy of a one-byte transpose ran at a sixth of a
    plain copy's speed on an H100 (49.8 ms for 6.6 GB, 2026-12-07)."""
    if t.dim() != 2 or t.element_size() != 1:
        raise ValueError(
            f"transpose: takes a 2-D tensor of one-byte elements, got {t.dtype} {tuple(t.shape)}"
        )
    rows, cols = t.shape
    # The columns' tiles go on the grid's second axis, which CUDA caps at 65,535 (8.4M columns of 128): the
    # FP8 head's columns are its width or its vocabulary.
    if triton.cdiv(cols, block) > MAX_GRID_Y:
        raise ValueError(f"transpose: {cols} columns is more than {MAX_GRID_Y} tiles of {block}")
    t = t.contiguous()
    out = torch.empty((cols, rows), device=t.device, dtype=t.dtype)
    if t.numel():
        grid = (triton.cdiv(rows, block), triton.cdiv(cols, block))
        _transpose_kernel[grid](t.view(torch.uint8), out.view(torch.uint8), rows, cols, BLOCK=block)
    return out


# The FP8 head's forward computes the bf16 logits this many rows at a time (each chunk's kernel writes its
# rows of the one e5m2 gradient, then the chunk is freed): at 131,072 rows of 50,304 (depth 12's micro-batch
# of 128 on an H100) it holds the 6.6 GB gradient and a 3.3 GB chunk, not the 13.2 GB of whole bf16 logits
# beside it. The backward's peak is then the gradient and its transposed copy (13.2 GB, as the bf16 head's
# logits); transposing in chunks too would cost an addition of the weight's float32 gradient per chunk.
# A multiple of 16, as FP8 matmuls need.
FP8_CHUNK_ROWS = 32_768


def row_chunks(rows: int, chunk: int) -> list[tuple[int, int]]:
    """[start, end) of each chunk of `chunk` rows (the last may be shorter), in order."""
    return [(start, min(start + chunk, rows)) for start in range(0, rows, chunk)]


class FusedFP8HeadLoss(torch.autograd.Function):
    """FusedHeadLoss with the lm_head's three matmuls in FP8 on tensor cores (`torch._scaled_mm`, products
    accumulated in float32): x and the weight in e4m3, each with one scale from its largest magnitude (small
    tensors), and the logits' gradient written by the kernel directly in e5m2 at the fixed
    FP8_GRAD_MULTIPLIER (a byte a logit, against bf16's two), FP8_CHUNK_ROWS rows of bf16 logits at a time.
    The weight's gradient takes the gradient transposed, by `transpose`. With `uniform` (one upstream
    number for every row: a mean or a sum, as the trainer's loss) that number joins the matmuls' scales
    and the backward reuses the forward's e4m3 x; otherwise each row's scales x's gradient and x, cast to
    e4m3 again. Shapes must pass nanogpt.model.fp8_fits; the weight's gradient comes out in the weight's
    dtype, x's in x's."""

    @staticmethod
    def forward(ctx, x, weight, targets, cap, vocab_size, block, num_warps, uniform):
        x8, x_scale = to_fp8(x, FP8_INPUT)
        w8, w_scale = to_fp8(weight, FP8_INPUT)
        grad8 = torch.empty((x.size(0), w8.size(0)), device=x.device, dtype=FP8_GRAD)
        losses = torch.empty(x.size(0), device=x.device, dtype=torch.float32)
        args = (cap, vocab_size, FP8_GRAD_MULTIPLIER, block, num_warps, True)
        for start, end in row_chunks(x.size(0), FP8_CHUNK_ROWS):
            # _scaled_mm takes its first operand row-major and its second column-major: w8ᵀ as a view is.
            logits = torch._scaled_mm(
                x8[start:end], w8.t(), scale_a=x_scale, scale_b=w_scale, out_dtype=x.dtype
            )
            losses[start:end] = losses_writing_grad(logits, targets[start:end], grad8[start:end], *args)
            del logits
        # What the weight's gradient multiplies: x8 transposed (half the bytes of bf16 x), or x itself.
        saved_x = (transpose(x8), x_scale) if uniform else (x, x_scale)
        ctx.save_for_backward(*saved_x, w8, w_scale, grad8)
        ctx.weight_dtype, ctx.x_dtype, ctx.uniform = weight.dtype, x.dtype, uniform
        return losses

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_losses):
        x_saved, x_scale, w8, w_scale, grad8 = ctx.saved_tensors
        # torch.full, not torch.tensor: a tensor from a Python number is copied to the GPU synchronously,
        # which would stall the host before every backward.
        g_scale = torch.full((), 1 / FP8_GRAD_MULTIPLIER, device=grad8.device, dtype=torch.float32)
        # grad_x = g @ w: w (out, in) is needed column-major, its small transposed copy. grad_w = gᵀ @ x: gᵀ
        # row-major (the gradient's one transposed copy), x column-major (a small transposed copy).
        w_columns, g_transposed = transpose(w8).t(), transpose(grad8)
        if ctx.uniform:
            g_scale = g_scale * grad_losses[0].float()  # a device scalar: no wait for the host
            grad_x = torch._scaled_mm(
                grad8, w_columns, scale_a=g_scale, scale_b=w_scale, out_dtype=ctx.x_dtype
            )
            grad_w = torch._scaled_mm(
                g_transposed, x_saved.t(), scale_a=g_scale, scale_b=x_scale, out_dtype=torch.float32
            )
            return grad_x, grad_w.to(ctx.weight_dtype), None, None, None, None, None, None
        scale = grad_losses.float()[:, None]  # one number per row: it scales the small operands
        grad_x = torch._scaled_mm(grad8, w_columns, scale_a=g_scale, scale_b=w_scale, out_dtype=torch.float32)
        grad_x = (grad_x * scale).to(ctx.x_dtype)
        # One e4m3 scale for x·scale: rows weighted very unevenly lose precision.
        xs8, xs_scale = to_fp8(x_saved.float() * scale, FP8_INPUT)
        grad_w = torch._scaled_mm(
            g_transposed, transpose(xs8).t(), scale_a=g_scale, scale_b=xs_scale, out_dtype=torch.float32
        )
        return grad_x, grad_w.to(ctx.weight_dtype), None, None, None, None, None, None


def head_loss(
    x: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    cap: float | None,
    vocab_size: int,
    reduction: str = "mean",
    block: int = BLOCK,
    num_warps: int = NUM_WARPS,
    function: type[torch.autograd.Function] = FusedHeadLoss,
) -> torch.Tensor:
    """`GPT.head`'s loss through FusedHeadLoss (or `function`, one with its arguments and result: the
    candidates of benchmarks/fused_head_loss.py): hidden states x (B, T, C), in the autocast dtype when
    autocast is on, the lm_head's weight (padded_vocab, C) and targets (B, T) → the loss as `reduction`
    says (mean over the targets that are not -1, sum, or none: (B, T)). Targets are token ids below
    vocab_size, or negative: ignored (GPT.head ignores -1)."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"head_loss: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    B, T, C = x.shape
    if torch.is_autocast_enabled(x.device.type):
        x = x.to(torch.get_autocast_dtype(x.device.type))
    flat_targets = targets.reshape(-1).contiguous()
    # A mean or a sum gives every row's loss the same upstream gradient.
    losses = function.apply(
        x.reshape(B * T, C).contiguous(), weight, flat_targets, cap, vocab_size, block, num_warps,
        reduction != "none",
    )  # fmt: skip
    if reduction == "none":
        return losses.view(B, T)
    if reduction == "sum":
        return losses.sum()
    # As F.cross_entropy: with no target to learn, the mean is NaN and the gradients are zero (a division
    # by the count would make them NaN).
    count = (flat_targets >= 0).sum()
    return torch.where(count > 0, losses.sum() / count.clamp(min=1), float("nan"))


SELF_TEST_VOCAB = 100  # self_test's vocabulary: 128 columns of logits, the last 28 padding


def self_test(
    device: torch.device, dtype: torch.dtype = torch.float32, cap: float | None = 15.0, *, fp8: bool = False
) -> None:
    """The kernel once on a small problem on `device` (logits in `dtype`, soft-capped at `cap`, padded,
    with ignored targets) against torch's cross-entropy: raises if triton is missing, the kernel does not
    build or launch there (no C compiler for its launcher, a GPU Triton does not support), or its losses
    differ. Given the training's dtype and cap it compiles, for the usual shapes, the very kernel training
    then runs, not a second one (on CUDA with the tanh by tanh.approx.f32; Triton specializes integers on
    being multiples of 16: the vocabulary is not, here as at 50,257; the padded width and the row stride
    are, here and in training). With `fp8`, also the FP8 head forward and backward (FusedFP8HeadLoss: its
    e5m2 kernel, its FP8 matmuls, the transpose) against torch from the same e4m3 operands."""
    generator = torch.Generator().manual_seed(0)
    x, weight = torch.randn(64, 32, generator=generator), torch.randn(128, 32, generator=generator)
    targets = torch.randint(0, SELF_TEST_VOCAB, (64,), generator=generator)
    targets[:3] = -1
    x, weight, targets = x.to(device, dtype), weight.to(device, dtype), targets.to(device)
    if fp8:  # and the bf16 head's kernel below too: shapes FP8 matmuls do not take fall back to it
        _fp8_self_test(x.clone(), weight.clone(), targets, cap)
    with torch.no_grad():
        losses = FusedHeadLoss.apply(x, weight, targets, cap, SELF_TEST_VOCAB, BLOCK, NUM_WARPS, False)
        expected = _capped_losses(x, weight, targets, cap)
    error = (losses - expected).abs().max().item()
    # A broken kernel is off by whole units; a tanh by tanh.approx.f32 errs by up to 2^-11 of the cap
    # (0.007 at 15) in each capped logit, so up to twice that in a loss.
    if not error <= 2e-2:
        raise RuntimeError(f"the fused loss's self-test on {x.device} is off by {error:.3g}")


def _capped_losses(x, weight, targets, cap, logits_dtype=torch.float32):
    """torch's losses (none reduced) of the soft-capped logits x @ weightᵀ over the self-test's vocabulary,
    the logits rounded to logits_dtype first."""
    logits = (x @ weight.t()).to(logits_dtype).float()[:, :SELF_TEST_VOCAB]
    if cap is not None:
        logits = cap * torch.tanh(logits / cap)
    return F.cross_entropy(logits, targets, ignore_index=-1, reduction="none")


def _fp8_self_test(x, weight, targets, cap) -> None:
    """self_test's FP8 half: the losses to the kernel's tanh and the bf16 logits, both gradients (of the
    losses' sum times an upstream 1e-3, as a trainer's mean scales them) to e5m2's rounding of the logits'
    gradient, in direction and in size, against torch in float32 from the e4m3-rounded operands."""
    x, weight = x.requires_grad_(), weight.float().requires_grad_()
    with torch.enable_grad():
        losses = FusedFP8HeadLoss.apply(x, weight, targets, cap, SELF_TEST_VOCAB, BLOCK, NUM_WARPS, True)
        got = torch.autograd.grad(losses.sum() * 1e-3, (x, weight))
        operands = [
            t8.float() * scale for t8, scale in (to_fp8(x.detach(), FP8_INPUT), to_fp8(weight, FP8_INPUT))
        ]
        operands = [t.requires_grad_() for t in operands]
        expected = _capped_losses(*operands, targets, cap, logits_dtype=x.dtype)
        wanted = torch.autograd.grad(expected.sum() * 1e-3, operands)
    error = (losses.detach() - expected.detach()).abs().max().item()
    # ‖got - wanted‖ / ‖wanted‖: direction and size (a cosine alone would pass a gradient scaled wrong).
    gradient_errors = [((g.float() - w).norm() / w.norm()).item() for g, w in zip(got, wanted, strict=True)]
    # The limits of the bf16 head's test (the losses; the logits rounded to x's dtype in both); e5m2's 2
    # mantissa bits leave a gradient about 5% off. A broken kernel, matmul or scale misses both by far.
    if not (error <= 2e-2 and max(gradient_errors) <= 0.15):
        raise RuntimeError(
            f"the fused FP8 head's self-test on {x.device} is off by {error:.3g} in the losses, "
            f"{gradient_errors[0]:.3g} and {gradient_errors[1]:.3g} in the gradients"
        )
