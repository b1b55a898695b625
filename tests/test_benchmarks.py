"""The throughput benchmark's reference recipe trains what nanoGPT trains: with gradient accumulation, a
step's gradient is that of the mean loss over the total batch (checked on the CPU with a tiny model)."""

import argparse
import dataclasses
import json
import shutil
import time
import warnings
from typing import ClassVar

import pytest
import torch

from benchmarks import train_throughput
from benchmarks.reference_gpt2 import RefConfig, RefGPT
from nanogpt.config import RunConfig


class TinyRef(RefGPT):
    """The reference model at a few thousand parameters, on the CPU (its `.cuda()` is a no-op)."""

    built: ClassVar[list["TinyRef"]] = []

    def __init__(self, config: RefConfig):
        super().__init__(dataclasses.replace(config, n_layer=1, n_head=2, n_embd=16, vocab_size=64))
        TinyRef.built.append(self)

    def cuda(self):
        return self


@pytest.mark.parametrize("grad_accum", [1, 2, 4])
def test_reference_gradient_is_that_of_the_mean_loss_over_the_total_batch(monkeypatch, grad_accum):
    monkeypatch.setattr(train_throughput, "RefGPT", TinyRef)
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: model)
    seq_len, micro_batch = 8, 2
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 64, (grad_accum * micro_batch, seq_len + 1), generator=gen)
    x, y = tokens[:, :-1], tokens[:, 1:]

    torch.manual_seed(0)
    whole = TinyRef(RefConfig(block_size=seq_len))
    whole(x, y).backward()  # the mean over every token of the step, in one pass
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # autocast("cuda") without CUDA is disabled: float32 here
        loss_and_backward, _, _ = train_throughput.build_reference(seq_len)(grad_accum)
        accumulated = TinyRef.built[-1]
        for k in range(grad_accum):
            rows = slice(k * micro_batch, (k + 1) * micro_batch)
            loss_and_backward(x[rows], y[rows])
    for (name, a), b in zip(accumulated.named_parameters(), whole.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_each_reference_run_compiles_afresh_with_its_micro_batch_static(monkeypatch):
    """--ref-micro-batch 32,64 runs the reference twice in one process: the second run must not inherit the
    first one's compiled frames, whose guards failing on the new batch size recompile it with the batch
    dimension symbolic (dynamo's automatic dynamic shapes), a different program from the one run alone."""
    monkeypatch.setattr(train_throughput, "RefGPT", TinyRef)
    symbolic: list[bool] = []

    def recording_backend(graph, example_inputs):
        shapes = [dim for t in example_inputs if isinstance(t, torch.Tensor) for dim in t.shape]
        symbolic.append(any(isinstance(x, torch.SymInt) for x in [*shapes, *example_inputs]))
        return graph

    real_compile = torch.compile
    monkeypatch.setattr(
        torch, "compile", lambda model, **kwargs: real_compile(model, backend=recording_backend)
    )
    seq_len = 8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # autocast("cuda") without CUDA is disabled: float32 here
        for micro_batch in (2, 4):
            loss_and_backward, _, _ = train_throughput.build_reference(seq_len)(1)
            tokens = torch.randint(0, 64, (micro_batch, seq_len + 1))
            loss_and_backward(tokens[:, :-1], tokens[:, 1:])
    assert symbolic == [False, False]


@pytest.mark.parametrize(
    "argv", [["--timed-steps", "0"], ["--warmup-steps", "-1"], ["--profile-steps", "-2"]]
)
def test_step_counts_that_time_nothing_are_refused_before_anything_runs(argv, monkeypatch, capsys):
    """--timed-steps 0 ended in an IndexError after the compile and the warm-up."""
    monkeypatch.setattr("sys.argv", ["train_throughput", *argv])
    with pytest.raises(SystemExit) as exit_info:
        train_throughput.main()
    assert exit_info.value.code == 2 and "--timed-steps must be at least 1" in capsys.readouterr().err


def test_micro_batch_compile_and_fp8_lists_read_the_values_the_trainer_takes_and_name_a_bad_one():
    values = train_throughput.parse_micro_batches("32, 64,auto")
    assert values == [32, 64, "auto"]
    base = {"model": {"depth": 1}, "data": {"train_dir": "d"}, "train": {"num_steps": 1}}
    for value in values:  # each is a device_batch_size the trainer's config takes
        config = {**base, "train": {"num_steps": 1, "device_batch_size": value}}
        assert RunConfig.from_dict(config).train.device_batch_size == value
    with pytest.raises(SystemExit, match="'0' is neither"):
        train_throughput.parse_micro_batches("32,0")
    with pytest.raises(SystemExit, match="'x' is neither"):
        train_throughput.parse_micro_batches("x")
    with pytest.raises(SystemExit, match=r"^--ref-micro-batch: '-1' is neither"):
        train_throughput.parse_micro_batches("-1", "--ref-micro-batch")
    compile_names = {"true": True, "false": False, "blocks": "blocks"}
    compiles = train_throughput.parse_choices("true, blocks,false", "--ours-compile", compile_names)
    assert compiles == [True, "blocks", False]
    with pytest.raises(SystemExit, match="--ours-compile: 'model' is not one of"):
        train_throughput.parse_choices("true,model", "--ours-compile", compile_names)
    for value in compiles:
        assert RunConfig.from_dict({**base, "compile": value}).compile == value
    booleans = {"true": True, "false": False}
    for value in train_throughput.parse_choices("false,true", "--ours-fp8-head", booleans):
        assert RunConfig.from_dict({**base, "fp8_head": value}).fp8_head is value
    run_dir = train_throughput.make_run_dir(
        argparse.Namespace(
            depth=1, seq_len=16, total_batch=64, gpt2_dir=None, warmup_steps=1, timed_steps=1,
            profile_steps=0,
        ),
        micro_batch=4,
        compile_="blocks",
        fp8_head=True,
    )  # fmt: skip
    try:
        config = RunConfig.from_json(run_dir / "config.json")
        assert config.compile == "blocks" and config.fp8_head is True
    finally:
        shutil.rmtree(run_dir.parent)


def test_breakdown_matmul_floor_covers_every_matmul_of_the_flop_count():
    from benchmarks import train_breakdown
    from nanogpt.model import GPT, GPTConfig

    model = GPT(GPTConfig(depth=2, vocab_size=300, sequence_len=32, aspect_ratio=32, head_dim=16))
    tokens = 3 * 32
    shapes = train_breakdown.matmul_shapes(model, tokens)
    assert len(shapes) == 3 * (6 * 2 + 1)  # q, k, v, proj, fc, mlp proj per layer, and lm_head
    assert train_breakdown.matmul_flops(shapes) == 6 * model.num_scaling_params() * tokens


def test_breakdown_matmul_floor_uses_the_layouts_of_a_linear_layers_three_matmuls():
    from benchmarks import train_breakdown
    from nanogpt.model import GPT, GPTConfig

    model = GPT(GPTConfig(depth=1, vocab_size=300, sequence_len=32, aspect_ratio=32, head_dim=16))
    tokens = 24
    weight = model.lm_head.weight.detach()
    x = torch.randn(tokens, weight.size(1))
    grad = torch.randn(tokens, weight.size(0))
    # What F.linear's forward and backward multiply: x @ W.T, g @ W and g.T @ x (the lm_head's come last).
    real = [(x, weight.t()), (grad, weight), (grad.t(), x)]
    floor = train_breakdown.matmul_shapes(model, tokens)[-3:]
    for (a, b), mm in zip(real, floor, strict=True):
        floor_a, floor_b = train_breakdown.matmul_operands(mm, torch.device("cpu"), torch.float32)
        assert (floor_a.shape, floor_a.stride()) == (a.shape, a.stride())
        assert (floor_b.shape, floor_b.stride()) == (b.shape, b.stride())


def test_breakdown_timing_divides_back_to_back_calls():
    from benchmarks import train_breakdown

    calls = []
    seconds = train_breakdown.timed(
        lambda: (calls.append(1), time.sleep(0.002)), torch.device("cpu"), reps=3, warmup=1, calls=5
    )
    assert len(calls) == 1 + 3 * 5
    assert 0.002 <= seconds < 0.004  # one call's time, not five


def test_breakdown_sigmoid_softcap_candidate_is_the_same_function_and_gradient():
    from benchmarks import train_breakdown
    from nanogpt.model import GPT, GPTConfig

    model = GPT(GPTConfig(depth=1, vocab_size=300, sequence_len=16, aspect_ratio=32, head_dim=16))
    cap = model.config.logit_softcap
    # Far past the cap both ways (exp overflows to inf there), around zero, and in between.
    logits = torch.tensor([-1e4, -200.0, -3 * cap, -1.0, -1e-3, 0.0, 1e-3, 1.0, 3 * cap, 200.0, 1e4])
    logits = torch.cat([logits, torch.randn(1000) * 20]).requires_grad_()
    expected = model._softcap(logits)
    (expected_grad,) = torch.autograd.grad(expected.sum(), logits)
    got = train_breakdown.sigmoid_softcap(model, logits)
    (got_grad,) = torch.autograd.grad(got.sum(), logits)
    assert got.isfinite().all() and got_grad.isfinite().all()
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(got_grad, expected_grad, rtol=0, atol=1e-5)
    assert got[0] == -cap and got[10] == cap  # -1e4 and 1e4


def test_breakdown_fused_qkv_candidate_computes_the_same_attention():
    from benchmarks import train_breakdown
    from nanogpt.model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(depth=1, vocab_size=300, sequence_len=16, aspect_ratio=32, head_dim=16))
    model.init_weights()
    attn = model.transformer.h[0].attn
    for linear in (attn.c_q, attn.c_k, attn.c_v, attn.c_proj):
        torch.nn.init.normal_(linear.weight, std=0.2)  # c_proj starts at zero: give it a signal
    x = torch.randn(2, 16, attn.n_head * attn.head_dim)
    cos_sin = model.cos[:, :16], model.sin[:, :16]
    expected = attn(x, cos_sin)
    fused = train_breakdown.fused_qkv_forward(attn, x, cos_sin)
    assert expected.abs().mean() > 0.01
    torch.testing.assert_close(fused, expected)


