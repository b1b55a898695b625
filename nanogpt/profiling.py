"""Where a training step's time goes: torch.profiler over a few steps of a real run (config key `profile`).

The trainer marks the phases of each step with `record_function` (`PHASES`); this module starts the
profiler before step `start_step + 1`, stops it after `num_steps` steps and writes, on rank 0, into
`RUN_DIR/profile/`:

- `summary.json`: the profiled steps and their wall times, each phase's host and device seconds, device
  time by kernel category (matmul, attention, fused elementwise, communication, memory, other), the top
  kernels by device time (operators by self host time on the CPU) and, on a GPU, how busy the device was
  (kernel seconds over wall seconds) and where it waited: its idle gaps between the first and the last
  kernel, each counted to the host phase that was running when the gap began (`idle_gaps`);
- `summary.txt`: the same as tables, for a person;
- `trace.json.gz`: the Chrome/Perfetto trace (with `trace: true`).

On a GPU only the device's own events (kernels, copies) are counted. The profiler also gives each host
operator (`aten::mm`) the device time of the kernels it launched, so adding both would count every kernel
twice; ranges that `record_function` marks on the device are spans, not work; CUPTI's "Command Buffer
Full" marks launches that waited for room in the device's queue (host time: the host ran ahead).

Phase times nest as the step does: `forward_backward` and `optimizer` are launched from the host, so on a
GPU their host seconds are launch time and their device seconds the kernels they queued (the range's span
on the device, where the profiler marks it there too); `sync` is the host waiting for the device at the
end of the step.
"""

import gzip
import json
import shutil
from collections import defaultdict
from collections.abc import Iterable
from operator import attrgetter
from pathlib import Path
from typing import Any

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

PROFILE_DIR = "profile"
PHASES = ("data", "weight_copies", "forward_backward", "optimizer", "sync")
PHASE_PREFIX = "nanostudy."
# Kernel (or, on the CPU, operator) names → category, first match wins; lower-case substrings.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("communication", ("nccl", "all_reduce", "allreduce", "reduce_scatter", "all_gather", "gloo")),
    ("attention", ("flash", "fmha", "attention", "scaled_dot_product", "sdpa")),
    (
        "matmul",
        ("gemm", "nvjet", "cutlass", "xmma", "wgmma", "aten::mm", "aten::addmm", "aten::bmm", "matmul"),
    ),
    ("memory", ("memcpy", "memset", "aten::copy_", "aten::fill_", "aten::zero_")),
    ("fused elementwise", ("triton",)),
)
TOP_OPERATORS = 40  # in the H100 profile at depth 12 the 25th row was still 2% of a step
NOT_DEVICE_WORK = ("Command Buffer Full",)  # CUPTI's markers of waiting launches, not kernels


def phase(name: str) -> record_function:
    """The context manager that marks one phase of a step (a no-op unless the profiler runs)."""
    assert name in PHASES, name
    return record_function(PHASE_PREFIX + name)


def category_of(name: str) -> str:
    lowered = name.lower()
    for category, needles in CATEGORIES:
        if any(needle in lowered for needle in needles):
            return category
    return "other"


