"""nanogpt/weight_copies.py: the matrices cast once per step give autocast's numbers bit for bit, eager and
compiled both ways, and the trainer with them trains as without; on the CPU under bf16 autocast."""

import json

import pytest
import torch
from interpreted import run_worker
from markers import needs_cpp_compiler
from trainer_fixtures import make_data_dir, tiny_config, write_run

from nanogpt.model import GPT, GPTConfig, compile_blocks
from nanogpt.train import EXIT_BAD_INPUT, EXIT_DONE, run
from nanogpt.weight_copies import WeightCopies

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIG = GPTConfig(depth=2, vocab_size=300, sequence_len=32, aspect_ratio=32, head_dim=16)


def model(device: str = "cpu") -> GPT:
    torch.manual_seed(0)
    gpt = GPT(CONFIG).to(device)
    gpt.init_weights()
    return gpt


def train(
    how, *, copies: bool, skip=(), refresh=True, device="cpu"
) -> tuple[list[float], list[torch.Tensor], GPT]:
    """Two steps of three micro-batches each (plain SGD between them), under bf16 autocast: the losses,
    the float32 gradients of the last step, and the model."""
    gpt = model(device)
    if how == "eager":
        forward = gpt
    else:
        forward = torch.compile(gpt, dynamic=False) if how == "whole" else compile_blocks(gpt)
    weight_copies = WeightCopies(gpt, torch.bfloat16, skip=skip) if copies else None
    if weight_copies is not None:
        forward = weight_copies.forward(forward)
    generator = torch.Generator().manual_seed(1)
    losses = []
    for step in range(2):
        gpt.zero_grad(set_to_none=True)
        if weight_copies is not None and (refresh or step == 0):
            weight_copies.refresh()
        for _ in range(3):
            x = torch.randint(0, CONFIG.vocab_size, (4, 32), generator=generator).to(device)
            with torch.autocast(device, dtype=torch.bfloat16):
                loss = forward(x, x.roll(-1, 1), reduction="sum")
            loss.backward()
            if weight_copies is not None:
                weight_copies.accumulate()
            losses.append(loss.item())
        with torch.no_grad():
            for p in gpt.parameters():
                p -= 1e-3 * p.grad
    return losses, [p.grad for p in gpt.parameters()], gpt


def assert_identical(a, b) -> None:
    (losses_a, grads_a, _), (losses_b, grads_b, _) = a, b
    assert losses_a == losses_b
    assert all(g.dtype == torch.float32 for g in grads_a + grads_b)
    assert all(torch.equal(x, y) for x, y in zip(grads_a, grads_b, strict=True))


def test_copies_give_autocasts_losses_and_float32_gradients_bit_for_bit():
    autocast = train("eager", copies=False)
    assert_identical(train("eager", copies=True), autocast)
    # The lm_head left to autocast (as under fp8_head): the same again, and the lm_head is not copied.
    losses, grads, gpt = train("eager", copies=True, skip=("lm_head",))
    assert_identical((losses, grads, gpt), autocast)
    copies = WeightCopies(gpt, torch.bfloat16, skip=("lm_head",))
    assert all(p is not gpt.lm_head.weight for p in copies.params) and len(copies.params) == 6 * CONFIG.depth
    # Without the refresh after a step the copies hold the old weights: the second step differs.
    stale = train("eager", copies=True, refresh=False)[0]
    assert stale[:3] == autocast[0][:3] and stale[3:] != autocast[0][3:]


