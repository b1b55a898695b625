"""Where a training step's time goes, by taking parts away, and what candidate changes would buy; one run.

    python -m benchmarks.train_breakdown [--depth 12] [--micro-batch 32] [--json out.json]
    python -m benchmarks.train_breakdown --device cpu --depth 1 --seq-len 64 --micro-batch 2 --no-compile

Times one micro-batch's forward and backward (bf16 autocast, compiled as the trainer compiles it, random
tokens, CUDA events, the median of `--reps` after warm-up) of:

- full: the model as the trainer calls it (`reduction="sum"`, loss scaled), as the model is built: its
  compiled head and MLP and float32 weights cast by autocast (`fused_loss`, `fused_mlp`, `fp8_head` and
  `weight_copies` off), where the trainer on a GPU turns those on by default (the fused loss and the FP8
  head are candidates below; the fused MLP and the weight copies are not timed here);
- trunk: the blocks alone (embedding to the final norm; the loss is the sum of the output), so that
  full - trunk is the head: lm_head, soft-cap, padding mask and cross-entropy;
- head: lm_head and the loss alone, on a random final hidden state;
- head, plain loss: the same without soft-cap and padding mask (their cost, by difference);
- fused qkv: the model with the three attention projections in one matmul (the weights concatenated in the
  forward, so Muon still sees three matrices): a candidate;
- full at 2x the micro-batch: a candidate (fewer, larger kernels; more memory);
- on a GPU, full with the model's weights in bf16: what the trainer's float32 weights cost a micro-batch
  (a cast of every weight in the forward, a float32 gradient added in the backward), an upper bound on
  what casting once per step would save;
- full and head with the soft-cap's tanh written through the sigmoid (`sigmoid_softcap`): candidates;
- on a GPU, full and head with the loss and its gradient in one Triton kernel (nanogpt/fused_loss.py, the
  trainer's on CUDA; the head also at other block sizes and warp counts); with the lm_head's matmuls in FP8
  and the kernel writing the gradient in e5m2 (nanogpt.fused_loss.FusedFP8HeadLoss, the trainer's head
  under `fp8_head`); and with the loss and gradient taken in the forward by torch.compile from torch
  operations (benchmarks/fused_head_loss.py): candidates beside "full", the compiled head (`fused_loss:
  false`);
- full and head with the lm_head's matmuls in FP8 without the fused loss (`fp8_head` with `fused_loss:
  false`, nanogpt.model.FP8Linear): candidates, where
  the GPU has FP8 tensor cores (CUDA compute capability 8.9 or newer), beside the lm_head's
  forward and backward alone, in bf16 and in FP8 (its scaling casts included);
- on a GPU, full with the cuDNN attention backend compiled in: a candidate (the attention floor is also
  timed under each backend: flash, cuDNN, memory-efficient);
- with `--autotune`, full with only the elementwise kernels tuned (inductor's coordinate descent over
  their block sizes): a candidate;
- with `--autotune`, full under torch.compile's max-autotune (Triton matmuls with the elementwise work
  fused in, chosen per shape against cuBLAS): a candidate, at minutes of compilation;

and, uncompiled: the optimizer step (MuonAdamW over the model's groups, once per step, so its share of a
step is its time over grad_accum micro-batches), and the floors: every matmul of the model's forward and
backward run alone at its shape and operand layout (its FLOPs are 6·N per token, checked against
`estimate_flops()`), and the causal attention kernel (SDPA) forward and backward alone. A floor times 20
(attention: 4) back-to-back calls per timing, so that no call waits on an idle GPU for its launch as a
single call does (the floors of 2026-12-06 timed one call each and came out 8-9 ms above the kernel times
that the profiler measured in training). Prints each time, its tokens/s, and the gap between the full
micro-batch and the floors: the time spent neither in matmuls nor in attention.
"""

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple
from unittest import mock

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from nanogpt.config import RunConfig
from nanogpt.model import GPT, CausalSelfAttention, FP8Linear, GPTConfig, apply_rotary_emb, norm
from nanogpt.train import FP8_CAPABILITY, build_optimizer, effective_hparams


