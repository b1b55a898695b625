"""The trainer: `python -m nanogpt.train --config RUN_DIR/config.json`, or under torchrun for several GPUs.

One code path for 1..N processes, GPU (NCCL) or CPU (gloo). Rank 0 writes RUN_DIR/events.jsonl; every rank
writes its optimizer shard into each checkpoint. A run directory that holds a checkpoint resumes from the
newest one, exactly. docs/training.md documents the config, the scaling rules, events and exit codes.

Exit codes: 0 done, 1 error, 2 bad config or input (nothing written), 3 diverged (non-finite loss),
143 stopped early by SIGTERM/SIGINT or max_seconds, after writing a checkpoint (resumable; no `end` event).
"""

import argparse
import contextlib
import dataclasses
import fcntl
import importlib
import importlib.metadata
import math
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from nanogpt import checkpoint as ckpt
from nanogpt.config import MAX_TOKENS, RunConfig
from nanogpt.data import TokenLoader
from nanogpt.events import EVENTS_NAME, EventWriteError, EventWriter, read_events, record_exit
from nanogpt.gauntlet.bundle import BundleError, resolve_bundle
from nanogpt.gauntlet.evaluate import Gauntlet, run_gauntlet
from nanogpt.gauntlet.evaluate import prepare as prepare_gauntlet
from nanogpt.gpu_lock import GpuLock
from nanogpt.model import GPT, GPTConfig, compile_blocks, fp8_fits
from nanogpt.optim import MuonAdamW
from nanogpt.profiling import StepProfiler, phase
from nanogpt.schedule import lr_multiplier, muon_momentum
from nanogpt.shards import MANIFEST_NAME, ShardError, read_manifest, tokens_available
from nanogpt.tokenizer import TokenizerError, load_tokenizer
from nanogpt.weight_copies import WeightCopies

EXIT_DONE, EXIT_ERROR, EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_STOPPED = 0, 1, 2, 3, 143

# Dense bf16 tensor-core peak FLOP/s by device name (first match wins: PCIe before the SXM default).
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10G", 125e12),
    ("L4", 121e12),
)
# The shape at which the learning rates and weight decay defaults were tuned (nanochat's d12).
REFERENCE_N_EMBD = 768
REFERENCE_DEPTH = 12
CPU_MAX_DEVICE_BATCH = 8  # "auto" on the CPU: no probing, a small micro-batch
GPU_MAX_DEVICE_BATCH = 256  # the largest micro-batch the GPU probe tries
GPU_MEMORY_BUDGET_FRAC = 0.9


class InputError(Exception):
    """Bad config or input: reported as one line (`path: problem`), exit code 2."""


class ConfigError(InputError):
    """A config value that cannot work here; the message starts with the key, the report adds the file."""


# Errors that mean "the input is wrong" rather than "the code is wrong"; they carry their path.
INPUT_ERRORS = (InputError, ShardError, ckpt.CheckpointError, TokenizerError)


def peak_flops(device_name: str) -> float | None:
    for key, flops in PEAK_BF16_FLOPS:
        if key in device_name:
            return flops
    return None


# ---------------------------------------------------------------------------------------------------------
# Processes and devices


@dataclass(frozen=True, kw_only=True, slots=True)
class Runtime:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    dtype: torch.dtype  # the autocast dtype; float32 means no autocast

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def master(self) -> bool:
        return self.rank == 0

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)


FP8_CAPABILITY = (8, 9)  # Ada and Hopper: the first GPUs with FP8 tensor cores (torch._scaled_mm)


def init_runtime(config: RunConfig) -> Runtime:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK; absent: one process) and join the group."""
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device_type = config.device
    if device_type == "auto":
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if device_type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device: 'cuda' requested but no CUDA device is available")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        capability = torch.cuda.get_device_capability(device)
        if config.fp8_head is True and capability < FP8_CAPABILITY:
            raise ConfigError(
                f"fp8_head: needs FP8 tensor cores (compute capability 8.9 or newer); "
                f"{torch.cuda.get_device_name(device)} is {capability[0]}.{capability[1]}"
            )
        # TF32 for the float32 matmuls that autocast leaves (the optimizer's Newton-Schulz runs in bf16).
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        device = torch.device("cpu")
        # The Triton interpreter runs the kernel on the CPU, slowly: the tests train through it there.
        for key in ("fused_loss", "fused_mlp"):
            if getattr(config, key) is True and os.environ.get("TRITON_INTERPRET") != "1":
                raise ConfigError(
                    f"{key}: true needs a CUDA device (the kernel is Triton's; on the CPU only under "
                    "TRITON_INTERPRET=1, for tests); use 'auto'"
                )
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    dtype_name = config.dtype
    if dtype_name == "auto":
        dtype_name = "bfloat16" if device.type == "cuda" else "float32"
    dtype = torch.bfloat16 if dtype_name == "bfloat16" else torch.float32
    return Runtime(rank=rank, local_rank=local_rank, world_size=world_size, device=device, dtype=dtype)


def _all_reduce(tensor: torch.Tensor, runtime: Runtime, op=None) -> torch.Tensor:
    if runtime.distributed:
        dist.all_reduce(tensor, op=op or dist.ReduceOp.SUM)
    return tensor


def agree_on_setup(error: BaseException | None, runtime: Runtime, proposal: int = 0) -> int:
    """Every rank calls this after a set-up phase (which must itself be free of collectives). If any rank
    failed, every rank raises, and only the lowest failing rank reports why; so no rank waits forever in a
    collective that a failed rank never joins. Otherwise returns the smallest `proposal` over the ranks."""
    world = runtime.world_size
    votes = torch.zeros(2 * world, dtype=torch.int64, device=runtime.device)
    votes[runtime.rank] = int(error is not None)
    votes[world + runtime.rank] = proposal
    votes = _all_reduce(votes, runtime)
    failed = votes[:world]
    if failed.any():
        first = int(failed.nonzero()[0, 0])
        if error is not None and runtime.rank == first:
            raise error
        raise _SilentExit(EXIT_BAD_INPUT if error is None or isinstance(error, INPUT_ERRORS) else EXIT_ERROR)
    return int(votes[world:].min())


def _any_rank(flag: bool, runtime: Runtime) -> bool:
    """Whether `flag` holds on any rank (a collective)."""
    if not runtime.distributed:
        return flag
    return bool(_all_reduce(torch.tensor([int(flag)], device=runtime.device), runtime).item())


class _SilentExit(Exception):
    """Another rank failed and reports why; this one just exits with the code."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


# ---------------------------------------------------------------------------------------------------------
# Horizon, batch, optimizer


def num_steps_for(config: RunConfig, flops_per_token: int) -> int:
    """Optimizer steps from the one horizon the config gives (at least 1)."""
    train = config.train
    if train.num_steps is not None:
        return train.num_steps
    tokens = train.target_tokens if train.target_tokens is not None else train.target_flops / flops_per_token
    return max(1, round(tokens / train.total_batch_tokens))


def sequences_per_rank(config: RunConfig, seq_len: int, world_size: int) -> int:
    """Sequences each rank processes per optimizer step; the total batch must split evenly."""
    total = config.train.total_batch_tokens
    per_step = seq_len * world_size
    if total % per_step:
        raise ConfigError(
            f"train.total_batch_tokens: {total:,} is not a multiple of sequence_len × world_size = "
            f"{seq_len} × {world_size} = {per_step:,}"
        )
    return total // per_step


def grad_accum_for(num_sequences: int, device_batch_size: int) -> int:
    if num_sequences % device_batch_size:
        raise ConfigError(
            f"train.device_batch_size: {device_batch_size} does not divide the {num_sequences} sequences "
            "each rank processes per step (total_batch_tokens / (sequence_len × world_size))"
        )
    return num_sequences // device_batch_size


def effective_hparams(config: RunConfig, gpt_config: GPTConfig) -> dict[str, float]:
    """Learning rates and weight decay after the width, depth and batch rules (docs/training.md):
    AdamW lr × (n_embd/768)^-0.5, Muon weight decay × (12/depth)^2, every lr × sqrt(B/B_ref) if B_ref set."""
    optim = config.optim
    width_scale = (gpt_config.n_embd / REFERENCE_N_EMBD) ** -0.5 if optim.scale_hparams else 1.0
    depth_scale = (REFERENCE_DEPTH / gpt_config.depth) ** 2 if optim.scale_hparams else 1.0
    batch_scale = 1.0
    if optim.reference_batch_tokens is not None:
        batch_scale = math.sqrt(config.train.total_batch_tokens / optim.reference_batch_tokens)
    return {
        "matrix_lr": optim.matrix_lr * batch_scale,
        "embedding_lr": optim.embedding_lr * width_scale * batch_scale,
        "unembedding_lr": optim.unembedding_lr * width_scale * batch_scale,
        "scalar_lr": optim.scalar_lr * width_scale * batch_scale,
        "weight_decay": optim.weight_decay * depth_scale,
        "width_lr_scale": width_scale,
        "depth_wd_scale": depth_scale,
        "batch_lr_scale": batch_scale,
    }


_WORLD = object()  # build_optimizer's default process group: the job's, when there is one


