"""The profile's summary counts each kernel once: host operators, device ranges and CUPTI markers aside."""

import time
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from nanogpt.profiling import (
    BETWEEN_PHASES,
    device_and_phase_spans,
    format_summary,
    idle_gaps,
    phase,
    summarize,
)


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


def test_idle_gaps_are_counted_to_the_host_phase_running_when_each_began():
    # Kernels (out of order, two overlapping), and the host's phases: a step whose data read starves the
    # device at its start, a sync, then the loop's own work between two steps.
    work = [(0.30, 0.50), (0.10, 0.20), (0.15, 0.25), (0.52, 0.60), (0.70, 0.80), (1.00, 1.10)]
    phases = [
        ("data", 0.00, 0.28),
        ("forward_backward", 0.28, 0.60),
        ("sync", 0.60, 0.80),
        ("data", 0.95, 1.00),
        ("forward_backward", 1.00, 1.10),
    ]
    idle = idle_gaps(work, phases)
    # Gaps: 0.25-0.30 (data), 0.50-0.52 (forward_backward), 0.60-0.70 (sync), 0.80-1.00 (between phases:
    # the loop's work after the sync until the next step's data read).
    assert idle["gaps"] == 4
    assert idle["idle_s"] == pytest.approx(0.37)
    assert idle["largest_s"] == pytest.approx(0.20)
    assert idle["by_phase"] == pytest.approx(
        {BETWEEN_PHASES: 0.20, "sync": 0.10, "data": 0.05, "forward_backward": 0.02}
    )
    assert list(idle["by_phase"]) == [BETWEEN_PHASES, "sync", "data", "forward_backward"]  # largest first
    # Nested ranges: the innermost (the latest begun) gets the gap. No work: nothing idle.
    nested = idle_gaps([(0.0, 0.1), (0.2, 0.3)], [("forward_backward", 0.0, 0.3), ("data", 0.05, 0.15)])
    assert nested["by_phase"] == pytest.approx({"data": 0.1})
    assert idle_gaps([], phases) == {"idle_s": 0.0, "gaps": 0, "largest_s": 0.0, "by_phase": {}}
    summary = summarize([event("nvjet_gemm", CUDA, device_us=370_000)], [(1, 1.1)], on_device=True, idle=idle)
    text = format_summary(summary)
    assert "device idle: 0.3700 s in 4 gaps between kernels (largest 200.00 ms)" in text
    assert f"\n  {BETWEEN_PHASES:<16}{0.2:>12.4f}\n  sync" in text


def test_the_phases_spans_come_from_a_real_profile_of_the_host():
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        with phase("data"):
            torch.randn(1000).sum()
        with phase("forward_backward"):
            torch.randn(64, 64) @ torch.randn(64, 64)
    work, phases = device_and_phase_spans(profiler.events())
    assert work == []  # no device here
    assert [name for name, _, _ in phases] == ["data", "forward_backward"]
    (_, data_start, data_end), (_, fb_start, fb_end) = phases
    assert data_start < data_end <= fb_start < fb_end


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
    idle = idle_gaps(*device_and_phase_spans(profiler.events()))
    summary = summarize(profiler.key_averages(), [(1, wall_s)], on_device=True, idle=idle)
    assert b.isfinite().all()
    # The host queues 100 kernels far faster than they run: the device hardly waits, and never longer than
    # the wall time.
    assert 0 <= idle["idle_s"] < 0.2 * wall_s and set(idle["by_phase"]) <= {
        "forward_backward",
        BETWEEN_PHASES,
    }
    kernels_s = sum(summary["categories"].values())
    # One stream runs one kernel at a time, so its kernels fit inside the wall time; before the fix the
    # matmuls alone counted twice.
    assert 0.2 * wall_s < kernels_s <= 1.02 * wall_s
    assert summary["categories"]["matmul"] > summary["categories"].get("other", 0.0)
    assert summary["categories"]["attention"] > 0
    assert all(not row["name"].startswith(("aten::", "nanostudy.")) for row in summary["top"])
    assert summary["phases"]["forward_backward"]["host_s"] > 0
