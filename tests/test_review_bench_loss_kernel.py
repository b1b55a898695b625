"""benchmarks/loss_kernel.py's GB/s: each kernel's rate counts the bytes it moves. The FP8 head's kernel reads
the bf16 logits and writes a one-byte gradient, 3 bytes a logit, not the 4 of a bf16 copy."""

import pytest
from interpreted import run_benchmark

pytest.importorskip("triton", reason="the fused loss is a Triton kernel")


def test_the_fp8_kernels_rate_counts_its_one_byte_gradient(tmp_path):
    args = ["--device", "cpu", "--rows", "9", "--vocab-size", "300", "--reps", "1", "--warmup", "1"]
    out = tmp_path / "kernel.json"
    rows = {row["name"]: row for row in run_benchmark("benchmarks.loss_kernel", args, out)}
    logits = 9 * 320  # 300 tokens padded to 320 columns
    fp8 = rows["FP8 head: e5m2 gradient into its own buffer"]
    assert fp8["gigabytes_moved"] == pytest.approx(logits * (2 + 1) / 1e9)
    # The bf16 kernels write their bf16 gradient over the logits: the copy's bytes, the run's own figure.
    assert "gigabytes_moved" not in rows["as trained"]
