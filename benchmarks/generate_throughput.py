"""Generation throughput: KV-cached decoding against recomputing the whole sequence at every step, with
the same model on the same device, in one run.

    python -m benchmarks.generate_throughput [--depth 12] [--batch-sizes 1,16] [--new-tokens 512] [--json F]
    python -m benchmarks.generate_throughput --tiny      # a depth-2 model on the CPU: checks the script only

The model is nanostudy's GPT at the given depth with GPT-2's vocabulary plus the two chat tokens (50,259
ids) and random weights (a trained model computes the same), run as `nanogpt.chat_engine.ChatEngine` runs
one: on CUDA its parameters are cast to bf16 once. Every batch starts from random prompts of
--prompt-tokens tokens and samples --new-tokens tokens per row (temperature 0.9, top-k 200, a fixed seed,
no stop token, so every row makes them all). Three ways, each timed from the prompt to the last token
(prefill included), best of --repeats:

- recompute: each step runs the blocks over the whole sequence so far and the head at its last position,
  and samples from it (generation without a cache, as nanoGPT's generate() does);
- kv-cache: `nanogpt.engine.generate` with a KVCache, every step eager;
- kv-cache + CUDA graph: `generate` with a `Decoder`, whose one-token step is a CUDA graph replayed
  (what ChatEngine does on a GPU; captured once per batch size before timing, its capture time reported).

All three hand every new token to the host at each step, as a streaming server must. Tokens/s counts new
tokens of all rows. Target (the chat issue): the cached path ≥ 5× the recompute rate at 512 new tokens.
A check runs first: greedy tokens of the cached paths against recompute's, with the same weights in
float32 (in bf16, two orders of arithmetic part at the first near tie of a random model); the agreeing
prefix is reported, and only a true tie can shorten it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from nanogpt.engine import Decoder, generate, sample_next_token
from nanogpt.model import GPT, GPTConfig

VOCAB_SIZE = 50_259  # GPT-2's 50,257 + <|im_start|>, <|im_end|>
TARGET = 5.0
SEED = 1234
SAMPLING = dict(temperature=0.9, top_k=200, top_p=None)


@dataclass
class Result:
    batch_size: int
    method: str
    new_tokens: int
    seconds: float  # best of the repeats
    tokens_per_s: float  # new tokens of all rows / seconds
    vs_recompute: float | None = None
    setup_s: float | None = None  # CUDA graph capture


def build_model(args, device: torch.device) -> GPT:
    config = GPTConfig(
        depth=args.depth,
        vocab_size=args.vocab_size,
        sequence_len=args.sequence_len,
        aspect_ratio=args.aspect_ratio,
        head_dim=args.head_dim,
    )
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)
    model.init_weights()
    with torch.no_grad():
        # init_weights zeroes the output projections: give every block matrix random weights, so that the
        # correctness check below compares models that use their context.
        generator = torch.Generator(device=device).manual_seed(SEED)
        for p in model.param_groups()["matrix"]:
            p.copy_(torch.randn(p.shape, device=device, generator=generator) / math.sqrt(p.size(1)))
    return model.eval()


def to_bfloat16(model: GPT) -> GPT:
    """A copy with every parameter in bf16, as ChatEngine runs a model on a GPU."""
    copy = GPT(model.config).to(next(model.parameters()).device)
    copy.load_state_dict(model.state_dict())
    for p in copy.parameters():
        p.data = p.data.to(torch.bfloat16)
    return copy.eval()


@torch.no_grad()
def recompute(model: GPT, prompts: torch.Tensor, new_tokens: int, **sampling) -> list[list[int]]:
    """Generation without a cache: the whole sequence through the blocks at every step, and the head at its
    last position only, as nanoGPT's generate() does (its forward without targets runs lm_head on x[:, [-1]]):
    the logits of every position, (B, T, vocab) in float32 at each step, would be work no generator does."""
    vocab_size = model.config.vocab_size
    seed = sampling.pop("seed")
    generator = torch.Generator(device=prompts.device).manual_seed(seed)
    idx, out = prompts, []
    for _ in range(new_tokens):
        logits = model.head(model.trunk(idx)[:, -1:])[:, -1, :vocab_size]
        next_ids = sample_next_token(logits, generator=generator, **sampling)
        out.append(next_ids.tolist())  # the host sees each token, as a streaming server does
        idx = torch.cat([idx, next_ids[:, None]], dim=1)
    return [list(row) for row in zip(*out, strict=True)]


def cached(model: GPT, prompts: torch.Tensor, new_tokens: int, decoder: Decoder | None = None, **sampling):
    steps = list(generate(model, prompts.tolist(), max_new_tokens=new_tokens, decoder=decoder, **sampling))
    return [list(row) for row in zip(*steps, strict=True)]


def timed(device: torch.device, run: Callable[[], object], repeats: int) -> tuple[float, object]:
    best, result = math.inf, None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, result


def agreeing_prefix(a: list[list[int]], b: list[list[int]]) -> int:
    """How many first tokens every row of a and b share."""
    return min(
        next((i for i, (x, y) in enumerate(zip(ra, rb, strict=True)) if x != y), len(ra))
        for ra, rb in zip(a, b, strict=True)
    )


def ways_to_generate(args, model: GPT, prompts: torch.Tensor) -> tuple[dict[str, Callable], float | None]:
    """{name: generate(new_tokens, **sampling)} for recompute, the eager KV cache and the chat engine's
    decoder (a CUDA graph on a GPU; on the CPU, or with --no-cuda-graphs, the same static-cache step
    eagerly), and the decoder's capture seconds (None when not captured)."""
    device, batch_size = prompts.device, prompts.size(0)
    start = time.perf_counter()
    decoder = Decoder(model, batch_size, cuda_graph=device.type == "cuda" and not args.no_cuda_graphs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    setup_s = time.perf_counter() - start
    static = "kv-cache + CUDA graph" if decoder.captured else "kv-cache, static cache (eager)"
    ways: dict[str, Callable[..., list[list[int]]]] = {
        "recompute": lambda n, **sampling: recompute(model, prompts, n, **sampling),
        "kv-cache": lambda n, **sampling: cached(model, prompts, n, **sampling),
        static: lambda n, **sampling: cached(model, prompts, n, decoder, **sampling),
    }
    return ways, setup_s if decoder.captured else None


def measure_batch(
    args, model: GPT, check_model: GPT, prompts: torch.Tensor
) -> tuple[list[Result], dict[str, int]]:
    """Each way to generate for one batch of prompts: its timings (with `model`), and its greedy agreement
    with recompute (with `check_model`, the same weights in float32)."""
    device, batch_size = prompts.device, prompts.size(0)
    # Correctness first: greedy continuations, cached against recomputed, in float32, where the ways part
    # only at a true tie (in bf16 two orders of arithmetic part at the first near tie of a random model).
    checked, _ = ways_to_generate(args, check_model, prompts)
    num_check = min(args.check_tokens, args.new_tokens)
    greedy = dict(temperature=0.0, top_k=None, top_p=None, seed=0)
    reference = checked["recompute"](num_check, **greedy)
    print(f"batch {batch_size}: greedy reference of {num_check} tokens done", file=sys.stderr, flush=True)
    checks = {name: agreeing_prefix(way(num_check, **greedy), reference) for name, way in checked.items()}
    del checks["recompute"], checked

    ways, capture_s = ways_to_generate(args, model, prompts)
    if capture_s is not None:
        print(f"batch {batch_size}: CUDA graph captured in {capture_s:.2f} s", file=sys.stderr, flush=True)

    results, base_rate = [], None
    for name, way in ways.items():
        run = lambda way=way: way(args.new_tokens, seed=SEED, **SAMPLING)
        if args.warmup:
            timed(device, lambda way=way: way(8, seed=SEED, **SAMPLING), 1)  # kernels, allocator
        seconds, tokens = timed(device, run, args.repeats)
        print(f"batch {batch_size}, {name}: {seconds:.2f} s", file=sys.stderr, flush=True)
        assert all(len(row) == args.new_tokens for row in tokens)
        rate = batch_size * args.new_tokens / seconds
        base_rate = base_rate or rate  # recompute comes first
        results.append(
            Result(
                batch_size=batch_size,
                method=name,
                new_tokens=args.new_tokens,
                seconds=seconds,
                tokens_per_s=rate,
                vs_recompute=rate / base_rate,
                setup_s=capture_s if name == "kv-cache + CUDA graph" else None,
            )
        )
    return results, checks


def measure(args) -> dict:
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else "cpu"
        if args.device == "auto"
        else args.device
    )
    check_model = build_model(args, device)
    model = to_bfloat16(check_model) if device.type == "cuda" else check_model
    num_params = sum(p.numel() for p in model.parameters())
    print(
        f"depth {args.depth} (n_embd {model.config.n_embd}, {num_params / 1e6:.1f}M parameters, vocab "
        f"{args.vocab_size}), {device}"
        + (f" {torch.cuda.get_device_name(device)}" if device.type == "cuda" else f", {os.cpu_count()} CPUs")
        + f", {str(model.lm_head.weight.dtype).removeprefix('torch.')}; torch {torch.__version__}; "
        f"prompts of {args.prompt_tokens} tokens, {args.new_tokens} new tokens per row"
    )
    generator = torch.Generator().manual_seed(SEED)
    results: list[Result] = []
    checks: dict[str, dict[str, int]] = {}
    for batch_size in args.batch_sizes:
        prompts = torch.randint(0, args.vocab_size, (batch_size, args.prompt_tokens), generator=generator)
        batch_results, batch_checks = measure_batch(args, model, check_model, prompts.to(device))
        results += batch_results
        checks[str(batch_size)] = batch_checks
    return {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "depth": args.depth,
        "num_params": num_params,
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
        "greedy_agreement": {"tokens": min(args.check_tokens, args.new_tokens), "agreeing_prefix": checks},
        "results": [asdict(r) for r in results],
        "load_average": os.getloadavg(),
    }