def timed(fn: Callable[[], None], device: torch.device, reps: int, warmup: int, *, calls: int = 1) -> float:
    """Median seconds of one fn() over reps timings of `calls` back-to-back calls each, after warmup calls
    (CUDA events on a GPU).

    A timing starts on an idle GPU, so its first kernel waits for its launch; `calls` > 1 hides that wait
    behind the calls before it, as in training, for work of a few kernels (one matmul, one attention)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end) / 1e3 / calls)
        else:
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            times.append((time.perf_counter() - t0) / calls)
    return statistics.median(times)


SEPARATE_QKV_FORWARD = CausalSelfAttention.forward  # the model's, kept before any patch


def fused_qkv_forward(self: CausalSelfAttention, x, cos_sin, kv_cache=None, attn_mask=None):
    """CausalSelfAttention.forward with q, k and v from one matmul over the concatenated weights, for
    training's and evaluation's full sequences; with a KV cache (generation), the model's own forward."""
    if kv_cache is not None:
        return SEPARATE_QKV_FORWARD(self, x, cos_sin, kv_cache, attn_mask)
    B, T, C = x.size()
    weight = torch.cat([self.c_q.weight, self.c_k.weight, self.c_v.weight])
    q, k, v = F.linear(x, weight).view(B, T, 3, self.n_head, self.head_dim).unbind(2)
    q, k = norm(q), norm(k)
    cos, sin = cos_sin
    q, k = apply_rotary_emb(q, cos, sin), apply_rotary_emb(k, cos, sin)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


def sigmoid_softcap(self: GPT, logits: torch.Tensor) -> torch.Tensor:
    """GPT._softcap with tanh written through the sigmoid: cap·tanh(z/cap) = cap·(2·sigmoid(2z/cap) - 1).

    The same function to float32 rounding, with finite values and gradients at both ends, but the compiled
    loss kernels then compute a sigmoid (the GPU's fast exp and a division) in place of libdevice's tanh,
    forward and backward (both recompute the soft-cap from the bf16 logits). A candidate: in the H100's
    profile the loss kernels take 7.4 ms a micro-batch, far above their memory traffic, and the soft-cap
    is 2 ms of the head."""
    cap = self.config.logit_softcap
    return logits if cap is None else cap * (2 * torch.sigmoid(logits * (2 / cap)) - 1)


def trunk_loss(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """The blocks alone (`GPT.trunk`, the forward without its head), their output summed as a loss."""
    return model.trunk(idx).float().sum()


def head_loss(model: GPT, hidden: torch.Tensor, targets: torch.Tensor, plain: bool) -> torch.Tensor:
    """`GPT.head` (lm_head, soft-cap, padding mask, cross-entropy), or (plain) the matmul and the
    cross-entropy only."""
    if not plain:
        return model.head(hidden, targets, reduction="sum")
    logits = model.lm_head(hidden)
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="sum")


class Matmul(NamedTuple):
    """One matmul (M × K) @ (K × N) of training, with its operands' layouts: a transposed operand is a
    transposed view of a row-major tensor, as autograd passes it to cuBLAS."""

    m: int
    k: int
    n: int
    a_transposed: bool = False
    b_transposed: bool = False


def matmul_shapes(model: GPT, tokens: int) -> list[Matmul]:
    """Every matmul of one micro-batch's forward and backward: for each weight W (out, in), the forward
    x @ W.T (tokens × in by in × out), the input's gradient g @ W (tokens × out by out × in) and the
    weight's gradient g.T @ x (out × tokens by tokens × in)."""
    shapes = []
    for weight in [*model.param_groups()["matrix"], model.lm_head.weight]:
        out_features, in_features = weight.shape
        shapes += [
            Matmul(tokens, in_features, out_features, b_transposed=True),
            Matmul(tokens, out_features, in_features),
            Matmul(out_features, tokens, in_features, a_transposed=True),
        ]
    return shapes


