"""What the GPU screen shows of each GPU, read from NVML, and who runs on it.

NVML is injected (any object with pynvml's functions: tests pass a fake), as in `runner.gpus`. A reading
a GPU does not support (power on some boards, clocks in some modes) is None rather than an error; a GPU
NVML cannot read at all (NVMLError_GpuIsLost, ...) is a sample with its `error`, so that one bad GPU never
hides the others.
Nothing here touches CUDA: the TUI never imports torch.
"""

import collections
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from runner.gpus import gpu_count, nvml_error

HISTORY_LEN = 30  # samples kept per GPU for the sparklines: 30 s at the default poll


@dataclass(frozen=True, kw_only=True, slots=True)
class GpuSample:
    index: int
    name: str
    util_percent: float | None
    memory_used_bytes: int
    memory_total_bytes: int
    temperature_c: float | None
    power_w: float | None
    power_limit_w: float | None
    sm_clock_mhz: int | None
    memory_clock_mhz: int | None
    pids: tuple[int, ...]  # compute processes on it now
    error: str | None = None  # NVML could not read this GPU: every reading above is empty


def _maybe(read: Callable[[], Any]) -> Any:
    """A reading, or None when this GPU does not support it (NVMLError_NotSupported and friends)."""
    try:
        return read()
    except Exception:
        return None


def sample(nvml: Any) -> list[GpuSample]:
    """One reading of every GPU NVML sees; a GPU it cannot read is a sample with its error. GpuListError
    when NVML cannot count them."""
    samples = []
    for index in range(gpu_count(nvml)):
        try:
            samples.append(_sample_gpu(nvml, index))
        except Exception as error:  # NVMLError_GpuIsLost, NVMLError_Unknown, ...: raised by any call
            name = _maybe(lambda i=index: nvml.nvmlDeviceGetName(nvml.nvmlDeviceGetHandleByIndex(i)))
            samples.append(
                GpuSample(
                    index=index,
                    name=(name.decode() if isinstance(name, bytes) else name) or "?",
                    util_percent=None,
                    memory_used_bytes=0,
                    memory_total_bytes=0,
                    temperature_c=None,
                    power_w=None,
                    power_limit_w=None,
                    sm_clock_mhz=None,
                    memory_clock_mhz=None,
                    pids=(),
                    error=nvml_error(error),
                )
            )
    return samples


def _sample_gpu(nvml: Any, index: int) -> GpuSample:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    name = nvml.nvmlDeviceGetName(handle)
    power_mw = _maybe(lambda: nvml.nvmlDeviceGetPowerUsage(handle))
    limit_mw = _maybe(lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(handle))
    return GpuSample(
        index=index,
        name=name.decode() if isinstance(name, bytes) else name,
        util_percent=_maybe(lambda: float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)),
        memory_used_bytes=int(memory.used),
        memory_total_bytes=int(memory.total),
        temperature_c=_maybe(lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)),
        power_w=None if power_mw is None else power_mw / 1000,
        power_limit_w=None if limit_mw is None else limit_mw / 1000,
        sm_clock_mhz=_maybe(lambda: nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM)),
        memory_clock_mhz=_maybe(lambda: nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_MEM)),
        pids=tuple(
            sorted(
                int(p.pid) for p in _maybe(lambda: nvml.nvmlDeviceGetComputeRunningProcesses(handle)) or []
            )
        ),
    )


class History:
    """The last HISTORY_LEN utilisation and memory readings of each GPU, for the sparklines."""

    def __init__(self) -> None:
        self.util: dict[int, collections.deque[float]] = {}
        self.memory: dict[int, collections.deque[float]] = {}

    def add(self, samples: Iterable[GpuSample]) -> None:
        for gpu in samples:
            if gpu.error is not None:  # nothing was read: no point on the sparkline
                continue
            self.util.setdefault(gpu.index, collections.deque(maxlen=HISTORY_LEN)).append(
                gpu.util_percent or 0.0
            )
            share = gpu.memory_used_bytes / gpu.memory_total_bytes if gpu.memory_total_bytes else 0.0
            self.memory.setdefault(gpu.index, collections.deque(maxlen=HISTORY_LEN)).append(100 * share)


@dataclass(frozen=True, kw_only=True, slots=True)
class Ours:
    """The study's trainers on this host: by the GPUs their attempts were given, and by launcher pid."""

    cells_by_gpu: dict[int, str]
    cells_by_pid: dict[int, str]


def occupants(
    gpu: GpuSample,
    ours: Ours | None,
    *,
    ancestors: Callable[[int], list[int]],
    process_name: Callable[[int], str],
) -> list[str]:
    """Who runs on the GPU: our cell (by its attempt's GPUs) and every process that is not one of our
    trainers or their children, as 'foreign pid N (name)'. With no study to tell ours (`ours` None),
    every process is 'pid N (name)'."""
    if ours is None:
        return [f"pid {pid} ({process_name(pid)})" for pid in gpu.pids]
    found = []
    if gpu.index in ours.cells_by_gpu:
        found.append(f"cell {ours.cells_by_gpu[gpu.index]}")
    for pid in gpu.pids:
        lineage = [pid, *ancestors(pid)]
        cell = next((ours.cells_by_pid[p] for p in lineage if p in ours.cells_by_pid), None)
        if cell is None:
            found.append(f"foreign pid {pid} ({process_name(pid)})")
        elif f"cell {cell}" not in found:
            found.append(f"cell {cell}")
    return found


def psutil_ancestors(pid: int) -> list[int]:
    """The pids of the process's parents, nearest first; [] when it is gone or hidden from us."""
    import psutil

    try:
        return [parent.pid for parent in psutil.Process(pid).parents()]
    except (psutil.Error, OSError):
        return []


def psutil_name(pid: int) -> str:
    import psutil

    try:
        return psutil.Process(pid).name()
    except (psutil.Error, OSError):
        return "?"
