"""nanogpt.model: config rounding and validation, accounting, init, forward/loss semantics."""

import math

import pytest
import torch
import torch.nn.functional as F
from markers import needs_cpp_compiler
from torch.utils.flop_counter import FlopCounterMode

from nanogpt.model import (
    FP8_GRAD,
    FP8_INPUT,
    GPT,
    MLP,
    FP8Linear,
    GPTConfig,
    apply_rotary_emb,
    compile_blocks,
    to_fp8,
)
from nanogpt.train import FP8_CAPABILITY

TINY = dict(depth=2, vocab_size=100, sequence_len=32, aspect_ratio=16, head_dim=16)  # n_embd 32, 2 heads


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def build(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**{**TINY, **overrides}))
    model.init_weights()
    return model


def randomize(model: GPT, seed: int = 1) -> GPT:
    """Non-zero weights everywhere (init zeroes c_proj, which would hide attention and MLP bugs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            std = 1.0 if p.ndim == 2 and p is model.transformer.wte.weight else 0.5 / math.sqrt(p.size(-1))
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model


def tokens(batch: int, length: int, vocab: int = 100, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


# --- config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("depth", "aspect_ratio", "head_dim", "n_embd", "n_head"),
    [
        (12, 64, 128, 768, 6),  # the GPT-2 small width
        (3, 64, 128, 256, 2),  # 192 rounds up to 256
        (1, 64, 128, 128, 1),  # 64 rounds up to one head
        (20, 64, 128, 1280, 10),
        (2, 16, 16, 32, 2),
        (5, 10, 16, 64, 4),  # 50 rounds up to 64
    ],
)
def test_width_and_heads_follow_depth(depth, aspect_ratio, head_dim, n_embd, n_head):
    config = GPTConfig(depth=depth, vocab_size=100, aspect_ratio=aspect_ratio, head_dim=head_dim)
    assert (config.n_layer, config.n_embd, config.n_head) == (depth, n_embd, n_head)
    assert config.n_head * config.head_dim == config.n_embd


@pytest.mark.parametrize(("vocab_size", "padded"), [(100, 128), (64, 64), (65, 128), (50257, 50304)])
def test_vocab_is_padded_to_a_multiple_of_64(vocab_size, padded):
    assert GPTConfig(depth=1, vocab_size=vocab_size).padded_vocab_size == padded


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("depth", 0),
        ("depth", -3),
        ("depth", True),
        ("depth", 2.0),
        ("vocab_size", 0),
        ("sequence_len", 0),
        ("aspect_ratio", 0),
        ("head_dim", 0),
        ("head_dim", 15),  # rotary needs channel pairs
        ("mlp", "swiglu"),
        ("logit_softcap", -1.0),
        ("logit_softcap", 0.0),
        ("logit_softcap", float("nan")),
        ("logit_softcap", float("inf")),
    ],
)
def test_bad_config_values_raise_a_clear_error(key, value):
    with pytest.raises(ValueError, match=rf"GPTConfig\.{key}\b") as error:
        GPTConfig(**{**TINY, key: value})
    assert repr(value) in str(error.value) or str(value) in str(error.value)


# --- accounting -----------------------------------------------------------------------------------


def test_scaling_params_and_flops_match_a_hand_count():
    model = build()
    # n_embd 32, 2 layers, padded vocab 128, sequence 32. Per layer: q, k, v, proj 32×32 each and
    # c_fc 32×128 + c_proj 128×32 = 4·1024 + 2·4096 = 12288. lm_head 128×32 = 4096. wte is not counted.
    assert model.num_scaling_params() == 2 * 12288 + 4096
    # 6·N + attention 12 · n_layer · n_embd · sequence_len
    assert model.estimate_flops() == 6 * 28672 + 12 * 2 * 32 * 32
    all_but_wte = sum(p.numel() for p in model.parameters()) - model.transformer.wte.weight.numel()
    assert model.num_scaling_params() == all_but_wte


def test_estimate_flops_agrees_with_torch_flop_counter():
    """Counted independently by torch: matmuls forward + backward = 6·N per token, and the attention
    forward = a third of the attention term (torch's backward formula also counts the recomputed scores)."""
    model = randomize(build())
    B, T = 3, model.config.sequence_len
    with FlopCounterMode(display=False) as counter:
        model(tokens(B, T), tokens(B, T, seed=1)).backward()
    counts = {str(op).split(".")[-1]: n for op, n in counter.get_flop_counts()["Global"].items()}
    attention_forward = sum(n for op, n in counts.items() if "attention" in op and "backward" not in op)
    attention_term = model.estimate_flops() - 6 * model.num_scaling_params()
    assert counts["mm"] == 6 * model.num_scaling_params() * B * T
    assert attention_forward * 3 == attention_term * B * T


def test_param_groups_partition_the_parameters():
    model = build(depth=3)
    groups = model.param_groups()
    assert set(groups) == {"matrix", "embedding", "unembedding", "scalar"}
    assert groups["embedding"] == [model.transformer.wte.weight]
    assert groups["unembedding"] == [model.lm_head.weight]
    assert groups["scalar"] == []
    assert len(groups["matrix"]) == 3 * 6 and all(p.ndim == 2 for p in groups["matrix"])
    ids = [id(p) for g in groups.values() for p in g]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters()}


