"""Generation with a KV cache: `KVCache`, `sample_next_token` and the streaming `generate`.

The model's forward takes `kv_cache=`: it writes each layer's keys and values for the new tokens into the
cache, attends over everything cached so far, and advances the cache position. A prompt is prefilled in
one forward, then each step feeds the one token just sampled.

Attention always runs over all of a cache's positions, those not written yet masked out, so every step of
a generation has the same shapes. With keys that grew by one position a step, every step was a new
attention shape, and on a GPU a new shape can cost far more than the step itself: PyTorch's preferred
backend for masked attention on Hopper (cuDNN) builds a graph for each new shape. Batched eager decoding
then ran slower than recomputing the whole sequence (an H200: batch 16, 512 new tokens, > 150 s).

A batch of prompts of different lengths is left-padded so that every row's last prompt token sits at the
same position and the batch decodes in lockstep. The padding is masked out of attention, and with rotary
embeddings attention depends only on relative positions, so a row's logits do not depend on how much
padding it got (up to float rounding). Rows that have stopped keep decoding, unseen, until all have.

On a GPU, decoding one token at a time is bound by the launch of a few hundred small kernels per step,
not by arithmetic. `Decoder` removes that cost: it keeps a `StaticKVCache` of the model's whole context,
whose position lives on the device, so a one-token step has fixed shapes and never waits for the host;
the step is captured once in a CUDA graph and replayed (the static-cache pattern of gpt-fast and of
Hugging Face's StaticCache). The chat engine (nanogpt/chat_engine.py) keeps one per batch size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, overload

import torch

if TYPE_CHECKING:
    from nanogpt.model import GPT

_PAD_ID = 0  # any valid id: padded positions are masked out of attention and their outputs dropped
# generate() sizes its cache to a multiple of this many positions, so that calls of nearby lengths share
# attention shapes (and whatever a GPU backend builds per shape).
_CACHE_LEN_MULTIPLE = 64


class KVCache:
    """Keys and values of every layer for a batch of sequences, preallocated up to max_len positions.

    `pos` is the number of positions filled (the same for every row); row b's first `pad_lengths[b]`
    positions hold left padding, which no real token attends to. Attention runs over all max_len positions,
    those not written yet masked out: every one-token step has the same shapes, whatever its position.
    """

    def __init__(
        self,
        *,
        num_layers: int,
        batch_size: int,
        num_heads: int,
        head_dim: int,
        max_len: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        pad_lengths: Sequence[int] | None = None,
    ) -> None:
        shape = (num_layers, batch_size, num_heads, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)  # (L, B, nh, max_len, hs)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        pad_lengths = [0] * batch_size if pad_lengths is None else list(pad_lengths)
        if len(pad_lengths) != batch_size or not all(0 <= n < max_len for n in pad_lengths):
            raise ValueError(
                f"pad_lengths must be {batch_size} integers in [0, {max_len}), got {pad_lengths}"
            )
        self.pad_lengths = torch.tensor(pad_lengths, device=device)  # (B,)
        self.batch_size = batch_size
        self.max_len = max_len
        self.pos = 0
        self._arange = torch.arange(max_len, device=device)

    @classmethod
    def for_model(
        cls,
        model: GPT,
        *,
        batch_size: int,
        max_len: int,
        dtype: torch.dtype | None = None,
        pad_lengths: Sequence[int] | None = None,
    ) -> KVCache:
        """A cache shaped for `model`, on its device; dtype defaults to the autocast dtype when autocast
        is on (what the keys and values are computed in), else to the model's."""
        shape = _cache_shape(model, batch_size=batch_size, max_len=max_len, dtype=dtype)
        return cls(**shape, pad_lengths=pad_lengths)

    def positions(self, num_new: int) -> slice:
        """The positions of the next `num_new` tokens, to index per-position tables (the rotary angles)."""
        return slice(self.pos, self.pos + num_new)

    def _query_positions(self, num_new: int) -> torch.Tensor:
        return self._arange[self.pos : self.pos + num_new]

    def attn_mask(self, num_new: int) -> torch.Tensor:
        """Which keys the next `num_new` queries may attend to: (B, 1, num_new, max_len), True = attend.

        Query i (at position pos + i) sees keys at positions ≤ its own, except left padding; positions not
        written yet are beyond every query. A padding query sees itself only, so that no row of the
        softmax is empty (which would give NaN).
        """
        if self.pos + num_new > self.max_len:
            raise ValueError(f"KV cache full: {self.pos} + {num_new} positions exceed max_len {self.max_len}")
        q_pos = self._query_positions(num_new)[:, None]  # (T, 1)
        k_pos = self._arange[None, :]  # (1, max_len)
        not_padding = k_pos >= self.pad_lengths[:, None, None]  # (B, 1, max_len)
        mask = ((k_pos <= q_pos) & not_padding) | (k_pos == q_pos)  # (B, T, max_len)
        return mask[:, None]

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this layer's k, v (B, nh, T, hs) at positions pos..pos+T-1; return the whole cache's
        (B, nh, max_len, hs)."""
        end = self.pos + k.size(2)
        self.k[layer_idx, :, :, self.pos : end] = k
        self.v[layer_idx, :, :, self.pos : end] = v
        return self.k[layer_idx], self.v[layer_idx]

    def advance(self, num_new: int) -> None:
        """Called by the model once every layer has stored the new positions."""
        self.pos += num_new


class StaticKVCache(KVCache):
    """A KVCache whose position is also a device tensor, read only there.

    Every call the model makes on it (`positions`, `attn_mask`, `update`, `advance`) has shapes that do
    not depend on the position and reads the position only on the device, so a one-token step can be
    captured in a CUDA graph and replayed at every later position. The host copy `pos` serves the bounds
    checks; a replayed graph advances only the device copy, so whoever replays one advances `pos` itself.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.pos_t = torch.zeros((), dtype=torch.long, device=self.k.device)  # == pos, on the device

    def reset(self, pad_lengths: Sequence[int]) -> None:
        """Start a new batch of sequences in place (a captured graph keeps reading these same tensors).

        Old keys and values stay: a position is always written before any query may attend to it."""
        if len(pad_lengths) != self.batch_size or not all(0 <= n < self.max_len for n in pad_lengths):
            raise ValueError(
                f"pad_lengths must be {self.batch_size} integers in [0, {self.max_len}), got {pad_lengths}"
            )
        self.pad_lengths.copy_(torch.tensor(list(pad_lengths)))
        self.pos_t.zero_()
        self.pos = 0

    def positions(self, num_new: int) -> torch.Tensor:  # type: ignore[override]
        return self.pos_t + self._arange[:num_new]

    def _query_positions(self, num_new: int) -> torch.Tensor:
        return self.positions(num_new)

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, nh, T, hs) at the current positions; return all (B, nh, max_len, hs)."""
        positions = self.positions(k.size(2))
        self.k[layer_idx].index_copy_(2, positions, k.to(self.k.dtype))
        self.v[layer_idx].index_copy_(2, positions, v.to(self.v.dtype))
        return self.k[layer_idx], self.v[layer_idx]

    def advance(self, num_new: int) -> None:
        self.pos += num_new
        self.pos_t += num_new


class Decoder:
    """Prefill and one-token decode steps for a fixed batch size over a StaticKVCache of the model's whole
    context (sequence_len positions), reusable for one batch after another.

    With `cuda_graph=True` (a CUDA model) the decode step is captured once, here, in a CUDA graph and
    replayed: one launch instead of a few hundred per token. Without it the same step runs eagerly (on the
    CPU, or to compare). Not thread-safe: one generation at a time.
    """

    def __init__(self, model: GPT, batch_size: int, *, cuda_graph: bool = False) -> None:
        self.model = model
        self.batch_size = batch_size
        self.vocab_size = model.config.vocab_size
        self.cache = StaticKVCache(
            **_cache_shape(model, batch_size=batch_size, max_len=model.config.sequence_len, dtype=None)
        )
        device = self.cache.k.device
        self._next_ids = torch.zeros((batch_size, 1), dtype=torch.long, device=device)  # the graph's input
        self._graph: torch.cuda.CUDAGraph | None = None
        if cuda_graph:
            if device.type != "cuda":
                raise ValueError(f"Decoder: a CUDA graph needs a CUDA model, this one is on {device}")
            self._capture()

    @torch.no_grad()
    def _step_logits(self) -> torch.Tensor:
        return self.model(self._next_ids, kv_cache=self.cache)[:, -1, : self.vocab_size]

    def _capture(self) -> None:
        # Warm up on a side stream first (cuBLAS and attention pick their kernels and workspaces outside
        # the graph), as torch.cuda.graphs' documentation prescribes; then capture one step. The cache's
        # contents written meanwhile are junk, and reset() makes them unreachable.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                self._step_logits()
        torch.cuda.current_stream().wait_stream(stream)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._logits = self._step_logits()
        self.cache.reset([0] * self.batch_size)

    @property
    def captured(self) -> bool:
        return self._graph is not None

    @torch.no_grad()
    def prefill(self, idx: torch.Tensor, pad_lengths: Sequence[int]) -> torch.Tensor:
        """Start a batch: its left-padded prompts idx (B, T) in one eager forward; logits (B, vocab_size)."""
        self.cache.reset(pad_lengths)
        return _last_logits(self.model, idx, self.cache)

    def step(self, next_ids: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (B,); logits (B, vocab_size), valid until the next call."""
        if self.cache.pos + 1 > self.cache.max_len:
            raise ValueError(f"KV cache full: all {self.cache.max_len} positions are used")
        self._next_ids.copy_(next_ids.view(-1, 1))
        if self._graph is None:
            return self._step_logits()
        self._graph.replay()
        self.cache.pos += 1  # the graph advanced the device copy
        return self._logits


