"""nanogpt/fused_mlp.py, the ReLU² MLP inside Triton matmuls: its kernels, its autograd and the trainer with
it, against torch, under the Triton interpreter on the CPU; and at depth 12's shapes on a GPU."""

import os
import re

import pytest
import torch
from interpreted import run_benchmark
from interpreted import run_worker as run_script
from markers import needs_cpp_compiler

pytest.importorskip("triton", reason="the fused MLP's kernels are Triton's")


def run_worker(mode: str) -> dict | list:
    return run_script("fused_mlp_worker.py", mode)


def test_the_kernels_match_torch_at_every_launch_under_the_interpreter():
    *cases, written = run_worker("kernels")
    # Over NaN-poisoned outputs, every element of relu(h)² and h's gradient written, by address and by each
    # kind of TMA launch.
    assert written == {"all_written": [True] * 6}
    # Tiles with edges, one whole tile per row of blocks, a persistent grid; through TMA, on a grid and
    # persistent, and persistent with the epilogue in halves.
    from nanogpt.fused_mlp import Tiles

    kinds = ["persistent", "tma", "subtile"]
    launched = [[name for name in kinds if getattr(Tiles(*case["tiles"]), name)] for case in cases]
    assert launched == [
        [], [], ["persistent"], ["tma"], ["persistent", "tma"], ["persistent", "tma", "subtile"],
    ]  # fmt: skip
    for case in cases:
        assert case["dtypes"] == ["torch.bfloat16"] * 2, case
        assert case["zeros_kept"], case
        # The same bf16 products summed in float32; the interpreter truncates float32 → bf16 where torch
        # rounds (up to 2^-8 relative in each output), and the activation squares that.
        assert case["post"] < 1.6e-2 and case["grad_pre"] < 1.6e-2, case


def test_the_fused_mlp_matches_the_unfused_one_under_the_interpreter():
    float32, bf16 = run_worker("mlp")
    # y, then the gradients of x, W_fc and W_proj: y and x's gradient in x's dtype, the weights' in theirs.
    assert float32["dtypes"] == ["torch.float32"] * 4
    assert bf16["dtypes"] == ["torch.bfloat16"] * 2 + ["torch.float32"] * 2
    assert float32["shape"] == bf16["shape"] == [3, 40, 64]
    # float32: the same function to float32 rounding, as close to float64 as the unfused MLP is.
    for fused, unfused in zip(float32["fused"], float32["unfused"], strict=True):
        assert fused < 1e-6 and fused < 1.5 * unfused + 1e-7
    # bf16: within bf16's rounding of float64, as the unfused MLP is (the interpreter's truncation to bf16,
    # where the GPU and torch round, doubles the error).
    for fused, unfused in zip(bf16["fused"], bf16["unfused"], strict=True):
        assert fused < 2e-2 and fused < 3 * unfused


def test_the_fused_mlp_where_a_user_could_trip_it():
    result = run_worker("edges")
    # float32 here: within float32 rounding of float64 (y, then the gradients of x, W_fc, W_proj), eager
    # and compiled, loads by address or through TMA.
    for name in ("plain", "compiled", "TMA", "TMA, compiled", "x needs no gradient", "frozen weights"):
        errors = result[name]
        assert all(error is None or error < 1e-6 for error in errors), name
    # What was not asked for is not computed; an empty batch gives empty results and zero gradients.
    assert result["x needs no gradient"][1] is None and result["frozen weights"][2:] == [None, None]
    assert result["empty batch"] == [0.0] * 4
    # A second derivative is an error (√post is a constant in the backward), not a wrong number.
    assert result["second derivative"] != "computed"
    assert "float16 is not supported" in result["float16"]
    assert "subtile is a launch through TMA, not by address" in result["subtile by address"]
    # The epilogue in halves where the hidden width ends inside a tile's left half (its right half all past
    # the edge): relu(h)² and h's gradient as torch's, to the interpreter's bf16 truncation.
    assert all(error < 1.6e-2 for error in result["subtile, column edge"])