def matmul_operands(mm: Matmul, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Random operands of `mm` in its layouts."""

    def operand(rows: int, cols: int, transposed: bool) -> torch.Tensor:
        if transposed:
            return torch.randn(cols, rows, device=device, dtype=dtype).t()
        return torch.randn(rows, cols, device=device, dtype=dtype)

    return operand(mm.m, mm.k, mm.a_transposed), operand(mm.k, mm.n, mm.b_transposed)


def matmul_flops(shapes: list[Matmul]) -> int:
    return sum(2 * mm.m * mm.k * mm.n for mm in shapes)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--vocab-size", type=int, default=50257)
    parser.add_argument("--micro-batch", type=int, default=32)
    parser.add_argument("--total-batch", type=int, default=524288, help="tokens per optimizer step")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--no-compile", action="store_false", dest="compile")
    parser.add_argument(
        "--skip", default="", help="comma-separated parts to leave out (e.g. 'double,fused_qkv')"
    )
    parser.add_argument(
        "--autotune",
        action="store_true",
        help="also the full model under torch.compile's max-autotune-no-cudagraphs (minutes to compile) and "
        "with only its elementwise kernels tuned",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    compile_ = torch.compile if args.compile else (lambda f, **_: f)

    torch.manual_seed(0)
    config = GPTConfig(depth=args.depth, vocab_size=args.vocab_size, sequence_len=args.seq_len)
    model = GPT(config).to(device)
    model.init_weights()
    B, T = args.micro_batch, args.seq_len
    tokens = B * T
    grad_accum = max(1, args.total_batch // tokens)

    def batch(b: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randint(0, config.vocab_size, (b, T + 1), device=device)
        return x[:, :-1], x[:, 1:]

    x, y = batch(B)
    scale = torch.tensor(1.0 / tokens, device=device)
    rows: list[dict] = []

    def record(name: str, seconds: float, num_tokens: int = tokens, compile_s: float | None = None) -> None:
        rows.append(
            {"part": name, "ms": seconds * 1e3, "tokens_per_s": num_tokens / seconds, "compile_s": compile_s}
        )
        print(f"{name:40} {seconds * 1e3:9.2f} ms", flush=True)

    def fwd_bwd(fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def step() -> None:
            with autocast:
                loss = fn()
            (loss * scale).backward()

        return step

    def measure(name: str, step: Callable[[], None], num_tokens: int = tokens) -> None:
        t0 = time.perf_counter()
        step()  # compiles
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        compile_s = time.perf_counter() - t0
        record(name, timed(step, device, args.reps, args.warmup), num_tokens, compile_s)
        model.zero_grad(set_to_none=True)

    full = compile_(model, dynamic=False)
    measure("full", fwd_bwd(lambda: full(x, y, reduction="sum")))
    if "trunk" not in skip:
        compiled_trunk = compile_(trunk_loss, dynamic=False)
        measure("trunk (no head)", fwd_bwd(lambda: compiled_trunk(model, x)))
    if "head" not in skip:
        hidden = torch.randn(B, T, config.n_embd, device=device, dtype=dtype, requires_grad=True)
        compiled_head = compile_(head_loss, dynamic=False)
        measure("head (lm_head + loss)", fwd_bwd(lambda: compiled_head(model, hidden, y, False)))
        measure("head, plain loss (no softcap, mask)", fwd_bwd(lambda: compiled_head(model, hidden, y, True)))
    if "bf16_weights" not in skip and dtype == torch.bfloat16:
        # The trainer keeps float32 weights: every micro-batch casts them to bf16 in its forward and adds
        # float32 copies of their gradients in its backward. A bf16 copy of the model shows what that costs.
        bf16_model = copy.deepcopy(model).to(dtype)
        bf16_model.cos, bf16_model.sin = model.cos, model.sin  # the rotary tables stay float32, as trained
        bf16_full = compile_(bf16_model, dynamic=False)
        measure("full, bf16 weights (bound on the casts)", fwd_bwd(lambda: bf16_full(x, y, reduction="sum")))
        del bf16_model, bf16_full
        torch._dynamo.reset()
    if "double" not in skip:
        x2, y2 = batch(2 * B)
        measure(
            f"full at micro-batch {2 * B} (candidate)",
            fwd_bwd(lambda: full(x2, y2, reduction="sum")),
            2 * tokens,
        )
        del x2, y2

    if "fused_qkv" not in skip:
        with mock.patch.object(CausalSelfAttention, "forward", fused_qkv_forward):
            torch._dynamo.reset()
            fused = compile_(model, dynamic=False)
            measure("fused qkv (candidate)", fwd_bwd(lambda: fused(x, y, reduction="sum")))
        torch._dynamo.reset()

    def measure_model_change(label: str) -> None:
        """The full micro-batch and the head, compiled afresh, under a change the caller made to the model."""
        torch._dynamo.reset()
        changed = compile_(model, dynamic=False)
        measure(f"full, {label} (candidate)", fwd_bwd(lambda: changed(x, y, reduction="sum")))
        if "head" not in skip:
            changed_head = compile_(head_loss, dynamic=False)
            measure(f"head, {label} (candidate)", fwd_bwd(lambda: changed_head(model, hidden, y, False)))

    if "sigmoid_softcap" not in skip:
        with mock.patch.object(GPT, "_softcap", sigmoid_softcap):
            measure_model_change("soft-cap by sigmoid")
        torch._dynamo.reset()

    # FP8 not on the CPU: torch._scaled_mm runs there (the tests use it), but as a slow reference loop.
    has_fp8 = device.type == "cuda" and torch.cuda.get_device_capability(device) >= FP8_CAPABILITY
    # On a GPU only: on the CPU the kernel runs only under the Triton interpreter (the tests run it there).
    if "fused_loss" not in skip and device.type == "cuda":
        from benchmarks.fused_head_loss import CompiledHeadLoss, fused_head
        from nanogpt.fused_loss import FusedFP8HeadLoss

        compiled_trunk_only = compile_(model.trunk, dynamic=False)  # the head runs eagerly: matmuls, kernel
        variants = {
            "fused Triton loss": {},
            "fused Triton loss, FP8 lm_head": {"function": FusedFP8HeadLoss},
            "loss and gradient compiled in the forward": {"function": CompiledHeadLoss},
        }
        for label, options in variants.items():
            if options.get("function") is FusedFP8HeadLoss and not has_fp8:
                continue
            step = fwd_bwd(
                lambda o=options: fused_head(model, compiled_trunk_only(x), y, reduction="sum", **o)
            )
            measure(f"full, {label} (candidate)", step)
            if "head" not in skip:
                step = fwd_bwd(lambda o=options: fused_head(model, hidden, y, reduction="sum", **o))
                measure(f"head, {label} (candidate)", step)
        if "head" not in skip:
            for block, num_warps in ((4096, 8), (16384, 16), (2048, 8)):  # beside the default 8192/16
                step = fwd_bwd(
                    lambda b=block, w=num_warps: fused_head(
                        model, hidden, y, reduction="sum", block=b, num_warps=w
                    )
                )
                measure(f"head, fused Triton loss, {block}/{num_warps} (candidate)", step)

    if "fp8" not in skip and has_fp8:
        with mock.patch.object(model, "fp8_head", True):
            measure_model_change("FP8 lm_head")
        torch._dynamo.reset()
        # The lm_head's matmul alone, forward and backward, exact and in FP8 (with its casts).
        head_in = torch.randn(tokens, config.n_embd, device=device, dtype=dtype, requires_grad=True)
        head_grad = torch.randn(tokens, config.padded_vocab_size, device=device, dtype=dtype)
        weight = model.lm_head.weight

        def exact_head() -> None:
            F.linear(head_in, weight.to(dtype)).backward(head_grad)

        def fp8_head_alone() -> None:
            FP8Linear.apply(head_in, weight).backward(head_grad)

        record("  lm_head matmuls alone", timed(exact_head, device, args.reps, args.warmup))
        # Eager: the scaling casts run unfused here, so this overstates what a compiled step pays for them.
        record("  lm_head alone, FP8, eager casts", timed(fp8_head_alone, device, args.reps, args.warmup))
        model.zero_grad(set_to_none=True)
        del head_in, head_grad

    # The optimizer step, once per `grad_accum` micro-batches, as the trainer builds it.
    run_config = RunConfig.from_dict(
        {
            "model": {"depth": args.depth, "sequence_len": T},
            "data": {"train_dir": "unused"},
            "train": {"num_steps": 1, "total_batch_tokens": grad_accum * tokens},
        }
    )
    hparams = effective_hparams(run_config, config)
    optimizer = build_optimizer(model, run_config, hparams, orth_dtype=dtype, process_group=None)
    with autocast:
        loss = model(x, y, reduction="sum")
    (loss * scale).backward()
    # step() consumes the gradients; later calls run the same kernels on zeros in their place.
    optimizer_s = timed(optimizer.step, device, args.reps, args.warmup)
    record(f"optimizer step / {grad_accum} micro-batches", optimizer_s / grad_accum)
    model.zero_grad(set_to_none=True)
    del optimizer

    # Floors: the model's matmuls alone, and the attention kernel alone.
    shapes = matmul_shapes(model, tokens)
    per_shape = {}
    for shape in set(shapes):
        a, b = matmul_operands(shape, device, dtype)
        per_shape[shape] = timed(lambda a=a, b=b: torch.mm(a, b), device, args.reps, args.warmup, calls=20)
        del a, b
    matmul_s = sum(per_shape[s] for s in shapes)
    flops = matmul_flops(shapes)
    record("floor: every matmul alone", matmul_s)
    q, k, v = (
        torch.randn(B, config.n_head, T, config.head_dim, device=device, dtype=dtype, requires_grad=True)
        for _ in range(3)
    )
    grad = torch.randn(B, config.n_head, T, config.head_dim, device=device, dtype=dtype)

    def attention() -> None:
        F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(grad)

    attention_s = timed(attention, device, args.reps, args.warmup, calls=4) * config.n_layer
    record(f"floor: attention alone (x{config.n_layer} layers)", attention_s)
    if device.type == "cuda" and "backends" not in skip:
        # The same kernel call under each of PyTorch's attention backends: the default picks one of them.
        for backend in (
            SDPBackend.FLASH_ATTENTION,
            SDPBackend.CUDNN_ATTENTION,
            SDPBackend.EFFICIENT_ATTENTION,
        ):
            try:
                with sdpa_kernel(backend):
                    seconds = timed(attention, device, args.reps, args.warmup, calls=4) * config.n_layer
            except RuntimeError as error:  # this backend does not take these inputs here
                print(f"attention backend {backend.name}: unavailable ({str(error).splitlines()[0]})")
                continue
            record(f"  attention alone, {backend.name.lower()}", seconds)
        if "cudnn" not in skip:
            torch._dynamo.reset()
            try:  # compiled under the backend, so that its kernel is the one in the graph
                with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                    cudnn_model = compile_(model, dynamic=False)
                    measure(
                        "full, cuDNN attention (candidate)",
                        fwd_bwd(lambda: cudnn_model(x, y, reduction="sum")),
                    )
            except RuntimeError as error:
                print(f"full, cuDNN attention: failed ({str(error).splitlines()[0]})")
            torch._dynamo.reset()

    if args.autotune:  # last: its compilation takes minutes, and every other row is printed by then
        torch._dynamo.reset()
        tuned = torch.compile(model, mode="max-autotune-no-cudagraphs", dynamic=False)
        measure("full, max-autotune (candidate)", fwd_bwd(lambda: tuned(x, y, reduction="sum")))
        # max-autotune also tunes the elementwise kernels (coordinate descent over their block sizes) and
        # tries Triton matmuls: alone, the first says what tuning the fused elementwise 30% buys.
        torch._dynamo.reset()
        tuned = torch.compile(model, dynamic=False, options={"coordinate_descent_tuning": True})
        measure("full, elementwise tuned (candidate)", fwd_bwd(lambda: tuned(x, y, reduction="sum")))

    full_s = rows[0]["ms"] / 1e3
    step_s = grad_accum * full_s + optimizer_s
    summary = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "depth": args.depth,
        "n_embd": config.n_embd,
        "micro_batch": B,
        "seq_len": T,
        "grad_accum": grad_accum,
        "matmul_flops_per_token": flops / tokens,
        "estimate_flops_per_token": model.estimate_flops(),
        "matmul_tflops_alone": flops / matmul_s / 1e12,
        "other_ms": (full_s - matmul_s - attention_s) * 1e3,
        "step_s_estimated": step_s,
        "tokens_per_s_estimated": grad_accum * tokens / step_s,
        "rows": rows,
    }
    print(
        f"\ndevice {summary['device']}, torch {summary['torch']}; depth {args.depth}, n_embd {config.n_embd},"
    )
    print(f"micro-batch {B} x {T} tokens, {grad_accum} per step of {grad_accum * tokens:,} tokens\n")
    print(f"{'part':40} {'ms':>9} {'tok/s':>12} {'of full':>8} {'compile s':>10}")
    for row in rows:
        share = row["ms"] / rows[0]["ms"]
        compile_s = "" if row["compile_s"] is None else f"{row['compile_s']:.1f}"
        print(f"{row['part']:40} {row['ms']:9.2f} {row['tokens_per_s']:12,.0f} {share:8.1%} {compile_s:>10}")
    rate, per_token = summary["matmul_tflops_alone"], flops / tokens / 1e6
    print(f"\nmatmuls alone: {rate:.0f} TFLOP/s over {per_token:.0f} MFLOP/token")
    print(f"full - matmuls - attention (norms, rotary, activations, loss): {summary['other_ms']:.2f} ms")
    print(f"step estimate: {step_s * 1e3:.1f} ms = {summary['tokens_per_s_estimated']:,.0f} tokens/s")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    main()
