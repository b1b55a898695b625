"""benchmarks/fused_head_loss.py, candidate heads: their loss and gradients against GPT.head's, under the
Triton interpreter on the CPU (every case) and on a GPU at depth 12's vocabulary."""

import json
import re
from unittest import mock

import pytest
import torch
from interpreted import run_benchmark
from interpreted import run_worker as run_script
from markers import needs_cpp_compiler

pytest.importorskip("triton", reason="the fused loss is a Triton kernel")


def run_worker(*args: str) -> dict | list:
    return run_script("fused_head_loss_worker.py", *args)


def test_the_fused_loss_matches_the_head_under_the_triton_interpreter():
    cases = run_worker()
    # Soft-cap on and off, float32 and bf16 autocast, the three reductions, a row's loop of 5 blocks
    # ending in the padding columns and one block past the row's end; the same by torch.compile (sum, none).
    assert len(cases) == 2 * 2 * (3 * 2 + 2)
    assert sum(case["block"] == "compiled" for case in cases) == 2 * 2 * 2
    for case in cases:
        assert case["finite"], case
        assert case["loss_dtype"] == case["grad_w_dtype"] == "torch.float32", case
        assert case["ignored_grad_x"] == 0.0, case  # a sequence of ignored targets has no gradient
        # float32: the same function to rounding; bf16: the logits' gradient rounds to bf16 in both, at
        # different points (here before the upstream scale, there after it).
        limit = 2e-2 if case["autocast"] else 1e-5
        assert case["loss"] < 1e-5 and case["grad_x"] < limit and case["grad_w"] < limit, case


def test_the_fp8_variant_rounds_like_torch_and_stays_close_to_the_head():
    result = run_worker("fp8")
    # The kernel's own rounding to e5m2's grid, then its cast, is torch's e5m2 cast (round half to even)
    # over carries into the exponent, ties, both signs and the format's largest values.
    assert result["rounding"]["kernel"] == result["rounding"]["torch"]
    # Soft-cap on and off, reductions sum (× 1e-3), mean and none.
    assert len(result["cases"]) == 6
    for case in result["cases"]:
        assert case["finite"] and case["ignored_grad_x"] == 0.0, case
        # x and the weight in e4m3, the logits' gradient in e5m2: nanogpt.model.FP8Linear's head gets
        # cosines of 0.998-0.999 in this setting, and the gradients' scale is the head's (to about 5%).
        assert case["cosine_x"] > 0.995 and case["cosine_w"] > 0.995, case
        assert case["norm_error_x"] < 0.1 and case["norm_error_w"] < 0.1, case
        assert case["loss"] < 0.05, case
    # The logits in chunks of rows (FP8_CHUNK_ROWS) as at once: the same numbers.
    assert [case["reduction"] for case in result["chunked"]] == ["mean", "none"]
    for case in result["chunked"]:
        assert case["calls"] == [1, 3], case  # the loss kernel on 48 rows at once, then in chunks of 16
        assert case["loss"] == case["grad_x"] == case["grad_w"] == 0.0, case


def test_the_fp8_heads_transpose_is_torchs_at_tile_edges_and_refuses_what_it_does_not_take():
    result = run_worker("transpose")
    errors = result.pop("errors")
    assert len(result) == 4 * 3 + 2 and all(result.values()), result
    assert errors == [
        "transpose: takes a 2-D tensor of one-byte elements, got torch.float32 (4, 4)",
        "transpose: takes a 2-D tensor of one-byte elements, got torch.uint8 (2, 2, 2)",
        "transpose: 1048577 columns is more than 65535 tiles of 16",
    ]


def test_the_fused_loss_at_the_edges_fails_as_loudly_as_the_head():
    result = run_worker("edges")
    # No target to learn in the batch: as F.cross_entropy, the mean is NaN and the gradients are zero.
    assert result["head"] == result["fused"] == {"loss_is_nan": True, "grads_zero": True}
    # A target past the vocabulary (F.cross_entropy refuses it): that row's loss is NaN, nothing read
    # outside the row, the other rows as before (the sequence of ignored targets counts as finite: 0).
    assert result["past_vocab"] == {"nan_at": [[1, 3]], "finite_elsewhere": 3 * 16 - 1}
    assert "reduction must be 'mean', 'sum' or 'none', got 'avg'" in result["bad_reduction"]
    assert result["self_test"] == "passed"
    assert result["fp8_wrong_scale"].startswith("the fused FP8 head's self-test on cpu is off by ")
    assert result["fp8_wrong_scale"].endswith(" and 1e+03 in the gradients")