def _cache_shape(model: GPT, *, batch_size: int, max_len: int, dtype: torch.dtype | None) -> dict:
    """KVCache's constructor arguments for `model`, on its device; dtype defaults to the autocast dtype
    when autocast is on (what the keys and values are computed in), else to the model's."""
    weight = model.lm_head.weight
    if dtype is None:
        autocast = torch.is_autocast_enabled(weight.device.type)
        dtype = torch.get_autocast_dtype(weight.device.type) if autocast else weight.dtype
    config = model.config
    return dict(
        num_layers=config.n_layer,
        batch_size=batch_size,
        num_heads=config.n_head,
        head_dim=config.head_dim,
        max_len=max_len,
        device=weight.device,
        dtype=dtype,
    )


GREEDY_BELOW_TEMPERATURE = 1e-6


def sample_next_token(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token id per row from logits (B, V): argmax when temperature is 0, else a sample from
    softmax(logits / temperature) restricted to the top_k most likely tokens and then to the smallest
    set whose probability reaches top_p (nucleus sampling, Holtzman et al. 2019). A temperature below
    GREEDY_BELOW_TEMPERATURE is taken as 0: dividing float32 logits by it could overflow to inf (NaN
    probabilities), and its distribution is the argmax's anyway."""
    if temperature < GREEDY_BELOW_TEMPERATURE:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth_largest = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token once the more likely ones already hold top_p; the most likely is always kept (a
        # top_p below float32's smallest number rounds to 0, which the first token's 0 would reach).
        drop = torch.cumsum(probs, dim=-1) - probs >= top_p
        drop[:, 0] = False
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


@overload
def generate(
    model: GPT,
    prompt_tokens: list[int],
    *,
    max_new_tokens: int,
    temperature: float = 0.9,
    top_k: int | None = 200,
    top_p: float | None = None,
    stop_tokens: Sequence[int] = (),
    seed: int | None = None,
    decoder: Decoder | None = None,
) -> Iterator[int]: ...


@overload
def generate(
    model: GPT,
    prompt_tokens: list[list[int]],
    *,
    max_new_tokens: int,
    temperature: float = 0.9,
    top_k: int | None = 200,
    top_p: float | None = None,
    stop_tokens: Sequence[int] = (),
    seed: int | None = None,
    decoder: Decoder | None = None,
) -> Iterator[list[int | None]]: ...


def generate(
    model: GPT,
    prompt_tokens: list[int] | list[list[int]],
    *,
    max_new_tokens: int,
    temperature: float = 0.9,
    top_k: int | None = 200,
    top_p: float | None = None,
    stop_tokens: Sequence[int] = (),
    seed: int | None = None,
    decoder: Decoder | None = None,
) -> Iterator[int] | Iterator[list[int | None]]:
    """Stream new tokens for one prompt (yields ints) or a batch of prompts (yields one list per step).

    In a batch, a row that produced a stop token yields that token, then None at every later step; the
    iterator ends once every row has stopped or after max_new_tokens steps. Greedy when temperature is 0;
    the same seed gives the same tokens (a torch.Generator on the model's device), no seed uses torch's
    global generator. Arguments are checked here, at the call; the model runs as the iterator is
    consumed, under the caller's autocast and device. The longest prompt plus max_new_tokens - 1 must fit
    the model's sequence_len: callers trim the prompt.

    `decoder`: a `Decoder` of this model for this many prompts, to decode over its static cache (and its
    CUDA graph); by default a KVCache sized for this call is made and the steps run eagerly.
    """
    single = isinstance(prompt_tokens, list) and all(isinstance(t, int) for t in prompt_tokens)
    prompts = [prompt_tokens] if single else prompt_tokens
    _check_arguments(model, prompts, max_new_tokens, temperature, top_k, top_p, stop_tokens)
    if decoder is not None and (decoder.model is not model or decoder.batch_size != len(prompts)):
        raise ValueError(
            f"generate: the decoder is for a batch of {decoder.batch_size} on another model or batch size "
            f"({len(prompts)} prompts)"
        )
    rows = _generate_rows(
        model,
        [list(p) for p in prompts],
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        stop_tokens=frozenset(stop_tokens),
        seed=seed,
        decoder=decoder,
    )
    return (row[0] for row in rows) if single else rows


def _check_arguments(
    model: GPT,
    prompts: list,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    stop_tokens: Sequence[int],
) -> None:
    vocab_size, sequence_len = model.config.vocab_size, model.config.sequence_len
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, list) and p for p in prompts):
        raise ValueError(
            "generate: prompt_tokens must be a non-empty list of token ids, or a list of such lists"
        )
    for i, prompt in enumerate(prompts):
        bad = [t for t in prompt if not isinstance(t, int) or not 0 <= t < vocab_size]
        if bad:
            raise ValueError(f"generate: prompt {i} has token ids outside [0, {vocab_size}): {bad[:5]}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"generate: max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
    if not temperature >= 0:
        raise ValueError(f"generate: temperature must be >= 0, got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"generate: top_k must be a positive integer or None, got {top_k!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"generate: top_p must be in (0, 1] or None, got {top_p!r}")
    if not all(isinstance(t, int) and 0 <= t < vocab_size for t in stop_tokens):
        raise ValueError(f"generate: stop_tokens must be token ids in [0, {vocab_size}), got {stop_tokens!r}")
    longest = max(len(p) for p in prompts)
    if longest + max_new_tokens - 1 > sequence_len:
        raise ValueError(
            f"generate: a {longest}-token prompt and max_new_tokens {max_new_tokens} need "
            f"{longest + max_new_tokens - 1} positions, more than the model's sequence_len {sequence_len}"
        )


@torch.no_grad()
def _last_logits(model: GPT, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Feed idx (B, T) through the cache; logits (B, vocab_size) at the last position, padding cut. The
    head runs on that position alone: a prompt's other positions need their keys and values, not logits
    (float32 over the whole vocabulary: 200 MB for a batch of 16 prompts of 64 tokens)."""
    return model.head(model.trunk(idx, kv_cache=cache)[:, -1:])[:, -1, : model.config.vocab_size]


def _generate_rows(
    model: GPT,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    stop_tokens: frozenset[int],
    seed: int | None,
    decoder: Decoder | None,
) -> Iterator[list[int | None]]:
    if max_new_tokens == 0:
        return
    device = model.lm_head.weight.device
    longest = max(len(p) for p in prompts)
    pad_lengths = [longest - len(p) for p in prompts]
    idx = torch.tensor([[_PAD_ID] * n + p for n, p in zip(pad_lengths, prompts, strict=True)], device=device)
    if decoder is None:
        # The last sampled token is yielded but never fed back, hence the - 1.
        needed = longest + max_new_tokens - 1
        max_len = -(-needed // _CACHE_LEN_MULTIPLE) * _CACHE_LEN_MULTIPLE
        cache = KVCache.for_model(model, batch_size=len(prompts), max_len=max_len, pad_lengths=pad_lengths)
        logits = _last_logits(model, idx, cache)  # prefill
        step = lambda next_ids: _last_logits(model, next_ids[:, None], cache)
    else:
        logits = decoder.prefill(idx, pad_lengths)
        step = decoder.step
    generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
    done = [False] * len(prompts)
    for i in range(max_new_tokens):
        next_ids = sample_next_token(
            logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator
        )
        new = next_ids.tolist()
        yield [None if stopped else token for stopped, token in zip(done, new, strict=True)]
        done = [stopped or token in stop_tokens for stopped, token in zip(done, new, strict=True)]
        if all(done) or i == max_new_tokens - 1:
            return
        logits = step(next_ids)