def test_throughput_head_variants_patch_the_model_for_the_run_only():
    from benchmarks import train_breakdown
    from nanogpt.model import GPT, GPTConfig

    model = GPT(GPTConfig(depth=1, vocab_size=300, sequence_len=16, aspect_ratio=32, head_dim=16))
    model.init_weights()
    x = torch.randn(2, 16, model.config.n_embd)
    targets = torch.randint(0, 300, (2, 16))
    original_head, original_softcap = GPT.__dict__["head"], GPT.__dict__["_softcap"]
    exact = model.head(x, targets)
    with train_throughput.head_variant("sigmoid"):
        assert GPT._softcap is train_breakdown.sigmoid_softcap and GPT.head is original_head
        torch.testing.assert_close(model.head(x, targets), exact)
    for name in ("default", "unfused"):  # the config's fused_loss (auto, false) does it; nothing patched
        with train_throughput.head_variant(name):
            assert GPT.head is original_head and GPT._softcap is original_softcap
    with train_throughput.head_variant("fused-compiled"):
        assert GPT.head is not original_head
        with torch.no_grad():  # evaluation keeps the model's own head
            assert torch.equal(model.head(x, targets), exact)
            assert torch.equal(model.head(x), original_head(model, x))
    with pytest.raises(RuntimeError, match="boom"), train_throughput.head_variant("sigmoid"):
        raise RuntimeError("boom")
    assert GPT.__dict__["head"] is original_head and GPT.__dict__["_softcap"] is original_softcap
    with pytest.raises(SystemExit, match="--ours-head: 'liger' is not one of"):
        train_throughput.parse_choices("unfused,liger", "--ours-head", {n: n for n in train_throughput.HEADS})


