"""MuonAdamW (nanogpt/optim.py): the AdamW half against torch.optim.AdamW, Muon's orthogonality and
wiring, stacking, state round trips, group validation, and 2..4 gloo ranks against one process."""

import io
import socket
import tempfile
from pathlib import Path

import optim_dist_worker as worker
import pytest
import torch
import torch.multiprocessing as mp
from markers import needs_cpp_compiler

from nanogpt.optim import POLAR_EXPRESS_COEFFS, MuonAdamW, orthogonalize, polar_express_schedule

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _leaves(shapes, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen).to(dtype).requires_grad_() for s in shapes]


def _clones(params):
    return [p.detach().clone().requires_grad_() for p in params]


def _set_grads(params_lists, gen):
    """The same fresh random gradient on the corresponding parameter of each list."""
    for same in zip(*params_lists, strict=True):
        g = torch.randn(same[0].shape, generator=gen)
        for p in same:
            p.grad = g.to(device=p.device, dtype=p.dtype)


# --- AdamW ---


def test_adamw_matches_torch_adamw_with_a_schedule():
    shapes = [(7, 5), (33,), (), (4, 3, 2)]
    ref, ours = _leaves(shapes), _leaves(shapes)
    hyper = [
        {"lr": 1e-2, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1},
        {"lr": 3e-3, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.0},
    ]
    torch_opt = torch.optim.AdamW([{"params": ref[:2], **hyper[0]}, {"params": ref[2:], **hyper[1]}])
    opt = MuonAdamW(
        [{"params": ours[:2], "kind": "adamw", **hyper[0]}, {"params": ours[2:], "kind": "adamw", **hyper[1]}]
    )
    gen = torch.Generator().manual_seed(1)
    for step in range(8):
        multiplier = 1 - step / 10
        for group, base in zip(torch_opt.param_groups, hyper, strict=True):
            group["lr"] = base["lr"] * multiplier
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * multiplier
        _set_grads([ref, ours], gen)
        torch_opt.step()
        opt.step()
    for r, o in zip(ref, ours, strict=True):
        torch.testing.assert_close(o, r, rtol=1e-6, atol=1e-8)
    assert not torch.equal(ours[0], _leaves(shapes)[0]), "the parameters did not move"


def test_adamw_on_bf16_params_computes_in_fp32():
    (p,) = _leaves([(8, 4)], dtype=torch.bfloat16)
    master = p.detach().float().requires_grad_()
    torch_opt = torch.optim.AdamW([master], lr=0.05, weight_decay=0.1)
    opt = MuonAdamW([{"params": [p], "kind": "adamw", "lr": 0.05, "weight_decay": 0.1}])
    _set_grads([[master], [p]], torch.Generator().manual_seed(2))
    master.grad = p.grad.float()  # the same bf16-representable gradient for both
    torch_opt.step()
    opt.step()
    assert torch.equal(p, master.detach().bfloat16())
    shard = opt.state_dict()["groups"][0]["shards"][0]
    assert shard["exp_avg"].dtype == shard["exp_avg_sq"].dtype == torch.float32


# --- Muon ---


def _with_singular_values(shape, singular_values, seed=0):
    gen = torch.Generator().manual_seed(seed)
    m, n = shape
    k = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(m, k, generator=gen))
    V, _ = torch.linalg.qr(torch.randn(n, k, generator=gen))
    return U @ torch.diag(singular_values) @ V.T, U @ V.T


@pytest.mark.parametrize("shape", [(32, 96), (96, 32), (64, 64)])
@pytest.mark.parametrize("orth_dtype", [torch.bfloat16, torch.float32])
def test_muon_update_is_near_orthogonal(shape, orth_dtype):
    m, n = shape
    grad, polar = _with_singular_values(shape, torch.logspace(-2, 0, min(shape)))
    (p,) = _leaves([shape])
    before = p.detach().clone()
    lr = 0.1
    group = {"params": [p], "kind": "muon", "lr": lr, "momentum": 0.0, "nesterov": False}
    opt = MuonAdamW([group], orth_dtype=orth_dtype)
    p.grad = grad
    opt.step()
    update = (before - p.detach()) / (lr * max(1.0, m / n) ** 0.5)
    s = torch.linalg.svdvals(update)
    assert s.min() > 0.75 and s.max() < 1.25, (s.min(), s.max())
    # Orthogonal in the gradient's own directions: close to its polar factor U V^T.
    relative_error = torch.linalg.matrix_norm(update - polar) / torch.linalg.matrix_norm(polar)
    assert relative_error < 0.15


