"""The ReLU² MLP with its activation inside the matmuls: a Triton kernel for the first matmul writes relu(h)²
in its epilogue, and in the backward the same kernel multiplies the second matmul's input gradient by the
activation's derivative before writing it.

Compiled by torch.compile, `MLP.forward` is cuBLAS's c_fc matmul (writing h), an elementwise kernel (reading
h, writing relu(h)²), cuBLAS's c_proj matmul; and backward, cuBLAS's matmul for the gradient of relu(h)²
(written), then an elementwise kernel that reads it and h and writes h's gradient. At depth 12 (micro-batch
32 × 1,024 tokens) each of those tensors is 201 MB a layer, and the two elementwise kernels took 1.6 and
2.4 ms of a 61 ms micro-batch on an H100 (docs/benchmarks.md), at the memory's speed. Here:

    forward:   post = relu(x @ W_fcᵀ)²                     one kernel (ours)
               y = post @ W_projᵀ                          cuBLAS
    backward:  dW_proj = dyᵀ @ post                        cuBLAS
               dh = (dy @ W_proj) · 2·√post                one kernel (ours), post read in the epilogue
               dx = dh @ W_fc, dW_fc = dhᵀ @ x             cuBLAS

which leaves out a write and a read of h forward and a write and a read of the activation's gradient
backward, at the price of our matmul instead of cuBLAS's for two of the six (modded-nanogpt fuses its
ReLU² MLP the same way). h is not kept: the backward takes relu(h) as √post. The same function as
`MLP.forward` with ReLU²: h is rounded to x's dtype before the activation, as cuBLAS's bf16 output is, and
h's gradient too; √post is relu(h) to within half a rounding (post is relu(h)² rounded to bf16). So the
results differ from the compiled model's by the matmuls' order of summation and that half rounding in h's
gradient. Keeping h for the backward instead cost a write more forward and measured slower
(docs/benchmarks.md, 2026-12-07).

The trainer uses it on CUDA (RunConfig.fused_mlp); the trainer imports this module only then and hands
`relu2_mlp` to the model's MLPs. On the CPU it runs under the Triton interpreter (TRITON_INTERPRET=1, set
before triton is imported), which the tests use. The two kernel calls are custom operators
(`torch.library.custom_op`), so torch.compile compiles a block around them without a graph break.
"""

import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable


class Tiles(NamedTuple):
    """The kernel's launch: a program computes a block_m × block_n tile of the output, block_k of the
    reduction at a time, over `stages` pipelined loads; `group_m` tiles down a column of tiles run together
    (their operands share L2); `persistent`: one program per multiprocessor, each looping over tiles;
    `tma`: the tiles move through Hopper's tensor memory accelerator (host-made descriptors) rather than
    loads by address, and a persistent program's loop over tiles and over the reduction is one pipelined
    loop; `subtile` (with `tma` only): the epilogue in two halves of block_n / 2 columns, which halves the
    shared memory that stages it and leaves more to the loads' stages."""

    block_m: int = 128
    block_n: int = 256
    block_k: int = 64
    group_m: int = 8
    stages: int = 3
    warps: int = 8
    persistent: bool = False
    tma: bool = False
    subtile: bool = False


# The launches the trainer uses, the fastest of benchmarks/mlp_kernel.py's on an H100 (2026-12-07,
# docs/benchmarks.md). At the trainer's micro-batch there (128 × 1,024 rows): forward 0.99 ms through TMA
# with the epilogue in halves (cuBLAS's matmul alone: 0.87), at 3 stages or 4 alike; backward 1.26 ms by
# address (0.89); together 0.9% more tokens/s in the trainer than the launches before them (at 3 stages).
# At 32 × 1,024 rows the forward at 4 stages is the fastest, 0.33 ms against 0.39 at 3. A GPU without TMA
# (before Hopper) runs the same tiles by address, and one with less shared memory a block than they need
# runs them at 3 stages or, where that is still too much (about 99 KB on consumer GPUs, against 227 KB on
# an H100), SMALL_GPU_TILES (`launchable`).
TILES = Tiles(128, 256, 64, 8, 4, 8, persistent=True, tma=True, subtile=True)
BACKWARD_TILES = Tiles(128, 256, 64, 8, 3, 8, persistent=True)
SMALL_GPU_TILES = Tiles(128, 128, 64, 8, 2, 4)  # 64 KB of operand stages
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _matmul_relu2_kernel(
    a_ptr,  # (M, K)
    b_ptr,  # (K, N), any strides
    post_ptr,  # (M, N): backward, relu(h)² read (the forward's output); forward, unused
    out_ptr,  # (M, N) written: forward relu(h)², backward (a @ b)·2·relu(h)
    M,
    N,
    K,  # a multiple of BLOCK_K (the caller checks)
    stride_am,
    stride_ak,
    stride_bk,
    stride_bn,
    stride_om,  # post and out alike
    stride_on,
    BACKWARD: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    PERSISTENT: tl.constexpr,
    UPCAST: tl.constexpr,
):
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    if PERSISTENT:
        for tile in range(tl.program_id(0), tiles_m * tiles_n, tl.num_programs(0)):
            _one_tile(
                tile, a_ptr, b_ptr, post_ptr, out_ptr, M, N, K, stride_am, stride_ak, stride_bk, stride_bn,
                stride_om, stride_on, tiles_m, tiles_n, BACKWARD, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, UPCAST,
            )  # fmt: skip
    else:
        _one_tile(
            tl.program_id(0), a_ptr, b_ptr, post_ptr, out_ptr, M, N, K, stride_am, stride_ak, stride_bk,
            stride_bn, stride_om, stride_on, tiles_m, tiles_n, BACKWARD, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M,
            UPCAST,
        )  # fmt: skip


