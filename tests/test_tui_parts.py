"""The TUI's pure parts, without an app: number formats, the heatmap's grid points, who runs on a GPU,
where the chat model goes, the chat's sampling settings, curve thinning, NVML readings a GPU lacks, a GPU
NVML cannot read."""

import pytest
from runner_fixtures import FakeNvml
from tui_fixtures import LostGpuNvml, TelemetryNvml, UncountableNvml

from runner.api import CellProgress
from tui.cell_screen import summary_line, thin
from tui.chat_process import choose_placement
from tui.chat_screen import sampling_settings
from tui.format import UNKNOWN, duration, flops, progress_bar, si, sparkline
from tui.gpu_telemetry import GpuSample, History, Ours, occupants, sample
from tui.heatmap import grid_points


def test_formats():
    assert [si(x) for x in (None, 950, 12_000, 3.5e9, 1e15)] == [UNKNOWN, "950", "12.00k", "3.50G", "1.00P"]
    assert [duration(s) for s in (None, 59, 125, 3725, 90_000)] == [UNKNOWN, "59s", "2m05s", "1h02m", "1d01h"]
    assert progress_bar(1, 4, width=8) == "██░░░░░░  25%"
    assert progress_bar(5, 0, width=4) == "░░░░   0%"  # no steps planned: nothing done
    assert sparkline([0, 50, 100], highest=100) == "▁▅█"
    assert sparkline([3, 3]) == "██" and sparkline([0, 0]) == "▁▁" and sparkline([]) == ""  # scaled from 0
    # Budgets to 3 significant digits, as the report and the runner's log name them (one digit made 1.5e15,
    # 2e15 and 2.5e15 one heatmap column title, and the quickstart's 7.5e10 read 8e10).
    assert [flops(x) for x in (1e15, 7.5e10, 1.9e11, 1.5e15, 2.5e15, 1.25e15, 3e14)] == [
        "1e15", "7.5e10", "1.9e11", "1.5e15", "2.5e15", "1.25e15", "3e14"
    ]  # fmt: skip


def _cell(cell_id, depth, flops, state, *, seed=0, bpb=None, step=0, mode="pretraining") -> CellProgress:
    return CellProgress(
        id=cell_id, mode=mode, parent_id=None, state=state, reason=None, depth=depth, flops=flops, seed=seed,
        num_params=1, attempts=0, step=step, steps_total=100, tokens=0, train_loss=None, val_loss=None,
        val_bpb=bpb, eta_s=None,
    )  # fmt: skip


def test_a_reason_with_square_brackets_is_shown_as_written():
    """A failed cell's reason is the trainer's stderr: `[rank0]: ...` or a gloo error's `[/pytorch/...]`,
    which as markup dropped the rank, or crashed the detail screen (a closing tag matching no open one)."""
    from dataclasses import replace

    from rich.text import Text

    for reason in (
        "RuntimeError: [/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer",
        "[rank0]: torch.OutOfMemoryError: CUDA out of memory",
    ):
        cell = replace(_cell("a", 2, 1e15, "failed"), reason=reason)
        assert Text.from_markup(summary_line(cell)).plain.endswith(f"reason: {reason}")


def test_grid_points_show_the_most_urgent_state_then_the_mean_bpb():
    cells = [
        _cell("a0", 2, 1e15, "done", bpb=1.0, step=100),
        _cell("a1", 2, 1e15, "done", seed=1, bpb=2.0, step=100),
        _cell("b0", 4, 1e15, "done", bpb=1.5, step=100),
        _cell("b1", 4, 1e15, "running", seed=1, step=50),
        _cell("c0", 4, 1e16, "pending"),
        _cell("c1", 4, 1e16, "failed", seed=1, step=10),
        _cell("m", 2, 1e15, "done", bpb=3.0, mode="mid-training"),
    ]
    points = grid_points(cells, "pretraining")
    assert set(points) == {(2, 1e15), (4, 1e15), (4, 1e16)}
    assert (points[2, 1e15].state, points[2, 1e15].mean_bpb, points[2, 1e15].num_cells) == ("done", 1.5, 2)
    assert (points[4, 1e15].state, points[4, 1e15].progress) == ("running", 0.75)
    assert points[4, 1e16].state == "failed"  # failed before pending: what needs a look first
    assert grid_points(cells, "mid-training")[2, 1e15].mean_bpb == 3.0


def _gpu(index: int, pids: tuple[int, ...]) -> GpuSample:
    return GpuSample(
        index=index, name="H100", util_percent=None, memory_used_bytes=0, memory_total_bytes=1,
        temperature_c=None, power_w=None, power_limit_w=None, sm_clock_mhz=None, memory_clock_mhz=None,
        pids=pids,
    )  # fmt: skip