@needs_cpp_compiler
def test_the_trainer_with_the_fused_mlp_trains_as_with_the_compiled_one():
    # `fused_mlp: true` (under the Triton interpreter here): the same steps' and validation losses as
    # `fused_mlp: false` (float32 on the CPU), eager and with the blocks or the whole model compiled (the
    # kernels as custom operators inside the compiled graphs, no graph break).
    runs = run_worker("trainer")
    unfused = runs["unfused"]
    assert unfused["fused_mlp"] is False and unfused["calls"] == 0
    assert len(unfused["steps"]) == 4 and len(unfused["val"]) == 1 and len(set(unfused["steps"])) == 4
    for name in ("fused", "fused, blocks compiled", "fused, whole model compiled"):
        run = runs[name]
        assert run["fused_mlp"] is True and run["warnings"] == [], name
        # Both kernels once for the self-test at set-up, then for each of the 8 micro-batches (1 layer);
        # validation (no gradient) runs the model's own MLP.
        assert run["calls"] == 2 + 2 * 8, name
        for expected, got in zip(unfused["steps"] + unfused["val"], run["steps"] + run["val"], strict=True):
            assert got == pytest.approx(expected, rel=1e-5), name


def test_fused_mlp_is_off_unless_asked_and_refuses_what_it_cannot_fuse(monkeypatch):
    from nanogpt import fused_mlp
    from nanogpt.config import RunConfig
    from nanogpt.model import GPTConfig
    from nanogpt.train import ConfigError, resolve_fused_mlp

    def config(**settings) -> RunConfig:
        base = {"model": {"depth": 1}, "data": {"train_dir": "unused"}, "train": {"num_steps": 1}}
        return RunConfig.from_dict({**base, **settings})

    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    relu2 = GPTConfig(depth=2, vocab_size=300)
    assert RunConfig.from_dict(
        {"model": {"depth": 1}, "data": {"train_dir": "unused"}, "train": {"num_steps": 1}}
    ).fused_mlp == "auto"  # fmt: skip
    monkeypatch.setattr(fused_mlp, "self_test", lambda *args: pytest.fail("the kernels ran"))
    # Off, or on the CPU, or a GELU model (nothing to fuse): off without a word, the kernels never run.
    gelu = GPTConfig(depth=2, vocab_size=300, mlp="gelu")
    assert resolve_fused_mlp(config(fused_mlp=False), relu2, cuda) == (None, None)
    assert resolve_fused_mlp(config(), relu2, cpu) == (None, None)
    assert resolve_fused_mlp(config(), gelu, cuda) == (None, None)
    assert resolve_fused_mlp(config(), relu2, cuda, dtype=torch.float32) == (None, None)
    # A width the kernels do not take: auto is off with a warning that says why; true (or GELU) an error.
    narrow = GPTConfig(depth=1, vocab_size=300, aspect_ratio=48, head_dim=16)  # n_embd 48
    too_narrow = "n_embd 48 is not a multiple of 64"
    bf16 = torch.bfloat16
    assert resolve_fused_mlp(config(), narrow, cuda, dtype=bf16) == (None, f"fused_mlp: off, {too_narrow}")
    for gpt, why in ((gelu, "model.mlp is 'gelu'; the kernels fuse ReLU²"), (narrow, too_narrow)):
        with pytest.raises(ConfigError, match=re.escape(f"fused_mlp: true, but {why}")):
            resolve_fused_mlp(config(fused_mlp=True), gpt, cuda)

    def broken(*args):
        raise RuntimeError("off by 0.5")

    monkeypatch.setattr(fused_mlp, "self_test", broken)
    why = "the Triton kernels fail on cuda:0 (RuntimeError: off by 0.5)"
    assert resolve_fused_mlp(config(), relu2, cuda, dtype=bf16) == (None, f"fused_mlp: off, {why}")
    with pytest.raises(ConfigError, match=re.escape(f"fused_mlp: true, but {why}")):
        resolve_fused_mlp(config(fused_mlp=True), relu2, cuda)
    monkeypatch.setattr(fused_mlp, "self_test", lambda *args: None)
    assert resolve_fused_mlp(config(fused_mlp=True), relu2, cuda) == (fused_mlp.relu2_mlp, None)
    # On this machine, outside the interpreter, the kernels cannot launch on CPU tensors: a real failure.
    monkeypatch.undo()
    if os.environ.get("TRITON_INTERPRET") != "1":
        with pytest.raises(Exception):  # noqa: B017 - triton's own error type, whichever it is
            fused_mlp.self_test(cpu)


