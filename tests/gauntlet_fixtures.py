"""The eval gauntlet's tests: small bundles in the gauntlet's formats, and a stub language model whose
log-likelihoods are known in closed form."""

import json
import math
from pathlib import Path

import torch
from data_fixtures import SHARED

from nanogpt.gauntlet.tasks import TASKS
from nanogpt.model import GPTConfig

REAL_BUNDLE = SHARED / "eval_bundle"
HIGH = 10.0  # the stub's logit for a token's successor; every other logit is 0


def write_bundle(root: Path, tasks: dict[str, list]) -> Path:
    """A bundle folder holding each named task's rows at the path the task table gives (a row that is a
    str is written verbatim: a malformed line)."""
    for name, rows in tasks.items():
        path = root / TASKS[name].file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return root


# Rows short enough for the trainer's tiny model (a 32-byte context with the byte tokenizer): every task of
# the quick preset but jeopardy (so that one is unavailable), and svamp for generation.
TINY_TASKS = {
    "arc_easy": [
        {"query": "Question: the cat sees?", "choices": ["ball", "book", "bread", "sky"], "gold": 0},
        {"query": "Question: a dog likes?", "choices": ["ball", "river", "bread", "sky"], "gold": 1},
        {"query": "Question: one bird takes?", "choices": ["ball", "book", "bread", "sky"], "gold": 2},
    ],
    "piqa": [
        {"query": "Goal: see", "choices": ["the cat.", "a dog."], "gold": 0},
        {"query": "Goal: find", "choices": ["the ball.", "sky."], "gold": 0},
        {"query": "Goal: help", "choices": ["sky.", "her brother."], "gold": 1},
    ],
    "simple_arithmetic_nospaces": [
        {"context": "1+1=", "continuation": "2"},
        {"context": "2+3=", "continuation": "5"},
        {"context": "4+4=", "continuation": "8"},
    ],
    "bigbench_operators": [
        {"context": "2 op 3 =", "continuation": "5"},
        {"context": "1 op 1 =", "continuation": "2"},
    ],
    "boolq": [
        {"query": "Passage: the cat sees.\nQuestion: sees?", "choices": ["no", "yes"], "gold": 1},
        {"query": "Passage: a dog.\nQuestion: cat?", "choices": ["no", "yes"], "gold": 0},
    ],
    "copa": [
        {"query": "the cat sees", "choices": ["the ball.", "a dog."], "gold": 0},
        {"query": "a dog likes", "choices": ["the river.", "sky."], "gold": 1},
        {"query": "my friend takes", "choices": ["a book.", "some bread."], "gold": 0},
    ],
    "lambada_openai": [
        {"context": "the cat sees the", "continuation": "ball."},
        {"context": "one bird helps", "continuation": "her."},
        {"context": "a dog finds an", "continuation": "apple."},
    ],
    "winograd": [
        {"context_options": ["the cat", "a dog"], "continuation": "sees the ball.", "gold": 0},
        {"context_options": ["my friend", "one bird"], "continuation": "likes a book.", "gold": 1},
        {"context_options": ["the teacher", "her brother"], "continuation": "takes bread.", "gold": 0},
    ],
    "svamp": [
        {"context": "1+1?", "chain_of_thought": "1+1", "answer": "2"},
        {"context": "2+2?", "chain_of_thought": "2+2", "answer": "4"},
    ],
}


def lp_hit(vocab_size: int) -> float:
    """log p of a token's successor under SuccessorLM: HIGH - log(e^HIGH + V - 1)."""
    return HIGH - math.log(math.exp(HIGH) + vocab_size - 1)


def lp_miss(vocab_size: int) -> float:
    """log p of any other token: -log(e^HIGH + V - 1)."""
    return -math.log(math.exp(HIGH) + vocab_size - 1)


class SuccessorLM(torch.nn.Module):
    """A bigram model over token ids: after token a, token `successors[a]` has logit HIGH and every other
    token 0. So log p(b | ..., a) is lp_hit when b is a's successor, lp_miss when a has another one, and
    -log V when a has none, whatever came before a: a text's log-likelihood is countable by hand. Speaks
    the interface the gauntlet and the engine use: `config`, `lm_head.weight`, `forward(idx, kv_cache=)`, and
    its two halves `trunk` (here the ids themselves stand for the hidden states) and `head`."""

    def __init__(self, successors: dict[int, int], *, vocab_size: int, sequence_len: int = 64):
        super().__init__()
        self.config = GPTConfig(
            depth=1, vocab_size=vocab_size, sequence_len=sequence_len, aspect_ratio=16, head_dim=16
        )
        self.lm_head = torch.nn.Linear(1, 1, bias=False)
        table = torch.zeros(vocab_size, vocab_size)
        for a, b in successors.items():
            table[a, b] = HIGH
        self.register_buffer("table", table)
        self.calls: list[tuple[int, int]] = []  # (batch, length) of each forward

    def forward(self, idx: torch.Tensor, targets=None, *, kv_cache=None, reduction="mean") -> torch.Tensor:
        return self.head(self.trunk(idx, kv_cache=kv_cache))

    def trunk(self, idx: torch.Tensor, *, kv_cache=None) -> torch.Tensor:
        self.calls.append(tuple(idx.shape))
        if kv_cache is not None:
            kv_cache.advance(idx.size(1))
        return idx

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x]


def successors(pairs: dict[str, str], extra: dict[int, int] | None = None) -> dict[int, int]:
    """Byte-token successors from characters ({"a": "b"}: after byte a comes byte b)."""
    out = {ord(a): ord(b) for a, b in pairs.items()}
    out.update(extra or {})
    return out


def text_logprob(
    context: str, continuation: str, pairs: dict[str, str], vocab_size: int
) -> tuple[float, int]:
    """By hand: the log-likelihood of `continuation` (bytes) after `context` under SuccessorLM(pairs), and
    its number of tokens."""
    previous = context[-1]
    total = 0.0
    for char in continuation:
        if previous not in pairs:
            total -= math.log(vocab_size)  # no successor: every token has logit 0
        else:
            total += lp_hit(vocab_size) if pairs[previous] == char else lp_miss(vocab_size)
        previous = char
    return total, len(continuation)
