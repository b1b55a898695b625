"""GPU discovery through NVML: which GPUs this machine has, and which of them are free for us.

A GPU is free when none of its compute processes belongs to someone else: we never share a GPU with a
process we did not start, and never kill one. `--gpus 0,2,3` (or the runner's own CUDA_VISIBLE_DEVICES)
restricts the set. Without NVML or without a GPU the runner trains on the CPU.

Indices are NVML's, which follow the PCI bus order; the executor sets CUDA_DEVICE_ORDER=PCI_BUS_ID in every
trainer's environment so that CUDA_VISIBLE_DEVICES=2 means the same GPU to CUDA as index 2 does here.

NVML is injectable: `discover(nvml=...)` takes any object with pynvml's functions (tests pass a fake).
"""

import fcntl
import os
import tempfile
import weakref
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, kw_only=True, slots=True)
class Gpu:
    index: int  # NVML's index (PCI bus order)
    uuid: str
    name: str
    memory_total_bytes: int
    memory_used_bytes: int
    pids: tuple[int, ...]  # compute processes running on it now, ours or anyone's


def parse_gpu_list(text: str, *, source: str = "--gpus") -> tuple[int, ...]:
    """'0,2,3' -> (0, 2, 3). ValueError naming `source` for anything else."""
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or any(not item.isdigit() for item in items):
        raise ValueError(f"{source}: expected GPU indices like 0,2,3, got {text!r}")
    indices = tuple(int(item) for item in items)
    if len(set(indices)) != len(indices):
        raise ValueError(f"{source}: GPU index listed twice in {text!r}")
    return indices


def load_nvml() -> Any | None:
    """The pynvml module, initialised; None when the library or the driver is missing."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded, ImportError, ...
        return None
    return pynvml


class GpuListError(ValueError):
    """NVML answered at start-up but cannot say how many GPUs there are (nvmlDeviceGetCount failed)."""


def gpu_count(nvml: Any) -> int:
    """How many GPUs NVML sees; GpuListError naming NVML's error when it cannot say."""
    try:
        return int(nvml.nvmlDeviceGetCount())
    except Exception as error:  # NVMLError_Unknown, NVMLError_DriverNotLoaded after a driver reload, ...
        raise GpuListError(f"NVML cannot list this machine's GPUs ({nvml_error(error)})") from error


def discover(nvml: Any, *, unreadable: dict[int, str] | None = None) -> list[Gpu]:
    """Every GPU NVML sees, with its memory and the pids of its compute processes.

    A GPU that NVML cannot read (NVMLError_GpuIsLost after an Xid error, ...) is left out, so it is never
    free, and the other GPUs still are; a crash here would stop the runner and the TUI's chat. Its error
    goes into `unreadable`, by index, when given. GpuListError when NVML cannot count the GPUs at all.
    """
    gpus = []
    for index in range(gpu_count(nvml)):
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            processes = nvml.nvmlDeviceGetComputeRunningProcesses(handle)
            uuid, name = _text(nvml.nvmlDeviceGetUUID(handle)), _text(nvml.nvmlDeviceGetName(handle))
        except Exception as error:  # pynvml raises an NVMLError subclass per error code
            if unreadable is not None:
                unreadable[index] = nvml_error(error)
            continue
        gpus.append(
            Gpu(
                index=index,
                uuid=uuid,
                name=name,
                memory_total_bytes=int(memory.total),
                memory_used_bytes=int(memory.used),
                pids=tuple(sorted(int(process.pid) for process in processes)),
            )
        )
    return gpus


def nvml_error(error: Exception) -> str:
    """'NVMLError_GpuIsLost: GPU is lost': the class names the error even where its text is only a code."""
    return f"{type(error).__name__}: {error}"


def _text(value: str | bytes) -> str:
    # Older pynvml versions return bytes.
    return value.decode() if isinstance(value, bytes) else value


def _close_claims(claims: dict[int, int], keep: Collection[int] = ()) -> None:
    """Give up the claims in `claims` (GPU index -> descriptor) but those on `keep`."""
    for index in [index for index in claims if index not in keep]:
        os.close(claims.pop(index))  # closing the descriptor drops the flock


def default_claim_dir() -> Path:
    """Where the runners of this user on this host claim GPUs (`GpuPool.claim`)."""
    return Path(tempfile.gettempdir()) / f"nanostudy-{os.getuid()}" / "gpu-claims"