def test_throughput_variants_are_every_combination_and_refuse_fp8_head_with_a_fused_head():
    args = argparse.Namespace(
        ours_compile="true,blocks", ours_fp8_head="false", ours_attention="default",
        ours_head="default,fused-compiled", ours_micro_batch="32", ours_mlp="default",
        ours_weight_copies="auto",
    )  # fmt: skip
    variants = train_throughput.ours_variants(args)
    assert [(v.compile, v.head) for v in variants] == [
        (True, "default"), (True, "fused-compiled"), ("blocks", "default"), ("blocks", "fused-compiled")
    ]  # fmt: skip
    args.ours_fp8_head = "true"
    with pytest.raises(SystemExit, match="--ours-fp8-head true with --ours-head fused-compiled"):
        train_throughput.ours_variants(args)
    # auto (the trainer's default) leaves that head alone: it trains no fused loss, so no FP8 head either.
    args.ours_fp8_head = "auto,false"
    assert [v.fp8_head for v in train_throughput.ours_variants(args)] == ["auto", "auto", False, False] * 2
    args.ours_fp8_head = "true"
    args.ours_head = "fp8-grads"  # measured and removed on 2026-12-07: no longer a choice
    with pytest.raises(SystemExit, match="fp8-grads"):
        train_throughput.ours_variants(args)
    args.ours_head = "default"
    assert len(train_throughput.ours_variants(args)) == 2
    args.ours_fp8_head, args.ours_mlp = "false", "default,unfused"
    assert [v.mlp for v in train_throughput.ours_variants(args)] == ["default", "unfused"] * 2
    args.ours_mlp, args.ours_weight_copies = "default", "true,false"
    assert [v.weight_copies for v in train_throughput.ours_variants(args)] == [True, False] * 2
    args.ours_weight_copies = "sometimes"
    with pytest.raises(SystemExit, match="--ours-weight-copies: 'sometimes' is not one of"):
        train_throughput.ours_variants(args)
    args.ours_weight_copies = "auto"
    args.ours_mlp = "fastest,triton"
    with pytest.raises(SystemExit, match="--ours-mlp: 'triton' is not one of"):
        train_throughput.ours_variants(args)
    args.ours_head = "liger"
    with pytest.raises(SystemExit, match="--ours-head: 'liger' is not one of"):
        train_throughput.ours_variants(args)