def test_the_kernel_at_extreme_logits_matches_torch_in_float64():
    cases = run_worker("kernel-edges")
    assert len(cases) == 10
    for name, case in cases.items():
        # A -inf logit once made the running max NaN, a NaN in an ignored row its gradient NaN, and a
        # soft-cap of 60 made the sum without a max underflow (on the GPU): the kernel's losses and gradient
        # are finite, an ignored row's are 0 whatever its logits, and elsewhere they are torch's to float32
        # rounding (losses relative to their size, at least 1; the softmax's gradient absolute).
        assert case["finite"] and case["ignored_row_zero"], name
        # Torch's gradient is NaN over a NaN logit's row (ignored): the other rows and the losses compared.
        assert case["compared"] >= 3 + 2 * 64, (name, case)
        assert case["loss_error"] < 1e-5 and case["grad_error"] < 1e-6, (name, case)


def test_a_kernel_that_fails_its_self_test_leaves_auto_off_and_refuses_true(monkeypatch):
    from nanogpt import fused_loss
    from nanogpt.config import RunConfig
    from nanogpt.train import ConfigError, resolve_fused_loss

    def config(**settings) -> RunConfig:
        base = {"model": {"depth": 1}, "data": {"train_dir": "unused"}, "train": {"num_steps": 1}}
        return RunConfig.from_dict({**base, **settings})

    cuda = torch.device("cuda", 0)
    # Not asked for, or not on CUDA: off, and the kernel never runs.
    monkeypatch.setattr(fused_loss, "self_test", lambda *args, **kwargs: pytest.fail("the kernel ran"))
    assert resolve_fused_loss(config(fused_loss=False), cuda) == (False, None)
    assert resolve_fused_loss(config(), torch.device("cpu")) == (False, None)
    # For an FP8 head the test runs the FP8 head (its kernels are the ones training will use).
    tested = []
    monkeypatch.setattr(fused_loss, "self_test", lambda *args, fp8: tested.append(fp8))
    assert resolve_fused_loss(config(), cuda, fp8=True) == (True, None)
    assert resolve_fused_loss(config(fused_loss=True), cuda, fp8=True) == (True, None)
    assert resolve_fused_loss(config(), cuda) == (True, None)
    assert tested == [True, True, False]
    # On this machine the kernel cannot launch outside the interpreter (CPU tensors): a real failure.
    monkeypatch.undo()
    with pytest.raises(Exception):  # noqa: B017 - triton's own error type, whichever it is
        fused_loss.self_test(torch.device("cpu"))

    # A GPU where it fails (no C compiler, a GPU Triton does not support, a wrong result): auto is off with
    # a warning naming why, true is an error.
    def broken(*args, **kwargs):
        raise RuntimeError("off by 0.5")

    monkeypatch.setattr(fused_loss, "self_test", broken)
    why = "the Triton kernel fails on cuda:0 (RuntimeError: off by 0.5)"
    assert resolve_fused_loss(config(), cuda) == (False, f"fused_loss: off, {why}")
    with pytest.raises(ConfigError, match=re.escape(f"fused_loss: true, but {why}")):
        resolve_fused_loss(config(fused_loss=True), cuda)