# --- init -----------------------------------------------------------------------------------------


def test_init_matches_the_documented_table():
    model = build(depth=2, vocab_size=1000, aspect_ratio=64, head_dim=64)  # n_embd 128
    n_embd = model.config.n_embd
    wte, lm_head = model.transformer.wte.weight, model.lm_head.weight
    assert wte.std().item() == pytest.approx(1.0, rel=0.02) and abs(wte.mean().item()) < 0.01
    assert lm_head.std().item() == pytest.approx(0.001, rel=0.02)
    bound = math.sqrt(3 / n_embd)
    for block in model.transformer.h:
        for w in (block.attn.c_q.weight, block.attn.c_k.weight, block.attn.c_v.weight, block.mlp.c_fc.weight):
            assert w.abs().max().item() <= bound
            assert w.std().item() == pytest.approx(1 / math.sqrt(n_embd), rel=0.05)
        assert not block.attn.c_proj.weight.any() and not block.mlp.c_proj.weight.any()


def test_initial_loss_is_that_of_a_uniform_guess_over_the_real_vocabulary():
    model = build(vocab_size=1000)  # padded to 1024: the padding must not count in the softmax
    loss = model(tokens(4, 32, vocab=1000), tokens(4, 32, vocab=1000, seed=1))
    assert loss.item() == pytest.approx(math.log(1000), abs=0.01)