def test_the_fastest_mlp_variant_patches_the_measured_launches_in_and_out(tmp_path):
    pytest.importorskip("triton")
    from nanogpt import fused_mlp

    def row(direction, ms, persistent=False, error=None, relative_error=2e-3):
        return {
            "direction": direction,
            "tiles": [128, 128, 64, 8, 3, 4, persistent, False],
            "ms": ms,
            "error": error,
            "relative_error": None if error else relative_error,
        }

    # Not chosen: a launch that failed, and launches that computed something else (off, or NaN).
    rows = [
        row("forward", 0.4), row("forward", 0.3, persistent=True), row("forward", 0.1, relative_error=0.07),
        row("backward", 0.2), row("backward", 0.05, error="OutOfResources"),
        row("backward", 0.1, relative_error=float("nan")),
    ]  # fmt: skip
    measured = tmp_path / "mlp.json"
    measured.write_text(json.dumps({"results": rows}))
    before = fused_mlp.TILES, fused_mlp.BACKWARD_TILES

    def launches():
        return fused_mlp.TILES, fused_mlp.BACKWARD_TILES

    # The fastest of each direction that ran.
    plain = fused_mlp.Tiles(128, 128, 64, 8, 3, 4)
    fastest = train_throughput.fastest_launches(measured)
    assert fastest == (plain._replace(persistent=True), plain)
    with train_throughput.mlp_variant(fastest):
        assert launches() == fastest
    assert launches() == before
    with train_throughput.mlp_variant(None):
        assert launches() == before
    with pytest.raises(SystemExit, match="--ours-mlp fastest needs --mlp-tiles-from"):
        train_throughput.fastest_launches(None)


