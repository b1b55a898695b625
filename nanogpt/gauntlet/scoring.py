"""Scoring on the model: log-likelihoods of continuations in padded batches, and batched greedy generation.

`score_requests` sorts the (context, continuation) pairs by length, pads each to a length bucket (a
multiple of `pad_multiple`, so a few shapes repeat) and runs as many rows per forward as fit in
`max_batch_tokens`. Padding goes on the right: with causal attention a position never sees what follows
it, so a row's log-likelihoods do not depend on its padding. Only the continuation positions' logits go
through the log-softmax. Runs on whatever device the model is on, under the caller's autocast.

Longer than the context: a sequence keeps its continuation whole and loses the left of its context
(the oldest few-shot examples first), as llm-foundry does; a continuation that alone does not fit cannot
be scored (None), and its example is left out of the task and counted.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from nanogpt.engine import generate

DEFAULT_BATCH_TOKENS = 16_384  # tokens per forward: float32 logits of 16K × 50K vocab are 3.3 GB
PAD_MULTIPLE = 64
MAX_GENERATION_ROWS = 64  # prompts decoded together (each holds a KV cache of sequence_len positions)
_STOP_TAIL_TOKENS = 16  # a stop string is looked for in the decoded last tokens only


@dataclass(frozen=True, slots=True)
class Request:
    context: tuple[int, ...]  # at least one token (the data starts every context with end-of-text)
    continuation: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Score:
    logprob: float  # sum of the continuation tokens' log-probabilities (nats)
    num_tokens: int
    greedy: bool  # every continuation token is the model's most likely next token
    truncated: bool  # the context lost tokens on the left to fit the model's sequence_len


@torch.inference_mode()
def score_requests(
    model: torch.nn.Module,
    requests: Sequence[Request],
    *,
    max_batch_tokens: int = DEFAULT_BATCH_TOKENS,
    pad_multiple: int = PAD_MULTIPLE,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> list[Score | None]:
    """One Score per request (None: its continuation alone is longer than the model's sequence_len).

    `forward` (default: the model) maps token ids (B, T) to logits (B, T, vocab); the trainer may pass a
    compiled model."""
    forward = forward or model
    seq_len = model.config.sequence_len
    device = model.lm_head.weight.device
    results: list[Score | None] = [None] * len(requests)
    prepared = []  # (request index, tokens to feed + 1, start of the continuation, truncated)
    for i, request in enumerate(requests):
        num_cont = len(request.continuation)
        if not request.context or num_cont == 0 or num_cont > seq_len:
            continue
        # The input is tokens[:-1], so sequence_len + 1 tokens fit.
        keep = seq_len + 1 - num_cont
        context = request.context[-keep:]
        prepared.append(
            (i, context + request.continuation, len(context), len(context) < len(request.context))
        )
    prepared.sort(key=lambda p: len(p[1]), reverse=True)
    start = 0
    while start < len(prepared):
        length = len(prepared[start][1]) - 1
        bucket = min(seq_len, -(-length // pad_multiple) * pad_multiple)
        rows = max(1, max_batch_tokens // bucket)
        batch = prepared[start : start + rows]
        start += len(batch)
        x = np.zeros((len(batch), bucket), dtype=np.int64)
        targets = np.full((len(batch), bucket), -1, dtype=np.int64)
        for row, (_, tokens, cont_start, _) in enumerate(batch):
            n = len(tokens) - 1
            x[row, :n] = tokens[:-1]
            # Target j is tokens[j + 1]: the continuation's tokens are targets cont_start - 1 .. n - 1.
            targets[row, cont_start - 1 : n] = tokens[cont_start:]
        x = torch.from_numpy(x).to(device, non_blocking=True)
        targets = torch.from_numpy(targets).to(device, non_blocking=True)
        logits = forward(x)  # (B, T, padded vocab), float32
        rows_idx, cols_idx = (targets >= 0).nonzero(as_tuple=True)
        picked = logits[rows_idx, cols_idx].float()  # (M, vocab): continuation positions only
        wanted = targets[rows_idx, cols_idx]
        logprobs = picked.log_softmax(dim=-1).gather(1, wanted[:, None]).squeeze(1).double()
        misses = (picked.argmax(dim=-1) != wanted).double()
        sums = torch.zeros(len(batch), dtype=torch.float64, device=device).index_add_(0, rows_idx, logprobs)
        wrong = torch.zeros(len(batch), dtype=torch.float64, device=device).index_add_(0, rows_idx, misses)
        for (i, tokens, cont_start, truncated), logprob, num_wrong in zip(
            batch, sums.tolist(), wrong.tolist(), strict=True
        ):
            num_tokens = len(tokens) - cont_start
            results[i] = Score(
                logprob=logprob, num_tokens=num_tokens, greedy=num_wrong == 0, truncated=truncated
            )
    return results


@torch.inference_mode()
def prompt_room(sequence_len: int, max_new_tokens: int) -> int:
    """How many of a prompt's last tokens `generate_greedy` keeps: `sequence_len - max_new_tokens + 1`,
    with `max_new_tokens` at most half the sequence_len, so that short-context models keep half their
    context for the prompt."""
    return sequence_len - max(1, min(max_new_tokens, sequence_len // 2)) + 1


def generate_greedy(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    decode: Callable[[list[int]], str],
    stop_strings: Sequence[str] = (),
    stop_tokens: Sequence[int] = (),
    max_rows: int = MAX_GENERATION_ROWS,
) -> list[list[int]]:
    """Greedy continuations of the prompts (nanogpt.engine.generate with temperature 0, in batches of
    prompts of similar length). A row ends at a stop token (kept) or once its decoded text contains a
    stop string (the tokens are kept; the caller cuts the text); the batch ends when every row has.

    A prompt keeps its last `prompt_room(sequence_len, max_new_tokens)` tokens."""
    seq_len = model.config.sequence_len
    keep = prompt_room(seq_len, max_new_tokens)
    max_new = seq_len - keep + 1
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    outputs: list[list[int]] = [[] for _ in prompts]
    for first in range(0, len(order), max_rows):
        chosen = order[first : first + max_rows]
        batch = [list(prompts[i][-keep:]) for i in chosen]
        rows = [outputs[i] for i in chosen]
        done = [False] * len(batch)
        steps = generate(
            model, batch, max_new_tokens=max_new, temperature=0.0, top_k=None, stop_tokens=tuple(stop_tokens)
        )
        for step in steps:
            for r, token in enumerate(step):
                if token is None or done[r]:
                    done[r] = True
                    continue
                rows[r].append(token)
                if token in stop_tokens or (
                    stop_strings and any(s in decode(rows[r][-_STOP_TAIL_TOKENS:]) for s in stop_strings)
                ):
                    done[r] = True
            if all(done):
                steps.close()
                break
    return outputs