def build_optimizer(
    model: GPT,
    config: RunConfig,
    hparams: dict[str, float],
    orth_dtype: torch.dtype = torch.bfloat16,
    process_group: Any = _WORLD,
) -> MuonAdamW:
    """MuonAdamW over the model's parameter groups. Muon orthogonalizes in `orth_dtype`: the trainer passes
    the run's dtype, so a bf16 run does it in bf16 (stable there, and fast) and a float32 run stays float32
    throughout, which keeps runs on different numbers of ranks within float32 rounding of each other.
    `process_group`: the ranks it shards over; by default all of the job's (None: this rank alone)."""
    optim = config.optim
    adamw = {"kind": "adamw", "betas": (optim.adam_beta1, optim.adam_beta2), "eps": optim.adam_eps}
    kinds = {
        "matrix": {
            "kind": "muon",
            "lr": hparams["matrix_lr"],
            "weight_decay": hparams["weight_decay"],
            "momentum": optim.muon_momentum,
            "nesterov": optim.muon_nesterov,
            "ns_steps": optim.muon_ns_steps,
        },
        "embedding": {**adamw, "lr": hparams["embedding_lr"], "weight_decay": 0.0},
        "unembedding": {**adamw, "lr": hparams["unembedding_lr"], "weight_decay": 0.0},
        "scalar": {**adamw, "lr": hparams["scalar_lr"], "weight_decay": 0.0},
    }
    groups = []
    for name, params in model.param_groups().items():
        if params:
            groups.append({"params": params, "name": name, **kinds[name], "initial_lr": kinds[name]["lr"]})
    if process_group is _WORLD:
        process_group = dist.group.WORLD if dist.is_initialized() else None
    return MuonAdamW(groups, process_group=process_group, orth_dtype=orth_dtype)


def device_batch_fits(
    model: GPT,
    batch: int,
    runtime: Runtime,
    num_params: int,
    vocab_size: int,
    *,
    share: float = 1.0,
    extra_bytes: int = 0,
) -> bool:
    """Whether a forward and backward of `batch` sequences, with room for the optimizer state and
    `extra_bytes` (the weight copies' gradients), keep within GPU_MEMORY_BUDGET_FRAC of `share` of the
    GPU's memory. Run on the eager model, which needs more activation memory than the compiled one, so a
    yes is safe. Local to this rank (no collective)."""
    seq_len = model.config.sequence_len
    budget = GPU_MEMORY_BUDGET_FRAC * share * torch.cuda.get_device_properties(runtime.device).total_memory
    # Muon momentum and AdamW moments in float32, sharded over the ranks, plus the all-gather buffers.
    optimizer_bytes = 3 * 4 * num_params // runtime.world_size
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(runtime.device)
    try:
        x = torch.randint(0, vocab_size, (batch, seq_len), device=runtime.device)
        with runtime.autocast():
            loss = model(x, x)
        loss.backward()
        return torch.cuda.max_memory_allocated(runtime.device) + optimizer_bytes + extra_bytes <= budget
    except torch.OutOfMemoryError:  # beyond the allocator's cap (a shared GPU) or the GPU's memory
        return False
    finally:
        model.zero_grad(set_to_none=True)
        x = loss = None
        torch.cuda.empty_cache()


def probe_device_batch_size(
    model: GPT,
    num_sequences: int,
    runtime: Runtime,
    num_params: int,
    vocab_size: int,
    *,
    share: float = 1.0,
    extra_bytes: int = 0,
) -> int:
    """The largest micro-batch (a divisor of the sequences per rank and step, at most
    GPU_MAX_DEVICE_BATCH) that fits in `share` of the GPU (device_batch_fits), or 0 if not even one
    sequence does. It depends only on this process's own peak memory, not on what else runs on the GPU."""
    candidates = [b for b in range(min(num_sequences, GPU_MAX_DEVICE_BATCH), 0, -1) if num_sequences % b == 0]
    args, limits = (runtime, num_params, vocab_size), {"share": share, "extra_bytes": extra_bytes}
    return next((b for b in candidates if device_batch_fits(model, b, *args, **limits)), 0)


# The share of a GPU's memory each trainer keeps to when it may share the GPU (a GPU lock; nanogpt.gpu_lock):
# the one training and the one on standby beside it both fit, with room for their CUDA contexts. Depth 12
# at 1,024 tokens per sequence takes 29 GiB at micro-batch 64 on an H100 (80 GB; docs/benchmarks.md), and a
# larger micro-batch than 32 buys under 1% there: half a GPU costs models of that size under 1%.
SHARED_GPU_FRAC = 0.46


# ---------------------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, loader: TokenLoader, num_batches: int, token_bytes: torch.Tensor, runtime: Runtime
) -> tuple[float, float, int]:
    """(val_loss in nats per target token, bits per byte, target tokens) over the first `num_batches`
    batches of the validation split, summed over all ranks.

    Bits per byte follows nanochat: the nats of targets that are text (token_bytes > 0) over ln 2 × their
    UTF-8 bytes; special tokens (0 bytes) and masked targets count in neither.
    """
    loader.reset()
    # nats of all targets, nats of byte-bearing targets, bytes, number of targets; float64 for the sums.
    sums = torch.zeros(4, dtype=torch.float64, device=runtime.device)
    for _ in range(num_batches):
        x, y = loader.next_batch()
        with runtime.autocast():
            nats = model(x, y, reduction="none").double()  # (B, T), 0 where y == -1
        valid = y >= 0
        num_bytes = torch.where(valid, token_bytes[y.clamp(min=0)], 0)
        sums[0] += nats.sum()
        sums[1] += (nats * (num_bytes > 0)).sum()
        sums[2] += num_bytes.sum()
        sums[3] += valid.sum()
    total_nats, text_nats, total_bytes, num_targets = _all_reduce(sums, runtime).tolist()
    val_loss = total_nats / num_targets if num_targets else math.nan
    val_bpb = text_nats / (math.log(2) * total_bytes) if total_bytes else math.nan
    return val_loss, val_bpb, int(num_targets)


# ---------------------------------------------------------------------------------------------------------
# What a run records about itself


def git_sha() -> str | None:
    """The commit of the code that runs (None outside a git checkout or without git)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and sha else None


def versions() -> dict[str, str | None]:
    def version_of(package: str) -> str | None:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cuda": torch.version.cuda,
        "nanostudy": version_of("nanostudy"),
    }


# compile: "auto" on a GPU compiles regionally ("blocks") a run expected to train for less than this, and the
# whole model otherwise. Measured on an H100 at depth 12 (docs/benchmarks.md, one run of each): blocks cost
# 1.5% of tokens/s, and save compile time once per run where nothing hides it: 20 s on a cold cache (16.7 s
# against 36.6 s), 2-3 s on a warm one. 20 s is 1.5% of 22 minutes, 3 s of 3 minutes; 10 minutes sits
# between. (In a study of cells under a minute each, blocks also saved 6 s per cell, 5.0 s against 11.1 s,
# since a standby could not finish compiling the whole model in the time of the cell beside it.)
AUTO_COMPILE_BLOCKS_BELOW_S = 600.0
AUTO_COMPILE_MFU = 0.4  # the expected training time is the run's FLOPs at this fraction of the GPU's peak


def resolve_compile(
    how: bool | str, *, device_type: str, peak_flops: float | None, world_size: int, total_flops: float
) -> bool | str:
    """The `compile` setting a run uses. "auto": eager on the CPU (compiling there needs a C++ compiler, and
    costs more than it saves for runs of seconds, as studies/quickstart.yaml notes); on a GPU, "blocks"
    when the whole run (all of its FLOPs, not what is left of it, so that a run resumed on the same kind of
    GPU keeps its choice) is expected to train for under AUTO_COMPILE_BLOCKS_BELOW_S, or when the GPU's
    peak is unknown (a GPU missing from PEAK_BF16_FLOPS, or a float32 run); the whole model otherwise."""
    if how != "auto":
        return how
    if device_type != "cuda":
        return False
    if peak_flops is None:
        return "blocks"
    expected_s = total_flops / (AUTO_COMPILE_MFU * peak_flops * world_size)
    return "blocks" if expected_s < AUTO_COMPILE_BLOCKS_BELOW_S else True


def resolve_fused_loss(
    config: RunConfig,
    device: torch.device,
    *,
    dtype: torch.dtype = torch.float32,
    cap: float | None = 15.0,
    fp8: bool = False,
) -> tuple[bool, str | None]:
    """(whether the run trains with nanogpt.fused_loss, a warning). "auto": on CUDA once the kernel has
    passed its self-test there; a kernel that cannot build or run (no triton, no C compiler for its
    launcher, a GPU Triton does not support) leaves it off, with a warning. true: the same test, whose
    failure is an error (the CPU was refused by init_runtime, outside the Triton interpreter). The test
    runs in the training's dtype (the autocast one) and soft-cap, and with `fp8` (the head the run is to
    train: `fp8_head_candidate`) through the FP8 head, so it compiles the kernels training then uses."""
    wanted = config.fused_loss
    if wanted is False or (wanted == "auto" and device.type != "cuda"):
        return False, None

    def test() -> None:
        from nanogpt import fused_loss

        fused_loss.self_test(device, dtype, cap, fp8=fp8)

    why = _kernel_failure(test, f"the Triton kernel fails on {device}")
    return (True, None) if why is None else (False, _off_or_error("fused_loss", wanted, why))


def fp8_head_candidate(config: RunConfig, device: torch.device, recorded: bool | None = None) -> bool:
    """Whether the run's lm_head is to train in FP8, before its kernels are tested. true: yes (init_runtime
    refused a GPU without FP8 tensor cores; on the CPU it is slow reference code). "auto": on CUDA with FP8
    tensor cores, unless the run's checkpoint `recorded` that its head trained in the autocast dtype (a
    run's first start decides; its resumes keep a bf16 head)."""
    if config.fp8_head is True:
        return True
    if config.fp8_head != "auto" or recorded is False:
        return False
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= FP8_CAPABILITY


