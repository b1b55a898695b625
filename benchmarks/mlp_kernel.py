"""The fused ReLU² MLP (nanogpt/fused_mlp.py) against cuBLAS and the compiled MLP, one layer; one run.

    python -m benchmarks.mlp_kernel [--depth 12] [--rows 32768] [--json out.json]
    TRITON_INTERPRET=1 python -m benchmarks.mlp_kernel --device cpu --depth 1 --rows 96 --reps 1

At depth 12 (n_embd 768, hidden 3,072, micro-batch 32 × 1,024 tokens), bf16:
- the forward kernel (h = x @ W_fcᵀ, writing relu(h)²) against cuBLAS's matmul alone (writing h): what our
  matmul costs over cuBLAS's, for each launch (tiles, stages, warps, persistent, loads by address or TMA);
- the backward kernel (dy @ W_proj, times 2·√relu(h)² read in the epilogue) against cuBLAS's matmul alone;
- the whole MLP, forward and backward, fused against the compiled MLP as the trainer's blocks run it (cuBLAS
  matmuls, torch.compile's elementwise kernels). That ratio is what a layer gains.
Each launch's outputs are checked against cuBLAS's (the same bf16 products, summed in another order) before
it is timed, so a fast wrong kernel shows. CUDA events, the median of `--reps` after warm-up.
"""

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.loss_kernel import time_ms
from nanogpt.fused_mlp import (
    BACKWARD_TILES,
    TILES,
    Tiles,
    launchable,
    linear_relu2,
    relu2_backward,
    relu2_mlp,
)
from nanogpt.model import GPTConfig

# Launches tried beside the trainer's (TILES forward, BACKWARD_TILES backward): block_m, block_n, block_k,
# group_m, stages, warps, then persistent, tma, subtile. The fastest of each kind at 131,072 rows on
# 2026-12-07 (docs/benchmarks.md): by address, through TMA, and through TMA with the epilogue in halves.
CANDIDATES = [
    Tiles(128, 128, 64, 8, 3, 4),
    Tiles(128, 128, 64, 8, 4, 4, persistent=True, tma=True),
    Tiles(128, 256, 64, 8, 3, 8, tma=True),
    Tiles(128, 256, 64, 8, 3, 8, persistent=True, tma=True, subtile=True),
    Tiles(128, 128, 64, 8, 4, 4, persistent=True, tma=True, subtile=True),
    # Not yet measured: other tile shapes, a deeper reduction block (K is 768: 6 steps of 128), other groups.
    Tiles(256, 128, 64, 8, 3, 8, persistent=True),
    Tiles(128, 256, 128, 8, 2, 8, persistent=True),
    Tiles(128, 256, 64, 4, 3, 8, persistent=True),
    Tiles(128, 256, 64, 16, 3, 8, persistent=True),
    Tiles(256, 128, 64, 8, 3, 8, persistent=True, tma=True, subtile=True),
]
SMALL = Tiles(32, 64, 32, 2, 1, 4)  # under the interpreter


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    expected = expected.float()
    return ((got.float() - expected).norm() / expected.norm().clamp(min=1e-30)).item()


# The largest error against cuBLAS of a launch `fastest` may choose: bf16 rounding leaves about 2e-3 on a GPU
# (the interpreter's truncation, up to 1.6e-2); past this a launch computes something else (a warp-specialized
# one at 5 stages did on an H100, 2026-12-07: 7e-2 forward, NaN backward).
MAX_RELATIVE_ERROR = 2e-2


def fastest(rows: list[dict], direction: str) -> tuple[Tiles, float]:
    """The fastest launch of `direction` ("forward" or "backward") among `rows` (main's results) that ran
    and computed the right numbers, and its time."""
    timed = [
        r
        for r in rows
        if r.get("direction") == direction and not r["error"] and r["relative_error"] <= MAX_RELATIVE_ERROR
    ]
    best = min(timed, key=lambda r: r["ms"])
    return Tiles(*best["tiles"]), best["ms"]