def test_meta_construction_then_to_empty_and_init_gives_a_working_model():
    with torch.device("meta"):
        model = GPT(GPTConfig(**TINY))
    model.to_empty(device="cpu")
    model.init_weights()
    reference = build()
    assert torch.equal(model.cos, reference.cos) and torch.equal(model.sin, reference.sin)
    assert model.cos.shape == (1, TINY["sequence_len"], 1, TINY["head_dim"] // 2)
    assert "cos" not in model.state_dict() and "sin" not in model.state_dict()
    logits = model(tokens(2, 32))
    assert torch.isfinite(logits[..., :100]).all()
    loss = model(tokens(2, 32), tokens(2, 32, seed=1))
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


# --- forward and loss -----------------------------------------------------------------------------


def test_forward_shapes_and_dtypes():
    model = randomize(build())
    logits = model(tokens(3, 20))
    assert logits.shape == (3, 20, 128) and logits.dtype == torch.float32
    assert torch.isfinite(logits[..., :100]).all()
    assert torch.isneginf(logits[..., 100:]).all()  # padding ids are not tokens
    loss = model(tokens(3, 20), tokens(3, 20, seed=1))
    assert loss.shape == () and loss.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(tokens(3, 20)).dtype == torch.float32
        assert model(tokens(3, 20), tokens(3, 20, seed=1)).dtype == torch.float32


def test_sequences_longer_than_sequence_len_are_refused():
    with pytest.raises(ValueError, match="sequence_len 32"):
        build()(tokens(1, 33))


def test_rotary_scores_depend_only_on_relative_position():
    model = build()
    q, k = torch.randn(1, 1, 2, 16), torch.randn(1, 1, 2, 16)  # (B, T, nh, hs)

    def score(m: int, n: int) -> torch.Tensor:
        at = lambda x, p: apply_rotary_emb(x, model.cos[:, p : p + 1], model.sin[:, p : p + 1])
        return (at(q, m) * at(k, n)).sum(-1)

    torch.testing.assert_close(score(7, 3), score(27, 23))
    torch.testing.assert_close(score(0, 5), score(10, 15))
    assert not torch.allclose(score(7, 3), score(7, 4))
    rotated = apply_rotary_emb(q, model.cos[:, 9:10], model.sin[:, 9:10])
    torch.testing.assert_close(rotated.norm(dim=-1), q.norm(dim=-1))


def test_attention_is_causal():
    model = randomize(build())
    x = tokens(2, 32)
    changed = x.clone()
    changed[:, 20:] = (changed[:, 20:] + 1) % 100
    before, after = model(x), model(changed)
    torch.testing.assert_close(before[:, :20], after[:, :20])
    assert not torch.allclose(before[:, 20:, :100], after[:, 20:, :100])


def test_targets_of_minus_one_are_ignored():
    model = randomize(build())
    x, y = tokens(2, 32), tokens(2, 32, seed=1)
    y[0, :10] = -1
    y[1, 25:] = -1
    kept = y != -1
    logits = model(x)
    by_hand = -F.log_softmax(logits[..., :100], dim=-1).gather(-1, y.clamp(min=0)[..., None])[..., 0]
    torch.testing.assert_close(model(x, y), by_hand[kept].mean())
    torch.testing.assert_close(model(x, y, reduction="sum"), by_hand[kept].sum())
    per_token = model(x, y, reduction="none")
    assert per_token.shape == (2, 32)
    torch.testing.assert_close(per_token[kept], by_hand[kept])
    assert not per_token[~kept].any()


def test_softcap_bounds_the_logits():
    capped = randomize(build(logit_softcap=5.0))
    uncapped = build(logit_softcap=None)
    uncapped.load_state_dict(capped.state_dict())
    with torch.no_grad():
        for model in (capped, uncapped):
            model.lm_head.weight.mul_(100.0)  # push raw logits far past the cap
    raw = uncapped(tokens(2, 32))[..., :100]
    soft = capped(tokens(2, 32))[..., :100]
    assert raw.abs().max() > 20.0
    assert soft.abs().max() <= 5.0
    torch.testing.assert_close(soft, 5.0 * torch.tanh(raw / 5.0))


def test_mlp_kinds_compute_relu_squared_and_gelu():
    x = torch.randn(2, 5, 32)
    for kind, act in (("relu2", lambda h: F.relu(h) ** 2), ("gelu", lambda h: F.gelu(h, approximate="tanh"))):
        mlp = MLP(GPTConfig(**{**TINY, "mlp": kind}))
        torch.nn.init.normal_(mlp.c_proj.weight)
        expected = act(x @ mlp.c_fc.weight.T) @ mlp.c_proj.weight.T
        torch.testing.assert_close(mlp(x), expected)
    relu2, gelu = randomize(build(mlp="relu2")), randomize(build(mlp="gelu"))
    assert not torch.allclose(relu2(tokens(1, 8))[..., :100], gelu(tokens(1, 8))[..., :100])


@pytest.mark.parametrize("fp8_head", [False, True], ids=["exact-head", "fp8-head"])
def test_forward_compiles_without_graph_breaks(fp8_head):
    torch._dynamo.reset()
    model = randomize(build())
    model.fp8_head = fp8_head
    x, y = tokens(2, 32), tokens(2, 32, seed=1)
    compiled = torch.compile(model, fullgraph=True, backend="eager")  # fullgraph raises on any graph break
    torch.testing.assert_close(compiled(x, y), model(x, y))


@pytest.mark.parametrize("depth", [2, 5])
def test_compile_blocks_compiles_one_graph_that_every_block_runs(depth, monkeypatch):
    """Regional compilation: one graph for a block, which all blocks run (their weights are its inputs),
    and one for the head, whatever the depth; the loss and every gradient are the eager model's."""
    from torch._dynamo.testing import CompileCounter

    from nanogpt import model as model_module

    counter = CompileCounter()
    real_compile = torch.compile
    compile_ = lambda f, **kw: real_compile(f, backend=counter, fullgraph=True, **kw)
    monkeypatch.setattr(torch, "compile", compile_)
    torch._dynamo.reset()
    model = randomize(build(depth=depth))
    x, y = tokens(2, 32), tokens(2, 32, seed=1)
    forward = model_module.compile_blocks(model)
    for _ in range(2):  # the second call compiles nothing new
        loss = forward(x, y, reduction="sum")
        loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    assert counter.frame_count == 2
    model.zero_grad()
    expected = model(x, y, reduction="sum")
    expected.backward()
    torch.testing.assert_close(loss, expected)
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], 2 * p.grad, msg=name)  # two backwards accumulated
    assert forward(x, y, reduction="none").shape == (2, 32) and counter.frame_count == 3  # the head again


