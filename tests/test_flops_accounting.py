"""The FLOP accounting behind MFU, counted independently by torch's FlopCounterMode on the CPU (forward and
backward at the full sequence length), for our model and for the throughput benchmark's nanoGPT reference.

The convention both follow (nanoGPT's estimate_mfu, PaLM appendix B): per token, 6·N for the matmul
weights, plus 12·n_layer·n_embd·T for attention's two products over all T keys, the causal mask not
halving them. torch counts every matmul at 2·m·n·k, causal attention's forward over all keys as well, and
its backward at 2.5× the forward (the scores recomputed), so the attention term is 3× the counted forward.
"""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.reference_gpt2 import RefConfig, RefGPT
from nanogpt.model import GPT, GPTConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

BATCH = 2
TINY = dict(depth=2, vocab_size=100, sequence_len=16, aspect_ratio=16, head_dim=16)  # n_embd 32, 2 heads


def counted_flops(model: torch.nn.Module, vocab_size: int, seq_len: int) -> tuple[int, int]:
    """(matmul FLOPs, attention forward FLOPs) that torch counts for one forward and backward of a batch."""
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, vocab_size, (BATCH, seq_len), generator=gen)
    targets = torch.randint(0, vocab_size, (BATCH, seq_len), generator=gen)
    with FlopCounterMode(display=False) as counter:
        model(idx, targets).backward()
    counts = {str(op).split(".")[-1]: n for op, n in counter.get_flop_counts()["Global"].items()}
    attention = {op: n for op, n in counts.items() if "attention" in op}
    matmuls = {op: n for op, n in counts.items() if op not in attention}
    assert set(matmuls) <= {"mm", "addmm", "bmm"}, f"an op counted that the accounting leaves out: {counts}"
    attention_forward = sum(n for op, n in attention.items() if "backward" not in op)
    return sum(matmuls.values()), attention_forward


@pytest.mark.parametrize(
    "overrides",
    [
        dict(),
        dict(mlp="gelu", logit_softcap=None),
        dict(vocab_size=70, head_dim=8),  # padded to 128: the lm_head multiplies 58 padding columns too
        dict(depth=3, aspect_ratio=8, sequence_len=24),  # n_embd 24 rounds up to 32
    ],
)
def test_estimate_flops_is_the_counted_matmuls_and_full_causal_attention(overrides):
    config = GPTConfig(**{**TINY, **overrides})
    torch.manual_seed(0)
    model = GPT(config)
    model.init_weights()
    tokens = BATCH * config.sequence_len
    matmuls, attention_forward = counted_flops(model, config.vocab_size, config.sequence_len)

    # Every matmul (lm_head at its padded size) at 6 FLOPs per weight and token; the embedding lookup none.
    lm_head = config.padded_vocab_size * config.n_embd
    assert model.num_scaling_params() == sum(p.numel() for p in model.param_groups()["matrix"]) + lm_head
    assert matmuls == 6 * model.num_scaling_params() * tokens
    # Causal attention counted over all T keys (not halved): 4·n_embd·T per layer and token forward.
    full = 4 * config.n_layer * config.n_embd * config.sequence_len
    assert attention_forward == full * tokens
    assert model.estimate_flops() * tokens == matmuls + 3 * attention_forward


def test_reference_flops_are_nanogpts_formula_on_the_counted_matmuls():
    """nanoGPT's 6·N counts every parameter but the position embedding: the tied wte/lm_head once, and the
    biases and LayerNorm weights, which do no matmul, at 6 FLOPs each too."""
    config = RefConfig(block_size=16, vocab_size=128, n_layer=2, n_head=2, n_embd=32)
    torch.manual_seed(0)
    model = RefGPT(config)
    tokens = BATCH * config.block_size
    matmuls, attention_forward = counted_flops(model, config.vocab_size, config.block_size)

    matrices = [p for p in model.parameters() if p.ndim == 2 and p is not model.wpe.weight]
    vectors = [p for p in model.parameters() if p.ndim < 2]
    assert matmuls == 6 * sum(p.numel() for p in matrices) * tokens  # the tied lm_head counted once
    assert attention_forward == 4 * config.n_layer * config.n_embd * config.block_size * tokens
    non_matmul = 6 * sum(p.numel() for p in vectors)
    assert model.flops_per_token() * tokens == matmuls + 3 * attention_forward + non_matmul * tokens


def test_ours_and_the_reference_count_flops_the_same_way_at_the_benchmarks_shapes():
    """Depth 12 (n_embd 768, sequence 1024, GPT-2's vocabulary padded to 50,304) against GPT-2 124M: the same
    attention term and the same matmul weights; the reference's flops per token are higher only by its
    121,344 biases and LayerNorm weights (0.085%), so neither MFU is inflated against the other."""
    with torch.device("meta"):
        ours = GPT(GPTConfig(depth=12, vocab_size=50257, sequence_len=1024))
        reference = RefGPT(RefConfig(block_size=1024))
    assert ours.config.padded_vocab_size == reference.config.vocab_size == 50304
    attention = 12 * 12 * 768 * 1024
    assert ours.estimate_flops() - 6 * ours.num_scaling_params() == attention
    vectors = sum(p.numel() for p in reference.parameters() if p.ndim < 2)
    assert vectors == 121_344
    assert reference.flops_per_token() - ours.estimate_flops() == 6 * vectors
    assert ours.estimate_flops() == 854_654_976
    assert reference.flops_per_token() == 855_383_040
