"""Eval gauntlet throughput: the full core preset batched (padded to length buckets) against scoring one
example at a time, on the same model and GPU, in one run.

    python -m benchmarks.eval_throughput --eval-bundle ../shared/eval_bundle [--depth 12] [--json out.json]
    python -m benchmarks.eval_throughput --eval-bundle B --checkpoint runs/study/CELL   # a trained model
    python -m benchmarks.eval_throughput --tiny --eval-bundle B                          # CPU, seconds
    python -m benchmarks.eval_throughput --device cpu --depth 1 --max-examples 4 --eval-bundle B  # CPU

1. Prepare the preset (read, validate, render, tokenize; timed apart).
2. Batched: `run_gauntlet` over every example of every task, as the trainer and `nanostudy eval` run it.
3. One at a time: the same decision code (`score_items`) with batching off (one sequence per forward,
   no padding; one prompt per generation) on `--reference-examples` examples of each task; the preset's
   one-at-a-time time is each task's seconds per example times its number of examples, summed.
4. The decisions of both on the sampled examples are compared (they agree, up to bf16 rounding of
   near-ties on a GPU).

Prints examples/s of each, the speedup, the whole preset's seconds against the targets (issue: >= 10x the
one-at-a-time rate, the whole core preset in <= 3 minutes on one H100), and per-task times. A random-init
model is the default: its generations never meet a stop string, so every generation task runs to its
max_new_tokens (the slowest case); `--checkpoint` measures a trained model.
"""

import argparse
import contextlib
import json
import platform
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.random_data import byte_tokenizer
from nanogpt.gauntlet.evaluate import load_for_eval, prepare, run_gauntlet, score_items
from nanogpt.model import GPT, GPTConfig
from nanogpt.tokenizer import Tokenizer, load_tokenizer

DEFAULT_GPT2 = Path(__file__).resolve().parents[2] / "shared" / "tokenizers" / "gpt2"
TINY_PRESET = "copa,winograd,lambada_openai,svamp"  # one task of each type; tiny mode's default
TARGET_SPEEDUP = 10.0
TARGET_SECONDS = 180.0


@dataclass
class TaskTiming:
    task: str
    kind: str
    num_examples: int
    batched_s: float
    sampled: int  # examples scored one at a time
    one_at_a_time_s: float  # for the sampled examples
    agreement: float  # fraction of the sampled examples decided the same by both

    @property
    def one_at_a_time_estimate_s(self) -> float:
        return self.one_at_a_time_s / max(self.sampled, 1) * self.num_examples