def resolve_head(
    config: RunConfig,
    device: torch.device,
    *,
    dtype: torch.dtype = torch.float32,
    cap: float | None = 15.0,
    recorded: bool | None = None,
) -> tuple[bool, bool, list[str]]:
    """(whether the run trains with the fused loss, whether its lm_head trains in FP8, warnings), where
    `recorded` is what the run's checkpoint says its head trained in (None: a first start, or a checkpoint
    from before it was recorded). `fp8_head: auto` turns the FP8 head on (`fp8_head_candidate`) only with
    the fused loss, once the fused FP8 head has passed its self-test (without the fused loss, the FP8 head,
    nanogpt.model.FP8Linear, measured slower than the bf16 head: docs/benchmarks.md); otherwise the head
    trains in the autocast dtype and the fused loss is tested without FP8. auto pins nothing: a resume whose
    checkpoint trained the FP8 head where it cannot train now (a GPU without FP8, a failing kernel) goes on
    in the autocast dtype and says so (`true` and `false` pin the head). For true and false,
    `resolve_fused_loss` decides the fused loss, tested in the head asked for."""
    kwargs: dict[str, Any] = dict(dtype=dtype, cap=cap)
    fp8 = fp8_head_candidate(config, device, recorded)
    if config.fp8_head != "auto":
        fused, warning = resolve_fused_loss(config, device, fp8=fp8, **kwargs)
        return fused, fp8, [] if warning is None else [warning]
    warnings = []
    if fp8 and config.fused_loss is not False:
        auto = dataclasses.replace(config, fused_loss="auto")
        fused, why = resolve_fused_loss(auto, device, fp8=True, **kwargs)
        if fused:
            return True, True, []
        warnings.append("fp8_head: off, " + (why or "").removeprefix("fused_loss: off, "))
        reason = "its kernels fail here"
    elif fp8:
        reason = "fused_loss: false"
    else:
        reason = f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'the CPU'} has no FP8"
    if recorded:
        warnings.insert(
            0,
            f"fp8_head: auto, and this run's checkpoint trained its head in FP8, which cannot go on here "
            f"({reason}): the head goes on in the autocast dtype",
        )
    fused, warning = resolve_fused_loss(config, device, **kwargs)
    return fused, False, warnings if warning is None else [*warnings, warning]


def _kernel_failure(test: Callable[[], None], failing: str) -> str | None:
    """None if `test` (a Triton kernel's module imported and its self-test run) passes; else `failing` with
    the first line of the error: no triton, its compile errors, no C compiler for the launcher, a GPU
    Triton does not support, a wrong result all say the same."""
    try:
        test()
    except Exception as e:
        return f"{failing} ({type(e).__name__}: {e}".splitlines()[0] + ")"
    return None


def _off_or_error(key: str, wanted: bool | str, why: str) -> str:
    """A Triton kernel setting that cannot be on, for `why`: an error if the config asks for it (true),
    else (auto) the warning that it is off."""
    if wanted is True:
        raise ConfigError(f"{key}: true, but {why}")
    return f"{key}: off, {why}"


def resolve_fused_mlp(
    config: RunConfig, gpt_config: GPTConfig, device: torch.device, *, dtype: torch.dtype = torch.float32
) -> tuple[Callable | None, str | None]:
    """(the MLP's forward for training steps, nanogpt.fused_mlp.relu2_mlp or None; a warning). "auto": on
    CUDA for a ReLU² model whose width the kernels take, once they have passed their self-test there (in
    the training's dtype, so that it compiles the kernels training then uses); otherwise off, with a
    warning that says why when the width or the kernels fail (a GELU model, or training in float32, is
    left as it is without a warning). true: the same, where anything short of it is an error."""
    wanted = config.fused_mlp
    # auto leaves out what there is no point in fusing: a GELU MLP, or float32 matmuls (the kernels' launches
    # are sized for bf16 tiles in shared memory).
    skip = device.type != "cuda" or gpt_config.mlp != "relu2" or dtype == torch.float32
    if wanted is False or (wanted == "auto" and skip):
        return None, None
    failing = f"the Triton kernels fail on {device}"
    if gpt_config.mlp != "relu2":
        return None, _off_or_error(
            "fused_mlp", wanted, f"model.mlp is {gpt_config.mlp!r}; the kernels fuse ReLU²"
        )
    why = _kernel_failure(lambda: importlib.import_module("nanogpt.fused_mlp"), failing)
    if why is None:
        from nanogpt import fused_mlp

        if not fused_mlp.fits(gpt_config.n_embd):
            block = max(fused_mlp.TILES.block_k, fused_mlp.BACKWARD_TILES.block_k)
            why = f"n_embd {gpt_config.n_embd} is not a multiple of {block}"
        else:
            why = _kernel_failure(lambda: fused_mlp.self_test(device, dtype), failing)
        if why is None:
            return fused_mlp.relu2_mlp, None
    return None, _off_or_error("fused_mlp", wanted, why)


def resolve_weight_copies(config: RunConfig, dtype: torch.dtype) -> bool:
    """Whether training steps read nanogpt.weight_copies's copies of the matrices: "auto", whenever the run
    trains under autocast (its dtype is not float32); true, the same, and an error for a float32 run."""
    if config.weight_copies is True and dtype == torch.float32:
        raise ConfigError("weight_copies: true, but the run trains in float32 (dtype): no cast to save")
    return config.weight_copies is not False and dtype != torch.float32


def compiled_forward(model: GPT, how: bool | str) -> Callable[..., torch.Tensor]:
    """The model's forward as the config's `compile` asks: the whole model compiled, its blocks and head
    (regional: nanogpt.model.compile_blocks), or eager. "auto" must have been resolved (resolve_compile)."""
    assert how != "auto", "resolve_compile() first"
    if how == "blocks":
        return compile_blocks(model)
    return torch.compile(model, dynamic=False) if how else model


def device_info(runtime: Runtime) -> dict[str, Any]:
    info: dict[str, Any] = {
        "type": runtime.device.type,
        "count": runtime.world_size,
        "dtype": str(runtime.dtype).removeprefix("torch."),
    }
    if runtime.device.type == "cuda":
        props = torch.cuda.get_device_properties(runtime.device)
        info.update(
            name=props.name,
            capability=f"{props.major}.{props.minor}",
            memory_bytes=props.total_memory,
            peak_flops=peak_flops(props.name) if runtime.dtype == torch.bfloat16 else None,
        )
    else:
        info.update(name=platform.processor() or platform.machine(), capability=None, peak_flops=None)
    return info


# ---------------------------------------------------------------------------------------------------------
# The run


RUN_LOCK_NAME = ".trainer.lock"


