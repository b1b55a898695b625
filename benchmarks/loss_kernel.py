"""The fused loss's kernel alone (nanogpt/fused_loss.py) against a copy of the same bytes; one run.

    python -m benchmarks.loss_kernel [--rows 32768] [--vocab-size 50257] [--json out.json]
    TRITON_INTERPRET=1 python -m benchmarks.loss_kernel --device cpu --rows 8 --vocab-size 300 --reps 1

The kernel reads the logits (bf16, rows × padded vocabulary: 3.3 GB at depth 12's micro-batch) and writes
their gradient in their place, as the trainer runs it. A copy of the logits into another buffer moves the
same bytes once each way, so its time is the kernel's floor if the kernel were bound by memory alone; the
kernel's time over the copy's says how much of it is arithmetic (the soft-cap's tanh and the exp, twice per
logit) and other overhead. Timed: the kernel as the trainer runs it (the tanh by the GPU's tanh.approx.f32,
blocks of 8192 logits by 16 warps), without soft-cap (no tanh), with the tanh through the sigmoid, and at
blocks/warps of 4096/8, 2048/8 and 16384/16; then the FP8 head's part (`fp8_head`): the kernel writing
the gradient in e5m2 into a buffer of its own, and that buffer's transpose beside a copy of its bytes.
Under the interpreter (the CPU) the tanh is always the sigmoid's, and blocks are of 256 only. Each
variant's losses and gradient are checked on the first rows against F.cross_entropy in float32, so a fast
wrong kernel shows; the transpose against torch's. CUDA events, the median of `--reps` after warm-up.
"""

import argparse
import json
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

from nanogpt.fused_loss import BLOCK, FP8_GRAD_MULTIPLIER, NUM_WARPS, losses_writing_grad, transpose

CHECKED_ROWS = 64


def reference(logits: torch.Tensor, targets: torch.Tensor, cap: float | None, vocab_size: int):
    """Each row's loss and the gradient of their sum over the logits, in float32 by torch."""
    z = logits.float().requires_grad_()
    capped = z[:, :vocab_size] if cap is None else cap * torch.tanh(z[:, :vocab_size] / cap)
    losses = F.cross_entropy(capped, targets, ignore_index=-1, reduction="none")
    (grad,) = torch.autograd.grad(losses.sum(), z)
    return losses.detach(), grad