def describe(tiles: Tiles) -> str:
    kind = ", persistent" * tiles.persistent + ", TMA" * tiles.tma + ", subtiled epilogue" * tiles.subtile
    return (
        f"{tiles.block_m}x{tiles.block_n}x{tiles.block_k}, {tiles.stages} stages, {tiles.warps} warps{kind}"
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--rows", type=int, default=32 * 1024, help="tokens of a micro-batch")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--tma-only", action="store_true", help="of the candidates, only the TMA ones")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    small = device.type != "cuda"
    width = GPTConfig(depth=args.depth, vocab_size=64).n_embd
    if small:
        width = 64  # the interpreter: a few blocks of everything
    hidden = 4 * width
    generator = torch.Generator(device=device).manual_seed(0)

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (scale * torch.randn(*shape, device=device, generator=generator)).bfloat16()

    # Unit-scale inputs (RMS-normed, as the blocks give them) and weights of the init's scale.
    x, dy = randn(args.rows, width), randn(args.rows, width)
    w_fc, w_proj = randn(hidden, width, scale=width**-0.5), randn(width, hidden, scale=hidden**-0.5)
    h = x @ w_fc.t()  # cuBLAS: what the checks compare with
    post_expected = F.relu(h.float()).square()
    grad_pre_expected = (dy @ w_proj).float() * 2 * F.relu(h.float())
    reps, warmup = args.reps, args.warmup

    rows: list[dict] = []
    matmul_ms = time_ms(lambda: x @ w_fc.t(), reps, warmup, device)
    rows.append({"name": "forward: cuBLAS h = x @ W_fc^T alone", "ms": matmul_ms})
    back_ms = time_ms(lambda: dy @ w_proj, reps, warmup, device)
    rows.append({"name": "backward: cuBLAS dy @ W_proj alone", "ms": back_ms})
    candidates = [tiles for tiles in CANDIDATES if tiles.tma or not args.tma_only]
    small_launches = [SMALL, SMALL._replace(tma=True), SMALL._replace(tma=True, subtile=True)]
    launches = small_launches if small else [TILES, BACKWARD_TILES, *candidates]
    launches = list(dict.fromkeys(launches))  # each once
    # The backward reads relu(h)², here from cuBLAS's h: each direction is checked and timed on its own (a
    # launch may fit the GPU's shared memory one way only).
    post = post_expected.bfloat16()
    for tiles in launches:
        name = describe(tiles)
        for direction, run, reference_ms, trained in (
            ("forward", lambda t=tiles: linear_relu2(x, w_fc, t), matmul_ms, TILES),
            ("backward", lambda t=tiles: relu2_backward(dy, w_proj, post, t), back_ms, BACKWARD_TILES),
        ):
            label = f"{direction} kernel, {name}" + (" (trained)" if tiles == trained else "")
            runs_as = launchable(tiles, device, direction == "backward")
            if runs_as != tiles:  # too much shared memory here: the kernels would run another launch
                error = f"not run: this GPU would run it as {describe(runs_as)}"
                rows.append({"name": f"{label}: not run", "error": error})
                continue
            try:
                got = run()
            except Exception as e:  # a launch that does not build or launch here: reported, not fatal
                error = f"{type(e).__name__}: {e}".splitlines()[0][:200]
                rows.append({"name": f"{label}: failed", "error": error})
                continue
            error = relative_error(got, post_expected if direction == "forward" else grad_pre_expected)
            ms = time_ms(run, reps, warmup, device)
            row = {"name": label, "direction": direction, "tiles": list(tiles), "ms": ms, "error": None}
            rows.append(row | {"x_cublas": ms / reference_ms, "relative_error": error})

    # The whole layer, forward and backward: the compiled MLP as the blocks run it, then ours (the
    # trainer's launch), on leaves that take gradients as the weights do in training.
    def compiled_mlp(x, w_fc, w_proj):
        return F.relu(x @ w_fc.t()).square() @ w_proj.t()

    compiled = compiled_mlp if small else torch.compile(compiled_mlp, dynamic=False)
    layers = {}
    for name, fn in (
        ("compiled MLP (cuBLAS + torch.compile)", compiled),
        ("fused MLP (trained launch)", relu2_mlp),
    ):
        leaves = [t.detach().clone().requires_grad_() for t in (x, w_fc, w_proj)]

        def step(fn=fn, leaves=leaves):
            for leaf in leaves:
                leaf.grad = None
            fn(*leaves).backward(dy)

        step()
        layers[name] = [leaf.grad.clone() for leaf in leaves]
        ms = time_ms(step, reps, warmup, device)
        rows.append({"name": f"layer forward + backward: {name}", "ms": ms})
    ours, theirs = layers.values()
    grad_errors = [relative_error(a, b) for a, b in zip(theirs, ours, strict=True)]
    rows[-1]["grad_errors_x_wfc_wproj"] = grad_errors

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"device {name}, torch {torch.__version__}; {args.rows} rows, n_embd {width}, hidden {hidden}, bf16"
    )
    print(f"{'':<80} {'ms':>8} {'x cuBLAS':>9} {'rel err':>8}")
    for row in rows:
        if row.get("error"):
            print(f"{row['name']:<80} {row['error']}")
            continue
        extra = f" {row['x_cublas']:9.2f} {row['relative_error']:8.1e}" if "x_cublas" in row else ""
        print(f"{row['name']:<80} {row['ms']:8.3f}{extra}")
    for direction in ("forward", "backward"):
        tiles, ms = fastest(rows, direction)
        print(f"fastest {direction} launch: {describe(tiles)}, {ms:.3f} ms")
    compiled_ms, fused_ms = rows[-2]["ms"], rows[-1]["ms"]
    print(f"layer: fused / compiled = {fused_ms / compiled_ms:.3f}; gradient errors (x, W_fc, W_proj) "
          + ", ".join(f"{e:.1e}" for e in grad_errors))  # fmt: skip
    result = {"device": name, "torch": torch.__version__, "rows": args.rows, "n_embd": width, "results": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