def test_a_gpu_without_tma_or_with_less_shared_memory_runs_launches_it_can(monkeypatch):
    from types import SimpleNamespace

    from nanogpt import fused_mlp

    def gpu(major, minor, kb):  # compute capability, shared memory a block (opt-in)
        return SimpleNamespace(major=major, minor=minor, shared_memory_per_block_optin=kb * 1024)

    h100, a100, rtx4090, rtx5090 = gpu(9, 0, 227), gpu(8, 0, 163), gpu(8, 9, 99), gpu(12, 0, 99)
    device = {"props": h100}
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index=None: device["props"])
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    forward, backward = fused_mlp.TILES, fused_mlp.BACKWARD_TILES
    assert forward.tma and forward.subtile  # the trainer's forward goes through TMA where it can

    def launches(props):
        device["props"] = props
        return fused_mlp.launchable(forward, cuda, False), fused_mlp.launchable(backward, cuda, True)

    assert launches(h100) == (forward, backward)
    # No TMA: by address, where 4 stages of 128 × 256 tiles (192 KB) do not fit but 3 (144 KB) do.
    assert launches(a100) == (forward._replace(tma=False, subtile=False, stages=3), backward)
    # 99 KB: the small launch, both ways, with or without TMA.
    small = fused_mlp.SMALL_GPU_TILES
    assert launches(rtx4090) == launches(rtx5090) == (small, small)
    assert fused_mlp.shared_bytes(small, True) + 1024 <= rtx4090.shared_memory_per_block_optin
    assert fused_mlp.launchable(forward, cpu, False) == forward  # the interpreter runs any
    # The estimate against the kernels as Triton 3.6 compiled them for sm_90 (2026-12-07): through TMA, theirs
    # to within its barriers; by address, an upper bound (Triton kept one stage in shared memory there).
    compiled = {(forward, False): 229408, (forward._replace(stages=3), True): 213032}
    for (tiles, is_backward), size in compiled.items():
        assert 0 <= size - fused_mlp.shared_bytes(tiles, is_backward) < 256
    assert fused_mlp.shared_bytes(backward, True) >= 49152
    # float32 operands take twice the memory: the trained forward then fits an H100 not even at 3 stages.
    assert fused_mlp.shared_bytes(forward, False, itemsize=4) == 2 * fused_mlp.shared_bytes(forward, False)
    device["props"] = h100
    assert fused_mlp.launchable(forward, cuda, False, itemsize=4) == fused_mlp.SMALL_GPU_TILES