def test_fp8_head_auto_takes_fp8_tensor_cores_with_the_fused_loss_and_a_resume_keeps_its_head(monkeypatch):
    """`fp8_head: auto` (the default) on a GPU of compute capability 8.9+ trains the fused FP8 head once it
    passes its self-test; on older GPUs, on the CPU or without the fused loss it keeps the head in the
    autocast dtype; a resume keeps a bf16 head, and an FP8 head where it can, else goes on in bf16 and says
    so (auto pins nothing)."""
    from nanogpt import fused_loss
    from nanogpt.config import RunConfig
    from nanogpt.train import ConfigError, resolve_head

    def config(**settings) -> RunConfig:
        base = {"model": {"depth": 1}, "data": {"train_dir": "unused"}, "train": {"num_steps": 1}}
        return RunConfig.from_dict({**base, **settings})

    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    gpu = {"capability": (9, 0)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: gpu["capability"])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "an A100")
    tested = []
    monkeypatch.setattr(fused_loss, "self_test", lambda *args, fp8: tested.append(fp8))
    assert config().fp8_head == "auto"
    assert resolve_head(config(), cuda) == (True, True, []) and tested == [True]
    # Without the fused loss auto leaves the head alone (the unfused FP8 head is the slower); true does not.
    assert resolve_head(config(fused_loss=False), cuda) == (False, False, [])
    assert resolve_head(config(fused_loss=False, fp8_head=True), cuda) == (False, True, [])
    assert resolve_head(config(fp8_head=False), cuda) == (True, False, [])
    assert resolve_head(config(), cpu) == (False, False, [])
    tested.clear()
    gpu["capability"] = (8, 0)
    assert resolve_head(config(), cuda) == (True, False, []) and tested == [False]
    # A resume keeps its checkpoint's head: bf16 on an FP8 GPU, FP8 where it can, else bf16, saying why.
    gpu["capability"] = (9, 0)
    assert resolve_head(config(), cuda, recorded=False) == (True, False, [])
    assert resolve_head(config(), cuda, recorded=True) == (True, True, [])
    assert resolve_head(config(fp8_head=False), cuda, recorded=True) == (True, False, [])
    switched = (
        "fp8_head: auto, and this run's checkpoint trained its head in FP8, which cannot go on here ({}): "
        "the head goes on in the autocast dtype"
    )
    assert resolve_head(config(fused_loss=False), cuda, recorded=True) == (
        False, False, [switched.format("fused_loss: false")]
    )  # fmt: skip
    gpu["capability"] = (8, 0)
    for device, name in ((cuda, "an A100"), (cpu, "the CPU")):
        fused, fp8, warnings = resolve_head(config(), device, recorded=True)
        assert (fused, fp8) == (device is cuda, False)
        assert warnings == [switched.format(f"{name} has no FP8")]

    # The FP8 head's kernels failing their self-test: auto trains the bf16 head, with the fused loss if that
    # passes without FP8, and says why; where the fused loss is required (true) too.
    def fails_in_fp8(*args, fp8):
        if fp8:
            raise RuntimeError("no FP8 here")

    gpu["capability"] = (9, 0)
    monkeypatch.setattr(fused_loss, "self_test", fails_in_fp8)
    why = "fp8_head: off, the Triton kernel fails on cuda:0 (RuntimeError: no FP8 here)"
    assert resolve_head(config(), cuda) == (True, False, [why])
    assert resolve_head(config(fused_loss=True), cuda) == (True, False, [why])
    assert resolve_head(config(), cuda, recorded=True)[2] == [switched.format("its kernels fail here"), why]
    with pytest.raises(ConfigError, match="fused_loss: true, but the Triton kernel fails"):
        resolve_head(config(fp8_head=True, fused_loss=True), cuda)