def build_model(args: argparse.Namespace, device: str) -> tuple[GPT, Tokenizer, str]:
    if args.checkpoint:
        model, tokenizer, meta = load_for_eval(args.checkpoint, device)
        return model, tokenizer, f"checkpoint {args.checkpoint} (step {meta['step']})"
    if args.tiny:
        tokenizer = byte_tokenizer()
        config = GPTConfig(
            depth=1, vocab_size=tokenizer.vocab_size, sequence_len=64, aspect_ratio=16, head_dim=16
        )
    else:
        tokenizer = load_tokenizer(args.tokenizer)
        config = GPTConfig(depth=args.depth, vocab_size=tokenizer.vocab_size, sequence_len=args.seq_len)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)
    model.init_weights()
    model.eval()
    shape = f"depth {config.depth}, n_embd {config.n_embd}, sequence_len {config.sequence_len}"
    return model, tokenizer, f"random-init GPT ({shape})"


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval-bundle", required=True, help="the eval bundle folder")
    parser.add_argument("--preset", help="default: core (tiny: one task of each type)")
    parser.add_argument("--max-examples", type=int, help="examples per task (default: all; tiny: 16)")
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--tokenizer", default=str(DEFAULT_GPT2), help="gpt2, or a folder of GPT-2's files")
    parser.add_argument("--checkpoint", help="score this checkpoint instead of a random-init model")
    parser.add_argument("--batch-tokens", type=int, default=16_384, help="tokens per batched forward")
    parser.add_argument("--reference-examples", type=int, default=16, help="per task, one at a time")
    parser.add_argument("--tiny", action="store_true", help="a depth-1 byte-level model on the CPU")
    parser.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda (tiny: cpu)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.reference_examples < 1:  # no example timed one at a time: no rate to compare with, no speedup
        parser.error(f"--reference-examples must be at least 1, got {args.reference_examples}")
    device = args.device or ("cpu" if args.tiny else "cuda")
    if device == "cuda":
        assert torch.cuda.is_available(), "this benchmark needs a CUDA GPU (or --tiny for the CPU)"
        torch.backends.cuda.matmul.allow_tf32 = True
    preset = args.preset or (TINY_PRESET if args.tiny else "core")
    max_examples = args.max_examples or (16 if args.tiny else None)
    autocast = (
        torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        if device == "cuda"
        else contextlib.nullcontext()
    )

    model, tokenizer, described = build_model(args, device)
    t0 = time.perf_counter()
    gauntlet = prepare(preset, args.eval_bundle, tokenizer, max_examples=max_examples)
    prepare_s = time.perf_counter() - t0
    for warning in gauntlet.warnings:
        print(warning, file=sys.stderr)
    progress(f"prepared {len(gauntlet.tasks)} tasks in {prepare_s:.1f} s")

    # Warm-up (CUDA context, kernels, allocator): a few examples of each task, untimed.
    with autocast:
        for task in gauntlet.tasks:
            score_items(model, task.spec, task.items[:2], tokenizer, max_batch_tokens=args.batch_tokens)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    t0 = time.perf_counter()
    with autocast:
        result = run_gauntlet(
            model,
            gauntlet,
            tokenizer,
            max_batch_tokens=args.batch_tokens,
            on_task=lambda name, s: progress(f"batched: {name} in {s:.1f} s"),
        )
    sync(device)
    batched_s = time.perf_counter() - t0
    progress(f"batched: the whole preset in {batched_s:.1f} s")
    peak_gib = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None

    timings = []
    for task in gauntlet.tasks:
        # A seeded random sample, not the first examples: a bundle ordered by length would bias the rate.
        sample = random.Random(0).sample(list(task.items), min(args.reference_examples, len(task.items)))
        sync(device)
        t0 = time.perf_counter()
        with autocast:
            alone = score_items(
                model, task.spec, sample, tokenizer, max_batch_tokens=1, pad_multiple=1, max_generation_rows=1
            )
        sync(device)
        one_s = time.perf_counter() - t0
        with autocast:
            together = score_items(model, task.spec, sample, tokenizer, max_batch_tokens=args.batch_tokens)
        agreement = float(np.mean(alone[:, 1] == together[:, 1])) if sample else 1.0
        progress(f"one at a time: {task.spec.name}, {len(sample)} examples in {one_s:.1f} s")
        timings.append(
            TaskTiming(
                task=task.spec.name,
                kind=task.spec.kind,
                num_examples=len(task.items),
                batched_s=result.seconds[task.spec.name],
                sampled=len(sample),
                one_at_a_time_s=one_s,
                agreement=agreement,
            )
        )

    num_examples = sum(t.num_examples for t in timings)
    one_at_a_time_s = sum(t.one_at_a_time_estimate_s for t in timings)
    summary = {
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "model": described,
        "preset": preset,
        "max_examples": max_examples,
        "batch_tokens": args.batch_tokens,
        "num_tasks": len(timings),
        "num_examples": num_examples,
        "prepare_s": prepare_s,
        "batched_s": batched_s,
        "batched_examples_per_s": num_examples / batched_s,
        "one_at_a_time_s_estimated": one_at_a_time_s,
        "one_at_a_time_examples_per_s": num_examples / one_at_a_time_s,
        "speedup": one_at_a_time_s / batched_s,
        "agreement": min((t.agreement for t in timings), default=1.0),
        "peak_memory_gib": peak_gib,
        "headline": {a.name: a.score for a in result.aggregates},
        "tasks": [{**asdict(t), "one_at_a_time_estimate_s": t.one_at_a_time_estimate_s} for t in timings],
    }
    _print(summary)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def progress(line: str) -> None:
    """A line on stderr as each phase ends: a run cut short by a time limit still shows how far it got."""
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def _print(summary: dict) -> None:
    print(f"device: {summary['device']}  torch {summary['torch']}  model: {summary['model']}")
    print(f"preset {summary['preset']}: {summary['num_tasks']} tasks, {summary['num_examples']:,} examples")
    print(f"prepare (read, validate, render, tokenize): {summary['prepare_s']:.1f} s\n")
    print(f"{'task':32} {'kind':28} {'examples':>8} {'batched s':>10} {'1-by-1 s (est.)':>16} {'agree':>6}")
    for t in summary["tasks"]:
        print(
            f"{t['task']:32} {t['kind']:28} {t['num_examples']:8,} {t['batched_s']:10.2f} "
            f"{t['one_at_a_time_estimate_s']:16.1f} {t['agreement']:6.0%}"
        )
    speedup, seconds = summary["speedup"], summary["batched_s"]
    one_rate, one_s = summary["one_at_a_time_examples_per_s"], summary["one_at_a_time_s_estimated"]
    print(f"\nbatched: {summary['batched_examples_per_s']:,.0f} examples/s ({seconds:.1f} s)")
    print(f"one at a time: {one_rate:,.1f} examples/s ({one_s:.0f} s, estimated from the sampled examples)")
    verdict = "met" if speedup >= TARGET_SPEEDUP else "missed"
    print(f"speedup: {speedup:.1f}x (target >= {TARGET_SPEEDUP:.0f}x: {verdict})")
    print(f"whole preset: {seconds:.1f} s (target <= {TARGET_SECONDS:.0f} s on one H100: ", end="")
    print(f"{'met' if seconds <= TARGET_SECONDS else 'missed'})")
    if summary["peak_memory_gib"] is not None:
        print(f"peak GPU memory: {summary['peak_memory_gib']:.1f} GiB")


if __name__ == "__main__":
    main()