@needs_cpp_compiler
@pytest.mark.parametrize("fp8_head", [False, True], ids=["exact-head", "fp8-head"])
def test_compile_blocks_under_the_cpu_inductor_computes_the_eager_loss_and_gradients(fp8_head):
    torch._dynamo.reset()
    model = randomize(build(depth=3))
    model.fp8_head = fp8_head
    x, y = tokens(2, 32), tokens(2, 32, seed=1)
    loss = compile_blocks(model)(x, y)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    expected = model(x, y)
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-3, atol=1e-5, msg=name)


# --- FP8 lm_head ------------------------------------------------------------------------------------


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("dtype", [FP8_INPUT, FP8_GRAD], ids=["e4m3", "e5m2"])
def test_to_fp8_puts_the_largest_magnitude_at_the_format_maximum_and_never_overflows(dtype):
    limit = torch.finfo(dtype).max
    t = torch.tensor([[-3.0, 0.5], [0.0, 1e-3]])
    t8, scale = to_fp8(t, dtype)
    assert t8.dtype == dtype and scale.dtype == torch.float32 and scale.ndim == 0
    assert t8.float().abs().max().item() == limit
    half_ulp = torch.finfo(dtype).eps / 2  # rounding to nearest: 2^-4 with e4m3's 3 bits, 2^-3 with e5m2's 2
    torch.testing.assert_close(t8.float() * scale, t, rtol=half_ulp, atol=1e-4)
    # An all-zero tensor (the logits' gradient of a micro-batch whose targets are all masked): a normal
    # float32 scale, not a subnormal one that a GPU may flush to zero (0/0 would then be NaN).
    zeros, zero_scale = to_fp8(torch.zeros(4, 4), dtype)
    assert zero_scale >= torch.finfo(torch.float32).tiny and (zeros.float() == 0).all()


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
def test_fp8_linear_is_the_matmul_to_fp8_precision_forward_and_backward(x_dtype):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 32, 64, generator=gen).to(x_dtype).requires_grad_()
    weight = (torch.randn(128, 64, generator=gen) * 0.02).requires_grad_()
    grad = torch.randn(2, 32, 128, generator=gen).to(x_dtype) * 1e-4
    y = FP8Linear.apply(x, weight)
    y.backward(grad)
    assert y.dtype == x_dtype and x.grad.dtype == x_dtype and weight.grad.dtype == torch.float32
    fp8_grads = x.grad, weight.grad
    x_exact = x.detach().float().requires_grad_()
    weight_exact = weight.detach().clone().requires_grad_()
    y_exact = x_exact @ weight_exact.t()
    y_exact.backward(grad.float())
    # e4m3 operands (3 mantissa bits) forward, an e5m2 gradient (2 bits) backward: a few percent, and not
    # zero (the matmuls really ran in FP8).
    assert 0.005 < relative_error(y, y_exact) < 0.06
    assert 0.01 < relative_error(fp8_grads[0], x_exact.grad) < 0.1
    assert 0.01 < relative_error(fp8_grads[1], weight_exact.grad) < 0.1


