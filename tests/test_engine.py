"""nanogpt.engine: KV-cached decoding equals full recompute; sampling and generate semantics."""

import math
from collections import Counter

import pytest
import torch

from nanogpt.engine import Decoder, KVCache, StaticKVCache, generate, sample_next_token
from nanogpt.model import GPT, GPTConfig

VOCAB = 100


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def model() -> GPT:
    """A tiny model with random weights everywhere (init zeroes c_proj, which would hide cache bugs)."""
    torch.manual_seed(0)
    config = GPTConfig(depth=2, vocab_size=VOCAB, sequence_len=48, aspect_ratio=16, head_dim=16)
    model = GPT(config)
    model.init_weights()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 1.0 if p is model.transformer.wte.weight else 1.0 / math.sqrt(p.size(-1)))
    return model


def prompt(length: int, seed: int) -> list[int]:
    return torch.randint(0, VOCAB, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


@torch.no_grad()
def full_logits(model: GPT, tokens: list[int]) -> torch.Tensor:
    return model(torch.tensor([tokens]))[0, :, :VOCAB]  # (T, vocab)


@torch.no_grad()
def greedy_by_recompute(model: GPT, tokens: list[int], num_new: int) -> list[int]:
    tokens = list(tokens)
    for _ in range(num_new):
        tokens.append(int(full_logits(model, tokens)[-1].argmax()))
    return tokens[-num_new:]


# --- the cache ------------------------------------------------------------------------------------


@torch.no_grad()
def test_incremental_logits_equal_full_recompute(model):
    tokens = prompt(30, seed=1)
    expected = full_logits(model, tokens)
    cache = KVCache.for_model(model, batch_size=1, max_len=30)
    chunks = [(0, 9), (9, 16), *((t, t + 1) for t in range(16, 30))]  # prefill, a chunk, then one at a time
    for start, end in chunks:
        logits = model(torch.tensor([tokens[start:end]]), kv_cache=cache)[0, :, :VOCAB]
        torch.testing.assert_close(logits, expected[start:end], atol=1e-5, rtol=1e-5)
    assert cache.pos == 30


@torch.no_grad()
def test_left_padded_batch_gives_each_row_its_own_logits(model):
    prompts = [prompt(12, seed=2), prompt(5, seed=3), prompt(9, seed=4)]
    continuations = [prompt(4, seed=5 + i) for i in range(3)]
    longest = max(map(len, prompts))
    pad_lengths = [longest - len(p) for p in prompts]
    cache = KVCache.for_model(model, batch_size=3, max_len=longest + 4, pad_lengths=pad_lengths)
    padded = torch.tensor([[0] * n + p for n, p in zip(pad_lengths, prompts, strict=True)])
    batched = [model(padded, kv_cache=cache)[:, -1:, :VOCAB]]
    for step in range(4):
        batched.append(model(torch.tensor([[c[step]] for c in continuations]), kv_cache=cache)[:, :, :VOCAB])
    batched = torch.cat(batched, dim=1)  # (3, 5, vocab): logits after the prompt and after each new token
    for row, (p, c) in enumerate(zip(prompts, continuations, strict=True)):
        alone = full_logits(model, p + c)[len(p) - 1 :]
        torch.testing.assert_close(batched[row], alone, atol=1e-4, rtol=1e-4)


def test_cache_mask_hides_padding_and_the_future():
    cache = KVCache(num_layers=1, batch_size=2, num_heads=1, head_dim=2, max_len=6, pad_lengths=[0, 2])
    mask = cache.attn_mask(4)[:, 0].int()  # (B, T, max_len): positions not written yet are masked too
    assert mask[0].tolist() == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
    ]
    # Row 1: positions 0 and 1 are padding; a padding query sees only itself.
    assert mask[1].tolist() == [
        [1, 0, 0, 0, 0, 0],
        [0, 1, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0],
        [0, 0, 1, 1, 0, 0],
    ]
    cache.advance(4)
    assert cache.attn_mask(1)[1, 0].int().tolist() == [[0, 0, 1, 1, 1, 0]]
    with pytest.raises(ValueError, match="KV cache full"):
        cache.attn_mask(3)


