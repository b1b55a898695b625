"""Runs benchmarks/fused_head_loss.py's kernel under the Triton interpreter on the CPU beside GPT.head and
prints, as JSON, how far its loss and gradients are from the head's (see test_fused_head_loss.py).

TRITON_INTERPRET=1 must be in the environment before triton is imported, hence a process of its own.
"""

import argparse
import contextlib
import json
import shutil
import sys
from unittest import mock

import torch

from benchmarks.fused_head_loss import FusedHeadLoss, fused_head
from nanogpt.model import GPT, GPTConfig


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return (
        (got.float() - expected.float()).abs().max() / expected.float().abs().max().clamp_min(1e-12)
    ).item()


def trainer_losses(head: str) -> dict[str, list[float]]:
    """The step and validation losses of a small CPU run of the trainer with `head` patched in as
    `train_throughput --ours-head` does it (2 micro-batches a step, so the upstream gradient is a scale)."""
    from benchmarks import train_throughput
    from nanogpt import train

    args = argparse.Namespace(
        depth=1, seq_len=16, total_batch=64, gpt2_dir=None, warmup_steps=1, timed_steps=3, profile_steps=0
    )
    run_dir = train_throughput.make_run_dir(args, micro_batch=2, compile_=False)
    kernel_calls = mock.patch.object(FusedHeadLoss, "apply", wraps=FusedHeadLoss.apply)
    try:
        with train_throughput.head_variant(head), kernel_calls as apply:
            assert train.run(run_dir / "config.json") == 0
        events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    finally:
        shutil.rmtree(run_dir.parent)
    return {
        "steps": [e["loss"] for e in events if e["kind"] == "step"],
        "val": [e["val_loss"] for e in events if e["kind"] == "val"],
        "kernel_calls": apply.call_count,
    }


def main() -> None:
    if sys.argv[1:] == ["trainer"]:
        json.dump({head: trainer_losses(head) for head in ("default", "fused")}, sys.stdout)
        return
    results = []
    for cap in (15.0, None):
        torch.manual_seed(0)
        # vocab 300 pads to 320: 20 padding columns, and blocks of 64 end inside them.
        model = GPT(GPTConfig(depth=1, vocab_size=300, sequence_len=16, aspect_ratio=32, head_dim=16,
                              logit_softcap=cap))  # fmt: skip
        model.init_weights()
        torch.nn.init.normal_(model.lm_head.weight, std=1.0)  # logits well past the cap, both ways
        x = torch.randn(3, 16, 32, requires_grad=True)
        targets = torch.randint(0, 300, (3, 16))
        targets[0, :5] = -1  # ignored positions
        targets[2, :] = -1  # a sequence with nothing to learn: loss 0, gradients 0
        targets[1, 0], targets[1, 1] = 0, 299  # the first and the last real token
        for autocast in (False, True):
            for reduction in ("sum", "mean", "none"):
                for block, num_warps in ((64, 1), (512, 2)):  # 5 iterations a row, or one past its end
                    context = (
                        torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
                    )
                    weights = torch.rand(3, 16) if reduction == "none" else torch.tensor(1.0)
                    with context:
                        expected = model.head(x, targets, reduction=reduction)
                        got = fused_head(
                            model, x, targets, reduction=reduction, block=block, num_warps=num_warps
                        )
                    wanted = (x, model.lm_head.weight)
                    expected_grads = torch.autograd.grad((expected * weights).sum(), wanted)
                    got_grads = torch.autograd.grad((got * weights).sum(), wanted)
                    results.append({
                        "cap": cap, "autocast": autocast, "reduction": reduction, "block": block,
                        "loss": relative_error(got, expected),
                        "grad_x": relative_error(got_grads[0], expected_grads[0]),
                        "grad_w": relative_error(got_grads[1], expected_grads[1]),
                        "ignored_grad_x": got_grads[0][2].abs().max().item(),
                        "finite": bool(got.isfinite().all() and all(g.isfinite().all() for g in got_grads)),
                        "loss_dtype": str(got.dtype), "grad_w_dtype": str(got_grads[1].dtype),
                    })  # fmt: skip
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