def test_fp8_head_takes_the_training_loss_and_leaves_evaluation_exact():
    model = randomize(build())
    x, y = tokens(4, 32), tokens(4, 32, seed=1)
    exact_loss = model(x, y)
    exact_loss.backward()
    exact_grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    model.fp8_head = True
    loss = model(x, y)
    loss.backward()
    assert loss.item() != exact_loss.item()  # the FP8 matmul ran
    assert loss.item() == pytest.approx(exact_loss.item(), rel=0.01)
    for name, p in model.named_parameters():
        assert relative_error(p.grad, exact_grads[name]) < 0.1, name
    with torch.no_grad():  # evaluation and generation multiply the weights as they are
        model.fp8_head = False
        exact_logits = model(x)
        model.fp8_head = True
        torch.testing.assert_close(model(x), exact_logits, rtol=0, atol=0)
        torch.testing.assert_close(model(x, y), exact_loss.detach(), rtol=0, atol=0)
    # 3 tokens: not a multiple of 16 rows, which FP8 matmuls need; the head multiplies as it is.
    short_x, short_y = tokens(1, 3), tokens(1, 3, seed=1)
    model.fp8_head = False
    expected = model(short_x, short_y)
    model.fp8_head = True
    torch.testing.assert_close(model(short_x, short_y), expected, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("regional", [False, True], ids=["whole", "blocks"])
@pytest.mark.parametrize("fp8_head", [False, True], ids=["bf16-head", "fp8-head"])
def test_compiled_bf16_training_step_on_gpu_matches_float32(regional, fp8_head):
    if fp8_head and torch.cuda.get_device_capability() < FP8_CAPABILITY:
        pytest.skip("FP8 matmuls need compute capability 8.9 or newer")
    torch._dynamo.reset()
    torch.manual_seed(0)
    config = GPTConfig(depth=4, vocab_size=1000, sequence_len=256, aspect_ratio=64, head_dim=64)
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device="cuda")
    model.init_weights()
    with torch.no_grad():  # non-zero everywhere, and logits far enough from 0 for the head to matter
        for p in [*model.param_groups()["matrix"], model.lm_head.weight]:
            p.normal_(0.0, 0.5 / math.sqrt(p.size(1)))
    x = torch.randint(0, 1000, (8, 256), device="cuda")
    y = torch.randint(0, 1000, (8, 256), device="cuda")
    y[0] = -1  # a sequence without targets: the logits' gradient is zero there
    reference = model(x, y)
    reference.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    model.fp8_head = fp8_head
    compiled = compile_blocks(model) if regional else torch.compile(model, fullgraph=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = compiled(x, y)
    loss.backward()
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(reference.item(), rel=0.02)
    for name, p in model.named_parameters():  # bf16 about 1% from float32, an FP8 head a few percent
        error = ((p.grad - expected[name]).norm() / expected[name].norm()).item()
        assert error < (0.1 if fp8_head else 0.05), (name, error)
    if fp8_head:  # every target masked: the logits' gradient is all zeros, and so is every gradient
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            compiled(x, torch.full_like(y, -1), reduction="sum").backward()
        assert all((p.grad == 0).all() for p in model.parameters() if p.grad is not None)
