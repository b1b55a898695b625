"""benchmarks/generate_throughput.py works end to end: its --tiny mode on the CPU times every way to
generate and finds the cached paths' greedy tokens equal to full recompute's (in float32, exactly)."""

import json

import pytest
import torch

from benchmarks import generate_throughput


def test_the_tiny_run(tmp_path, capsys):
    torch.set_num_threads(1)
    out = tmp_path / "generate.json"
    report = generate_throughput.main(["--tiny", "--json", str(out)])
    assert json.loads(out.read_text())["results"] == report["results"]
    methods = ["recompute", "kv-cache", "kv-cache, static cache (eager)"]
    assert [(r["batch_size"], r["method"]) for r in report["results"]] == [
        (b, m) for b in (1, 2) for m in methods
    ]
    assert all(r["tokens_per_s"] > 0 and r["new_tokens"] == 16 for r in report["results"])
    assert [r["vs_recompute"] for r in report["results"] if r["method"] == "recompute"] == [1.0, 1.0]
    agreement = report["greedy_agreement"]
    assert agreement["agreeing_prefix"] == {b: {m: 16 for m in methods[1:]} for b in ("1", "2")}
    printed = capsys.readouterr().out
    assert "| 2 | kv-cache, static cache (eager) |" in printed and "the 5× target" in printed


def test_the_timed_model_is_a_bf16_copy_and_the_checked_one_stays_float32():
    args = generate_throughput.parse_args(["--tiny"])
    check_model = generate_throughput.build_model(args, torch.device("cpu"))
    timed = generate_throughput.to_bfloat16(check_model)
    assert {p.dtype for p in check_model.parameters()} == {torch.float32}
    assert {p.dtype for p in timed.parameters()} == {torch.bfloat16}
    for (name, p32), p16 in zip(check_model.named_parameters(), timed.parameters(), strict=True):
        assert torch.equal(p16, p32.to(torch.bfloat16)), name


def test_recompute_runs_the_head_at_the_last_position_only_as_nanogpts_generate_does():
    """The reference does what generation without a cache does: the blocks over the whole sequence at every
    step, the lm_head (and its float32 logits) at the last position only, not at every position."""
    args = generate_throughput.parse_args(["--tiny"])
    model = generate_throughput.build_model(args, torch.device("cpu"))
    head_rows = []
    hook = model.lm_head.register_forward_hook(
        lambda module, inputs, output: head_rows.append(inputs[0].shape)
    )
    prompts = torch.randint(0, args.vocab_size, (2, 5), generator=torch.Generator().manual_seed(0))
    greedy = dict(temperature=0.0, top_k=None, top_p=None, seed=0)
    try:
        tokens = generate_throughput.recompute(model, prompts, 4, **greedy)
    finally:
        hook.remove()
    assert head_rows == [torch.Size([2, 1, model.config.n_embd])] * 4
    assert tokens == generate_throughput.cached(model, prompts, 4, **greedy)


@pytest.mark.parametrize("argv", [["--repeats", "0"], ["--new-tokens", "0"], ["--batch-sizes", "1,0"]])
def test_counts_that_time_nothing_are_refused(argv, capsys):
    """--repeats 0 ended in a TypeError after building the model."""
    with pytest.raises(SystemExit) as exit_info:
        generate_throughput.parse_args(argv)
    assert exit_info.value.code == 2 and "must be at least 1" in capsys.readouterr().err
