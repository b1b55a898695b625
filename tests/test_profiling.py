"""The profile's summary counts each kernel once: host operators, device ranges and CUPTI markers aside."""

import time
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from nanogpt.profiling import format_summary, phase, summarize


def event(key, device_type, *, device_us=0.0, self_device_us=None, cpu_us=0.0, annotation=False, count=1):
    """One row of `key_averages()`, with the fields the summary reads (times in microseconds)."""
    return SimpleNamespace(
        key=key,
        count=count,
        device_type=device_type,
        is_user_annotation=annotation,
        device_time_total=device_us,
        self_device_time_total=device_us if self_device_us is None else self_device_us,
        cpu_time_total=cpu_us,
        self_cpu_time_total=cpu_us,
    )


CPU, CUDA = DeviceType.CPU, DeviceType.CUDA


def test_on_a_gpu_each_kernel_counts_once():
    # The shape of the H100 profile that counted 6.2 s of kernels in 3.0 s of steps: each host operator
    # carries its kernels' device time, the inductor's launch ranges share their kernels' names, the
    # phases appear again as device ranges, and CUPTI reports waits on a full launch queue.
    averages = [
        event("aten::mm", CPU, device_us=600_000, cpu_us=50_000, count=10),
        event("nvjet_sm90_tst_256x128", CUDA, device_us=600_000, count=10),
        event("triton_red_fused__log_softmax_0", CPU, device_us=200_000, cpu_us=5_000),
        event("triton_red_fused__log_softmax_0", CUDA, device_us=200_000),
        event("aten::_cudnn_attention_backward", CPU, device_us=100_000, cpu_us=1_000),
        event("cudnn_generated_fort_native_sdpa_sm90_flash_bprop", CUDA, device_us=100_000),
        event("Memcpy HtoD (Pageable -> Device)", CUDA, device_us=10_000),
        event("nanostudy.forward_backward", CPU, device_us=910_000, cpu_us=60_000),
        event("nanostudy.forward_backward", CUDA, device_us=950_000, annotation=True),
        event("## Call CompiledFxGraph ##", CUDA, device_us=900_000, annotation=True),
        event("Command Buffer Full", CUDA, device_us=230_000, count=8896),
    ]
    summary = summarize(averages, [(7, 0.5), (8, 0.5)], on_device=True)
    assert summary["categories"] == pytest.approx(
        {"matmul": 0.6, "fused elementwise": 0.2, "attention": 0.1, "memory": 0.01}
    )
    assert summary["device_busy"] == pytest.approx(0.91)
    assert [row["name"] for row in summary["top"]] == [
        "nvjet_sm90_tst_256x128",
        "triton_red_fused__log_softmax_0",
        "cudnn_generated_fort_native_sdpa_sm90_flash_bprop",
        "Memcpy HtoD (Pageable -> Device)",
    ]
    # The phase's host seconds come from the host range (the device range, read last, hid them: 0 s of
    # host time in that profile), its device seconds from the range's span on the device.
    assert summary["phases"]["forward_backward"] == {"count": 1, "host_s": 0.06, "device_s": 0.95}
    text = format_summary(summary)
    assert "device busy: 0.9100 s of kernels in 1.0000 s of steps (91.0%)" in text
    assert "\nkernel " in text and "Command Buffer Full" not in text


def test_on_the_cpu_operators_count_by_self_host_time():
    averages = [
        event("aten::mm", CPU, cpu_us=300_000),
        event("aten::add", CPU, cpu_us=100_000),
        event("nanostudy.forward_backward", CPU, cpu_us=450_000),
    ]
    summary = summarize(averages, [(1, 0.5)], on_device=False)
    assert summary["categories"] == pytest.approx({"matmul": 0.3, "other": 0.1})
    assert summary["device_busy"] is None and summary["time_base"] == "host"
    text = format_summary(summary)
    assert "device busy" not in text and "\noperator " in text


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_real_gpu_profile_counts_no_more_kernel_time_than_wall_time():
    device = torch.device("cuda", 0)
    a = torch.randn(4096, 4096, device=device, dtype=torch.bfloat16)
    attention = torch.randn(8, 16, 1024, 128, device=device, dtype=torch.bfloat16)

    def work() -> torch.Tensor:
        for _ in range(50):
            b = (a @ a).relu() * 0.5
            F.scaled_dot_product_attention(attention, attention, attention, is_causal=True)
        return b

    work()  # cuBLAS's and the attention's first calls set up (on an H100: 55 of 61 ms of the first loop)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiler:
        start = time.perf_counter()
        with phase("forward_backward"):
            b = work()
        torch.cuda.synchronize()
        wall_s = time.perf_counter() - start
    summary = summarize(profiler.key_averages(), [(1, wall_s)], on_device=True)
    assert b.isfinite().all()
    kernels_s = sum(summary["categories"].values())
    # One stream runs one kernel at a time, so its kernels fit inside the wall time; before the fix the
    # matmuls alone counted twice.
    assert 0.2 * wall_s < kernels_s <= 1.02 * wall_s
    assert summary["categories"]["matmul"] > summary["categories"].get("other", 0.0)
    assert summary["categories"]["attention"] > 0
    assert all(not row["name"].startswith(("aten::", "nanostudy.")) for row in summary["top"])
    assert summary["phases"]["forward_backward"]["host_s"] > 0