def test_ns_steps_trades_speed_for_orthogonality():
    grad, _ = _with_singular_values((48, 80), torch.logspace(-3, 0, 48))
    deviation = {}
    for steps in range(1, 11):
        s = torch.linalg.svdvals(orthogonalize(grad, steps, torch.float32))
        deviation[steps] = (s - 1).abs().max().item()
    # A condition number of 1e3 takes about eight steps; each step helps.
    assert all(deviation[k + 1] < deviation[k] for k in range(1, 8)), deviation
    assert deviation[4] > 0.5 and deviation[8] < 1e-3 and deviation[10] < 1e-5
    # Past the published list, the converged quintic repeats.
    assert polar_express_schedule(10)[-3:] == [POLAR_EXPRESS_COEFFS[-1]] * 3


def _reference_muon_step(p, grad, buf, *, lr, weight_decay, momentum, nesterov, ns_steps):
    """Muon as written in Keller Jordan's reference, one matrix at a time."""
    buf.mul_(momentum).add_(grad, alpha=1 - momentum)
    update = grad * (1 - momentum) + buf * momentum if nesterov else buf
    ortho = orthogonalize(update, ns_steps, torch.float32)
    m, n = p.shape
    p.mul_(1 - lr * weight_decay).sub_(ortho, alpha=lr * max(1.0, m / n) ** 0.5)


