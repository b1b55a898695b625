"""Training throughput of our trainer beside the classic nanoGPT recipe, on the same GPU, in one run.

    python -m benchmarks.train_throughput [--depth 12] [--seq-len 1024] [--total-batch 524288]

Prints, for each: tokens/s, MFU against the H100's 989 TFLOP/s dense bf16 peak and against a bf16
8192^3 matmul measured here first, compile/start-up seconds and peak memory; then the ratio ours/ref.
Both train on the same random tokens with the same total batch (gradient accumulation to reach it).

Both sides count FLOPs per token by nanoGPT's `estimate_mfu` formula: 6·N + 12·n_layer·n_embd·T, the
attention's products over all T keys (PaLM's convention; the causal mask's half is not taken off), the lm_head
at the padded vocabulary of 50,304 and no embedding lookup (ours: `GPT.estimate_flops`; the reference's N
also counts its 121,344 biases and LayerNorm weights, +0.09%). Tokens/s is the total batch × timed steps
÷ their seconds, each step from its first micro-batch's data to the end of its optimizer step, after the
warm-up steps. With the FP8 head (`fp8_head: auto` on an H100) the lm_head's FLOPs, 27% of the whole at
depth 12, run on FP8 tensor cores but are still divided by the bf16 peak (and the bf16 matmul).

Ours can run in several variants, one run each (every combination of the lists given): `--ours-compile` (true,
blocks, false), `--ours-fp8-head` (auto, the trainer's default: FP8 where the GPU has it; false; true: the
lm_head's matmuls in FP8, with the fused loss its FP8 head), `--ours-attention` (default, cudnn: cuDNN's
attention kernel first), `--ours-head` (default: the trainer's own, with its fused loss on CUDA; unfused:
`fused_loss: false`; sigmoid, fused-compiled: candidate heads patched into the model for the run),
`--ours-mlp` (default: the trainer's, its fused MLP on CUDA; unfused: `fused_mlp: false`; fastest: the fused
MLP at the fastest launches of a benchmarks/mlp_kernel.py run, `--mlp-tiles-from mlp.json`),
`--ours-weight-copies` (auto, true, false: `weight_copies`) and `--ours-micro-batch` (sizes, or auto).
`--ref-micro-batch` takes sizes too, one reference run each.

`--profile-steps N` runs N more steps of ours after the timed ones under torch.profiler
(nanogpt/profiling.py), prints where a step's time goes (phases, kernel categories, top kernels) and, with
`--profile-dir`, keeps the summary and the Chrome trace there.
"""

import argparse
import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple
from unittest import mock

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from benchmarks.reference_gpt2 import RefConfig, RefGPT

H100_BF16_PEAK_FLOPS = 989e12


@dataclass
class Result:
    name: str
    micro_batch: int
    grad_accum: int
    tokens_per_s: float
    flops_per_token: int
    mfu_989: float
    mfu_measured: float
    startup_s: float
    peak_mem_gib: float