# --- sampling -------------------------------------------------------------------------------------


def test_sample_next_token_is_argmax_at_temperature_zero_and_with_top_k_one():
    logits = torch.randn(5, VOCAB, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sample_next_token(logits, temperature=0.0), logits.argmax(-1))
    assert torch.equal(sample_next_token(logits, temperature=1.0, top_k=1), logits.argmax(-1))


@pytest.mark.parametrize("temperature", [1e-300, 1e-45, 1e-7])
def test_a_tiny_temperature_is_greedy(temperature):
    logits = torch.randn(5, VOCAB, generator=torch.Generator().manual_seed(0)) * 20
    got = sample_next_token(logits, temperature=temperature, top_p=0.9, generator=torch.Generator())
    assert torch.equal(got, logits.argmax(-1))


@pytest.mark.parametrize("top_p", [1e-300, 1e-45, 1e-9])
def test_a_tiny_top_p_keeps_the_most_likely_token(top_p):
    logits = torch.randn(5, VOCAB, generator=torch.Generator().manual_seed(0))
    got = sample_next_token(logits, temperature=1.0, top_p=top_p, generator=torch.Generator().manual_seed(1))
    assert torch.equal(got, logits.argmax(-1))


def test_top_k_and_top_p_restrict_the_support():
    probs = torch.tensor([0.05, 0.5, 0.15, 0.3])
    logits = probs.log().expand(4000, 4)
    gen = torch.Generator().manual_seed(0)
    top2 = Counter(sample_next_token(logits, top_k=2, generator=gen).tolist())
    assert set(top2) == {1, 3}
    # top_p 0.7: 0.5 alone is short of it, 0.5 + 0.3 reaches it, so tokens 1 and 3, renormalised.
    nucleus = Counter(sample_next_token(logits, top_p=0.7, generator=gen).tolist())
    assert set(nucleus) == {1, 3}
    assert nucleus[1] / 4000 == pytest.approx(0.5 / 0.8, abs=0.03)
    everything = Counter(sample_next_token(logits, generator=gen).tolist())
    assert set(everything) == {0, 1, 2, 3}
    assert everything[0] / 4000 == pytest.approx(0.05, abs=0.015)


@torch.no_grad()
def test_static_cache_logits_equal_full_recompute_and_it_can_be_reused(model):
    """The CUDA-graph-ready cache: positions on the device, attention over every position, reset in place."""
    cache = StaticKVCache(
        num_layers=2, batch_size=1, num_heads=model.config.n_head, head_dim=16, max_len=48, device="cpu"
    )
    for seed in (20, 21):  # the second sequence reuses the cache, stale keys and values included
        tokens = prompt(30, seed=seed)
        expected = full_logits(model, tokens)
        cache.reset([0])
        for start, end in [(0, 9), (9, 16), *((t, t + 1) for t in range(16, 30))]:
            logits = model(torch.tensor([tokens[start:end]]), kv_cache=cache)[0, :, :VOCAB]
            torch.testing.assert_close(logits, expected[start:end], atol=1e-5, rtol=1e-5)
        assert cache.pos == 30 and int(cache.pos_t) == 30


def test_decoder_generates_what_the_dynamic_cache_generates(model):
    prompts = [prompt(7, seed=22), prompt(3, seed=23), prompt(11, seed=24)]
    expected = list(generate(model, prompts, max_new_tokens=12, temperature=0.0))
    decoder = Decoder(model, batch_size=3)
    assert not decoder.captured  # no CUDA graph on the CPU: the same step, eagerly
    for _ in range(2):  # reused
        assert list(generate(model, prompts, max_new_tokens=12, temperature=0.0, decoder=decoder)) == expected
    sampled = lambda d: list(generate(model, prompts, max_new_tokens=12, temperature=1.0, seed=5, decoder=d))
    assert sampled(decoder) == sampled(None)
    with pytest.raises(ValueError, match="decoder is for a batch of 3"):
        generate(model, prompts[:2], max_new_tokens=4, decoder=decoder)
    with pytest.raises(ValueError, match="CUDA graph needs a CUDA model"):
        Decoder(model, batch_size=1, cuda_graph=True)


