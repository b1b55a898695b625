"""GPU discovery and selection over a fake NVML: foreign processes, --gpus, CUDA_VISIBLE_DEVICES."""

import os

import pytest
from runner_fixtures import FakeNvml

from runner.gpus import GpuListError, GpuPool, discover, parse_gpu_list


def test_discover_reads_every_gpu():
    gpus = discover(FakeNvml(3, foreign={1: [42, 7]}))
    assert [gpu.index for gpu in gpus] == [0, 1, 2]
    assert gpus[0].name == "NVIDIA H100 80GB HBM3"  # bytes from an older pynvml are decoded
    assert gpus[1].pids == (7, 42)
    assert gpus[1].memory_used_bytes == 2 << 30 and gpus[1].memory_total_bytes == 80 << 30
    assert gpus[2].uuid.startswith("GPU-00000002")


class LostGpu(FakeNvml):
    """GPU `lost` raises at every reading, as NVML's calls do once the driver has lost it (an Xid error)."""

    def __init__(self, num_gpus: int, *, lost: int):
        super().__init__(num_gpus)
        self.lost = lost

    def nvmlDeviceGetMemoryInfo(self, handle):
        if handle == self.lost:
            raise RuntimeError("GPU is lost")
        return super().nvmlDeviceGetMemoryInfo(handle)


def test_a_gpu_nvml_cannot_read_is_skipped_and_named():
    unreadable = {}
    assert [gpu.index for gpu in discover(LostGpu(3, lost=1), unreadable=unreadable)] == [0, 2]
    assert unreadable == {1: "RuntimeError: GPU is lost"}
    pool = GpuPool(nvml=LostGpu(3, lost=1))
    assert pool.usable == (0, 1, 2)  # still this machine's GPU (--gpus 1 is not "no such GPU"), never free
    assert pool.free(assigned=set(), our_pids=set()) == [0, 2]
    assert pool.describe() == (
        "0: NVIDIA H100 80GB HBM3, 1: cannot be read (RuntimeError: GPU is lost), 2: NVIDIA H100 80GB HBM3"
    )
    assert GpuPool(nvml=LostGpu(2, lost=1), restrict=(1,)).free(assigned=set(), our_pids=set()) == []


class Uncountable(FakeNvml):
    """nvmlDeviceGetCount fails while `failing` is set, as it does while the driver reloads."""

    failing = False

    def nvmlDeviceGetCount(self):
        if self.failing:
            raise RuntimeError("Unknown Error")
        return super().nvmlDeviceGetCount()


def test_an_nvml_that_cannot_list_the_gpus_is_an_error_at_the_start_and_a_wait_later():
    nvml = Uncountable(2)
    nvml.failing = True
    with pytest.raises(
        GpuListError, match=r"NVML cannot list this machine's GPUs \(RuntimeError: Unknown Error\)"
    ):
        GpuPool(nvml=nvml)
    nvml.failing = False
    pool = GpuPool(nvml=nvml)
    nvml.failing = True
    assert pool.free(assigned=set(), our_pids=set()) == []  # a runner waits, rather than stops
    assert pool.problem == "NVML cannot list this machine's GPUs (RuntimeError: Unknown Error)"
    nvml.failing = False
    assert pool.free(assigned=set(), our_pids=set()) == [0, 1] and pool.problem is None


def test_a_gpu_with_someone_elses_process_is_not_free():
    nvml = FakeNvml(4, foreign={1: [1000]})
    pool = GpuPool(nvml=nvml)
    assert pool.usable == (0, 1, 2, 3) and not pool.cpu
    assert pool.free(assigned=set(), our_pids=set()) == [0, 2, 3]
    assert pool.free(assigned={0}, our_pids=set()) == [2, 3]
    # Our own trainer's process does not make a GPU busy for us (the assignment does).
    nvml.processes[2].append(555)
    assert pool.free(assigned=set(), our_pids={555}) == [0, 2, 3]
    assert pool.free(assigned=set(), our_pids=set()) == [0, 3]
    # The picture is read again at every call: a process that ends frees its GPU.
    nvml.processes[1].clear()
    assert pool.free(assigned=set(), our_pids=set()) == [0, 1, 3]


def test_the_runners_own_process_does_not_make_a_gpu_busy():
    # A runner started from a process that holds a CUDA context (a notebook, a pytest session that ran a
    # GPU test first) must not wait for itself; the H100 run of the GPU tests hung on this.
    nvml = FakeNvml(2, foreign={0: [os.getpid()], 1: [os.getpid(), 1000]})
    assert GpuPool(nvml=nvml).free(assigned=set(), our_pids=set()) == [0]


def test_gpus_flag_restricts_and_keeps_the_given_order():
    pool = GpuPool(nvml=FakeNvml(4), restrict=(3, 1))
    assert pool.usable == (3, 1)
    assert pool.free(assigned=set(), our_pids=set()) == [3, 1]
    with pytest.raises(ValueError, match=r"--gpus: no GPU with index 7 .*GPUs 0, 1, 2, 3"):
        GpuPool(nvml=FakeNvml(4), restrict=(0, 7))
    with pytest.raises(ValueError, match="no NVIDIA GPU found"):
        GpuPool(nvml=None, restrict=(0,))


def test_cuda_visible_devices_of_the_runner_restricts_like_gpus():
    assert GpuPool(nvml=FakeNvml(4), visible_devices="2,3").usable == (2, 3)
    assert GpuPool(nvml=FakeNvml(4), visible_devices="GPU-00000001").usable == (1,)
    assert GpuPool(nvml=FakeNvml(4), visible_devices="").cpu
    assert GpuPool(nvml=FakeNvml(4), restrict=(0,), visible_devices="2").usable == (0,)  # --gpus wins
    with pytest.raises(ValueError, match=r"CUDA_VISIBLE_DEVICES='1,9': '9' names no GPU"):
        GpuPool(nvml=FakeNvml(4), visible_devices="1,9")
    mig = "MIG-4b8c3a0e-5d0f-5b2e-9a1c-0f7e2d6c1b3a"
    with pytest.raises(ValueError, match=rf"'{mig}' is a MIG instance; cells run on whole GPUs only"):
        GpuPool(nvml=FakeNvml(4), visible_devices=mig)


def test_no_nvml_or_no_gpu_means_the_cpu():
    assert GpuPool(nvml=None).cpu
    assert GpuPool(nvml=FakeNvml(0)).cpu
    assert GpuPool(nvml=None).free(assigned=set(), our_pids=set()) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0", (0,)), ("0,2,3", (0, 2, 3)), (" 3, 1 ", (3, 1))],
)
def test_parse_gpu_list(text, expected):
    assert parse_gpu_list(text) == expected


@pytest.mark.parametrize("text", ["", "a", "0,,1", "0,-1", "1,1"])
def test_parse_gpu_list_rejects(text):
    with pytest.raises(ValueError, match="--gpus"):
        parse_gpu_list(text)