class GpuPool:
    """The GPUs this runner may use, and which of them are free at a given moment.

    `restrict` is `--gpus`; without it the runner's own CUDA_VISIBLE_DEVICES (indices or GPU UUIDs)
    restricts, as it would for any CUDA program. An empty usable set means CPU mode (`cpu` is True); asking
    for GPUs that do not exist is a ValueError, and so is an NVML that cannot list the GPUs at the start
    (GpuListError). When it fails later, no GPU is free until it answers again (`problem` says why): a
    runner waits rather than stops.

    Runners of several studies on one machine claim the GPUs they start cells on (`claim`, one lock file
    per GPU in `claim_dir`): a trainer shows in NVML only once it has imported torch and set up CUDA,
    seconds after its start, and another runner would take its GPU meanwhile. `claim_dir` "auto": the
    user's (default_claim_dir) with the real NVML, none with a made-up one (a test's fake GPUs).
    """

    def __init__(
        self,
        *,
        nvml: Any | None,
        restrict: Sequence[int] | None = None,
        visible_devices: str | None = None,
        claim_dir: Path | str | None = "auto",
    ):
        self.nvml = nvml
        if claim_dir == "auto":
            claim_dir = default_claim_dir() if getattr(nvml, "__name__", None) == "pynvml" else None
        self.claim_dir = None if claim_dir is None else Path(claim_dir)
        self._claims: dict[int, int] = {}  # GPU index -> descriptor holding its claim
        # A pool dropped without keep_claims(()) gives its claims back when it is collected.
        weakref.finalize(self, _close_claims, self._claims)
        self.claim_problem: str | None = None  # why GPUs could not be claimed (an unusable claim_dir)
        self.unreadable: dict[int, str] = {}  # GPUs NVML could not read at the last look: never free
        self.problem: str | None = None  # NVML could not list the GPUs at the last look: none is free
        gpus = discover(nvml, unreadable=self.unreadable) if nvml is not None else []
        known = {gpu.index for gpu in gpus} | set(self.unreadable)
        if restrict is not None:
            if not known:
                raise ValueError(
                    f"--gpus {','.join(map(str, restrict))}: no NVIDIA GPU found (NVML unavailable)"
                )
            missing = [index for index in restrict if index not in known]
            if missing:
                raise ValueError(
                    f"--gpus: no GPU with index {missing[0]} (this machine has {_describe_indices(known)})"
                )
            usable = tuple(restrict)
        elif visible_devices is not None:
            usable = _visible(visible_devices, gpus)
        else:
            usable = tuple(sorted(known))
        self.usable: tuple[int, ...] = usable
        self.names = {gpu.index: gpu.name for gpu in gpus}

    @property
    def cpu(self) -> bool:
        return not self.usable

    def free(self, *, assigned: Collection[int], our_pids: Collection[int]) -> list[int]:
        """Usable GPUs that none of our running cells holds and on which no one else's process runs.

        Our own process counts as ours: a runner started from a program that already holds a CUDA context
        (a notebook, a test session) would otherwise wait forever for a GPU that only it holds.
        """
        if self.cpu:
            return []
        ours = {*our_pids, os.getpid()}
        self.unreadable = {}
        try:
            by_index = {gpu.index: gpu for gpu in discover(self.nvml, unreadable=self.unreadable)}
        except GpuListError as error:
            self.problem = str(error)
            return []
        self.problem = None
        return [
            index
            for index in self.usable
            if index not in assigned and index in by_index and set(by_index[index].pids) <= ours
        ]

    def claim(self, indices: Sequence[int]) -> list[int]:
        """The GPUs of `indices` that this runner claims now or held already: not those another runner on
        this machine claims. Each stays claimed until `keep_claims` leaves it out (or the process ends)."""
        if self.claim_dir is None:
            return list(indices)
        claimed = []
        for index in indices:
            if index not in self._claims:
                try:
                    self.claim_dir.mkdir(parents=True, exist_ok=True)
                    fd = os.open(
                        self.claim_dir / f"gpu{index}.claim", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644
                    )
                except OSError as error:
                    # No place to claim in: as without claims, and said (other runners are not kept off).
                    self.claim_problem = f"{self.claim_dir}: {error.strerror}"
                    claimed.append(index)
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                self._claims[index] = fd
            claimed.append(index)
        return claimed

    def keep_claims(self, indices: Collection[int]) -> None:
        """Give up the claims on every GPU but `indices` (those this runner's cells run on)."""
        _close_claims(self._claims, keep=indices)

    def describe(self) -> str:
        if self.cpu:
            return "CPU (no usable GPU)"
        return ", ".join(
            f"{index}: cannot be read ({self.unreadable[index]})"
            if index in self.unreadable
            else f"{index}: {self.names.get(index, '?')}"
            for index in self.usable
        )


def _visible(value: str, gpus: list[Gpu]) -> tuple[int, ...]:
    """CUDA_VISIBLE_DEVICES as NVML indices: integers or GPU UUIDs; '' or '-1' hides every GPU."""
    value = value.strip()
    if value in ("", "-1") or not gpus:
        return ()
    by_uuid = {gpu.uuid: gpu.index for gpu in gpus}
    indices = []
    for item in (item.strip() for item in value.split(",")):
        if item.isdigit() and int(item) in {gpu.index for gpu in gpus}:
            indices.append(int(item))
        elif (match := [index for uuid, index in by_uuid.items() if uuid.startswith(item)]) and len(
            match
        ) == 1:
            indices.append(match[0])
        elif item.startswith("MIG-"):
            raise ValueError(
                f"CUDA_VISIBLE_DEVICES={value!r}: {item!r} is a MIG instance; cells run on whole GPUs only "
                "(name them with --gpus)"
            )
        else:
            raise ValueError(f"CUDA_VISIBLE_DEVICES={value!r}: {item!r} names no GPU of this machine")
        if indices[-1] in indices[:-1]:
            # Else the GPU would be free twice: two cells on it at once, or one cell's two ranks.
            raise ValueError(f"CUDA_VISIBLE_DEVICES={value!r}: {item!r} names GPU {indices[-1]} again")
    return tuple(indices)


def _describe_indices(indices: Collection[int]) -> str:
    return f"GPUs {', '.join(map(str, sorted(indices)))}" if indices else "no GPU"


def visible_devices_from_env() -> str | None:
    return os.environ.get("CUDA_VISIBLE_DEVICES")