def test_the_mlp_benchmark_checks_its_launches_under_the_interpreter(tmp_path):
    """benchmarks/mlp_kernel.py under the interpreter: every launch it times is checked against cuBLAS's
    (here torch's) results, and the fused layer's gradients against the compiled layer's."""
    args = ["--device", "cpu", "--depth", "1", "--rows", "96", "--reps", "1", "--warmup", "1"]
    rows = run_benchmark("benchmarks.mlp_kernel", args, tmp_path / "mlp.json")
    kernels = [row for row in rows if "kernel," in row["name"]]
    # Forward and backward of the interpreter's launch, by address, through TMA descriptors, and through them
    # with the epilogue in halves.
    from nanogpt.fused_mlp import Tiles

    launches = [(row["direction"], Tiles(*row["tiles"])) for row in kernels]
    assert [(direction, tiles.tma, tiles.subtile) for direction, tiles in launches] == [
        ("forward", False, False), ("backward", False, False), ("forward", True, False),
        ("backward", True, False), ("forward", True, True), ("backward", True, True),
    ]  # fmt: skip
    for row in kernels:
        assert row["error"] is None and row["relative_error"] < 1.6e-2, row
    assert rows[-1]["name"].startswith("layer forward + backward: fused")
    assert all(error < 2e-2 for error in rows[-1]["grad_errors_x_wfc_wproj"])
    # The fastest launch of each direction, from the rows (on the CPU every time is NaN: the first).
    from benchmarks.mlp_kernel import fastest

    assert fastest(rows, "forward")[0] == tuple(kernels[0]["tiles"])
    timed = [dict(row, ms=ms) for row, ms in zip(kernels, (3.0, 2.0, 1.0, 4.0, 2.5, 2.5), strict=True)]
    timed.append(dict(kernels[0], ms=0.5, error="OutOfResources"))  # a launch that failed: not eligible
    assert fastest(timed, "forward") == (tuple(kernels[2]["tiles"]), 1.0)
    assert fastest(timed, "backward") == (tuple(kernels[1]["tiles"]), 2.0)


LAUNCHES = [
    "trained",
    "grid",
    "persistent",
    "tma",
    "tma-persistent",
    "tma-persistent-subtile",
]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("launch", LAUNCHES)
def test_the_fused_mlp_matches_the_compiled_one_on_a_gpu(launch):
    # Depth 12's layer (n_embd 768, hidden 3,072) on 4,000 rows (not a whole number of tiles), bf16, float32
    # weights, under autocast as the trainer runs it: the fused MLP against the unfused, both against float64.
    # The trainer's launches, then 128 × 128 tiles both ways by address and through TMA, and through TMA with
    # the epilogue in halves.
    from nanogpt import fused_mlp

    device = torch.device("cuda", 0)
    torch.manual_seed(0)
    x = torch.randn(4, 1000, 768, device=device)
    w_fc = torch.randn(3072, 768, device=device) / 768**0.5
    w_proj = torch.randn(768, 3072, device=device) / 3072**0.5
    grad_y = torch.randn(4, 1000, 768, device=device)
    if launch == "trained":
        forward, backward = fused_mlp.TILES, fused_mlp.BACKWARD_TILES
    else:
        kind = dict(persistent="persistent" in launch, tma=launch.startswith("tma"))
        kind |= dict(subtile=launch.endswith("subtile"))
        forward = backward = fused_mlp.Tiles(128, 128, 64, 8, 3, 4, **kind)
    results = {}
    for name in ("fused", "unfused", "float64"):
        leaves = [t.clone().double() if name == "float64" else t.clone() for t in (x, w_fc, w_proj)]
        leaves = [t.requires_grad_() for t in leaves]
        if name == "float64":
            y = torch.relu(leaves[0] @ leaves[1].t()).square() @ leaves[2].t()
        else:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                if name == "fused":
                    with pytest.MonkeyPatch.context() as patch:
                        patch.setattr(fused_mlp, "TILES", forward)
                        patch.setattr(fused_mlp, "BACKWARD_TILES", backward)
                        y = fused_mlp.relu2_mlp(leaves[0].bfloat16(), leaves[1], leaves[2])
                        y.backward(grad_y.bfloat16())
                else:
                    y = torch.relu(leaves[0].bfloat16() @ leaves[1].t()).square() @ leaves[2].t()
        if name != "fused":
            y.backward(grad_y.to(y.dtype))
        results[name] = [y.detach(), *(leaf.grad for leaf in leaves)]
    for got, unfused, exact in zip(results["fused"], results["unfused"], results["float64"], strict=True):
        assert got.isfinite().all()
        error = ((got.double() - exact).norm() / exact.norm()).item()
        reference = ((unfused.double() - exact).norm() / exact.norm()).item()
        assert error < 1.2 * reference + 1e-4, (error, reference)