def test_batched_decoding_runs_one_fixed_shape_one_token_step_per_new_token(model, monkeypatch):
    """Each step of a batch of prompts of different lengths feeds one token per row through one forward,
    and every step's attention has the same shapes. Keys growing by one position a step made every step a
    new attention shape, which on an H200 cost more than recomputing the whole sequence (a GPU backend
    builds per shape); counting shapes catches that on the CPU."""
    import nanogpt.model

    forwards, heads, attention = [], [], []
    trunk, head = GPT.trunk, GPT.head
    sdpa = nanogpt.model.F.scaled_dot_product_attention

    def counting_trunk(self, idx, *args, **kwargs):
        forwards.append(tuple(idx.shape))
        return trunk(self, idx, *args, **kwargs)

    def counting_head(self, x, *args, **kwargs):
        heads.append(tuple(x.shape[:2]))
        return head(self, x, *args, **kwargs)

    def recording_sdpa(q, k, v, **kwargs):
        mask = kwargs.get("attn_mask")
        attention.append((tuple(q.shape), tuple(k.shape), None if mask is None else tuple(mask.shape)))
        return sdpa(q, k, v, **kwargs)

    monkeypatch.setattr(GPT, "trunk", counting_trunk)
    monkeypatch.setattr(GPT, "head", counting_head)
    monkeypatch.setattr(nanogpt.model.F, "scaled_dot_product_attention", recording_sdpa)
    prompts = [prompt(9, seed=30), prompt(2, seed=31), prompt(5, seed=32)]
    steps = list(generate(model, prompts, max_new_tokens=30, temperature=0.0))
    assert len(steps) == 30
    assert forwards == [(3, 9)] + [(3, 1)] * 29  # one prefill, then one token per row per step
    assert heads == [(3, 1)] * 30  # logits at the last position only, the prefill's too
    per_forward = model.config.n_layer
    assert len(attention) == per_forward * 30
    decode_shapes = set(attention[per_forward:])
    assert len(decode_shapes) == 1, decode_shapes
    (q_shape, k_shape, mask_shape) = decode_shapes.pop()
    assert q_shape[2] == 1 and mask_shape == (3, 1, 1, k_shape[2])
    assert k_shape[2] >= 9 + 30 - 1  # the whole cache, written or not
    # The prefill attends over the same cache length, and a call of a nearby length shares the shapes.
    assert {a[1] for a in attention[:per_forward]} == {k_shape}
    attention.clear()
    list(generate(model, [p[:-1] for p in prompts], max_new_tokens=30, temperature=0.0))
    assert set(attention[per_forward:]) == {(q_shape, k_shape, mask_shape)}


# --- generate -------------------------------------------------------------------------------------


def test_greedy_generation_equals_argmax_of_full_recompute(model):
    prompts = [prompt(7, seed=10), prompt(3, seed=11)]
    rows = list(generate(model, prompts, max_new_tokens=10, temperature=0.0))
    assert len(rows) == 10
    for i, p in enumerate(prompts):
        assert [r[i] for r in rows] == greedy_by_recompute(model, p, 10)
    single = list(generate(model, prompts[1], max_new_tokens=10, temperature=0.0))
    assert single == [r[1] for r in rows]
    assert all(isinstance(t, int) for t in single)


def test_sampling_is_deterministic_with_a_seed(model):
    prompts = [prompt(6, seed=12), prompt(9, seed=13)]
    run = lambda seed: list(generate(model, prompts, max_new_tokens=15, temperature=1.0, seed=seed))
    first, again, other = run(7), run(7), run(8)
    assert first == again
    assert first != other
    assert all(0 <= t < VOCAB for row in first for t in row)