def lock_run_dir(run_dir: Path) -> int:
    """Take the run directory's lock, RUN_DIR/.trainer.lock (fcntl.flock, exclusive), for as long as the
    returned descriptor stays open: the kernel releases it when the process ends however it ends (kill -9
    included), so no lock is ever left behind. The holder writes its pid into the file. InputError, naming
    the directory, when another trainer holds it (two trainers on one run directory would interleave their
    events and checkpoints) or when the directory, its events or its checkpoints cannot be written."""
    path = run_dir / RUN_LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise InputError(f"{run_dir}: cannot write in the run directory ({e.strerror}: {path})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise InputError(
            f"{run_dir}: another trainer (pid {holder}) is training this run directory; "
            "wait for it to end, or stop it"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    events, checkpoints = run_dir / EVENTS_NAME, run_dir / ckpt.CHECKPOINTS_DIR
    # The lock file may be there from an earlier start while the directory is no longer writable: what the
    # run has yet to create in it (its events, its checkpoints) would fail after the whole set-up.
    missing = not events.exists() or not checkpoints.is_dir()
    if missing and not os.access(run_dir, os.W_OK | os.X_OK):
        os.close(fd)
        raise InputError(
            f"{run_dir}: cannot write in the run directory (no permission, or a read-only filesystem)"
        )
    if events.exists() and not os.access(events, os.W_OK):
        os.close(fd)
        raise InputError(f"{events}: cannot be written (permission denied)")
    # A run that could not write its checkpoints would find out at its first one, its steps lost.
    if checkpoints.is_dir() and not os.access(checkpoints, os.W_OK | os.X_OK):
        os.close(fd)
        raise InputError(f"{checkpoints}: cannot be written in (no permission, or a read-only filesystem)")
    return fd


class _StopRequest:
    """SIGTERM/SIGINT set a flag that the loop acts on at the next step boundary; a second signal kills.

    A repeat within DUPLICATE_SIGNAL_S of the first is the same request delivered twice, not a second one:
    Slurm signals every process of a job step (at its time limit, or `scancel --signal=TERM`), and torchrun,
    one of those processes, forwards the signal it got to its workers as well."""

    DUPLICATE_SIGNAL_S = 3.0

    def __init__(self):
        self.requested = False
        self._first_at: float | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        now = time.monotonic()
        if self._first_at is None:
            self.requested, self._first_at = True, now
        elif now - self._first_at > self.DUPLICATE_SIGNAL_S:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def __enter__(self) -> "_StopRequest":
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


# Config sections that decide the trajectory: a run directory's checkpoint resumes only under the same ones.
# Data paths may change (a moved directory); the loader checks that the data itself is the same. `device`
# and `compile` may change too (docs/training.md says what that costs); `dtype` may not.
TRAJECTORY_KEYS = ("model", "train", "optim", "schedule", "mode", "seed", "dtype", "fp8_head")
# ... except these, which a resumed session may change.
RESUME_MUTABLE_KEYS = ("train.max_seconds", "train.device_batch_size")


# Defaults that changed: what a checkpoint whose config lacks the key (older than the key) trained with.
EARLIER_DEFAULTS = {"fp8_head": False}
# Keys whose "auto" adopts what the checkpoint trained with (resolve_head), whatever its config said.
AUTO_ADOPTS_CHECKPOINT = ("fp8_head",)


def _config_difference(saved: dict, current: dict) -> str | None:
    """The first trajectory-deciding key whose value differs, as 'key: saved vs current'. A key that an
    older checkpoint's config lacks had its default then."""
    fields = dataclasses.fields(RunConfig)
    defaults = {f.name: f.default for f in fields if f.default is not dataclasses.MISSING} | EARLIER_DEFAULTS
    for key in TRAJECTORY_KEYS:
        a, b = saved.get(key, defaults.get(key)), current.get(key)  # a required section: None, absent
        if key in AUTO_ADOPTS_CHECKPOINT and b == "auto":
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            for sub in sorted(set(a) | set(b)):
                if f"{key}.{sub}" not in RESUME_MUTABLE_KEYS and a.get(sub) != b.get(sub):
                    return f"{key}.{sub}: {a.get(sub)!r} in the checkpoint, {b.get(sub)!r} now"
        elif a != b:
            return f"{key}: {a!r} in the checkpoint, {b!r} now"
    return None


class SetupClock:
    """Seconds of each set-up phase of a run, in order, up to its `start` event: what a cell costs before
    its first step (benchmarks/study_overhead.py reads them from the event)."""

    def __init__(self, since: float | None = None) -> None:
        self.phases: dict[str, float] = {}
        self._last = time.time() if since is None else since

    def mark(self, phase: str) -> None:
        """The phase that ends now (a phase marked twice adds up)."""
        now = time.time()
        self.phases[phase] = round(self.phases.get(phase, 0.0) + now - self._last, 4)
        self._last = now


class Trainer:
    """A run, set up in two phases free of collectives (so that a bad input on one rank cannot hang the
    others; `run` agrees between them), then `train()`. Every input check happens before anything is
    written."""

    def __init__(
        self,
        config: RunConfig,
        run_dir: Path,
        runtime: Runtime,
        *,
        setup_since: float | None = None,
        gpu_lock: GpuLock | None = None,
        standby: bool = False,
        beside_claim: bool = False,
    ):
        """Phase 1: read the data manifest and any checkpoint, build the model, propose a micro-batch.
        `setup_since`: when the run began (`run`'s entry), so that the set-up times include the runtime's.
        `gpu_lock`: this rank's GPU lock (nanogpt.gpu_lock), taken before the first step; with one, the
        trainer keeps to its share of the GPU's memory (SHARED_GPU_FRAC). `standby`: some rank's lock was
        taken by another trainer, so the set-up ends with a throwaway step that compiles everything the
        first steps need. `beside_claim`: on standby, and some rank's lock holder claimed its whole GPU
        (nanogpt.gpu_lock), so this one waits for its lock before it puts anything on the GPU."""
        self.config = config
        self.run_dir = run_dir
        self.runtime = runtime
        self.gpu_lock = gpu_lock
        self.standby = standby
        self.warnings: list[str] = []
        self.weight_copies: WeightCopies | None = None
        self.setup = SetupClock(setup_since)
        self.setup.mark("runtime")  # the config read, CUDA and the process group (init_runtime)
        self.gpu_share = 1.0
        self._find_checkpoints()
        self.gpt_config = self._model_config()
        if beside_claim:  # after the input checks: bad input is reported at once, not after the wait
            self._wait_for_gpu()
            self.standby = False  # the GPU is ours now: the first step compiles, no warm-up needed
        self._build_model()
        self.setup.mark("model")
        self.proposed_batch_size = self._propose_batch_size()
        self.setup.mark("batch_probe")

    def _find_checkpoints(self) -> None:
        """The run's own newest checkpoint (resume), else for mid-training the one to start from."""
        config = self.config
        self.manifest = read_manifest(config.data.train_dir)
        self.resume_dir = ckpt.latest_checkpoint(self.run_dir)
        self.resume_meta = ckpt.read_meta(self.resume_dir, resume=True) if self.resume_dir else None
        self.init_dir = self.init_meta = None
        if config.mode == "mid-training" and self.resume_dir is None:
            self.init_dir = ckpt.resolve_checkpoint(config.init_from)
            self.init_meta = ckpt.read_meta(self.init_dir)
        if self.resume_meta is not None:
            where = self.resume_dir / ckpt.META_NAME
            saved = dict(self.resume_meta.get("config", {}))
            if saved.get("fp8_head") == "auto" and (chosen := self._recorded_fp8_head()) is not None:
                saved["fp8_head"] = chosen  # auto pinned nothing: compare the head it chose
            difference = _config_difference(saved, config.to_dict())
            if difference is not None:
                raise InputError(f"{where}: the run's config changed since this checkpoint ({difference})")
            if self.resume_meta["world_size"] != self.runtime.world_size:
                raise InputError(
                    f"{where}: written by {self.resume_meta['world_size']} processes, this run has "
                    f"{self.runtime.world_size}; resume with the same number (optimizer shards and data "
                    "positions are per rank)"
                )
            self._check_checkpoint_tokenizer(self.resume_dir, self.resume_meta, may_add_chat_tokens=False)
        if self.init_meta is not None:
            self._check_checkpoint_tokenizer(self.init_dir, self.init_meta, may_add_chat_tokens=True)

    def _check_checkpoint_tokenizer(self, directory: Path, meta: dict, *, may_add_chat_tokens: bool) -> None:
        """Weights mean something only with the tokenizer they were trained with: the data must use that
        one, or, starting mid-training, that one with the chat markers appended (gpt2 → gpt2+chat)."""
        saved, ours = meta.get("tokenizer") or {}, self.manifest.tokenizer
        if saved.get("hash") in (None, ours.hash):
            return
        if may_add_chat_tokens:
            data_tokenizer = load_tokenizer(self.manifest.tokenizer_dir)
            base = data_tokenizer.without_chat_tokens()
            if (
                base.hash == saved["hash"]
                and base.with_chat_tokens().hash == data_tokenizer.hash == ours.hash
            ):
                return
        raise InputError(
            f"{self.manifest.data_dir / MANIFEST_NAME}: tokenizer {ours.name} ({ours.hash[:12]}), but "
            f"{directory / ckpt.META_NAME} was trained with {saved.get('name')} ({saved['hash'][:12]}); "
            + (
                "mid-training data must use the pretraining run's tokenizer (chat tokens may be appended)"
                if may_add_chat_tokens
                else "resume with the data the run was trained on"
            )
        )

    def _model_config(self) -> GPTConfig:
        """The configured shape with the data's vocabulary; mid-training without `model` takes the shape of
        init_from. Every checkpoint involved must have exactly this shape."""
        vocab_size = self.manifest.tokenizer.vocab_size
        checkpoints = [
            (d, m) for d, m in ((self.init_dir, self.init_meta), (self.resume_dir, self.resume_meta)) if d
        ]
        saved = {}
        for directory, meta in checkpoints:
            try:
                saved[directory] = GPTConfig(**meta["model_config"])
            except (TypeError, ValueError) as e:
                raise ckpt.CheckpointError(f"{directory / ckpt.META_NAME}: bad model_config ({e})") from None
        if self.config.model is not None:
            try:
                ours = GPTConfig(**dataclasses.asdict(self.config.model), vocab_size=vocab_size)
            except ValueError as e:
                raise ConfigError(f"model: {e}") from None
        else:
            ours = next(iter(saved.values()))  # mid-training: RunConfig requires init_from
        if self.init_dir is not None and self.init_dir in saved:
            # Mid-training data may use the pretraining tokenizer plus chat markers (gpt2 → gpt2+chat: two
            # more ids). When the new ids fit in the padded vocabulary the weights have the same shape:
            # their rows exist (never trained) and simply become real tokens.
            theirs = saved[self.init_dir]
            grown = dataclasses.replace(theirs, vocab_size=vocab_size)
            if vocab_size > theirs.vocab_size and grown.padded_vocab_size == theirs.padded_vocab_size:
                saved[self.init_dir] = grown
                if self.config.model is None:
                    ours = grown
        for directory, theirs in saved.items():
            if theirs != ours:
                diffs = [
                    f"{key} {getattr(theirs, key)!r} in the checkpoint, {getattr(ours, key)!r} configured"
                    for key in (f.name for f in dataclasses.fields(GPTConfig))
                    if getattr(theirs, key) != getattr(ours, key)
                ]
                raise ckpt.CheckpointError(
                    f"{directory / ckpt.META_NAME}: checkpoint of another model shape ({'; '.join(diffs)})"
                )
        if ours.vocab_size != vocab_size:
            raise InputError(
                f"{self.manifest.data_dir}: the data's tokenizer has {vocab_size} tokens, the model "
                f"{ours.vocab_size}; mid-training data must use the tokenizer of the pretraining run"
            )
        return ours

    def _recorded_fp8_head(self) -> bool | None:
        """What the checkpoint this run resumes says its head trained in: its `fp8_head`, else (written
        before that was recorded) its config's setting, then always true or false; None for a first start."""
        if self.resume_meta is None:
            return None
        recorded = self.resume_meta.get("fp8_head", self.resume_meta["config"].get("fp8_head", False))
        return recorded if isinstance(recorded, bool) else None

    def _build_model(self) -> None:
        runtime = self.runtime
        # The same seed on every rank gives every rank the same initial weights.
        torch.manual_seed(self.config.seed)
        with torch.device("meta"):
            model = GPT(self.gpt_config)
        model.to_empty(device=runtime.device)
        model.init_weights()
        source = self.resume_dir or self.init_dir
        if source is not None:
            state = ckpt.load_model_state(source, runtime.device)
            try:
                model.load_state_dict(state, strict=True)
            except RuntimeError as e:
                first = str(e).strip().splitlines()[-1].strip()
                raise ckpt.CheckpointError(
                    f"{source / ckpt.MODEL_NAME}: does not fit the model ({first})"
                ) from None
        model.fused_loss, model.fp8_head, warnings = resolve_head(
            self.config,
            runtime.device,
            dtype=runtime.dtype,
            cap=self.gpt_config.logit_softcap,
            recorded=self._recorded_fp8_head(),
        )
        self.warnings.extend(warnings)
        fused, warning = resolve_fused_mlp(self.config, self.gpt_config, runtime.device, dtype=runtime.dtype)
        for block in model.transformer.h:
            block.mlp.fused = fused
        if warning is not None:
            self.warnings.append(warning)
        if model.fp8_head and runtime.device.type == "cpu":
            self.warnings.append("fp8_head on the CPU: FP8 matmuls are slow reference code here")
        if resolve_weight_copies(self.config, runtime.dtype):
            # Not under fp8_head's lm_head, which casts its float32 weight to FP8 itself.
            skip = ("lm_head",) if model.fp8_head else ()
            self.weight_copies = WeightCopies(model, runtime.dtype, skip=skip)
        self.model = model
        self.num_params = sum(p.numel() for p in model.parameters())
        self.num_scaling_params = model.num_scaling_params()
        self.flops_per_token = model.estimate_flops()
        self.total_steps = num_steps_for(self.config, self.flops_per_token)
        train = self.config.train
        # RunConfig checked num_steps; a target_tokens it let through may still round up to a step past it.
        if (tokens := self.total_steps * train.total_batch_tokens) > MAX_TOKENS:
            if train.target_flops is None:
                raise ConfigError(
                    f"train.target_tokens: {train.target_tokens:,} rounds to {self.total_steps:,} steps of "
                    f"{train.total_batch_tokens:,} tokens, {tokens:,} tokens, more than the 2^63 - 1 a run "
                    "can count"
                )
            tokens = train.target_flops / self.flops_per_token
            raise ConfigError(
                f"train.target_flops: {train.target_flops:.3g} FLOPs is {tokens:.3g} tokens at "
                f"{self.flops_per_token:,} FLOPs per token, more than the 2^63 - 1 a run can count; a typo "
                "in the exponent?"
            )

    def _share_the_gpu(self) -> None:
        """With a GPU lock this trainer may share its GPU with one other, so from its micro-batch probe on
        it keeps to SHARED_GPU_FRAC of the GPU's memory (its weights, already there, count)."""
        self.gpu_share = SHARED_GPU_FRAC
        torch.cuda.set_per_process_memory_fraction(self.gpu_share, self.runtime.device)

    def _claim_whole_gpu(self, why: str) -> None:
        """The model does not fit in this trainer's share of the GPU: wait for the lock, then take the whole
        GPU and tell the next trainer to keep off it until this one exits."""
        self.setup.mark("batch_probe")
        self._wait_for_gpu()
        self.standby = False
        self.gpu_lock.claim_whole_gpu()
        self.gpu_share = 1.0
        torch.cuda.set_per_process_memory_fraction(1.0, self.runtime.device)
        self.warnings.append(f"{why} in {SHARED_GPU_FRAC:.0%} of the GPU: took the whole GPU")

    def _propose_batch_size(self) -> int:
        """This rank's micro-batch: the configured one, the checkpoint's, or the largest that fits."""
        config, runtime = self.config, self.runtime
        self.sequences_per_rank = sequences_per_rank(config, self.gpt_config.sequence_len, runtime.world_size)
        requested = config.train.device_batch_size
        if self.gpu_lock is not None and runtime.device.type == "cuda":
            self._share_the_gpu()
        if self.resume_meta is not None:
            saved = self.resume_meta["device_batch_size"]
            if requested not in ("auto", saved):
                raise ConfigError(
                    f"train.device_batch_size: {requested}, but the checkpoint {self.resume_dir.name} was "
                    f"trained with {saved}; an exact resume needs the same (use 'auto' to adopt it)"
                )
            batch = saved
        elif requested != "auto":
            batch = requested
        elif runtime.device.type == "cuda":
            return self._probe_batch_size()
        else:
            batch = max(b for b in range(1, CPU_MAX_DEVICE_BATCH + 1) if self.sequences_per_rank % b == 0)
        grad_accum_for(self.sequences_per_rank, batch)  # fail here, before the ranks agree (and any wait)
        if runtime.device.type == "cuda" and self.gpu_share < 1.0:
            # A given micro-batch (the config's, the checkpoint's) may need more than this trainer's share.
            args = (self.model, batch, runtime, self.num_params, self.gpt_config.vocab_size)
            if not device_batch_fits(*args, share=self.gpu_share, extra_bytes=self._extra_bytes()):
                self._claim_whole_gpu(f"micro-batch {batch} does not fit")
        return batch

    def _extra_bytes(self) -> int:
        """What a step holds beside the eager model's forward and backward and the optimizer state."""
        return 0 if self.weight_copies is None else self.weight_copies.grad_bytes

    def _probe_batch_size(self) -> int:
        """The largest micro-batch that fits in this trainer's share of the GPU; when not even one sequence
        does, the largest that fits in the whole GPU, once it has it."""
        model, runtime, vocab_size = self.model, self.runtime, self.gpt_config.vocab_size
        args = (model, self.sequences_per_rank, runtime, self.num_params, vocab_size)
        batch = probe_device_batch_size(*args, share=self.gpu_share, extra_bytes=self._extra_bytes())
        if batch == 0 and self.gpu_share < 1.0:
            self._claim_whole_gpu(f"one sequence of {self.gpt_config.sequence_len} tokens does not fit")
            batch = probe_device_batch_size(*args, extra_bytes=self._extra_bytes())
        if batch == 0:
            raise ConfigError(
                f"train.device_batch_size: even one sequence of {self.gpt_config.sequence_len} tokens does "
                "not fit in memory"
            )
        # The probe's eager trials hold more than training will: the GPU's peak counts training's from here.
        torch.cuda.reset_peak_memory_stats(runtime.device)
        return batch

    def _wait_for_gpu(self) -> None:
        """Take this rank's GPU lock, waiting while another trainer trains on the GPU."""
        if self.gpu_lock is not None and not self.gpu_lock.held:
            self.gpu_lock.acquire()
            self.setup.mark("gpu_wait")

    def _warm_up(self) -> None:
        """On standby: one throwaway training step (forward, backward and a step of a throwaway optimizer
        on zeros) and one validation forward, so that torch.compile builds every graph and kernel the first
        steps need while the GPU still trains the other cell. The weights are restored bit for bit and the
        run's optimizer is never stepped, so the run is the same as without it; no collective, so a rank
        that runs out of memory just leaves compilation to its first step."""
        runtime, model = self.runtime, self.model
        seq_len = self.gpt_config.sequence_len
        saved = [p.detach().clone() for p in model.parameters()]
        try:
            optimizer = build_optimizer(
                model, self.config, self.hparams, orth_dtype=runtime.dtype, process_group=None
            )
            # Inputs and targets are distinct tensors, as in training: passing one tensor as both makes
            # torch.compile guard on their being the same object, and the first real step recompiles.
            x, y = (
                torch.zeros((self.device_batch_size, seq_len), dtype=torch.int64, device=runtime.device)
                for _ in range(2)
            )
            scale = torch.tensor(1.0 / x.numel(), device=runtime.device)
            if self.weight_copies is not None:
                self.weight_copies.refresh()
            with runtime.autocast():
                loss = self.train_forward(x, y, reduction="sum")
            (loss * scale).backward()
            if self.weight_copies is not None:
                self.weight_copies.accumulate()
            optimizer.step()
            model.zero_grad(set_to_none=True)
            del optimizer, loss
            val_shape = (self.val_loader.batch_size, seq_len)
            xv, yv = (torch.zeros(val_shape, dtype=torch.int64, device=runtime.device) for _ in range(2))
            model.eval()
            with torch.no_grad(), runtime.autocast():
                self.forward(xv, yv, reduction="none")
            if runtime.device.type == "cuda":
                torch.cuda.synchronize(runtime.device)
        except torch.OutOfMemoryError:
            self.warnings.append("standby: out of memory in the warm-up; compiled at step 1")
        finally:
            model.train()
            model.zero_grad(set_to_none=True)
            with torch.no_grad():
                for param, copy in zip(model.parameters(), saved, strict=True):
                    param.copy_(copy)
        self.setup.mark("warm_up")

    def build(self, device_batch_size: int) -> None:
        """Phase 2, with the micro-batch the ranks agreed on: data loaders, tokenizer, optimizer."""
        config, runtime = self.config, self.runtime
        self.device_batch_size = device_batch_size
        self.grad_accum = grad_accum_for(self.sequences_per_rank, device_batch_size)
        seq_len = self.gpt_config.sequence_len
        common = dict(
            batch_size=device_batch_size,
            seq_len=seq_len,
            rank=runtime.rank,
            world_size=runtime.world_size,
            device=runtime.device,
            seed=config.seed,
        )
        # A step takes the next sequences of the epoch's order whatever the number of ranks and micro-batches
        # (nanogpt/data.py), so runs on 1 and N GPUs with one total batch read the same tokens.
        self.train_loader = TokenLoader(
            config.data.train_dir, split="train", micro_batches=self.grad_accum, **common
        )
        # Validation batches are the training micro-batch, unless the validation split is smaller than one
        # of those on every rank (a small corpus, a micro-batch the probe made large): then as many whole
        # sequences per rank as it holds. A validation is one step of the loader (the split's first
        # sequences), read in val_batches micro-batches per rank: like a training step, the tokens it reads
        # depend only on how many there are, not on the number of ranks or the micro-batch.
        val_dir = config.data.val_dir or config.data.train_dir
        val_tokens = tokens_available(val_dir, "val")
        val_batch = max(1, min(device_batch_size, (val_tokens - 1) // (runtime.world_size * seq_len)))
        tokens_per_val_batch = val_batch * seq_len * runtime.world_size
        self.val_batches = max(
            1, min(config.eval.val_tokens // tokens_per_val_batch, (val_tokens - 1) // tokens_per_val_batch)
        )
        self.val_loader = TokenLoader(
            val_dir, split="val", micro_batches=self.val_batches, **{**common, "batch_size": val_batch}
        )
        if self.resume_meta is not None:
            try:
                self.train_loader.load_state_dict(self.resume_meta["rank_states"][runtime.rank]["loader"])
            except ValueError as e:
                raise InputError(f"{self.resume_dir / ckpt.META_NAME}: {e}") from None
            except (KeyError, TypeError) as e:
                raise ckpt.CheckpointError(
                    f"{self.resume_dir / ckpt.META_NAME}: rank_states[{runtime.rank}].loader is damaged "
                    f"({type(e).__name__}: {e})"
                ) from None
        rows, width = device_batch_size * seq_len, self.gpt_config.n_embd
        if self.model.fp8_head and not fp8_fits(rows, width, self.gpt_config.padded_vocab_size):
            self.model.fp8_head = False
            if self.weight_copies is not None:  # made without the lm_head, which now reads its copy too
                self.weight_copies = WeightCopies(self.model, runtime.dtype)
            self.warnings.append(
                f"fp8_head: off, FP8 matmuls need multiples of 16 (micro-batch × sequence_len = {rows} rows "
                f"of n_embd {width}); the head multiplies exactly"
            )
        self.data_epochs = self.train_loader.epochs_for(self.total_steps)
        if self.data_epochs > 1:
            self.warnings.append(f"the run needs {self.data_epochs:.2f} epochs of {config.data.train_dir}")

        data_tokenizer = self.manifest.tokenizer
        val_tokenizer = self.val_loader.manifest.tokenizer
        if val_tokenizer.hash != data_tokenizer.hash:
            raise InputError(
                f"{self.val_loader.manifest.data_dir / MANIFEST_NAME}: validation data made with tokenizer "
                f"{val_tokenizer.name} ({val_tokenizer.hash[:12]}), the training data in "
                f"{self.manifest.data_dir / MANIFEST_NAME} with {data_tokenizer.name} "
                f"({data_tokenizer.hash[:12]}); prepare both with one tokenizer"
            )
        tokenizer_spec = config.data.tokenizer or self.manifest.tokenizer_dir
        tokenizer = load_tokenizer(tokenizer_spec)
        if tokenizer.hash != data_tokenizer.hash:  # the same vocabulary size is not the same tokenizer
            raise InputError(
                f"{tokenizer_spec}: tokenizer {tokenizer.name} ({tokenizer.hash[:12]}, "
                f"{tokenizer.vocab_size} tokens) is not the one the shards were made with, "
                f"{data_tokenizer.name} ({data_tokenizer.hash[:12]}, {data_tokenizer.vocab_size} tokens) in "
                f"{self.manifest.data_dir / MANIFEST_NAME}; leave data.tokenizer unset to use the data's own"
            )
        self.token_bytes = torch.from_numpy(tokenizer.token_bytes().astype(np.int64)).to(runtime.device)
        self.tokenizer = tokenizer
        self.final_unscored = self._final_gauntlet_missing()
        self.gauntlet = (
            self._prepare_gauntlet() if config.eval.preset is not None and not self.finished else None
        )

        self.hparams = effective_hparams(config, self.gpt_config)
        self.optimizer = build_optimizer(self.model, config, self.hparams, orth_dtype=runtime.dtype)
        if self.resume_meta is not None:
            optim_state = ckpt.load_optim_state(self.resume_dir, runtime.rank, runtime.device)
            try:
                self.optimizer.load_state_dict(optim_state)
            except ValueError as e:
                where = self.resume_dir / ckpt.optim_name(runtime.rank)
                raise ckpt.CheckpointError(f"{where}: does not fit this run's optimizer ({e})") from None
        self.setup.mark("data_and_optimizer")  # and the tokenizer, the gauntlet's tasks, a checkpoint's state

    def _prepare_gauntlet(self) -> Gauntlet:
        """The eval gauntlet's tasks, read and tokenized once for every evaluation of the run. Few-shot
        examples use seed 0 whatever the run's seed, so every cell of a study reads the same prompts. A
        missing bundle folder stops the run here (exit 2); a task without its file, or with malformed rows,
        is only left out, with a warning in the start event."""
        section = self.config.eval
        bundle = resolve_bundle(section.bundle)
        try:
            gauntlet = prepare_gauntlet(
                section.preset, bundle, self.tokenizer, max_examples=section.max_examples
            )
        except BundleError as e:
            raise ConfigError(f"eval.bundle: {e}") from None
        self.warnings.extend(gauntlet.warnings)
        return gauntlet

    # -- training -----------------------------------------------------------------------------------------

    def _final_gauntlet_missing(self) -> bool:
        """Whether the run's final checkpoint is there but not the `eval` events of its gauntlet, which runs
        after it: the trainer failed or was killed between the two (every rank reads the events to agree)."""
        meta = self.resume_meta
        if self.config.eval.preset is None or meta is None or meta["step"] < self.total_steps:
            return False
        events, _ = read_events(self.run_dir / EVENTS_NAME)
        return not any(event.get("kind") == "eval" and event.get("step") == meta["step"] for event in events)

    @property
    def finished(self) -> bool:
        """The newest checkpoint is the final one, and its gauntlet (if any) was scored: the run has nothing
        left to do. A final gauntlet never scored is scored first by `train` (_loop), then the run ends."""
        done = self.resume_meta is not None and self.resume_meta["step"] >= self.total_steps
        return done and not self.final_unscored

    def report_finished(self) -> int:
        """A finished run started again: say so in one line and write nothing, so that its `end` event
        stays its last. Only when a crash came between the final checkpoint and the `end` event, or an
        error did (`LATEST` that a full disk refused), is an `end` `done` written now: the runner and any
        reader of the events need it to see the run done."""
        meta = self.resume_meta
        if self.runtime.master:
            path = self.run_dir / EVENTS_NAME
            events, _ = read_events(path)
            if not events or events[-1]["kind"] != "end" or events[-1].get("status") == "error":
                val_loss, val_bpb = meta.get("last_val", (None, None))
                with EventWriter(path) as writer:
                    writer.write(
                        "end",
                        status="done",
                        message=None,
                        step=meta["step"],
                        tokens=meta.get("tokens", 0),
                        flops=meta.get("flops", 0.0),
                        elapsed_s=meta.get("elapsed_s"),
                        val_loss=val_loss,
                        val_bpb=val_bpb,
                    )
            print(f"{self.run_dir}: already done at step {meta['step']}", flush=True)
        return EXIT_DONE

    def train(self) -> int:
        """The loop, from step 0 or the checkpoint's step to the horizon; returns the exit code."""
        config, runtime = self.config, self.runtime
        meta = self.resume_meta or {}
        self.step = meta.get("step", 0)
        self.elapsed_before_s = meta.get("elapsed_s", 0.0)
        self.last_val = tuple(meta.get("last_val", (None, None)))
        if self.resume_meta is not None:
            try:  # read_meta checked every part but the CUDA generator's, which needs CUDA to check
                ckpt.set_rng_state(self.resume_meta["rank_states"][runtime.rank]["rng"])
            except ValueError as e:
                where = self.resume_dir / ckpt.META_NAME
                raise ckpt.CheckpointError(f"{where}: rank_states[{runtime.rank}].rng.{e}") from None
        self.device = device_info(runtime)
        self.device["compile"] = compile_ = resolve_compile(
            config.compile,
            device_type=runtime.device.type,
            peak_flops=self.device["peak_flops"],
            world_size=runtime.world_size,
            total_flops=float(self.total_steps * config.train.total_batch_tokens * self.flops_per_token),
        )
        self.device["fused_loss"] = self.model.fused_loss
        self.device["fused_mlp"] = self.model.transformer.h[0].mlp.fused is not None
        self.device["weight_copies"] = self.weight_copies is not None
        self.device["fp8_head"] = self.model.fp8_head
        self.forward = compiled_forward(self.model, compile_)
        # Training steps read the copies where there are any; evaluation reads the parameters.
        copies = self.weight_copies
        self.train_forward = self.forward if copies is None else copies.forward(self.forward)
        if self.standby:
            self._warm_up()
        self._wait_for_gpu()
        self.session_start = time.time()
        self.events = EventWriter(self.run_dir / EVENTS_NAME) if runtime.master else None
        self.wandb = None
        self.profiler = StepProfiler(
            start_step=config.profile.start_step,
            num_steps=config.profile.num_steps,
            trace=config.profile.trace,
            run_dir=self.run_dir,
            enabled=runtime.master,
        )
        try:
            if runtime.master and config.wandb.mode != "disabled":
                self.wandb = _WandbLog(config, self.run_dir)
            optim_state_bytes = self._optim_state_bytes()
            self.setup.mark("other")
            self._emit(
                "start",
                **self._start_fields(),
                optim_state_bytes=optim_state_bytes,
                setup_s=self.setup.phases,
            )
            with _StopRequest() as stop:
                return self._loop(stop)
        except Exception as e:
            # A file that cannot take the `end` event either (a full disk): `e` is reported all the same.
            with contextlib.suppress(EventWriteError):
                self._end("error", f"{type(e).__name__}: {e}".splitlines()[0])
            raise
        finally:
            self.profiler.finish()
            if self.wandb is not None:
                self.wandb.finish()
            if self.events is not None:
                self.events.close()

    def _start_fields(self) -> dict[str, Any]:
        tokens_per_step = self.config.train.total_batch_tokens
        return dict(
            config=self.config.to_dict(),
            mode=self.config.mode,
            resumed_from=None if self.resume_dir is None else os.path.relpath(self.resume_dir, self.run_dir),
            init_from=None if self.init_dir is None else str(self.init_dir.resolve()),
            git_sha=git_sha(),
            versions=versions(),
            device=self.device,
            world_size=self.runtime.world_size,
            num_params=self.num_params,
            num_scaling_params=self.num_scaling_params,
            flops_per_token=self.flops_per_token,
            total_steps=self.total_steps,
            total_tokens=self.total_steps * tokens_per_step,
            total_flops=float(self.total_steps * tokens_per_step * self.flops_per_token),
            total_batch_tokens=tokens_per_step,
            device_batch_size=self.device_batch_size,
            grad_accum=self.grad_accum,
            data_epochs=self.data_epochs,
            optim=self.hparams,
            warnings=self.warnings,
        )

    def _optim_state_bytes(self) -> list[int]:
        """Every rank's `MuonAdamW.state_bytes()`, by rank (a collective: every rank calls it)."""
        runtime = self.runtime
        sizes = torch.zeros(runtime.world_size, dtype=torch.int64, device=runtime.device)
        sizes[runtime.rank] = self.optimizer.state_bytes()
        return [int(n) for n in _all_reduce(sizes, runtime).tolist()]

    def _loop(self, stop: _StopRequest) -> int:
        config, runtime = self.config, self.runtime
        every_val, every_ckpt = config.eval.every_steps, config.checkpoint.every_steps
        every_gauntlet = config.eval.gauntlet_every
        max_seconds = config.train.max_seconds
        peak = self.device["peak_flops"]
        # The stop that wrote the checkpoint this run resumes from skipped the gauntlet due at its step (see
        # below), or the run failed or was killed after its final checkpoint, before its gauntlet: score it
        # now, on the same weights, or that step would never have its `eval` events.
        stopped_at = (self.resume_meta or {}).get("stopping", False)
        due = stopped_at and every_gauntlet and self.step % every_gauntlet == 0
        if self.gauntlet is not None and (due or self.final_unscored):
            self._run_gauntlet()
        while self.step < self.total_steps:
            self.profiler.before_step(self.step)
            loss_sum, num_targets, lr_frac, step_s = self._train_step()
            out_of_time = max_seconds is not None and time.time() - self.session_start > max_seconds
            # One small all-reduce per step: the loss (for the log and the divergence check) and the vote to
            # stop, so that every rank stops at the same step.
            stats = torch.tensor([loss_sum, float(stop.requested or out_of_time)], dtype=torch.float64)
            loss_sum, stop_votes = _all_reduce(stats.to(runtime.device), runtime).tolist()
            loss = loss_sum / num_targets
            self.step += 1
            self.profiler.after_step(self.step, step_s)
            last = self.step == self.total_steps
            if not math.isfinite(loss) or self.step % config.log_every == 0 or last:
                tok_per_s = config.train.total_batch_tokens / step_s
                self._emit(
                    "step",
                    **self._counters(),
                    loss=loss,
                    lr=self.hparams["matrix_lr"] * lr_frac,
                    lr_frac=lr_frac,
                    tok_per_s=tok_per_s,
                    mfu=None
                    if peak is None
                    else self.flops_per_token * tok_per_s / (runtime.world_size * peak),
                    step_s=step_s,
                )
            if not math.isfinite(loss):
                self._end("diverged", f"training loss is {loss} at step {self.step}")
                return EXIT_DIVERGED
            if last or (every_val is not None and self.step % every_val == 0):
                val_loss = self._validate()
                if val_loss is not None and not math.isfinite(val_loss):
                    self._end("diverged", f"validation loss is {val_loss} at step {self.step}")
                    return EXIT_DIVERGED
            stopping = stop_votes > 0 and not last
            if last or stopping or (every_ckpt is not None and self.step % every_ckpt == 0):
                # The step's loss was computed before its update: the update itself may have left
                # non-finite weights, which are not worth a checkpoint.
                if not self._weights_finite():
                    self._end("diverged", f"non-finite weights after step {self.step}")
                    return EXIT_DIVERGED
                self._checkpoint(final=last, stopping=stopping)
            # After the checkpoint, so that a failing benchmark never costs the trained weights; never on the
            # way out of a stop (the runner reads a stop from the last event being a stopping checkpoint).
            if (
                self.gauntlet is not None
                and not stopping
                and (last or (every_gauntlet is not None and self.step % every_gauntlet == 0))
            ):
                self._run_gauntlet()
            if stopping:
                return EXIT_STOPPED
        self._end("done", None)
        return EXIT_DONE

    def _train_step(self) -> tuple[float, float, float, float]:
        """One optimizer step over grad_accum micro-batches: (this rank's summed loss, target tokens of the
        step over all ranks, lr multiplier, seconds). The gradient is that of the mean loss over every
        target token of the step on all ranks, however the loss mask spreads them."""
        runtime = self.runtime
        t0 = time.time()
        loader = self.train_loader
        with phase("data"):
            if self.manifest.has_mask:
                # Loss-masked data (mid-training): the number of targets varies by micro-batch and rank, and
                # the gradient's scale needs the step's total before the first backward.
                batches = [loader.next_batch() for _ in range(self.grad_accum)]
                count = torch.stack([(y >= 0).sum() for _, y in batches]).sum().double()
                num_targets = _all_reduce(count, runtime).clamp(min=1)
                upcoming = iter(batches)
            else:
                # Read lazily: each micro-batch is read while the GPU runs the one before, as nanoGPT does.
                upcoming = (loader.next_batch() for _ in range(self.grad_accum))
                num_targets = torch.tensor(float(self.config.train.total_batch_tokens), device=runtime.device)
            x, y = next(upcoming)
        # MuonAdamW averages gradients over the ranks, so each rank's share is multiplied by world_size.
        scale = runtime.world_size / num_targets
        loss_sum = torch.zeros((), dtype=torch.float64, device=runtime.device)
        copies = self.weight_copies
        if copies is not None:
            with phase("weight_copies"):
                copies.refresh()  # the weights as the last step left them
        for k in range(self.grad_accum):
            with phase("forward_backward"):
                with runtime.autocast():
                    loss = self.train_forward(x, y, reduction="sum")
                (loss * scale).backward()
                loss_sum += loss.detach()
            if copies is not None:
                with phase("weight_copies"):
                    copies.accumulate()
            if k + 1 < self.grad_accum:
                with phase("data"):  # the kernels above are queued on the GPU: the host reads meanwhile
                    x, y = next(upcoming)
        lr_frac = lr_multiplier(self.step, self.total_steps, self.config.schedule)
        momentum = muon_momentum(self.step, self.config.optim)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * lr_frac
            if group["kind"] == "muon":
                group["momentum"] = momentum
        with phase("optimizer"):
            self.optimizer.step()
            self.model.zero_grad(set_to_none=True)
        with phase("sync"):
            loss_value = loss_sum.item()  # waits for the step to finish: the time below is the step's
        return loss_value, float(num_targets), lr_frac, time.time() - t0

    def _counters(self) -> dict[str, Any]:
        tokens = self.step * self.config.train.total_batch_tokens
        elapsed_s = self.elapsed_before_s + time.time() - self.session_start
        return dict(
            step=self.step, tokens=tokens, flops=float(tokens * self.flops_per_token), elapsed_s=elapsed_s
        )

    def _validate(self) -> float | None:
        """Writes a `val` event; returns the validation loss (the same on every rank), None when the
        validation batches hold no target to score."""
        self.model.eval()
        val_loss, val_bpb, val_tokens = evaluate(
            self.forward, self.val_loader, self.val_batches, self.token_bytes, self.runtime
        )
        self.model.train()
        self.last_val = (val_loss, val_bpb)
        self._emit("val", **self._counters(), val_loss=val_loss, val_bpb=val_bpb, val_tokens=val_tokens)
        return val_loss if val_tokens else None

    def _weights_finite(self) -> bool:
        """Whether every parameter is finite on every rank (a collective; one host sync)."""
        finite = torch.stack([p.detach().isfinite().all() for p in self.model.parameters()]).all()
        return not _any_rank(not bool(finite), self.runtime)

    def _run_gauntlet(self) -> None:
        """The eval gauntlet on the current weights, every rank scoring its share; rank 0 writes one `eval`
        event per task and per average. A forward holds at most the training micro-batch's tokens, which
        are known to fit (with their backward) in this device's memory."""
        runtime = self.runtime
        with runtime.autocast():
            result = run_gauntlet(
                self.model,
                self.gauntlet,
                self.tokenizer,
                rank=runtime.rank,
                world_size=runtime.world_size,
                max_batch_tokens=self.device_batch_size * self.gpt_config.sequence_len,
            )
        for event in result.events():
            self._emit("eval", step=self.step, **event)

    def _checkpoint(self, *, final: bool, stopping: bool) -> None:
        runtime = self.runtime
        counters = self._counters()
        meta = {
            "config": self.config.to_dict(),
            "model_config": dataclasses.asdict(self.gpt_config),
            "tokenizer": {"name": self.manifest.tokenizer.name, "hash": self.manifest.tokenizer.hash},
            "total_steps": self.total_steps,
            "device_batch_size": self.device_batch_size,
            "grad_accum": self.grad_accum,
            "fp8_head": self.model.fp8_head,  # what the head trained in (config fp8_head: auto decides it)
            "tokens": counters["tokens"],
            "flops": counters["flops"],
            "elapsed_s": counters["elapsed_s"],
            "last_val": list(self.last_val),
            "stopping": stopping,  # taken on the way out of a stop, which skips the gauntlet (_loop)
        }
        path = ckpt.save_checkpoint(
            self.run_dir,
            self.step,
            model_state=self.model.state_dict(),
            optim_state=self.optimizer.state_dict(),
            meta=meta,
            rank_state={"loader": self.train_loader.state_dict(), "rng": ckpt.rng_state()},
            rank=runtime.rank,
            world_size=runtime.world_size,
            keep_last=self.config.checkpoint.keep_last,
        )
        self._emit(
            "checkpoint", **counters, path=os.path.relpath(path, self.run_dir), final=final, stopping=stopping
        )

    def _end(self, status: str, message: str | None) -> None:
        val_loss, val_bpb = self.last_val
        self._emit(
            "end", **self._counters(), status=status, message=message, val_loss=val_loss, val_bpb=val_bpb
        )

    def _emit(self, kind: str, **fields: Any) -> None:
        if self.events is None:
            return
        event = self.events.write(kind, **fields)
        if self.wandb is not None:
            self.wandb.log(event)


class _WandbLog:
    """Weights & Biases, rank 0 only: step and val events become metrics. The run id derives from the run
    directory, so a resumed run continues the same W&B run."""

    def __init__(self, config: RunConfig, run_dir: Path):
        import hashlib

        import wandb

        run_id = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16]
        self.run = wandb.init(
            project=config.wandb.project,
            entity=config.wandb.entity,
            name=config.wandb.name or run_dir.name,
            id=run_id,
            resume="allow",
            mode=config.wandb.mode,
            dir=os.environ.get("WANDB_DIR", str(run_dir)),
            config=config.to_dict(),
        )

    def log(self, event: dict[str, Any]) -> None:
        if event["kind"] in ("step", "val"):
            metrics = {
                f"{event['kind']}/{key}": value
                for key, value in event.items()
                if key not in ("v", "kind", "time", "step") and isinstance(value, int | float)
            }
            self.run.log(metrics, step=event["step"])
        elif event["kind"] == "eval" and event["score"] is not None:
            self.run.log({f"eval/{event['task']}": event["score"]}, step=event["step"])
        elif event["kind"] == "end":
            self.run.summary["status"] = event["status"]

    def finish(self) -> None:
        self.run.finish()


# ---------------------------------------------------------------------------------------------------------
# Entry point


def _report(message: str) -> None:
    print(f"error: {message}".splitlines()[0], file=sys.stderr, flush=True)


def run(config_path: str | os.PathLike) -> int:
    """Train the run whose config is at `config_path` (its directory is the run directory); returns the
    exit code."""
    started = time.time()
    config_path = Path(config_path)
    try:
        config = RunConfig.from_json(config_path)
    except ValueError as e:
        _report(str(e))
        return EXIT_BAD_INPUT
    runtime = run_lock = None
    try:
        runtime = init_runtime(config)
        gpu_lock = GpuLock.from_env(runtime.local_rank)
        # On standby when any rank's GPU is taken (agreed, so that every rank warms up alike).
        standby = _any_rank(gpu_lock is not None and not gpu_lock.try_acquire(), runtime)
        # Beside a trainer that claimed a whole GPU, every rank waits for its lock at the same point of the
        # set-up (none is left in a collective while another waits).
        claimed = gpu_lock is not None and gpu_lock.holder_claims_whole_gpu()
        beside_claim = standby and _any_rank(claimed, runtime)  # standby is agreed: every rank calls, or none
        trainer, error = None, None
        try:
            if runtime.master:  # first, so that a second trainer on this directory fails before any wait
                run_lock = lock_run_dir(config_path.parent)
            trainer = Trainer(
                config,
                config_path.parent,
                runtime,
                setup_since=started,
                gpu_lock=gpu_lock,
                standby=standby,
                beside_claim=beside_claim,
            )
        except Exception as e:
            error = e
        device_batch_size = agree_on_setup(
            error, runtime, 0 if trainer is None else trainer.proposed_batch_size
        )
        # One head on every rank: FP8 only if every rank can (fp8_head: auto decides on each rank's GPU).
        trainer.model.fp8_head = not _any_rank(not trainer.model.fp8_head, runtime)
        try:
            trainer.build(device_batch_size)
        except Exception as e:
            error = e
        agree_on_setup(error, runtime)
        if trainer.finished:
            return trainer.report_finished()
        return trainer.train()
    except ConfigError as e:
        _report(f"{config_path}: {e}")
        return EXIT_BAD_INPUT
    except INPUT_ERRORS as e:
        _report(str(e))
        return EXIT_BAD_INPUT
    except _SilentExit as e:
        return e.code
    # The disk, not the code: one line (the `end` event says it too, where it could be written).
    except (ckpt.CheckpointWriteError, EventWriteError) as e:
        _report(str(e))
        return EXIT_ERROR
    except Exception:
        traceback.print_exc()
        return EXIT_ERROR
    finally:
        if runtime is not None and runtime.distributed and dist.is_initialized():
            dist.destroy_process_group()
        if run_lock is not None:
            os.close(run_lock)  # the process's exit would too; run() may be called again in one process


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nanogpt.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="RUN_DIR/config.json")
    args = parser.parse_args(argv)
    return run(args.config)


if __name__ == "__main__":
    code = main()
    record_exit(code)
    # Everything the run writes is written and closed by now: events, checkpoints (saved synchronously),
    # W&B, the profile; the process group is destroyed. Skip the interpreter's teardown (torch's, and the
    # shutdown of torch.compile's worker pool, which notices its parent gone): 1.2 s per cell on a CPU,
    # which a study of many cells pays between every two of them (docs/benchmarks.md, study overhead).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