def test_occupants_tell_our_trainers_from_foreign_processes():
    ours = Ours(cells_by_gpu={0: "c0"}, cells_by_pid={100: "c0", 200: "c1"})
    parents = {101: [100, 1], 201: [200, 1], 300: [1]}  # torchrun workers under our launchers; someone else
    who = lambda gpu: occupants(
        gpu, ours, ancestors=lambda pid: parents.get(pid, []), process_name=lambda pid: "python"
    )
    assert who(_gpu(0, (101,))) == ["cell c0"]  # named once, by its GPUs and by its worker
    assert who(_gpu(1, (201, 300))) == ["cell c1", "foreign pid 300 (python)"]
    assert who(_gpu(2, ())) == []
    # From the list of studies there is no study to tell ours by: processes are named, not judged.
    assert occupants(_gpu(1, (201, 300)), None, ancestors=parents.get, process_name=str) == [
        "pid 201 (201)",
        "pid 300 (300)",
    ]


def test_the_chat_model_goes_to_a_free_gpu_else_the_cpu():
    busy = FakeNvml(4, foreign={3: [999]})  # GPU 3 runs someone's process
    placement = choose_placement(busy)
    assert (placement.device, placement.label) == ("cuda", "GPU 2")
    assert placement.env == {"CUDA_VISIBLE_DEVICES": "2", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert choose_placement(busy, visible_devices="3").label == "CPU"  # the only visible GPU is taken
    assert choose_placement(FakeNvml(1, foreign={0: [5]})).device == "cpu"
    assert choose_placement(None) == choose_placement(FakeNvml(0))
    assert choose_placement(None).env == {}


def test_sampling_settings():
    assert sampling_settings("0.5", "40", "100") == {"temperature": 0.5, "top_k": 40, "max_tokens": 100}
    assert sampling_settings("", "", "") == {"temperature": 0.9}  # top-k and max tokens off
    for args, message in [
        (("hot", "1", "1"), "temperature: 'hot' is not a number"),
        (("2.5", "1", "1"), r"temperature: must be in \[0, 2\]"),
        (("1", "0", "1"), "top-k: must be a positive integer"),
        (("1", "1", "-3"), "max-tokens: must be a positive integer"),
    ]:
        with pytest.raises(ValueError, match=message):
            sampling_settings(*args)


def test_thin_keeps_the_ends_and_at_most_about_the_limit():
    xs = list(range(1001))
    kept_x, kept_y = thin(xs, [2 * x for x in xs], limit=100)
    assert kept_x[0] == 0 and kept_x[-1] == 1000 and len(kept_x) <= 102
    assert kept_y == [2 * x for x in kept_x]
    assert thin([1, 2], [3, 4], limit=100) == ([1, 2], [3, 4])


class NoTelemetry(TelemetryNvml):
    """A board that supports none of the optional readings (as NVMLError_NotSupported does)."""

    def nvmlDeviceGetPowerUsage(self, handle):
        raise RuntimeError("NVMLError_NotSupported")

    nvmlDeviceGetEnforcedPowerLimit = nvmlDeviceGetPowerUsage

    def nvmlDeviceGetClockInfo(self, handle, clock):
        raise RuntimeError("NVMLError_NotSupported")


def test_readings_a_gpu_lacks_are_none():
    [gpu] = sample(NoTelemetry(1, foreign={0: [7]}))
    assert (gpu.power_w, gpu.power_limit_w, gpu.sm_clock_mhz, gpu.memory_clock_mhz) == (
        None,
        None,
        None,
        None,
    )
    assert (gpu.temperature_c, gpu.pids, gpu.memory_used_bytes) == (40, (7,), 1 << 30)
    assert gpu.name == "NVIDIA H100 80GB HBM3"  # bytes from old pynvml decoded


def test_a_gpu_nvml_cannot_read_is_a_sample_with_its_error_and_never_gets_the_chat():
    nvml = LostGpuNvml(3, lost=2)
    gpus = sample(nvml)
    assert [gpu.error for gpu in gpus] == [None, None, "NVMLError_GpuIsLost: GPU is lost"]
    assert gpus[2].name == "NVIDIA H100 80GB HBM3" and gpus[2].util_percent is None
    assert gpus[1].memory_total_bytes == 80 << 30 and gpus[1].temperature_c == 41  # the others read as usual
    history = History()
    history.add(gpus)
    assert sorted(history.util) == [0, 1]  # nothing read, no point on its sparkline
    # The chat model would take the highest free GPU: the lost one is skipped, not a crash.
    # ... and named where the chat says where it runs, or the place would look like a choice.
    assert choose_placement(nvml).label == "GPU 1; GPU 2 cannot be read (NVMLError_GpuIsLost: GPU is lost)"
    assert choose_placement(LostGpuNvml(1, lost=0)).label == (
        "CPU; GPU 0 cannot be read (NVMLError_GpuIsLost: GPU is lost)"
    )
    assert choose_placement(LostGpuNvml(3, lost=2), visible_devices="0").label == "GPU 0"  # 2 is not ours


def test_the_chat_runs_on_the_cpu_when_nvml_cannot_list_the_gpus():
    placement = choose_placement(UncountableNvml(2, failing=range(1, 2)))
    assert placement.device == "cpu" and placement.env == {}
    assert placement.label == "CPU (NVML cannot list this machine's GPUs (NVMLError_Unknown: Unknown Error))"