def test_the_fp8_head_quality_benchmark_trains_both_heads_per_seed_and_compares_their_validation(tmp_path):
    import math

    from trainer_fixtures import make_data_dir

    from benchmarks import fp8_head_quality

    data_dir = make_data_dir(tmp_path / "data")
    args = [
        "--data-dir", str(data_dir), "--depth", "1", "--aspect-ratio", "32", "--head-dim", "16",
        "--sequence-len", "32", "--steps", "4", "--total-batch", "256", "--eval-every", "2",
        "--val-tokens", "512", "--seeds", "0,1", "--device", "cpu", "--compile", "false",
        "--heads", "bf16,bf16-rerun,fp8", "--out", str(tmp_path / "runs"), "--json", str(tmp_path / "q.json"),
    ]  # fmt: skip
    result = fp8_head_quality.main(args)
    assert json.loads((tmp_path / "q.json").read_text())["runs"] == json.loads(json.dumps(result["runs"]))
    assert [run["seed"] for run in result["runs"]] == [0, 1]
    for run in result["runs"]:
        bf16, fp8 = run["bf16_head"], run["fp8_head"]
        assert list(bf16["val"]) == list(fp8["val"]) == [2, 4]
        # The FP8 head trains its own weights (not the bf16 run's), close to them.
        assert bf16["val"] != fp8["val"]
        for step, loss in bf16["val"].items():
            assert math.isfinite(loss) and abs(fp8["val"][step] / loss - 1) < 0.05
        assert bf16["tok_per_s"] > 0 and fp8["tok_per_s"] > 0
        # The same run again: on the CPU, the same arithmetic in the same order.
        assert run["bf16-rerun_head"]["val"] == bf16["val"]
    # Over the seeds: each head's mean change, and the bf16 head's spread from seed to seed.
    for step, row in result["over_seeds"].items():
        bf16_losses = [run["bf16_head"]["val"][step] for run in result["runs"]]
        assert row["bf16_range"] == max(bf16_losses) - min(bf16_losses) > 0
        assert row["bf16-rerun"] == 0
        changes = [run["fp8_head"]["val"][step] - run["bf16_head"]["val"][step] for run in result["runs"]]
        assert row["fp8"] == pytest.approx(sum(changes) / 2) and row["fp8"] != 0
    started = json.loads((tmp_path / "runs/seed1-fp8-head/events.jsonl").read_text().splitlines()[0])
    assert started["config"]["fp8_head"] is True and started["config"]["seed"] == 1
    # The runs are kept: a second call into the same directory refuses rather than mixing them.
    with pytest.raises(SystemExit, match="seed0-bf16-head: already exists"):
        fp8_head_quality.main(args)
    with pytest.raises(SystemExit):
        fp8_head_quality.main([*args[:-4], "--seeds", "zero", "--out", str(tmp_path / "other")])
    with pytest.raises(SystemExit):  # bf16 first: the reference the others are compared with
        fp8_head_quality.main([*args[:-4], "--heads", "fp8,bf16", "--out", str(tmp_path / "other")])
    with pytest.raises(SystemExit):  # the candidate fp8-grads head: measured and removed on 2026-12-07
        fp8_head_quality.main([*args[:-4], "--heads", "bf16,fp8-grads", "--out", str(tmp_path / "other")])