@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_step_matches_reference(nesterov):
    shapes = [(12, 20), (20, 12)]
    ours = _leaves(shapes)
    ref = [p.detach().clone() for p in ours]
    bufs = [torch.zeros_like(p) for p in ref]
    hyper = {"lr": 0.03, "weight_decay": 0.2, "momentum": 0.9, "nesterov": nesterov, "ns_steps": 6}
    opt = MuonAdamW([{"params": ours, "kind": "muon", **hyper}], orth_dtype=torch.float32)
    gen = torch.Generator().manual_seed(3)
    for _ in range(4):
        _set_grads([ours], gen)
        grads = [o.grad for o in ours]  # step() takes them out of .grad
        opt.step()
        for p, g, buf in zip(ref, grads, bufs, strict=True):
            _reference_muon_step(p, g, buf, **hyper)
    for r, o in zip(ref, ours, strict=True):
        torch.testing.assert_close(o.detach(), r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("orth_dtype", [torch.bfloat16, torch.float32])
def test_stacked_matrices_update_like_one_at_a_time(orth_dtype):
    shapes = [(16, 24), (24, 8), (16, 24), (16, 24), (24, 8)]
    stacked, single = _leaves(shapes), _leaves(shapes)
    hyper = {"kind": "muon", "lr": 0.02, "weight_decay": 0.1}
    opt = MuonAdamW([{"params": stacked, **hyper}], orth_dtype=orth_dtype)
    singles = [MuonAdamW([{"params": [p], **hyper}], orth_dtype=orth_dtype) for p in single]
    gen = torch.Generator().manual_seed(4)
    for _ in range(3):
        _set_grads([stacked, single], gen)
        opt.step()
        for o in singles:
            o.step()
    for a, b in zip(stacked, single, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert opt.state_bytes() == sum(o.state_bytes() for o in singles)


@pytest.mark.parametrize("kind", ["adamw", "muon"])
def test_a_missing_gradient_counts_as_zero(kind):
    shapes = [(6, 10), (6, 10)]
    missing, zeros = _leaves(shapes), _leaves(shapes)
    opts = [MuonAdamW([{"params": ps, "kind": kind, "lr": 0.01}]) for ps in (missing, zeros)]
    gen = torch.Generator().manual_seed(5)
    _set_grads([missing, zeros], gen)
    for o in opts:
        o.step()
    moved = missing[1].detach().clone()
    _set_grads([missing, zeros], gen)
    missing[1].grad = None
    zeros[1].grad = torch.zeros_like(zeros[1])
    for o in opts:
        o.step()
    for a, b in zip(missing, zeros, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(missing[1], moved), "momentum should still move a parameter without a gradient"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_compiled_kernels_match_eager_on_cuda():
    """The compiled update kernels compute what the eager ones do. AdamW is float32 throughout, so they agree
    to rounding. Muon orthogonalizes in bf16, where the two place their roundings differently and part by
    up to 8e-4 over 6 steps (seen with the CPU inductor), so each is held against float32
    orthogonalization instead: the compiled one may be no further from it than bf16 puts the eager one."""
    import torch._dynamo.utils

    shapes = [(64, 96), (64, 96), (64, 96), (96, 64), (100, 64), (7,), ()]
    compiled = [p.detach().cuda().requires_grad_() for p in _leaves(shapes)]
    eager, exact, start = _clones(compiled), _clones(compiled), _clones(compiled)

    def groups(params):
        return [
            {"params": params[:4], "kind": "muon", "lr": 0.02, "weight_decay": 0.1},
            {"params": params[4:], "kind": "adamw", "lr": 0.01, "betas": (0.8, 0.95), "weight_decay": 0.01},
        ]

    opts = [
        MuonAdamW(groups(compiled)),
        MuonAdamW(groups(eager), compile_kernels=False),
        MuonAdamW(groups(exact), compile_kernels=False, orth_dtype=torch.float32),
    ]
    gen = torch.Generator().manual_seed(8)
    for step in range(6):
        if step == 2:
            graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        _set_grads([compiled, eager, exact], gen)
        for o in opts:
            for group in o.param_groups:
                group["lr"] = group["initial_lr"] * (1 - step / 10)
            o.step()
    # A new learning rate every step must not recompile.
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs

    def rms(t):
        return t.detach().float().pow(2).mean().sqrt().item()

    for c, e, x, s in zip(compiled[:4], eager[:4], exact[:4], start[:4], strict=True):
        moved, eager_error, compiled_error = rms(x - s), rms(e - x), rms(c - x)
        assert eager_error < 0.03 * moved  # bf16 orthogonalization: about 1% of the way the matrix moved
        assert compiled_error <= 1.5 * eager_error, (compiled_error, eager_error, moved)
    for c, e in zip(compiled[4:], eager[4:], strict=True):
        torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-6)


@needs_cpp_compiler
def test_the_update_kernels_compile_whole_and_compute_the_eager_update():
    """The kernels that MuonAdamW compiles on CUDA, compiled here by the CPU inductor: they trace as one
    graph each (fullgraph, so a graph break is an error here as on a GPU), take their scalars as tensors,
    and compute the eager update: AdamW to rounding, Muon within bf16's reach of float32
    orthogonalization (the test of the compiled CUDA kernels holds them to the same relation)."""
    import torch._dynamo.utils

    from nanogpt.optim import _compiled, adamw_update, muon_update

    gen = torch.Generator().manual_seed(3)
    start = torch.randn(3, 64, 96, generator=gen)
    params = {way: start.clone() for way in ("compiled", "eager", "exact")}
    buffers = {way: torch.zeros_like(start) for way in params}
    flat = torch.randn(5000, generator=gen)
    adam = {way: [flat.clone(), torch.zeros(5000), torch.zeros(5000)] for way in ("compiled", "eager")}
    muon_kernel, adamw_kernel = _compiled(muon_update), _compiled(adamw_update)
    graphs = None
    for step in range(1, 5):
        if step == 2:
            graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        grad = torch.randn(3, 64, 96, generator=gen)
        lr = 0.02 * (1 - step / 10)
        scalars = dict(momentum=0.95, one_minus_momentum=0.05, decay=1 - lr * 0.1, scaled_lr=lr)
        for way in params:
            kernel = muon_kernel if way == "compiled" else muon_update
            values = {k: torch.tensor(v) for k, v in scalars.items()} if way == "compiled" else scalars
            orth = torch.float32 if way == "exact" else torch.bfloat16
            kernel(
                params[way], grad.clone(), buffers[way], nesterov=True, ns_steps=5, orth_dtype=orth, **values
            )
        g = torch.randn(5000, generator=gen)
        hyper = dict(
            decay=1 - lr * 0.01,
            one_minus_beta1=0.2,
            beta2=0.95,
            one_minus_beta2=0.05,
            step_size=lr / (1 - 0.8**step),
            bias_correction2_sqrt=(1 - 0.95**step) ** 0.5,
            eps=1e-10,
        )
        param, exp_avg, exp_avg_sq = adam["compiled"]
        adamw_kernel(param, g, exp_avg, exp_avg_sq, **{k: torch.tensor(v) for k, v in hyper.items()})
        param, exp_avg, exp_avg_sq = adam["eager"]
        adamw_update(param, g, exp_avg, exp_avg_sq, **hyper)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs  # new values, no new graph

    def rms(t):
        return t.pow(2).mean().sqrt().item()

    moved = rms(params["exact"] - start)
    eager_error, compiled_error = (rms(params[way] - params["exact"]) for way in ("eager", "compiled"))
    assert 0 < eager_error < 0.03 * moved
    assert compiled_error <= 1.5 * eager_error, (compiled_error, eager_error, moved)
    for compiled, eager in zip(adam["compiled"], adam["eager"], strict=True):
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)


# --- memory ---


def test_step_consumes_the_gradients_and_never_holds_two_copies():
    """One process: each full gradient is held once during step() (by .grad or by its reduction's input,
    never both), and after step() by nothing; only the optimizer state is left."""
    held = worker.memory_scenario()
    assert held["grad_bytes"] == 0 and held["inputs_alive_after_step"] == 0
    assert held["peak_gradient_bytes"] == held["full_gradient_bytes"]  # no padding at world_size 1
    assert held["state_bytes"] == MuonAdamW(worker.build_groups(worker.build_params())).state_bytes()


@pytest.mark.slow
def test_two_ranks_each_hold_about_half_the_gradient_and_state_bytes_after_step():
    """Gradients and optimizer state held per rank after step(): 2 gloo ranks against 1 process. The
    state is sharded, the gradients are freed, so each rank holds about half (one rank owns 3 of the 5
    stacked (16, 24) matrices, the other 2). During step() a rank holds one full set of gradients, plus the
    zero padding of its reductions' inputs."""
    world_size = 2
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(worker.spawn_memory_entry, args=(world_size, _free_port(), out_dir), nprocs=world_size)
        ranks = [torch.load(Path(out_dir) / f"memory{r}.pt", weights_only=True) for r in range(world_size)]
    one = worker.memory_scenario()
    held_one = one["grad_bytes"] + one["state_bytes"]
    held = [r["grad_bytes"] + r["state_bytes"] for r in ranks]
    assert all(r["grad_bytes"] == 0 and r["inputs_alive_after_step"] == 0 for r in ranks), ranks
    assert max(held) <= 0.6 * held_one and sum(held) <= 1.01 * held_one, (held, held_one)
    for r in ranks:
        assert r["full_gradient_bytes"] <= r["peak_gradient_bytes"] <= 1.15 * r["full_gradient_bytes"], r


# --- state ---


def _mixed(params):
    matrices, others = params[:3], params[3:]
    return [
        {"params": matrices, "kind": "muon", "lr": 0.02, "weight_decay": 0.1},
        {"params": others, "kind": "adamw", "lr": 0.01, "betas": (0.8, 0.95), "weight_decay": 0.01},
    ]


MIXED_SHAPES = [(8, 12), (8, 12), (12, 4), (50, 8), (7,), ()]


def test_state_dict_round_trip_reproduces_the_next_step():
    params = _leaves(MIXED_SHAPES)
    opt = MuonAdamW(_mixed(params))
    gen = torch.Generator().manual_seed(6)
    for _ in range(3):
        _set_grads([params], gen)
        opt.step()
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    resumed_params = _clones(params)
    resumed = MuonAdamW(_mixed(resumed_params))
    fresh_params = _clones(params)
    fresh = MuonAdamW(_mixed(fresh_params))
    resumed.load_state_dict(loaded)
    for _ in range(2):
        _set_grads([params, resumed_params, fresh_params], gen)
        for o in (opt, resumed, fresh):
            o.step()
    for a, b in zip(params, resumed_params, strict=True):
        assert torch.equal(a, b)
    # The state matters: without it the same steps end elsewhere.
    assert not all(torch.equal(a, b) for a, b in zip(params, fresh_params, strict=True))


def test_load_state_dict_rejects_a_different_layout():
    params = _leaves(MIXED_SHAPES)
    opt = MuonAdamW(_mixed(params))
    _set_grads([params], torch.Generator().manual_seed(7))
    opt.step()
    saved = opt.state_dict()
    other = MuonAdamW(_mixed(_leaves(MIXED_SHAPES)))
    with pytest.raises(ValueError, match="world_size is 2, this optimizer has 1"):
        other.load_state_dict({**saved, "world_size": 2})
    with pytest.raises(ValueError, match="1 param groups saved, this optimizer has 2"):
        other.load_state_dict({**saved, "groups": saved["groups"][:1]})
    # Group 0 matches and group 1 does not: nothing may be loaded, group 0 included.
    wider = MuonAdamW(_mixed(_leaves([(8, 12), (8, 12), (12, 4), (50, 9), (7,), ()])))
    with pytest.raises(
        ValueError, match=r"param group 1 shard 0 exp_avg has shape \(400,\), this optimizer has \(450,\)"
    ):
        wider.load_state_dict(saved)
    assert saved["groups"][0]["shards"][0]["momentum_buffer"].any()
    assert not wider.state_dict()["groups"][0]["shards"][0]["momentum_buffer"].any()


def test_load_state_dict_refuses_a_malformed_shard_with_a_value_error():
    opt = MuonAdamW(_mixed(_leaves(MIXED_SHAPES)))
    saved = opt.state_dict()
    muon, adamw = saved["groups"]

    def with_entry(group, index, **change):
        entry = {k: v for k, v in {**group["shards"][index], **change}.items() if v is not None}
        return {**group, "shards": [*group["shards"][:index], entry, *group["shards"][index + 1 :]]}

    cases = [
        ({k: v for k, v in saved.items() if k != "groups"}, r"malformed \(KeyError: 'groups'\)"),
        ({**saved, "groups": [muon, {"kind": "adamw"}]}, r"malformed \(KeyError: 'num_params'\)"),
        ({**saved, "groups": [muon, with_entry(adamw, 1, step=None)]}, r"malformed \(KeyError: 'step'\)"),
        ({**saved, "groups": [muon, with_entry(adamw, 1, step=1.5)]}, r"group 1 shard 1 step is 1\.5"),
        (
            {**saved, "groups": [with_entry(muon, 0, momentum_buffer=[0.0]), adamw]},
            r"group 0 shard 0 momentum_buffer is not a tensor",
        ),
    ]
    for state, message in cases:
        with pytest.raises(ValueError, match=f"^optimizer state: .*{message}"):
            opt.load_state_dict(state)


def test_state_bytes_counts_the_moments_and_momentum():
    params = _leaves(MIXED_SHAPES)
    opt = MuonAdamW(_mixed(params))
    muon_bytes = (2 * 8 * 12 + 12 * 4) * 4  # one fp32 momentum buffer per matrix
    adamw_bytes = (50 * 8 + 7 + 1) * 2 * 4  # two fp32 moments per element
    assert opt.state_bytes() == muon_bytes + adamw_bytes


# --- groups ---


def test_groups_get_defaults_and_initial_lr_without_mutating_the_callers_dicts():
    (m,) = _leaves([(4, 4)])
    (v,) = _leaves([(4,)])
    muon = {"params": [m], "kind": "muon", "lr": 0.02}
    adamw = {"params": [v], "kind": "adamw", "lr": 0.01, "initial_lr": 0.5, "name": "scalars"}
    opt = MuonAdamW([muon, adamw])
    g0, g1 = opt.param_groups
    assert g0["initial_lr"] == 0.02 and g1["initial_lr"] == 0.5
    assert (g0["momentum"], g0["nesterov"], g0["ns_steps"], g0["weight_decay"]) == (0.95, True, 5, 0.0)
    assert (g1["betas"], g1["eps"], g1["name"]) == ((0.9, 0.999), 1e-8, "scalars")
    assert "initial_lr" not in muon and "momentum" not in muon


def _bad(**change):
    (m,) = _leaves([(4, 6)])
    group = {"params": [m], "kind": "muon", "lr": 0.02, **change}
    return {k: v for k, v in group.items() if v is not None}


@pytest.mark.parametrize(
    ("group", "message"),
    [
        (_bad(kind="sgd"), r"param group 0 \(sgd\): kind is 'sgd', expected one of \['adamw', 'muon'\]"),
        (_bad(kind=None), r"kind is None"),
        (_bad(lr=None), r"param group 0 \(muon\): missing required key 'lr'"),
        (_bad(lr=-1.0), r"lr is -1.0"),
        (_bad(lr=float("nan")), r"lr is nan"),
        (_bad(params=_leaves([(4, 6), (3,)])), r"param 1 has shape \(3,\); Muon updates 2-D matrices only"),
        (_bad(params=_leaves([(2, 3, 4)])), r"param 0 has shape \(2, 3, 4\)"),
        (_bad(betas=(0.9, 0.95)), r"unknown key\(s\) \['betas'\] for kind 'muon'"),
        (_bad(kind="adamw", betas=(0.9, 1.0)), r"betas\[1\] is 1.0"),
        (_bad(ns_steps=0), r"ns_steps is 0"),
        (_bad(momentum=1.0), r"momentum is 1.0"),
        (_bad(nesterov="yes"), r"nesterov is 'yes'"),
    ],
)
def test_bad_groups_raise_a_clear_value_error(group, message):
    with pytest.raises(ValueError, match=message):
        MuonAdamW([group])


def test_no_groups_is_an_error():
    with pytest.raises(ValueError, match="no param groups"):
        MuonAdamW([])


# --- several ranks (gloo) ---


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_ranks_reach_the_same_parameters_as_one_process(world_size):
    """N gloo ranks, each holding 1/N of every step's gradient contributions, end where one process
    holding their mean ends; each rank keeps about 1/N of the state; sharded resume is exact."""
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(worker.spawn_entry, args=(world_size, _free_port(), out_dir), nprocs=world_size)
        ranks = [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=True) for r in range(world_size)]
    for key, orth_dtype, atol in (("fp32", torch.float32, 1e-6), ("bf16", torch.bfloat16, 5e-4)):
        one = worker.run_scenario(world_size, orth_dtype)
        for rank, result in enumerate(ranks):
            for name, expected in one["params"].items():
                torch.testing.assert_close(
                    result[key]["params"][name], expected, rtol=0, atol=atol, msg=f"{key} rank {rank} {name}"
                )
            assert result[key]["resume_max_abs_diff"] == 0.0
        per_rank = [r[key]["state_bytes"] for r in ranks]
        assert max(per_rank) < one["state_bytes"] and sum(per_rank) >= one["state_bytes"]
        balanced = [r[key]["balanced_state_bytes"] for r in ranks]
        if world_size in (2, 4):  # the balanced sizes divide evenly: exactly 1/N each
            assert balanced == [one["balanced_state_bytes"] // world_size] * world_size
        else:
            assert max(balanced) <= one["balanced_state_bytes"] * 0.5
    with pytest.raises(ValueError, match=f"world_size is {world_size}, this optimizer has 1"):
        params = worker.build_params()
        MuonAdamW(worker.build_groups(params)).load_state_dict(ranks[0]["fp32"]["state_dict"])