def test_a_stop_token_ends_its_row(model):
    prompts = [prompt(5, seed=14), prompt(8, seed=15)]
    free = list(generate(model, prompts, max_new_tokens=12, temperature=0.0))
    row0, row1 = [r[0] for r in free], [r[1] for r in free]
    stop = next(t for t in row0[2:] if t not in row1)  # a token that stops row 0 only
    cut = row0.index(stop) + 1
    stopped = list(generate(model, prompts, max_new_tokens=12, temperature=0.0, stop_tokens=[stop]))
    assert [r[0] for r in stopped] == row0[:cut] + [None] * (12 - cut)  # the stop token is yielded
    assert [r[1] for r in stopped] == row1
    single = list(generate(model, prompts[0], max_new_tokens=12, temperature=0.0, stop_tokens=[stop]))
    assert single == row0[:cut]  # one prompt: the iterator ends at the stop token


def test_nothing_to_generate(model):
    assert list(generate(model, prompt(4, seed=16), max_new_tokens=0)) == []


@pytest.mark.parametrize(
    ("prompt_tokens", "overrides", "message"),
    [
        ([], {}, "non-empty"),
        ([[1, 2], []], {}, "non-empty"),
        ([1, VOCAB], {}, "outside"),
        ([1, -1], {}, "outside"),
        ([1, 2], {"max_new_tokens": -1}, "max_new_tokens"),
        ([1, 2], {"temperature": -0.5}, "temperature"),
        ([1, 2], {"top_k": 0}, "top_k"),
        ([1, 2], {"top_p": 0.0}, "top_p"),
        ([1, 2], {"top_p": 1.5}, "top_p"),
        ([1, 2], {"stop_tokens": [VOCAB + 5]}, "stop_tokens"),
        ([1] * 40, {"max_new_tokens": 10}, "sequence_len 48"),
    ],
)
def test_bad_arguments_raise_at_the_call(model, prompt_tokens, overrides, message):
    with pytest.raises(ValueError, match=message):
        generate(model, prompt_tokens, **{"max_new_tokens": 4, **overrides})  # not iterated


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cached_decoding_under_bf16_autocast_on_gpu():
    torch.manual_seed(0)
    config = GPTConfig(depth=4, vocab_size=1000, sequence_len=256, aspect_ratio=64, head_dim=64)
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device="cuda")
    model.init_weights()
    with torch.no_grad():
        for p in model.param_groups()["matrix"]:
            p.normal_(0.0, 1.0 / math.sqrt(p.size(1)))
    tokens = torch.randint(0, 1000, (2, 64), device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        expected = model(tokens)[..., :1000]
        cache = KVCache.for_model(model, batch_size=2, max_len=64)
        assert cache.k.dtype == torch.bfloat16
        parts = [model(tokens[:, :40], kv_cache=cache)]
        parts += [model(tokens[:, t : t + 1], kv_cache=cache) for t in range(40, 64)]
        cached = torch.cat(parts, dim=1)[..., :1000]
        rel = (cached - expected).norm() / expected.norm()
        assert rel < 2e-2
        new = list(generate(model, [[1, 2, 3], [4, 5, 6, 7, 8]], max_new_tokens=20, temperature=0.0))
    assert len(new) == 20 and all(0 <= t < 1000 for row in new for t in row)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_decoder_generates_what_eager_decoding_generates():
    torch.manual_seed(0)
    config = GPTConfig(depth=4, vocab_size=1000, sequence_len=256, aspect_ratio=64, head_dim=64)
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device="cuda")
    model.init_weights()
    with torch.no_grad():
        for p in model.param_groups()["matrix"]:
            p.normal_(0.0, 1.0 / math.sqrt(p.size(1)))
        for p in model.parameters():
            p.data = p.data.to(torch.bfloat16)  # as the chat engine runs a model on a GPU
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    eager = list(generate(model, prompts, max_new_tokens=40, temperature=0.0, decoder=Decoder(model, 2)))
    decoder = Decoder(model, 2, cuda_graph=True)
    assert decoder.captured
    for _ in range(2):
        graphed = list(generate(model, prompts, max_new_tokens=40, temperature=0.0, decoder=decoder))
        assert graphed == eager
    sampled = lambda d: list(generate(model, prompts, max_new_tokens=40, temperature=1.0, seed=3, decoder=d))
    assert sampled(decoder) == sampled(Decoder(model, 2))
