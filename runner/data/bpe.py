"""Train a byte-level BPE with Hugging Face `tokenizers`, then hand it to tiktoken for encoding.

Training uses `tokenizers` (fast, multithreaded); encoding uses tiktoken (about 6× faster). The two agree
because the trained tokenizer splits text with the same regex tiktoken uses, works on raw bytes (every one
of the 256 bytes is in the vocabulary, so any text encodes), and its merges become tiktoken ranks in the
order they were learned: tiktoken merges the adjacent pair whose concatenation has the lowest rank, which
is the earliest-learned merge.
"""

import sys
from collections.abc import Iterable, Iterator

from nanogpt.tokenizer import EOT, GPT4_PATTERN, IM_END, IM_START, Tokenizer

# Trained tokenizers carry the chat markers from the start, so pretraining and mid-training share one
# vocabulary (and one hash).
SPECIAL_TOKENS = (EOT, IM_START, IM_END)
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)


def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: the printable character ByteLevel uses for each byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


def train_hf_bpe(
    texts: Iterable[str], *, num_merged_vocab: int, pattern: str = GPT4_PATTERN, progress: bool = False
):
    """The Hugging Face tokenizer itself (tests compare its encodings with tiktoken's)."""
    from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as HFTokenizer

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(pattern=Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=num_merged_vocab,
        min_frequency=0,
        show_progress=progress,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    hf.train_from_iterator(texts, trainer)
    return hf


def hf_to_ranks(hf) -> dict[bytes, int]:
    """tiktoken ranks: the 256 bytes first (by value), then merged tokens in the order they were learned."""
    decoder = _byte_decoder()
    vocab = hf.get_vocab()
    ranks = {bytes([b]): b for b in range(256)}
    for token, _ in sorted(vocab.items(), key=lambda item: item[1]):
        raw = bytes(decoder[c] for c in token)
        if raw not in ranks:
            ranks[raw] = len(ranks)
    return ranks


def train_bpe(
    texts: Iterable[str],
    *,
    vocab_size: int,
    pattern: str = GPT4_PATTERN,
    name: str | None = None,
    metadata: dict | None = None,
    progress: bool = False,
) -> Tokenizer:
    """A tokenizer of `vocab_size` ids in all: 256 bytes, learned merges, then the special tokens."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size: at least {MIN_VOCAB_SIZE} (256 bytes + specials), got {vocab_size}")
    hf = train_hf_bpe(
        texts, num_merged_vocab=vocab_size - len(SPECIAL_TOKENS), pattern=pattern, progress=progress
    )
    ranks = hf_to_ranks(hf)
    if len(ranks) + len(SPECIAL_TOKENS) < vocab_size:
        print(
            f"tokenizer: the corpus supports only {len(ranks) - 256} merges, so the vocabulary has "
            f"{len(ranks) + len(SPECIAL_TOKENS)} ids instead of {vocab_size}; "
            "give more text for a larger one",
            file=sys.stderr,
        )
    specials = {token: len(ranks) + i for i, token in enumerate(SPECIAL_TOKENS)}
    return Tokenizer(
        name=name or f"bpe{vocab_size}",
        pattern=pattern,
        mergeable_ranks=ranks,
        special_tokens=specials,
        metadata={"requested_vocab_size": vocab_size, **(metadata or {})},
    )


def capped_texts(texts: Iterable[str], max_bytes: int) -> Iterator[str]:
    """The texts until `max_bytes` of UTF-8 have gone by (training time grows with the corpus).

    A lone surrogate ("\ud800" from a JSON escape) becomes U+FFFD, as `Tokenizer.encode` reads it:
    `tokenizers` refuses text that is not valid UTF-8."""
    seen = 0
    for text in texts:
        if seen >= max_bytes:
            return
        try:
            seen += len(text.encode("utf-8"))
        except UnicodeEncodeError:
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
            seen += len(text.encode("utf-8"))
        yield text
