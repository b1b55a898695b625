"""GPU selection edge cases: what the runner's CUDA_VISIBLE_DEVICES and NVML may say."""

import pytest
from runner_fixtures import FakeNvml

from runner.gpus import GpuPool


@pytest.mark.parametrize("visible", ["0,0", "2,GPU-00000002", "GPU-00000001,1"])
def test_cuda_visible_devices_naming_a_gpu_twice_is_refused(visible):
    """A GPU listed twice was free twice: a two-GPU cell got CUDA_VISIBLE_DEVICES=0,0 (two ranks on one
    GPU), or two one-GPU cells shared it."""
    with pytest.raises(ValueError, match=rf"CUDA_VISIBLE_DEVICES={visible!r}: .* names GPU \d again"):
        GpuPool(nvml=FakeNvml(4), visible_devices=visible)