def test_copies_hold_the_cast_weights_and_leave_no_bf16_gradient_behind():
    gpt = model()
    copies = WeightCopies(gpt, torch.bfloat16)
    copies.refresh()
    assert all(
        c.dtype == torch.bfloat16 and torch.equal(c, p.bfloat16())
        for p, c in zip(copies.params, copies.copies, strict=True)
    )
    assert copies.grad_bytes == 2 * sum(p.numel() for p in copies.params)
    x = torch.randint(0, CONFIG.vocab_size, (2, 32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        copies.forward(gpt)(x, x).backward()
    assert all(c.grad is not None for c in copies.copies) and all(p.grad is None for p in copies.params)
    copies.accumulate()
    assert all(c.grad is None for c in copies.copies)  # the next backward starts afresh, not a bf16 sum
    assert all(p.grad.dtype == torch.float32 for p in copies.params)
    # A backward whose accumulate never came (an out-of-memory half-way, as the standby warm-up may meet):
    # the next step's refresh drops its gradients, rather than letting the next backward add to them in bf16.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        copies.forward(gpt)(x, x).backward()
    copies.refresh()
    assert all(c.grad is None for c in copies.copies)
    with pytest.raises(AssertionError, match="not parameters of GPT"):
        copies.forward(model())  # another model's parameters


@needs_cpp_compiler
@pytest.mark.parametrize("how", ["whole", "blocks"])
def test_copies_give_autocasts_numbers_compiled(how):
    torch._dynamo.reset()
    assert_identical(train(how, copies=True), train(how, copies=False))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_data_dir(tmp_path_factory.mktemp("data"))


def test_the_trainer_with_copies_trains_as_without(tmp_path, data_dir):
    results = {}
    for copies in (True, False):
        run_dir = tmp_path / str(copies)
        config = tiny_config(data_dir, dtype="bfloat16", weight_copies=copies, train={"num_steps": 6})
        assert run(write_run(run_dir, config)) == EXIT_DONE
        events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
        start = next(e for e in events if e["kind"] == "start")
        assert start["device"]["weight_copies"] is copies
        results[copies] = [
            (e["kind"], e.get("loss"), e.get("val_loss")) for e in events if e["kind"] in ("step", "val")
        ]
    assert len(results[True]) == 6 + 1 and results[True] == results[False]
    # auto: on for a bf16 run, off for a float32 one; true for a float32 run is an error naming the key.
    for dtype, expected in (("bfloat16", True), ("float32", False)):
        run_dir = tmp_path / f"auto-{dtype}"
        assert (
            run(write_run(run_dir, tiny_config(data_dir, dtype=dtype, train={"num_steps": 1}))) == EXIT_DONE
        )
        start = json.loads((run_dir / "events.jsonl").read_text().splitlines()[0])
        assert start["device"]["weight_copies"] is expected
    run_dir = tmp_path / "bad"
    assert (
        run(write_run(run_dir, tiny_config(data_dir, dtype="float32", weight_copies=True))) == EXIT_BAD_INPUT
    )
    assert not (run_dir / "events.jsonl").exists()


def test_the_trainer_with_copies_and_both_triton_kernels_trains_as_without():
    # Under the Triton interpreter: the fused loss and the fused MLP take the copies (bf16 weights) where
    # they took float32 ones, with the same losses, eager and with the whole model compiled.
    pytest.importorskip("triton", reason="the fused kernels are Triton's")
    runs = run_worker("fused_mlp_worker.py", "copies")
    for how in ("eager", "compiled"):
        with_copies, without = runs[f"{how}, copies True"], runs[f"{how}, copies False"]
        assert with_copies["device"]["weight_copies"] and not without["device"]["weight_copies"]
        for each in (with_copies, without):
            assert each["device"]["fused_loss"] and each["device"]["fused_mlp"] and each["warnings"] == []
            assert each["calls"] > 0  # the fused loss ran
        assert len(with_copies["steps"]) == 4 and len(with_copies["val"]) == 1
        assert (with_copies["steps"], with_copies["val"]) == (without["steps"], without["val"]), how


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("how", ["eager", "whole", "blocks"])
def test_copies_give_autocasts_numbers_on_a_gpu(how):
    # cuBLAS, the GPU's attention and the compiled kernels: the same bits where autocast's path itself
    # repeats bit for bit. Some GPU kernels add in a varying order (the embedding's and attention's
    # backward use atomics), so where two runs of autocast's path differ, the copies may differ from it by
    # no more than that; stale or lost weights would be far off.
    torch._dynamo.reset()
    autocast = train(how, copies=False, device="cuda")
    again = train(how, copies=False, device="cuda")
    copies = train(how, copies=True, device="cuda")

    def spread(a, b) -> float:
        losses = max(abs(x - y) / abs(y) for x, y in zip(a[0], b[0], strict=True))
        grads = max(((x - y).norm() / y.norm()).item() for x, y in zip(a[1], b[1], strict=True))
        return max(losses, grads)

    noise = spread(again, autocast)
    if noise == 0:
        assert_identical(copies, autocast)
    else:
        assert spread(copies, autocast) <= 4 * noise + 1e-6, (spread(copies, autocast), noise)