@triton.jit
def _one_tile(
    tile, a_ptr, b_ptr, post_ptr, out_ptr, M, N, K, stride_am, stride_ak, stride_bk, stride_bn, stride_om,
    stride_on, tiles_m, tiles_n, BACKWARD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    off_m, off_n = _tile_offsets(tile, tiles_m, tiles_n, GROUP_M, BLOCK_M, BLOCK_N)
    rows = off_m + tl.arange(0, BLOCK_M)
    cols = off_n + tl.arange(0, BLOCK_N)
    # Rows and columns past the edge wrap around to valid ones for the loads (no masks in the loop); their
    # results are not stored.
    a_rows = tl.max_contiguous(tl.multiple_of(rows % M, BLOCK_M), BLOCK_M)
    b_cols = tl.max_contiguous(tl.multiple_of(cols % N, BLOCK_N), BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + a_rows[:, None].to(tl.int64) * stride_am + ks[None, :] * stride_ak
    b_ptrs = b_ptr + ks[:, None] * stride_bk + b_cols[None, :].to(tl.int64) * stride_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for _ in range(0, K, BLOCK_K):
        a, b = tl.load(a_ptrs), tl.load(b_ptrs)
        if UPCAST:  # the Triton interpreter multiplies bf16 wrongly (as integers); float32 is exact for it
            a, b = a.to(tl.float32), b.to(tl.float32)
        acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    # Rounded to the output's dtype first, as cuBLAS's output is before the unfused activation reads it.
    h = acc.to(out_ptr.dtype.element_ty)
    offsets = rows[:, None].to(tl.int64) * stride_om + cols[None, :] * stride_on
    inside = (rows[:, None] < M) & (cols[None, :] < N)
    if BACKWARD:
        post = tl.load(post_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
        out = h.to(tl.float32) * (2 * tl.sqrt(post))  # relu(h) = √relu(h)²
    else:
        relu = tl.maximum(h.to(tl.float32), 0.0)
        out = relu * relu
    tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _matmul_relu2_tma_kernel(
    a_desc,  # (M, K), blocks (BLOCK_M, BLOCK_K)
    b_desc,  # B_KN: (K, N), blocks (BLOCK_K, BLOCK_N); else (N, K), blocks (BLOCK_N, BLOCK_K), transposed
    post_desc,  # (M, N), blocks (BLOCK_M, BLOCK_N): as _matmul_relu2_kernel's post_ptr
    out_desc,  # (M, N), blocks (BLOCK_M, BLOCK_N): as _matmul_relu2_kernel's out_ptr
    M,
    N,
    K,  # a multiple of BLOCK_K (the caller checks)
    BACKWARD: tl.constexpr,
    B_KN: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    SUBTILE: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """_matmul_relu2_kernel's function through TMA descriptors, which clip the tiles at the edges: loads past
    them read zeros, stores past them are dropped. Launched with one program per tile or fewer (persistent);
    `flatten` makes the tile loop and the reduction's one software-pipelined loop, so that the next tile's
    loads overlap this tile's epilogue. With SUBTILE, post_desc and out_desc have blocks of BLOCK_N / 2
    columns."""
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    for tile in tl.range(tl.program_id(0), tiles_m * tiles_n, tl.num_programs(0), flatten=True):
        off_m, off_n = _tile_offsets(tile, tiles_m, tiles_n, GROUP_M, BLOCK_M, BLOCK_N)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, K, BLOCK_K):
            a = a_desc.load([off_m, k])
            b = b_desc.load([k, off_n]) if B_KN else b_desc.load([off_n, k]).T
            if UPCAST:  # as in _matmul_relu2_kernel: the interpreter's bf16 products are wrong
                a, b = a.to(tl.float32), b.to(tl.float32)
            acc = tl.dot(a, b, acc)
        if SUBTILE:  # the two halves of the tile's columns, one after the other
            left, right = tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1)))
            _tma_epilogue(left, post_desc, out_desc, off_m, off_n, BACKWARD)
            _tma_epilogue(right, post_desc, out_desc, off_m, off_n + BLOCK_N // 2, BACKWARD)
        else:
            _tma_epilogue(acc, post_desc, out_desc, off_m, off_n, BACKWARD)


@triton.jit
def _tile_offsets(
    tile, tiles_m, tiles_n, GROUP_M: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr
):
    """The first row and column of `tile`. Tiles go in groups of GROUP_M rows of tiles, column by column
    within a group (Triton's matmul tutorial): the programs running at once share rows of a and columns of
    b, which then come from L2."""
    in_group = GROUP_M * tiles_n
    first_m = (tile // in_group) * GROUP_M
    group_m = min(tiles_m - first_m, GROUP_M)
    return (first_m + (tile % in_group) % group_m) * BLOCK_M, ((tile % in_group) // group_m) * BLOCK_N


@triton.jit
def _tma_epilogue(acc, post_desc, out_desc, off_m, off_n, BACKWARD: tl.constexpr):
    """The epilogue of _matmul_relu2_kernel on a block of the output at (off_m, off_n), through TMA."""
    h = acc.to(out_desc.dtype)  # rounded first, as cuBLAS's output is before the unfused activation reads it
    if BACKWARD:
        post = post_desc.load([off_m, off_n])
        out = h.to(tl.float32) * (2 * tl.sqrt(post.to(tl.float32)))
    else:
        relu = tl.maximum(h.to(tl.float32), 0.0)
        out = relu * relu
    out_desc.store([off_m, off_n], out.to(out_desc.dtype))


def fits(in_features: int) -> bool:
    """Whether the kernels take an MLP of this width: both reductions (n_embd, forward and backward) must be
    a whole number of their launches' blocks, whichever the GPU runs. Rows and the hidden width may be
    anything."""
    return all(in_features % tiles.block_k == 0 for tiles in (TILES, BACKWARD_TILES, SMALL_GPU_TILES))


def shared_bytes(tiles: Tiles, backward: bool, itemsize: int = 2) -> int:
    """The shared memory a launch takes for operands of `itemsize` bytes: the stages of a's and b's blocks
    and, through TMA, the epilogue's staged tiles (the output's, and backward relu(h)²'s), each block_m ×
    block_n or half that with subtile. Through TMA it is the compiled kernel's for sm_90 to within Triton's
    few bytes of barriers; by address an upper bound (the epilogue reuses the stages' memory, and on sm_90
    Triton keeps fewer stages there)."""
    stages = tiles.stages * (tiles.block_m + tiles.block_n) * tiles.block_k * itemsize
    staged_n = tiles.block_n // 2 if tiles.subtile else tiles.block_n
    epilogue = (2 if backward else 1) * tiles.block_m * staged_n * itemsize if tiles.tma else 0
    return stages + epilogue


def launchable(tiles: Tiles, device: torch.device, backward: bool, itemsize: int = 2) -> Tiles:
    """`tiles` as this device can run them: by address where the GPU has no tensor memory accelerator
    (compute capability below 9.0); where its shared memory a block is less than they need (with a margin
    of 1 KB), at 3 stages rather than more, and if that is still too much, SMALL_GPU_TILES (which a GPU of
    64 KB a block cannot run either: the self-test then turns the fused MLP off). The interpreter (on the
    CPU) runs any."""
    if device.type != "cuda":
        return tiles
    props = torch.cuda.get_device_properties(device)
    if tiles.tma and (props.major, props.minor) < (9, 0):
        tiles = tiles._replace(tma=False, subtile=False)

    def in_memory(tiles: Tiles) -> bool:
        return shared_bytes(tiles, backward, itemsize) + 1024 <= props.shared_memory_per_block_optin

    if not in_memory(tiles) and tiles.stages > 3:
        tiles = tiles._replace(stages=3)
    return tiles if in_memory(tiles) else SMALL_GPU_TILES


def _launch(a, b, post, out, backward: bool, tiles: Tiles) -> None:
    M, K = a.shape
    N = b.size(1)
    if tiles.subtile and not tiles.tma:
        raise ValueError(f"fused MLP: subtile is a launch through TMA, not by address ({tiles})")
    tiles = launchable(tiles, a.device, backward, a.element_size())
    if K % tiles.block_k != 0:
        raise ValueError(f"fused MLP: the reduction ({K}) must be a multiple of block_k {tiles.block_k}")
    if M == 0:  # nothing to compute (TMA descriptors refuse an empty tensor)
        return
    count = triton.cdiv(M, tiles.block_m) * triton.cdiv(N, tiles.block_n)
    if tiles.persistent and a.is_cuda:
        count = min(count, torch.cuda.get_device_properties(a.device).multi_processor_count)
    elif tiles.persistent:  # the interpreter: a few programs, each looping over several tiles
        count = min(count, 3)
    if tiles.tma:
        # Here, not at the top: the descriptors need Triton 3.4 or newer, the kernels by address do not.
        from triton.tools.tensor_descriptor import TensorDescriptor

        bm, bn, bk = tiles.block_m, tiles.block_n, tiles.block_k
        epilogue_n = bn // 2 if tiles.subtile else bn
        b_kn = b.stride(1) == 1  # b (K, N) row-major, as w_proj is; else bᵀ (N, K) is, as w_fc is
        descriptors = (
            TensorDescriptor.from_tensor(a, [bm, bk]),
            TensorDescriptor.from_tensor(b, [bk, bn])
            if b_kn
            else TensorDescriptor.from_tensor(b.t(), [bn, bk]),
            TensorDescriptor.from_tensor(post, [bm, epilogue_n]),
            TensorDescriptor.from_tensor(out, [bm, epilogue_n]),
        )
        _matmul_relu2_tma_kernel[(count,)](
            *descriptors, M, N, K, BACKWARD=backward, B_KN=b_kn, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
            GROUP_M=tiles.group_m, SUBTILE=tiles.subtile, UPCAST=INTERPRETED, num_warps=tiles.warps,
            num_stages=tiles.stages,
        )  # fmt: skip
        return
    _matmul_relu2_kernel[(count,)](
        a, b, post, out, M, N, K, a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0),
        out.stride(1), BACKWARD=backward, BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n,
        BLOCK_K=tiles.block_k, GROUP_M=tiles.group_m, PERSISTENT=tiles.persistent,
        UPCAST=INTERPRETED, num_warps=tiles.warps, num_stages=tiles.stages,
    )  # fmt: skip


def linear_relu2(x: torch.Tensor, w_fc: torch.Tensor, tiles: Tiles | None = None) -> torch.Tensor:
    """relu(h)² for h = x @ w_fcᵀ: x (M, K), w_fc (N, K) of x's dtype; (M, N) in it. The launch is `tiles`,
    or the module's TILES at the time of the call."""
    post = torch.empty(x.size(0), w_fc.size(0), device=x.device, dtype=x.dtype)
    _launch(x, w_fc.t(), post, post, False, tiles or TILES)
    return post


def relu2_backward(
    grad_y: torch.Tensor, w_proj: torch.Tensor, post: torch.Tensor, tiles: Tiles | None = None
) -> torch.Tensor:
    """h's gradient, (grad_y @ w_proj)·2·relu(h): grad_y (M, C), w_proj (C, N), and post = relu(h)² (M, N)
    as linear_relu2 gave it; in post's dtype. The launch is `tiles`, or the module's BACKWARD_TILES at the
    time of the call."""
    grad_h = torch.empty_like(post)
    _launch(grad_y, w_proj, post, grad_h, True, tiles or BACKWARD_TILES)
    return grad_h


# The two kernel calls as operators torch.compile keeps whole, with the trainer's launches.
@torch.library.custom_op("nanogpt::linear_relu2", mutates_args=())
def _linear_relu2_op(x: torch.Tensor, w_fc: torch.Tensor) -> torch.Tensor:
    return linear_relu2(x, w_fc)


@_linear_relu2_op.register_fake
def _(x, w_fc):
    return x.new_empty(x.size(0), w_fc.size(0))


@torch.library.custom_op("nanogpt::relu2_backward", mutates_args=())
def _relu2_backward_op(grad_y: torch.Tensor, w_proj: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
    return relu2_backward(grad_y, w_proj, post)


@_relu2_backward_op.register_fake
def _(grad_y, w_proj, post):
    return torch.empty_like(post)


class ReLU2MLP(torch.autograd.Function):
    """(x (M, C) in the compute dtype, w_fc (4C, C), w_proj (C, 4C)) → relu(x @ w_fcᵀ)² @ w_projᵀ, (M, C).
    The weights are cast to x's dtype (as autocast would); their gradients come back in their own."""

    @staticmethod
    def forward(ctx, x, w_fc, w_proj):
        wf, wp = w_fc.to(x.dtype), w_proj.to(x.dtype)
        post = _linear_relu2_op(x, wf)
        ctx.save_for_backward(x, wf, wp, post)
        ctx.dtypes = w_fc.dtype, w_proj.dtype
        return post @ wp.t()

    @staticmethod
    @once_differentiable  # √post and post are constants here: a second derivative would be silently wrong
    def backward(ctx, grad_y):
        x, wf, wp, post = ctx.saved_tensors
        grad_y = grad_y.contiguous()
        need_x, need_wf, need_wp = ctx.needs_input_grad
        grad_x = grad_wf = grad_wp = None
        if need_x or need_wf:
            grad_h = _relu2_backward_op(grad_y, wp, post)
            grad_x = grad_h @ wf if need_x else None
            grad_wf = (grad_h.t() @ x).to(ctx.dtypes[0]) if need_wf else None
        if need_wp:
            grad_wp = (grad_y.t() @ post).to(ctx.dtypes[1])
        return grad_x, grad_wf, grad_wp


def relu2_mlp(x: torch.Tensor, w_fc: torch.Tensor, w_proj: torch.Tensor) -> torch.Tensor:
    """`MLP.forward` with ReLU² through ReLU2MLP: x (..., C), in the autocast dtype when autocast is on."""
    if torch.is_autocast_enabled(x.device.type):
        x = x.to(torch.get_autocast_dtype(x.device.type))
    if x.dtype == torch.float16:
        # √relu(h)² loses small activations to float16's narrow exponent range (bf16's is float32's).
        raise ValueError("fused MLP: float16 is not supported (bf16 or float32 are)")
    shape = x.shape
    y = ReLU2MLP.apply(x.reshape(-1, shape[-1]).contiguous(), w_fc, w_proj)
    return y.view(*shape[:-1], y.size(-1))


def self_test(device: torch.device, dtype: torch.dtype = torch.bfloat16) -> None:
    """The MLP once forward and backward on a small problem on `device` (x in `dtype`, float32 weights, as
    the trainer holds them) against the same MLP by torch in float64: raises if triton is missing, the
    kernels do not build or launch there, or a result is off. With the training's dtype it compiles the
    kernels training runs (Triton specializes integers on being multiples of 16; these shapes are, as
    training's are). A broken kernel is off by whole units; bf16 rounding leaves under 2e-2 relative."""
    generator = torch.Generator().manual_seed(0)
    width = max(TILES.block_k, BACKWARD_TILES.block_k)
    x = torch.randn(96, width, generator=generator)
    w_fc = torch.randn(4 * width, width, generator=generator) / width**0.5
    w_proj = torch.randn(width, 4 * width, generator=generator) / (4 * width) ** 0.5
    grad_y = torch.randn(96, width, generator=generator)
    x, w_fc, w_proj, grad_y = (t.to(device) for t in (x, w_fc, w_proj, grad_y))
    leaves = [x.to(dtype).requires_grad_(), w_fc.clone().requires_grad_(), w_proj.clone().requires_grad_()]
    y = relu2_mlp(*leaves)
    y.backward(grad_y.to(dtype))
    expected = [t.double().requires_grad_() for t in (leaves[0].detach(), w_fc, w_proj)]
    y_expected = torch.relu(expected[0] @ expected[1].t()).square() @ expected[2].t()
    y_expected.backward(grad_y.double())
    results = [("the output", y.detach(), y_expected.detach())]
    for name, got, want in zip(("x", "w_fc", "w_proj"), leaves, expected, strict=True):
        results.append((f"the gradient of {name}", got.grad, want.grad))
    for name, got, want in results:
        error = ((got.double() - want).norm() / want.norm()).item()
        if not error <= 2e-2:
            raise RuntimeError(f"the fused MLP's self-test on {device}: {name} is off by {error:.3g}")
