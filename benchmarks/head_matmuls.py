"""The lm_head's three matmuls in bf16 (autograd's layouts) beside FP8 (`torch._scaled_mm`, the layouts
nanogpt.fused_loss.FusedFP8HeadLoss gives it), and the one-byte transpose FP8 needs, by torch and by
nanogpt.fused_loss.transpose; one run.

    python -m benchmarks.head_matmuls [--rows 131072] [--width 768] [--vocab 50304] [--json out.json]

At depth 12's micro-batch of 128 sequences: x (rows × width), the weight (vocab × width), the logits'
gradient g (rows × vocab). bf16: x @ wᵀ, g @ w, gᵀ @ x as autograd runs them (transposed views). FP8: the
same products with x and w in e4m3 and g in e5m2, each operand along its inner dimension, products in
float32 (and with `use_fast_accum`, cuBLAS's faster accumulation, for comparison: the trainer does not
use it). Each FP8 product is checked against the float32 product of the same rounded operands on the
first 4,096 rows (relative error of the whole matrix), so a fast wrong call shows. CUDA events, the
median of `--reps` after warm-up; on the CPU (for the tests) shapes are tiny and times are not taken.
"""

import argparse
import json
from pathlib import Path

import torch

from benchmarks.loss_kernel import time_ms
from nanogpt.fused_loss import transpose


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=128 * 1024, help="tokens of a micro-batch")
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=50304, help="the padded vocabulary")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    R, C, V = args.rows, args.width, args.vocab
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(R, C, device=device, generator=generator).bfloat16()
    w = (0.02 * torch.randn(V, C, device=device, generator=generator)).bfloat16()
    g = (1e-3 * torch.randn(R, V, device=device, generator=generator)).bfloat16()
    one = torch.ones((), device=device)

    def scaled(a, b, out_dtype=torch.bfloat16, fast=False):
        return torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=out_dtype, use_fast_accum=fast)

    def products(x, w, g, g8) -> dict:
        """name → (the bf16 product, the FP8 one given fast accumulation or not, the float32 product of
        the FP8 one's rounded operands, as a function: at full size it would not fit beside the rest)."""
        x8, w8 = x.to(torch.float8_e4m3fn), (w * 50).to(torch.float8_e4m3fn)
        w_columns, g_transposed, x_columns = transpose(w8).t(), transpose(g8), transpose(x8).t()
        return {
            "forward: logits = x @ wᵀ": (
                lambda: x @ w.t(), lambda f: scaled(x8, w8.t(), fast=f), lambda: x8.float() @ w8.float().t()
            ),
            "x's gradient: g @ w": (
                lambda: g @ w, lambda f: scaled(g8, w_columns, fast=f), lambda: g8.float() @ w8.float()
            ),
            "weight's gradient: gᵀ @ x": (
                lambda: g.t() @ x, lambda f: scaled(g_transposed, x_columns, torch.float32, f),
                lambda: g8.float().t() @ x8.float(),
            ),
        }  # fmt: skip

    # Checked on the first rows (at most 4,096), timed on all of them.
    k = min(R, 4096)
    g8 = (g * 1000).to(torch.float8_e5m2)
    checked = products(x[:k].contiguous(), w, g[:k].contiguous(), g8[:k].contiguous())
    timed = products(x, w, g, g8)
    flops = 2 * R * C * V
    rows: list[dict] = []
    for name, (bf16, fp8, _) in timed.items():
        _, fp8_checked, expected_of = checked[name]
        expected = expected_of()
        row = {"name": name, "bf16_ms": time_ms(bf16, args.reps, args.warmup, device)}
        for fast in (False, True):
            got = fp8_checked(fast)
            error = ((got.float() - expected).norm() / expected.norm()).item()
            key = "fp8_fast_ms" if fast else "fp8_ms"
            row[key] = time_ms(lambda f=fast, p=fp8: p(f), args.reps, args.warmup, device)
            row[key.replace("_ms", "_error")] = error
        rows.append(row)
    transposes = {
        "transpose of g (e5m2), torch": lambda: g8.t().contiguous(),
        "transpose of g (e5m2), nanogpt.fused_loss.transpose": lambda: transpose(g8),
    }
    right = torch.equal(transpose(g8).view(torch.uint8), g8.t().contiguous().view(torch.uint8))
    copy8 = torch.empty_like(g8)
    copy_ms = time_ms(lambda: copy8.copy_(g8), args.reps, args.warmup, device)
    moves = [
        {"name": name, "ms": time_ms(fn, args.reps, args.warmup, device)} for name, fn in transposes.items()
    ]

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}; {R} rows x {C} x {V}")
    print(f"{'product':<28} {'bf16 ms':>8} {'FP8 ms':>8} {'x bf16':>7} {'TFLOP/s':>8} {'err':>8} "
          f"{'fast ms':>8} {'fast err':>9}")  # fmt: skip
    for row in rows:
        ratio = row["fp8_ms"] / row["bf16_ms"]
        print(
            f"{row['name']:<28} {row['bf16_ms']:8.3f} {row['fp8_ms']:8.3f} {ratio:7.2f} "
            f"{flops / row['fp8_ms'] / 1e9:8.0f} {row['fp8_error']:8.1e} {row['fp8_fast_ms']:8.3f} "
            f"{row['fp8_fast_error']:9.1e}"
        )
    bf16_total, fp8_total = sum(r["bf16_ms"] for r in rows), sum(r["fp8_ms"] for r in rows)
    print(f"three products: bf16 {bf16_total:.3f} ms, FP8 {fp8_total:.3f} ms ({fp8_total / bf16_total:.2f}x)")
    for move in moves:
        print(f"{move['name']:<52} {move['ms']:8.3f} ms, {move['ms'] / copy_ms:5.2f}x a copy of its bytes")
    print(f"copy of g's bytes: {copy_ms:.3f} ms; the transposes agree: {right}")
    result = {"device": name, "torch": torch.__version__, "rows": R, "width": C, "vocab": V, "products": rows,
              "transposes": moves, "copy_ms": copy_ms, "transposes_agree": right}  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