def time_ms(fn, reps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    if device.type != "cuda":
        return float("nan")
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=32 * 1024, help="tokens of a micro-batch")
    parser.add_argument("--vocab-size", type=int, default=50257)
    parser.add_argument("--cap", type=float, default=15.0)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    padded = -(-args.vocab_size // 64) * 64
    generator = torch.Generator(device=device).manual_seed(0)
    # Logits of a trained head's spread (a few units), bf16 as the lm_head's matmul gives them.
    logits = (4 * torch.randn(args.rows, padded, device=device, generator=generator)).bfloat16()
    targets = torch.randint(0, args.vocab_size, (args.rows,), device=device, generator=generator)
    targets[::7] = -1  # some ignored rows, as masked tokens
    work = torch.empty_like(logits)
    gigabytes = 2 * logits.numel() * logits.element_size() / 1e9
    small = device.type != "cuda"  # under the interpreter: small blocks (the tanh is the sigmoid's there)

    variants: list[tuple[str, dict]] = [
        ("as trained", {}),
        ("as trained, no soft-cap", {"cap": None}),
        ("as trained, sigmoid tanh", {"fast_tanh": False}),
    ]
    for block, warps in ((4096, 8), (2048, 8), (8192, 16), (16384, 16)):
        # The default is "as trained"; under the interpreter every block is cut to 256 (they would repeat it).
        if (block, warps) != (BLOCK, NUM_WARPS) and not small:
            variants.append((f"as trained, {block}/{warps}", {"block": block, "num_warps": warps}))

    def run(into: torch.Tensor, kwargs: dict) -> torch.Tensor:
        k = {"cap": args.cap, "block": BLOCK, "num_warps": NUM_WARPS, **kwargs}
        if small:
            k["block"] = min(k["block"], 256)
        cap, block, warps = k.pop("cap"), k.pop("block"), k.pop("num_warps")
        return losses_writing_grad(into, targets, into, cap, args.vocab_size, 1.0, block, warps, False, **k)

    rows: list[dict] = []
    copy_ms = time_ms(lambda: work.copy_(logits), args.reps, args.warmup, device)
    rows.append({"name": "copy of the logits (the floor)", "ms": copy_ms})
    checked = logits[:CHECKED_ROWS].clone()
    references = {
        cap: reference(checked, targets[:CHECKED_ROWS], cap, args.vocab_size) for cap in (args.cap, None)
    }
    for name, kwargs in variants:
        # Correctness first, on a fresh copy of the first rows (the kernel writes the gradient in place).
        cap = kwargs.get("cap", args.cap)
        expected_losses, expected_grad = references[cap]
        head = checked.clone()
        got = run(head, kwargs | {"cap": cap})
        loss_error = (got - expected_losses).abs().max().item()
        grad_error = (head.float() - expected_grad).abs().max().item()
        work.copy_(logits)
        ms = time_ms(lambda kw=kwargs: run(work, kw), args.reps, args.warmup, device)
        rows.append({"name": name, "ms": ms, "loss_error": loss_error, "grad_error": grad_error})

    # The FP8 head's part (nanogpt.fused_loss.FusedFP8HeadLoss): the kernel writing the gradient in e5m2
    # into a buffer of its own, then that buffer's transpose, beside a copy of the same bytes.
    grad8 = torch.empty(logits.shape, device=device, dtype=torch.float8_e5m2)
    copy8 = torch.empty_like(grad8)

    def fp8_kernel() -> torch.Tensor:
        block = min(BLOCK, 256) if small else BLOCK
        settings = (args.cap, args.vocab_size, FP8_GRAD_MULTIPLIER, block, NUM_WARPS, True)
        return losses_writing_grad(logits, targets, grad8, *settings)

    got = fp8_kernel()[:CHECKED_ROWS]
    expected_losses, expected_grad = references[args.cap]
    fp8_grad_error = (grad8[:CHECKED_ROWS].float() / FP8_GRAD_MULTIPLIER - expected_grad).abs().max().item()
    rows.append({
        "name": "FP8 head: e5m2 gradient into its own buffer",
        "ms": time_ms(fp8_kernel, args.reps, args.warmup, device),
        "loss_error": (got - expected_losses).abs().max().item(), "grad_error": fp8_grad_error,
        # Its GB/s counts the bf16 logits read and its one-byte gradient written, not a bf16 copy's bytes.
        "gigabytes_moved": logits.numel() * (logits.element_size() + grad8.element_size()) / 1e9,
    })  # fmt: skip
    transposed_right = torch.equal(
        transpose(grad8).view(torch.uint8), grad8.t().contiguous().view(torch.uint8)
    )
    transpose_ms = time_ms(lambda: transpose(grad8), args.reps, args.warmup, device)
    copy8_ms = time_ms(lambda: copy8.copy_(grad8), args.reps, args.warmup, device)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    shape = f"{args.rows} rows x {padded} logits (bf16), cap {args.cap}"
    print(f"device {name}, torch {torch.__version__}; {shape}")
    print(f"{'kernel':<50} {'ms':>8} {'GB/s':>7} {'x copy':>7} {'loss err':>9} {'grad err':>9}")
    trained = rows[1]["ms"]
    for row in rows:
        errors = ""
        if "loss_error" in row:
            errors = f" {row['loss_error']:9.2e} {row['grad_error']:9.2e}"
        rate = row.get("gigabytes_moved", gigabytes) / row["ms"] * 1e3
        print(f"{row['name']:<50} {row['ms']:8.3f} {rate:7.0f} {row['ms'] / copy_ms:7.2f}{errors}")
    print(
        f"transpose of the e5m2 gradient: {transpose_ms:.3f} ms, {transpose_ms / copy8_ms:.2f}x a copy of "
        f"its bytes ({copy8_ms:.3f} ms); equal to torch's: {transposed_right}"
    )
    rows.append({"name": "transpose of the e5m2 gradient", "ms": transpose_ms, "copy_ms": copy8_ms,
                 "equal": transposed_right})  # fmt: skip
    best = min(rows[1:-2], key=lambda r: r["ms"])
    print(f"fastest: {best['name']}, {trained / best['ms']:.2f}x the kernel as trained")
    result = {"device": name, "torch": torch.__version__, "rows": args.rows, "padded_vocab": padded,
              "gigabytes_moved": gigabytes, "results": rows}  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