@needs_cpp_compiler
def test_the_trainer_with_its_fused_loss_trains_as_with_the_unfused_head():
    # `fused_loss: true` (under the Triton interpreter here; on CUDA "auto" turns it on): the same steps'
    # losses as `fused_loss: false` (float32 on the CPU), and the validation, which keeps the model's own
    # head, agrees; eager, and with the blocks or the whole model compiled (the fused loss then runs behind
    # a graph break).
    runs = run_worker("trainer")
    unfused, fused, compiled = runs["unfused"], runs["fused"], runs["fused, blocks compiled"]
    whole = runs["fused, whole model compiled"]
    assert [run["fused_loss"] for run in (unfused, fused, compiled, whole)] == [False, True, True, True]
    assert len(unfused["steps"]) == len(fused["steps"]) == 4 and len(unfused["val"]) == len(fused["val"]) == 1
    assert len(set(unfused["steps"])) == 4  # the weights change from step to step
    # The kernel ran once for its self-test at set-up, then for every micro-batch of the 4 steps (2 each),
    # and never for validation.
    assert (unfused["kernel_calls"], fused["kernel_calls"]) == (0, 1 + 8)
    # The candidates of benchmarks/fused_head_loss.py, patched in: the loss and gradient by torch.compile.
    by_torch_compile = runs["fused-compiled"]
    for run in (fused, compiled, whole, by_torch_compile):
        assert run["kernel_calls"] == (8 if run is by_torch_compile else 1 + 8)
        for expected, got in zip(unfused["steps"] + unfused["val"], run["steps"] + run["val"], strict=True):
            assert got == pytest.approx(expected, rel=1e-5)
    # `fp8_head: true` too: the FP8 head's Function for its self-test and every micro-batch, and losses
    # within 1%.
    fp8 = runs["fused-fp8"]
    assert fp8["fused_loss"] is True and fp8["kernel_calls"] == 1 + 8
    for expected, got in zip(unfused["steps"] + unfused["val"], fp8["steps"] + fp8["val"], strict=True):
        assert got == pytest.approx(expected, rel=1e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("cap", [15.0, None])
@pytest.mark.parametrize("variant", ["bf16", "fp8", "compiled"])
def test_the_fused_loss_matches_the_head_on_a_gpu(cap, variant):
    from benchmarks.fused_head_loss import CompiledHeadLoss, fused_head
    from nanogpt.fused_loss import FusedFP8HeadLoss, FusedHeadLoss
    from nanogpt.model import GPT, GPTConfig

    fp8 = variant == "fp8"
    function = {"bf16": FusedHeadLoss, "fp8": FusedFP8HeadLoss, "compiled": CompiledHeadLoss}[variant]
    device = torch.device("cuda", 0)
    torch.manual_seed(0)
    with torch.device(device):
        model = GPT(GPTConfig(depth=2, vocab_size=50257, sequence_len=256, logit_softcap=cap))
    model.init_weights()
    torch.nn.init.normal_(model.lm_head.weight, std=0.05)
    x = torch.randn(4, 256, model.config.n_embd, device=device, requires_grad=True)
    targets = torch.randint(0, 50257, (4, 256), device=device)
    targets[0, :17] = -1
    wanted = (x, model.lm_head.weight)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        expected = model.head(x, targets, reduction="sum")
        got = fused_head(model, x, targets, reduction="sum", function=function)
    expected_grads = torch.autograd.grad(expected * 1e-3, wanted)
    got_grads = torch.autograd.grad(got * 1e-3, wanted)
    # FP8: x and the weight in e4m3 (3 mantissa bits), the logits' gradient in e5m2 (2).
    torch.testing.assert_close(got, expected, rtol=1e-2 if fp8 else 1e-4, atol=0)
    for g, e in zip(got_grads, expected_grads, strict=True):
        assert g.isfinite().all()
        if not fp8:
            assert (g - e).abs().max() <= 2e-2 * e.abs().max()
        cosine = torch.nn.functional.cosine_similarity(g.flatten().float(), e.flatten().float(), dim=0)
        assert cosine > (0.995 if fp8 else 0.9999)
    assert got_grads[0][0, :17].abs().max() == 0  # ignored positions


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_the_fp8_head_in_chunks_of_rows_is_the_fp8_head_at_once_on_a_gpu(reduction):
    """1,024 rows in chunks of 256 (FP8_CHUNK_ROWS), as the trainer's 131,072 in chunks of 32,768."""
    from benchmarks.fused_head_loss import fused_head
    from nanogpt import fused_loss
    from nanogpt.model import GPT, GPTConfig

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 matmuls need compute capability 8.9 or newer")
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = GPT(GPTConfig(depth=2, vocab_size=50257, sequence_len=256, logit_softcap=15.0))
        x = torch.randn(4, 256, model.config.n_embd, requires_grad=True)
        targets = torch.randint(0, 50257, (4, 256))
        weights = torch.rand(4, 256) if reduction == "none" else torch.tensor(1.0)
    model.init_weights()
    torch.nn.init.normal_(model.lm_head.weight, std=0.05)
    results = []
    for chunk in (fused_loss.FP8_CHUNK_ROWS, 256):
        counted = mock.Mock(wraps=fused_loss.losses_writing_grad)
        with (
            mock.patch.object(fused_loss, "FP8_CHUNK_ROWS", chunk),
            mock.patch.object(fused_loss, "losses_writing_grad", counted),
            torch.autocast("cuda", dtype=torch.bfloat16),
        ):
            got = fused_head(model, x, targets, reduction=reduction, function=fused_loss.FusedFP8HeadLoss)
        grads = torch.autograd.grad((got * weights).sum(), (x, model.lm_head.weight))
        results.append((counted.call_count, got.detach(), grads))
    (calls_whole, whole, whole_grads), (calls_chunked, chunked, chunked_grads) = results
    assert (calls_whole, calls_chunked) == (1, 4)
    torch.testing.assert_close(chunked, whole, rtol=1e-3, atol=1e-5)
    for c, w in zip(chunked_grads, whole_grads, strict=True):
        assert ((c.float() - w.float()).norm() / w.float().norm()).item() < 1e-2


def depth_2_model_and_batch():
    """A depth-2 model on the GPU at GPT-2's vocabulary, every weight non-zero, and a batch (4 × 256) with
    ignored targets."""
    from nanogpt.model import GPT, GPTConfig

    device = torch.device("cuda", 0)
    torch.manual_seed(0)
    with torch.device(device):
        model = GPT(GPTConfig(depth=2, vocab_size=50257, sequence_len=256))
    model.init_weights()
    for weight in model.parameters():  # the projections start at zero: every gradient gets a signal
        torch.nn.init.normal_(weight, std=0.02)
    torch.nn.init.normal_(model.lm_head.weight, std=0.05)
    idx = torch.randint(0, 50257, (4, 257), device=device)
    x, targets = idx[:, :-1], idx[:, 1:].clone()
    targets[1, :31] = -1
    return model, x, targets


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("how", [False, "blocks"], ids=["eager", "blocks"])
def test_the_model_with_its_fused_loss_matches_the_unfused_head_on_a_gpu(how):
    # GPT.head with `fused_loss` on (nanogpt.fused_loss, eager behind a graph break) against off, as the
    # trainer calls the model: autocast, the trainer's compile setting, the loss summed.
    from nanogpt.train import compiled_forward

    model, x, targets = depth_2_model_and_batch()
    results = {}
    for fused in (False, True):
        model.fused_loss = fused
        torch._dynamo.reset()
        forward = compiled_forward(model, how)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = forward(x, targets, reduction="sum")
        results[fused] = (loss.detach(), torch.autograd.grad(loss * 1e-3, list(model.parameters())))
    (loss_off, grads_off), (loss_on, grads_on) = results[False], results[True]
    torch.testing.assert_close(loss_on, loss_off, rtol=1e-4, atol=0)
    for on, off in zip(grads_on, grads_off, strict=True):
        assert on.isfinite().all()
        cosine = torch.nn.functional.cosine_similarity(on.flatten().float(), off.flatten().float(), dim=0)
        assert cosine > 0.9999


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_trainers_fp8_head_matches_float32_on_a_gpu_and_its_self_test_passes():
    # `fp8_head` with the fused loss (FusedFP8HeadLoss behind a graph break in the regional compile), as
    # the trainer runs it, against the model in float32: the loss and every gradient.
    from nanogpt import fused_loss
    from nanogpt.model import compile_blocks

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 matmuls need compute capability 8.9 or newer")
    fused_loss.self_test(torch.device("cuda", 0), torch.bfloat16, 15.0, fp8=True)
    model, x, targets = depth_2_model_and_batch()
    expected = model(x, targets)
    wanted = torch.autograd.grad(expected, list(model.parameters()))
    model.fused_loss = model.fp8_head = True
    function = fused_loss.FusedFP8HeadLoss
    with (
        mock.patch.object(function, "apply", wraps=function.apply) as calls,
        torch.autocast("cuda", dtype=torch.bfloat16),
    ):
        loss = compile_blocks(model)(x, targets)
    got = torch.autograd.grad(loss, list(model.parameters()))
    assert calls.call_count == 1
    assert loss.item() == pytest.approx(expected.item(), rel=1e-2)
    for (name, _), g, w in zip(model.named_parameters(), got, wanted, strict=True):
        assert g.isfinite().all(), name
        # bf16 about 1% from float32 (tests/test_model.py), an FP8 head a few percent
        assert ((g.float() - w).norm() / w.norm()).item() < 0.1, name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_transpose_is_torchs_on_a_gpu_at_the_heads_shape():
    from nanogpt.fused_loss import transpose

    torch.manual_seed(0)
    t = (torch.randn(4096 + 7, 50304, device="cuda") * 100).to(torch.float8_e5m2)
    assert torch.equal(transpose(t).view(torch.uint8), t.t().contiguous().view(torch.uint8))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("cap", [15.0, None])
@pytest.mark.parametrize("fast_tanh", [False, True], ids=["sigmoid-tanh", "tanh-approx"])
@pytest.mark.parametrize(("block", "num_warps"), [(8192, 16), (4096, 8)], ids=["default", "4096-8"])
def test_the_kernel_matches_torch_on_a_gpu(cap, fast_tanh, block, num_warps):
    # The kernel at depth 12's vocabulary, bf16 logits of a trained head's spread, the gradient written in
    # place as the trainer does, against F.cross_entropy in float32: the tanh by tanh.approx.f32, as the
    # trainer runs it, and through the sigmoid, as the CPU tests run it; the default block and a smaller one.
    from benchmarks.loss_kernel import reference
    from nanogpt.fused_loss import losses_writing_grad

    device = torch.device("cuda", 0)
    generator = torch.Generator(device=device).manual_seed(0)
    vocab, padded = 50257, 50304
    logits = (4 * torch.randn(256, padded, device=device, generator=generator)).bfloat16()
    targets = torch.randint(0, vocab, (256,), device=device, generator=generator)
    targets[::7] = -1
    expected_losses, expected_grad = reference(logits, targets, cap, vocab)
    grad = logits.clone()
    args = (cap, vocab, 1.0, block, num_warps, False)
    losses = losses_writing_grad(grad, targets, grad, *args, fast_tanh=fast_tanh)
    approximate = fast_tanh and cap is not None  # tanh.approx.f32: 2^-11 relative, 0.007 at the cap
    assert (losses - expected_losses).abs().max() < (2e-2 if approximate else 1e-4)
    # The gradient (at most 1 in size) rounds to bf16: 2^-9; tanh.approx adds its error through 1 - tanh².
    assert (grad.float() - expected_grad).abs().max() < (6e-3 if approximate else 4e-3)
    cosine = torch.nn.functional.cosine_similarity(grad.flatten().float(), expected_grad.flatten(), dim=0)
    assert cosine > 0.99999
    assert (grad[:, vocab:] == 0).all() and (grad[::7] == 0).all()  # padding columns, ignored rows


def test_the_kernel_benchmark_checks_every_variant_against_torch(tmp_path):
    """benchmarks/loss_kernel.py under the interpreter: each kernel variant it times there (as trained, no
    soft-cap, the sigmoid's tanh, the FP8 head's e5m2 gradient) gives torch's losses and gradient, and its
    transpose torch's."""
    args = ["--device", "cpu", "--rows", "9", "--vocab-size", "300", "--reps", "1", "--warmup", "1"]
    rows = run_benchmark("benchmarks.loss_kernel", args, tmp_path / "kernel.json")
    names = [row["name"] for row in rows]
    # On the CPU blocks are of 256 only, and the tanh always the sigmoid's: no block-size variants.
    assert names == [
        "copy of the logits (the floor)", "as trained", "as trained, no soft-cap", "as trained, sigmoid tanh",
        "FP8 head: e5m2 gradient into its own buffer", "transpose of the e5m2 gradient",
    ]  # fmt: skip
    for row in rows[1:-2]:
        # Losses in float32 from the same bf16 logits; the gradient rounds to bf16 (to 2^-9 of its ≤ 1).
        assert row["loss_error"] < 1e-5 and row["grad_error"] < 4e-3, row
    # The FP8 head's gradient in e5m2 (2 mantissa bits: to 2^-3 of its ≤ 1), and its transpose exact.
    assert rows[-2]["loss_error"] < 1e-5 and 1e-3 < rows[-2]["grad_error"] < 0.07, rows[-2]
    assert rows[-1]["equal"] is True


def test_the_head_matmul_benchmark_checks_each_fp8_product_and_the_transpose(tmp_path):
    """benchmarks/head_matmuls.py under the interpreter: each FP8 product it times is the float32 product
    of the same rounded operands to the output's rounding, and the Triton transpose is torch's."""
    args = [
        "--device",
        "cpu",
        "--rows",
        "64",
        "--width",
        "32",
        "--vocab",
        "144",
        "--reps",
        "1",
        "--warmup",
        "1",
    ]
    out = tmp_path / "head.json"
    run_benchmark("benchmarks.head_matmuls", args, out, key="products")
    result = json.loads(out.read_text())
    assert [row["name"] for row in result["products"]] == [
        "forward: logits = x @ wᵀ", "x's gradient: g @ w", "weight's gradient: gᵀ @ x"
    ]  # fmt: skip
    for row in result["products"]:
        # bf16 outputs round to 2^-9; the weight's gradient comes out in float32.
        assert row["fp8_error"] < 4e-3 and row["fp8_fast_error"] < 4e-3, row
    assert result["transposes_agree"] is True and len(result["transposes"]) == 2
