"""benchmarks/train_scaling.py end to end in its CPU smoke mode: the trainer under torchrun on 1 and 2 gloo
ranks, and the numbers it reports consistent with each other and with the runs' own events."""

import json
import math

import pytest

from benchmarks import train_scaling


@pytest.mark.slow
def test_the_cpu_smoke_run_reports_consistent_numbers(tmp_path, capsys):
    out = tmp_path / "scaling.json"
    report = train_scaling.main(["--cpu", "--keep", str(tmp_path / "runs"), "--json", str(out)])
    assert json.loads(out.read_text()) == report
    assert report["env"] == {
        "NCCL_NVLS_ENABLE": "0",
        "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
        "NVSHMEM_DISABLE_NVLS": "1",
    }
    one, two = report["results"]
    # 8 sequences per step in micro-batches of 2: 4 micro-batches on one rank, 2 on each of two.
    assert [(r["gpus"], r["micro_batch"], r["grad_accum"], r["timed_steps"]) for r in (one, two)] == [
        (1, 2, 4, 4),
        (2, 2, 2, 4),
    ]
    for r in (one, two):
        # tokens/s over the timed steps, from the run's own step events (the warm-up steps left out).
        events = train_scaling.read_events(tmp_path / "runs" / f"gpus{r['gpus']}")
        step_s = [e["step_s"] for e in events if e["kind"] == "step"][2:]
        assert r["tokens_per_s"] == pytest.approx(4 * 256 / sum(step_s), rel=1e-12)
        assert r["tokens_per_s_per_gpu"] == pytest.approx(r["tokens_per_s"] / r["gpus"], rel=1e-12)
        assert r["mfu_per_gpu"] is None and r["peak_memory_gib_per_gpu"] is None  # no GPU peak on the CPU
        assert r["peak_memory_bytes"] == [None] * r["gpus"]
        assert r["optim_state_gib_per_gpu"] == max(r["optim_state_bytes"]) / 2**30
        assert len(r["losses"]) == 6 and all(math.isfinite(x) for x in r["losses"])
    assert one["scaling_efficiency"] == 1.0
    assert two["scaling_efficiency"] == pytest.approx(
        two["tokens_per_s"] / (2 * one["tokens_per_s"]), rel=1e-12
    )
    # The optimizer state is sharded: each of two ranks holds exactly half (the tiny model's sizes divide).
    (state_one,) = one["optim_state_bytes"]
    assert state_one > 0 and two["optim_state_bytes"] == [state_one // 2, state_one // 2]
    assert two["optim_state_vs_1"] == 0.5
    # The same tokens at every step in float32: one loss curve, to float32 rounding (tests/test_train.py).
    assert one["loss_max_abs_diff_vs_1"] == 0.0 and two["loss_max_abs_diff_vs_1"] <= 2e-6
    assert one["losses"][0] == pytest.approx(math.log(257), abs=0.1)  # random bytes: ln(vocabulary)

    printed = capsys.readouterr().out
    assert "| processes | micro | accum | tok/s | tok/s/GPU |" in printed
    row = f"| 2 | 2 | 2 | {two['tokens_per_s']:,.0f} | {two['tokens_per_s_per_gpu']:,.0f} | - |"
    assert row in printed and f"| {two['scaling_efficiency']:.1%} | 0.500 |" in printed