def measure_matmul_flops(n: int = 8192, reps: int = 20) -> float:
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    times.sort()
    return 2 * n**3 / times[len(times) // 2]


def run(
    name: str,
    build: Callable[[int], tuple[Callable[[torch.Tensor, torch.Tensor], None], Callable[[], None], int]],
    *,
    micro_batch: int,
    seq_len: int,
    total_batch: int,
    vocab_size: int,
    warmup_steps: int,
    timed_steps: int,
    matmul_flops: float,
) -> Result:
    """`build(grad_accum)` returns (loss_and_backward(x, y), optimizer_step(), flops_per_token); the
    backward of each of the grad_accum micro-batches is of its loss / grad_accum, so that a step's gradient
    is that of the mean loss over the total batch."""
    torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    grad_accum = total_batch // (micro_batch * seq_len)
    assert grad_accum * micro_batch * seq_len == total_batch, "total batch must divide evenly"
    gen = torch.Generator(device="cuda").manual_seed(0)
    data = torch.randint(0, vocab_size, (8, micro_batch, seq_len + 1), device="cuda", generator=gen)
    t0 = time.perf_counter()
    loss_and_backward, optimizer_step, flops_per_token = build(grad_accum)
    t_first_step = time.perf_counter()

    def step(i: int) -> None:
        for k in range(grad_accum):
            batch = data[(i * grad_accum + k) % len(data)]
            loss_and_backward(batch[:, :-1], batch[:, 1:])
        optimizer_step()

    step_times_s = []
    for i in range(warmup_steps + timed_steps):
        t_step = time.perf_counter()
        step(i)
        torch.cuda.synchronize()
        step_times_s.append(time.perf_counter() - t_step)
    timed = step_times_s[warmup_steps:]
    steady_s = sorted(timed)[len(timed) // 2]
    # Start-up: from building the model to the end of the first step, less one steady step.
    startup_s = t_first_step - t0 + step_times_s[0] - steady_s
    tokens_per_s = len(timed) * total_batch / sum(timed)
    achieved = tokens_per_s * flops_per_token
    return Result(
        name=name,
        micro_batch=micro_batch,
        grad_accum=grad_accum,
        tokens_per_s=tokens_per_s,
        flops_per_token=flops_per_token,
        mfu_989=achieved / H100_BF16_PEAK_FLOPS,
        mfu_measured=achieved / matmul_flops,
        startup_s=startup_s,
        peak_mem_gib=torch.cuda.max_memory_allocated() / 2**30,
    )


def build_reference(seq_len: int):
    def build(grad_accum: int):
        model = RefGPT(RefConfig(block_size=seq_len)).cuda()
        optimizer = model.make_optimizer()
        # Compiled afresh, as each run of ours is: after a first run at another micro-batch, dynamo would
        # recompile this one with the batch dimension symbolic (automatic dynamic shapes).
        torch._dynamo.reset()
        compiled = torch.compile(model)
        accum_scale = 1.0 / grad_accum  # each micro-batch's mean loss, averaged over the step's

        def loss_and_backward(x, y):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = compiled(x, y)
            (loss * accum_scale).backward()

        def optimizer_step():
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return loss_and_backward, optimizer_step, model.flops_per_token()

    return build


def make_run_dir(
    args: argparse.Namespace,
    micro_batch: int | str,
    compile_: bool | str = True,
    fp8_head: bool | str = "auto",
    fused_loss: bool | str = "auto",
    fused_mlp: bool | str = "auto",
    weight_copies: bool | str = "auto",
    dtype: str = "auto",
) -> Path:
    """A run directory with its config, over shards of random tokens in GPT-2's vocabulary; micro_batch
    "auto" lets the trainer choose it from memory, as a user's run does."""
    from benchmarks.random_data import make_random_data

    root = Path(tempfile.mkdtemp(prefix="nanostudy-bench-"))
    num_steps = args.warmup_steps + args.timed_steps + args.profile_steps
    train_tokens = (num_steps + 1) * args.total_batch + 1
    data_dir = make_random_data(
        root, args.gpt2_dir, train_tokens=train_tokens, val_tokens=4 * args.total_batch
    )
    run_dir = root / "run"
    run_dir.mkdir()
    config = {
        "model": {"depth": args.depth, "sequence_len": args.seq_len},
        "data": {"train_dir": str(data_dir)},
        "train": {
            "num_steps": num_steps,
            "total_batch_tokens": args.total_batch,
            "device_batch_size": micro_batch,
        },
        "eval": {"every_steps": None, "val_tokens": args.total_batch},
        "compile": compile_,
        "fp8_head": fp8_head,
        "fused_loss": fused_loss,
        "fused_mlp": fused_mlp,
        "weight_copies": weight_copies,
        "dtype": dtype,
    }
    if args.profile_steps:
        config["profile"] = {
            "start_step": args.warmup_steps + args.timed_steps,
            "num_steps": args.profile_steps,
        }
    (run_dir / "config.json").write_text(json.dumps(config))
    return run_dir


# The attention backends a run of ours may be given: the default (PyTorch's own choice), or cuDNN's kernel
# first (the others after it, for any input it does not take). The trainer runs in this process, so the
# choice holds for everything it compiles.
ATTENTION_BACKENDS = {
    "default": None,
    "cudnn": [
        SDPBackend.CUDNN_ATTENTION,
        SDPBackend.FLASH_ATTENTION,
        SDPBackend.EFFICIENT_ATTENTION,
        SDPBackend.MATH,
    ],
}


# The head a run of ours may train with: the trainer's own (its fused loss on CUDA, `fused_loss: auto`), its
# compiled head (`fused_loss: false`), or a candidate of benchmarks/train_breakdown.py patched into the
# model's class for the run (the trainer builds its model in this process): the soft-cap through the
# sigmoid (in the compiled head), or the loss and its gradient taken in the forward by torch.compile
# (benchmarks/fused_head_loss.py). Name → (label, the config's fused_loss).
HEADS = {
    "default": ("", "auto"),
    "unfused": (", unfused loss", False),
    "sigmoid": (", unfused loss, sigmoid soft-cap", False),
    "fused-compiled": (", loss and gradient compiled in the forward", False),
}


# The MLP a run of ours may train with: the trainer's (`fused_mlp: auto`, the fused MLP on CUDA), the
# compiled MLP (`fused_mlp: false`), or the fused MLP at the fastest forward and backward launches that a
# run of benchmarks/mlp_kernel.py measured (patched into nanogpt.fused_mlp for the run). Name → (label, the
# config's fused_mlp).
MLPS = {
    "default": ("", "auto"),
    "unfused": (", unfused MLP", False),
    "fastest": (", fused MLP at the fastest launches", True),
}


def fastest_launches(path: Path | None) -> tuple:
    """(forward, backward) launches: the fastest of each direction in benchmarks/mlp_kernel.py's JSON."""
    from benchmarks.mlp_kernel import fastest

    if path is None:
        raise SystemExit("--ours-mlp fastest needs --mlp-tiles-from (benchmarks/mlp_kernel.py's --json)")
    rows = json.loads(path.read_text())["results"]
    return fastest(rows, "forward")[0], fastest(rows, "backward")[0]


@contextlib.contextmanager
def mlp_variant(launches: tuple | None) -> Iterator[None]:
    """nanogpt.fused_mlp's (forward, backward) launches as `launches` inside the block (None: as they
    are), as they were after."""
    if launches is None:
        yield
        return
    from nanogpt import fused_mlp

    forward, backward = launches
    with (
        mock.patch.object(fused_mlp, "TILES", forward),
        mock.patch.object(fused_mlp, "BACKWARD_TILES", backward),
    ):
        yield


@contextlib.contextmanager
def head_variant(name: str) -> Iterator[None]:
    """GPT's head as the candidate `name` inside the block (the config does the rest), as it was after."""
    from nanogpt.model import GPT

    if name in ("default", "unfused"):
        yield
        return
    attribute = "_softcap" if name == "sigmoid" else "head"
    original = GPT.head
    if name == "sigmoid":
        from benchmarks.train_breakdown import sigmoid_softcap as replacement
    else:
        from benchmarks.fused_head_loss import CompiledHeadLoss, fused_head

        # Eager (a graph break under torch.compile), as the trainer runs its own fused loss. Evaluation
        # (no gradient) and generation keep the model's own head.
        eager_fused_head = torch.compiler.disable(fused_head)

        def replacement(self, x, targets=None, *, reduction="mean"):
            if targets is None or not torch.is_grad_enabled():
                return original(self, x, targets, reduction=reduction)
            return eager_fused_head(self, x, targets, reduction=reduction, function=CompiledHeadLoss)

    with mock.patch.object(GPT, attribute, replacement):
        yield


class Variant(NamedTuple):
    """One run of ours: the config's compile, fp8_head, micro-batch and weight_copies, the attention
    backend, and the head and MLP by their names in HEADS and MLPS."""

    compile: bool | str
    fp8_head: bool | str
    attention: str
    head: str
    micro_batch: int | str
    mlp: str
    weight_copies: bool | str


def run_ours(
    args: argparse.Namespace,
    variant: Variant,
    matmul_flops: float,
) -> Result:
    """Our trainer as a user runs it: `nanogpt.train.run(config.json)` on prepared shards (random tokens
    in GPT-2's vocabulary), timed from its own `step` events."""
    from nanogpt import train

    compile_, fp8_head, attention, head, micro_batch, mlp, copies = variant
    run_dir = make_run_dir(
        args, micro_batch, compile_, fp8_head, HEADS[head][1], fused_mlp=MLPS[mlp][1], weight_copies=copies
    )
    launches = fastest_launches(args.mlp_tiles_from) if mlp == "fastest" else None
    torch.cuda.reset_peak_memory_stats()
    backends = ATTENTION_BACKENDS[attention]
    t0 = time.time()
    with (
        contextlib.nullcontext() if backends is None else sdpa_kernel(backends, set_priority=True),
        head_variant(head),
        mlp_variant(launches),
    ):
        code = train.run(run_dir / "config.json")
    assert code == 0, f"the trainer exited with {code}; see {run_dir}/events.jsonl"
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    start = next(e for e in events if e["kind"] == "start")
    steps = [e for e in events if e["kind"] == "step"]
    timed = [e["step_s"] for e in steps[args.warmup_steps : args.warmup_steps + args.timed_steps]]
    if args.profile_steps:
        print((run_dir / "profile" / "summary.txt").read_text())
        if args.profile_dir:
            shutil.copytree(run_dir / "profile", args.profile_dir, dirs_exist_ok=True)
    steady_s = sorted(timed)[len(timed) // 2]
    tokens_per_s = len(timed) * args.total_batch / sum(timed)
    achieved = tokens_per_s * start["flops_per_token"]
    labels = COMPILE_LABELS[compile_] + ", FP8 head" * start["device"].get("fp8_head", fp8_head is True)
    labels += ("" if attention == "default" else f", {attention} attention") + HEADS[head][0]
    labels += ", fused loss" * (head == "default" and start["device"].get("fused_loss", False))
    fused_mlp = start["device"].get("fused_mlp", False)
    labels += MLPS[mlp][0] if mlp != "default" else ", fused MLP" * fused_mlp
    labels += ", weight copies" * start["device"].get("weight_copies", False)
    if launches is not None:
        from benchmarks.mlp_kernel import describe

        labels += " (" + "; ".join(describe(tiles) for tiles in launches) + ")"
    return Result(
        name=f"nanostudy depth {args.depth} (MuonAdamW{labels})",
        micro_batch=start["device_batch_size"],
        grad_accum=start["grad_accum"],
        tokens_per_s=tokens_per_s,
        flops_per_token=start["flops_per_token"],
        mfu_989=achieved / H100_BF16_PEAK_FLOPS,
        mfu_measured=achieved / matmul_flops,
        startup_s=steps[0]["time"] - t0 - steady_s,
        peak_mem_gib=torch.cuda.max_memory_allocated() / 2**30,
    )


def parse_micro_batches(text: str, option: str = "--ours-micro-batch") -> list[int | str]:
    """'32,64,auto' -> [32, 64, 'auto'] (train.device_batch_size values; auto: the trainer's own choice)."""
    values: list[int | str] = []
    for item in text.split(","):
        item = item.strip()
        if item == "auto":
            values.append(item)
        elif item.isdigit() and int(item) > 0:
            values.append(int(item))
        else:
            raise SystemExit(f"{option}: {item!r} is neither a positive integer nor 'auto'")
    return values


COMPILE_LABELS = {True: "", "blocks": ", blocks compiled", False: ", eager"}


def parse_choices(text: str, option: str, names: dict[str, bool | str]) -> list[bool | str]:
    """'true,blocks' -> [True, 'blocks']: a comma-separated list of `option`'s values, by their names."""
    values = []
    for item in text.split(","):
        if item.strip() not in names:
            raise SystemExit(f"{option}: {item.strip()!r} is not one of {', '.join(names)}")
        values.append(names[item.strip()])
    return values


def ours_variants(args: argparse.Namespace) -> list[Variant]:
    """Each run of ours: every combination of the `--ours-*` lists. SystemExit naming the option for a bad
    value or combination."""
    booleans = {"true": True, "false": False}
    attentions, heads = {name: name for name in ATTENTION_BACKENDS}, {name: name for name in HEADS}
    variants = [
        Variant(compile_, fp8_head, attention, head, micro_batch, mlp, copies)
        for compile_ in parse_choices(args.ours_compile, "--ours-compile", {**booleans, "blocks": "blocks"})
        for fp8_head in parse_choices(args.ours_fp8_head, "--ours-fp8-head", {**booleans, "auto": "auto"})
        for attention in parse_choices(args.ours_attention, "--ours-attention", attentions)
        for head in parse_choices(args.ours_head, "--ours-head", heads)
        for micro_batch in parse_micro_batches(args.ours_micro_batch)
        for mlp in parse_choices(args.ours_mlp, "--ours-mlp", {name: name for name in MLPS})
        for copies in parse_choices(
            args.ours_weight_copies, "--ours-weight-copies", {**booleans, "auto": "auto"}
        )
    ]
    if any(v.fp8_head is True and v.head == "fused-compiled" for v in variants):
        raise SystemExit(
            "--ours-fp8-head true with --ours-head fused-compiled: that head does its own matmuls"
        )
    return variants


def report_progress(result: Result) -> None:
    """One line as each run ends, so that a run cut short by a time limit still shows what finished."""
    print(
        f"done: {result.name}, micro-batch {result.micro_batch}: {result.tokens_per_s:,.0f} tok/s, "
        f"{result.mfu_989:.1%} MFU, start {result.startup_s:.1f} s, peak {result.peak_mem_gib:.1f} GiB",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--total-batch", type=int, default=524288)
    parser.add_argument("--vocab-size", type=int, default=50257)
    parser.add_argument("--gpt2-dir", default="../shared/tokenizers/gpt2", help="holds gpt2.tiktoken")
    parser.add_argument(
        "--ref-micro-batch",
        default="32",
        help="comma-separated micro-batches, one run of the reference each; ours are compared with each",
    )
    parser.add_argument(
        "--ours-micro-batch",
        default="32",
        help="comma-separated micro-batches, one run of ours each; 'auto' lets the trainer choose",
    )
    parser.add_argument(
        "--ours-compile",
        default="true",
        help="comma-separated `compile` settings (true: the whole model, blocks: regional), one run each",
    )
    parser.add_argument(
        "--ours-fp8-head",
        default="auto",
        help="comma-separated `fp8_head` settings (auto: the trainer's default; true: the lm_head's matmuls "
        "in FP8; false), one run each",
    )
    parser.add_argument(
        "--ours-attention",
        default="default",
        help="comma-separated attention backends (default: PyTorch's choice; cudnn: cuDNN's kernel first)",
    )
    parser.add_argument(
        "--ours-head",
        default="default",
        help="comma-separated heads (default: the trainer's, with its fused loss on CUDA; unfused: "
        "fused_loss false; sigmoid: that, the soft-cap through the sigmoid; fused-compiled: the loss and "
        "its gradient in the forward, by torch.compile)",
    )
    parser.add_argument(
        "--ours-mlp",
        default="default",
        help="comma-separated MLPs (default: the trainer's, `fused_mlp: auto`; unfused: the compiled MLP; "
        "fastest: the fused MLP at the fastest launches in --mlp-tiles-from)",
    )
    parser.add_argument(
        "--ours-weight-copies",
        default="auto",
        help="comma-separated `weight_copies` settings (true: the matrices cast once per step; false: by "
        "autocast in every micro-batch), one run each",
    )
    parser.add_argument(
        "--mlp-tiles-from",
        type=Path,
        help="benchmarks/mlp_kernel.py's --json output, for --ours-mlp fastest",
    )
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--timed-steps", type=int, default=10)
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--profile-steps", type=int, default=0, help="profile this many steps of ours after")
    parser.add_argument("--profile-dir", help="keep the profile (summary and trace) in this folder")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if args.timed_steps < 1 or args.warmup_steps < 0 or args.profile_steps < 0:
        parser.error("--timed-steps must be at least 1, --warmup-steps and --profile-steps at least 0")
    variants = ours_variants(args)  # a bad option fails here, before anything runs
    ref_micro_batches = (
        [] if args.skip_reference else parse_micro_batches(args.ref_micro_batch, "--ref-micro-batch")
    )
    if "auto" in ref_micro_batches:
        raise SystemExit("--ref-micro-batch: the reference has no 'auto'; give sizes")
    assert torch.cuda.is_available(), "this benchmark needs a CUDA GPU"
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

    matmul_flops = measure_matmul_flops()
    common = dict(
        seq_len=args.seq_len,
        total_batch=args.total_batch,
        vocab_size=args.vocab_size,
        warmup_steps=args.warmup_steps,
        timed_steps=args.timed_steps,
        matmul_flops=matmul_flops,
    )
    results, failed = [], 0
    for micro_batch in ref_micro_batches:
        try:
            results.append(run("nanoGPT reference (GPT-2 124M, AdamW)", build_reference(args.seq_len),
                               micro_batch=micro_batch, **common))  # fmt: skip
        except torch.OutOfMemoryError as e:  # the other runs are still worth having: no ratio to this one
            print(f"failed: the reference at micro-batch {micro_batch}: {' '.join(str(e).split())[:200]}")
            failed += 1
            continue
        finally:
            torch.cuda.empty_cache()
        report_progress(results[-1])
    references = list(results)
    for variant in variants:
        # Each run compiles afresh: dynamo's per-function cache (and its recompile limit, past which a
        # function runs eagerly) would otherwise carry over from one run to the next.
        torch._dynamo.reset()
        try:
            results.append(run_ours(args, variant, matmul_flops))
        except (AssertionError, SystemExit, torch.OutOfMemoryError) as e:  # the others' runs are still to do
            print(f"failed: {variant}: {e}", flush=True)
            failed += 1
            continue
        finally:
            torch.cuda.empty_cache()
        report_progress(results[-1])

    print(f"\ndevice: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    print(f"measured bf16 matmul 8192^3: {matmul_flops / 1e12:.0f} TFLOP/s")
    print(f"sequence {args.seq_len}, total batch {args.total_batch} tokens\n")
    print(f"{'run':60} {'micro':>5} {'accum':>5} {'tok/s':>10} {'MFU989':>7} {'MFUmeas':>7} ", end="")
    print(f"{'start s':>8} {'peak GiB':>9}")
    for r in results:
        print(
            f"{r.name:60} {r.micro_batch:5d} {r.grad_accum:5d} {r.tokens_per_s:10,.0f} {r.mfu_989:7.1%} "
            f"{r.mfu_measured:7.1%} {r.startup_s:8.1f} {r.peak_mem_gib:9.1f}"
        )
    for r in results[len(references) :]:
        for ref in references:
            ratio = r.tokens_per_s / ref.tokens_per_s
            print(
                f"\nratio {r.name}, micro-batch {r.micro_batch} / reference at micro-batch "
                f"{ref.micro_batch} (tokens/s): {ratio:.2f}x"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"matmul_flops": matmul_flops, "results": [asdict(r) for r in results]}, f, indent=2)
    if failed:
        raise SystemExit(f"{failed} run(s) failed; see the lines starting 'failed:' above")


if __name__ == "__main__":
    main()