def print_table(report: dict) -> None:
    print("\n| batch | method | tokens/s | seconds | × recompute | capture s |")
    print("|---:|---|---:|---:|---:|---:|")
    for r in report["results"]:
        setup = "" if r["setup_s"] is None else f"{r['setup_s']:.2f}"
        print(
            f"| {r['batch_size']} | {r['method']} | {r['tokens_per_s']:,.0f} | {r['seconds']:.3f} | "
            f"{r['vs_recompute']:.2f}× | {setup} |"
        )
    check = report["greedy_agreement"]
    print(f"\ngreedy tokens equal to recompute's, of the first {check['tokens']}: {check['agreeing_prefix']}")
    best: dict[int, float] = {}
    for r in report["results"]:
        if r["method"] != "recompute":
            best[r["batch_size"]] = max(best.get(r["batch_size"], 0.0), r["vs_recompute"])
    for batch_size, ratio in best.items():
        verdict = "meets" if ratio >= TARGET else "misses"
        print(
            f"batch {batch_size}: cached decoding {ratio:.1f}× recompute; {verdict} the {TARGET:.0f}× target"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--aspect-ratio", type=int, default=64, dest="aspect_ratio")
    parser.add_argument("--head-dim", type=int, default=128, dest="head_dim")
    parser.add_argument("--sequence-len", type=int, default=1024, dest="sequence_len")
    parser.add_argument("--vocab-size", type=int, default=VOCAB_SIZE, dest="vocab_size")
    parser.add_argument("--prompt-tokens", type=int, default=128, dest="prompt_tokens")
    parser.add_argument("--new-tokens", type=int, default=512, dest="new_tokens")
    parser.add_argument("--batch-sizes", default="1,16", dest="batch_sizes", help="comma-separated")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many timings of each way")
    parser.add_argument("--check-tokens", type=int, default=32, dest="check_tokens")
    parser.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu, cuda[:N]")
    parser.add_argument("--no-cuda-graphs", action="store_true", dest="no_cuda_graphs")
    parser.add_argument("--no-warmup", action="store_false", dest="warmup")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="depth 2, width 32, 16 new tokens, on the CPU: checks the script only",
    )
    args = parser.parse_args(argv)
    args.batch_sizes = [int(b) for b in str(args.batch_sizes).split(",")]
    if args.tiny:
        args.depth, args.aspect_ratio, args.head_dim, args.sequence_len, args.vocab_size = 2, 16, 16, 64, 300
        args.prompt_tokens, args.new_tokens, args.batch_sizes, args.repeats, args.device = (
            8,
            16,
            [1, 2],
            1,
            "cpu",
        )
    if min(args.repeats, args.prompt_tokens, args.new_tokens, *args.batch_sizes) < 1:
        parser.error("--repeats, --prompt-tokens, --new-tokens and each of --batch-sizes must be at least 1")
    if args.prompt_tokens + args.new_tokens - 1 > args.sequence_len:
        parser.error(f"--prompt-tokens + --new-tokens - 1 must fit --sequence-len {args.sequence_len}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    report = measure(args)
    print_table(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return report


if __name__ == "__main__":
    main()