class StepProfiler:
    """Profiles steps `start_step + 1 … start_step + num_steps` of a run (1-based, as `step` events count).

    A run resumed past `start_step` profiles nothing; a run that ends (or stops) inside the window writes
    what it recorded. `enabled` is False on every rank but rank 0.
    """

    def __init__(self, *, start_step: int | None, num_steps: int, trace: bool, run_dir: Path, enabled: bool):
        self.start_step = start_step
        self.num_steps = num_steps
        self.trace = trace
        self.directory = run_dir / PROFILE_DIR
        self.enabled = enabled and start_step is not None
        self._profiler: profile | None = None
        self._steps: list[tuple[int, float]] = []

    @property
    def active(self) -> bool:
        return self._profiler is not None

    def before_step(self, steps_done: int) -> None:
        if self.enabled and not self.active and steps_done == self.start_step:
            activities = [ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(ProfilerActivity.CUDA)
            self._profiler = profile(activities=activities)
            self._profiler.__enter__()

    def after_step(self, step: int, step_s: float) -> None:
        if not self.active:
            return
        self._steps.append((step, step_s))
        if len(self._steps) == self.num_steps:
            self.finish()

    def finish(self) -> None:
        """Stop the profiler (if it runs) and write the summary; idempotent."""
        if self._profiler is None:
            return
        profiler, self._profiler = self._profiler, None
        profiler.__exit__(None, None, None)
        self.enabled = False
        on_device = any(a == ProfilerActivity.CUDA for a in profiler.activities)
        idle = idle_gaps(*device_and_phase_spans(profiler.events())) if on_device else None
        summary = summarize(profiler.key_averages(), self._steps, on_device=on_device, idle=idle)
        if self.directory.exists():
            shutil.rmtree(self.directory)  # one window per run directory: a rerun replaces it
        self.directory.mkdir(parents=True)
        (self.directory / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        (self.directory / "summary.txt").write_text(format_summary(summary))
        if self.trace:
            raw = self.directory / "trace.json"
            profiler.export_chrome_trace(str(raw))
            with raw.open("rb") as source, gzip.open(self.directory / "trace.json.gz", "wb") as target:
                shutil.copyfileobj(source, target)
            raw.unlink()


def summarize(
    averages: Iterable[Any],
    steps: list[tuple[int, float]],
    *,
    on_device: bool,
    idle: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The profile as plain numbers (seconds). `averages`: the profiler's `key_averages()`; `idle`: the
    device's idle gaps (`idle_gaps`), on a GPU."""
    averages = list(averages)
    phases: dict[str, dict[str, float]] = {}
    device_spans: dict[str, float] = {}
    for event in averages:
        if not event.key.startswith(PHASE_PREFIX):
            continue
        name = event.key.removeprefix(PHASE_PREFIX)
        if event.device_type == DeviceType.CPU:
            phases[name] = {
                "count": event.count,
                "host_s": event.cpu_time_total / 1e6,
                "device_s": event.device_time_total / 1e6,
            }
        else:  # the same range as the device saw it (newer profilers): its span there
            device_spans[name] = event.device_time_total / 1e6
    for name, seconds in device_spans.items():
        if name in phases:
            phases[name]["device_s"] = seconds
    if on_device:
        operators = [e for e in averages if _device_work(e)]
        self_time = attrgetter("self_device_time_total")
    else:
        operators = [e for e in averages if not e.key.startswith(PHASE_PREFIX)]
        self_time = attrgetter("self_cpu_time_total")
    by_category: dict[str, float] = defaultdict(float)
    for event in operators:
        by_category[category_of(event.key)] += self_time(event) / 1e6
    top = sorted(operators, key=self_time, reverse=True)[:TOP_OPERATORS]
    wall_s = sum(seconds for _, seconds in steps)
    return {
        "time_base": "device" if on_device else "host",  # what `categories` and `top` measure
        "steps": [step for step, _ in steps],
        "step_s": [seconds for _, seconds in steps],
        # Kernel seconds over wall seconds: below 1, the device waited (on the host, the data, a sync).
        "device_busy": sum(by_category.values()) / wall_s if on_device and wall_s > 0 else None,
        "phases": {name: phases[name] for name in PHASES if name in phases},
        "idle": idle,
        "categories": dict(sorted(by_category.items(), key=lambda item: -item[1])),
        "top": [
            {"name": e.key, "count": e.count, "self_s": self_time(e) / 1e6, "category": category_of(e.key)}
            for e in top
            if self_time(e) > 0
        ],
    }


def device_and_phase_spans(
    events: Iterable[Any],
) -> tuple[list[tuple[float, float]], list[tuple[str, float, float]]]:
    """From the profiler's `events()`: the (start, end) seconds of the device's work, and the (phase,
    start, end) of the host's phase ranges, on one clock."""
    work, phases = [], []
    for event in events:
        start, end = event.time_range.start / 1e6, event.time_range.end / 1e6
        if _device_work(event):
            work.append((start, end))
        elif event.device_type == DeviceType.CPU and event.key.startswith(PHASE_PREFIX):
            phases.append((event.key.removeprefix(PHASE_PREFIX), start, end))
    return work, phases


# What the host was doing when the device went idle outside every phase: between two steps (the loop's own
# work: the step's events, validation, checkpoints).
BETWEEN_PHASES = "between phases"


def idle_gaps(work: list[tuple[float, float]], phases: list[tuple[str, float, float]]) -> dict[str, Any]:
    """The device's idle time between its first and its last work, from the (start, end) seconds of its
    kernels and copies (in any order; overlapping work merges), each gap counted to the host phase that
    was running when it began (the innermost of nested ranges; BETWEEN_PHASES outside them). A phase the
    device waits on is where the host was too slow to keep it fed, or waited for it (`sync`)."""
    by_phase: dict[str, float] = defaultdict(float)
    gaps = []
    end = None
    for start, stop in sorted(work):
        if end is not None and start > end:
            gaps.append((end, start - end))
        end = stop if end is None else max(end, stop)
    for began, seconds in gaps:
        running = [(s, name) for name, s, e in phases if s <= began < e]
        by_phase[max(running)[1] if running else BETWEEN_PHASES] += seconds
    return {
        "idle_s": sum(seconds for _, seconds in gaps),
        "gaps": len(gaps),
        "largest_s": max((seconds for _, seconds in gaps), default=0.0),
        "by_phase": dict(sorted(by_phase.items(), key=lambda item: -item[1])),
    }


def _device_work(event: Any) -> bool:
    """A kernel or copy on the device: not a host operator, a range marked on the device by
    `record_function` (our phases, the compiler's regions) or a CUPTI marker."""
    return (
        event.device_type != DeviceType.CPU
        and not getattr(event, "is_user_annotation", False)
        and not event.key.startswith(PHASE_PREFIX)
        and event.key not in NOT_DEVICE_WORK
    )


def format_summary(summary: dict[str, Any]) -> str:
    steps = summary["steps"]
    total_step_s = sum(summary["step_s"])
    lines = [
        f"profiled steps {steps[0]}-{steps[-1]} ({len(steps)}), {total_step_s:.4f} s of wall time"
        if steps
        else "no step finished inside the profile window",
        "",
        f"{'phase':<18}{'count':>8}{'host s':>12}{'device s':>12}",
    ]
    for name, numbers in summary["phases"].items():
        lines.append(f"{name:<18}{numbers['count']:>8}{numbers['host_s']:>12.4f}{numbers['device_s']:>12.4f}")
    base = summary["time_base"]
    total = sum(summary["categories"].values()) or 1.0
    if summary["device_busy"] is not None:
        busy = summary["device_busy"]
        lines += [
            "",
            f"device busy: {total:.4f} s of kernels in {total_step_s:.4f} s of steps ({busy:.1%})",
        ]
    idle = summary.get("idle")
    if idle is not None:
        lines.append(
            f"device idle: {idle['idle_s']:.4f} s in {idle['gaps']} gaps between kernels (largest "
            f"{idle['largest_s'] * 1e3:.2f} ms); by the host's phase when each began:"
        )
        lines += [f"  {name:<16}{seconds:>12.4f}" for name, seconds in idle["by_phase"].items()]
    lines += ["", f"{'category':<20}{base + ' s':>12}{'share':>8}"]
    for name, seconds in summary["categories"].items():
        lines.append(f"{name:<20}{seconds:>12.4f}{seconds / total:>8.1%}")
    name = "kernel" if base == "device" else "operator"
    lines += ["", f"{name:<70}{'count':>8}{'self ' + base + ' s':>16}"]
    for row in summary["top"]:
        lines.append(f"{row['name'][:69]:<70}{row['count']:>8}{row['self_s']:>16.5f}")
    return "\n".join(lines) + "\n"
