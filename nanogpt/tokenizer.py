"""Tokenizers: GPT-2 through tiktoken, or a byte-level BPE we trained, saved in tiktoken's format.

`load_tokenizer(spec)` takes
- `"gpt2"`: tiktoken's GPT-2 encoding (offline from `NANOSTUDY_GPT2_DIR`, or when `TIKTOKEN_CACHE_DIR`
  holds its files, see docs/data.md), or
- the path of a directory: one holding `tokenizer.json` + `tokenizer.tiktoken` (a tokenizer we trained or
  saved with `Tokenizer.save`), or one holding GPT-2's files: `gpt2.tiktoken`, `vocab.bpe` +
  `encoder.json`, or those in tiktoken's cache layout (named by the SHA-1 of their download address).

Every tokenizer here is a tiktoken `Encoding` plus what training and evaluation need around it: the
end-of-text id, a content hash that shards record, each token's byte length (for bits-per-byte, so that
validation numbers compare across tokenizers) and the chat format used by mid-training.
"""

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tiktoken

EOT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
CHAT_SPECIALS = (IM_START, IM_END)

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_RANKS = "tokenizer.tiktoken"
GPT2_RANKS = "gpt2.tiktoken"
# GPT-2's original files, and the names tiktoken's cache gives them: the SHA-1 of their download address
# (tiktoken/load.py, read_file_cached). r50k_base.tiktoken holds the same ranks as gpt2.tiktoken.
GPT2_VOCAB_BPE, GPT2_ENCODER_JSON = "vocab.bpe", "encoder.json"
CACHED_VOCAB_BPE = "6d1cbeee0f20b3d9449abfede4726ed8212e3aee"
CACHED_ENCODER_JSON = "6c7ea1a7e38e3a7f062df639a5b80947f075ffe6"
CACHED_R50K_RANKS = "0ea1e91bbb3a60f729a8dc8f777fd2fc07cd8df4"
GPT2_FILES_HELP = (
    "give as the tokenizer the path of a directory holding gpt2.tiktoken (or that file), or vocab.bpe + "
    "encoder.json, or tiktoken's cache files (vocab.bpe saved as "
    f"{CACHED_VOCAB_BPE} and encoder.json as {CACHED_ENCODER_JSON}, or r50k_base.tiktoken as "
    f"{CACHED_R50K_RANKS}); or set NANOSTUDY_GPT2_DIR to such a directory; or set TIKTOKEN_CACHE_DIR to a "
    "directory holding tiktoken's cache files; see docs/data.md"
)
TOKENIZER_FORMAT_VERSION = 1

# GPT-2's split pattern (tiktoken's r50k_base); written out so that loading never needs tiktoken_ext.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
# GPT-4's pattern (cl100k_base) with numbers split into at most two digits, as nanochat does for small
# vocabularies: fewer tokens spent on long digit groups.
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|"""
    r"""\s+(?!\S)|\s+"""
)


class TokenizerError(ValueError):
    """A tokenizer that cannot be loaded; the message says what to provide."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ChatMessage:
    role: str  # "system" | "user" | "assistant"
    content: str

    def __post_init__(self):
        if self.role not in ("system", "user", "assistant"):
            raise ValueError(f"role: must be system, user or assistant, got {self.role!r}")
        if not isinstance(self.content, str):
            raise ValueError(f"content: must be a string, got {type(self.content).__name__}")


def _check_ranks(name: str, mergeable_ranks: dict[bytes, int]) -> None:
    ranks = sorted(mergeable_ranks.values())
    if ranks != list(range(len(ranks))):
        raise TokenizerError(f"tokenizer {name}: ranks must be 0..{len(ranks) - 1} without gaps")
    missing_bytes = [b for b in range(256) if bytes([b]) not in mergeable_ranks]
    if missing_bytes:
        # Without every single byte some text cannot be encoded at all.
        raise TokenizerError(f"tokenizer {name}: {len(missing_bytes)} single bytes have no token")


class Tokenizer:
    """A tiktoken encoding with its metadata. Construct through `load_tokenizer` or `from_ranks`."""

    def __init__(
        self,
        *,
        name: str,
        pattern: str,
        mergeable_ranks: dict[bytes, int],
        special_tokens: dict[str, int],
        metadata: dict | None = None,
    ):
        if EOT not in special_tokens:
            raise TokenizerError(f"tokenizer {name}: special tokens lack {EOT}")
        _check_ranks(name, mergeable_ranks)
        # Special tokens take ids after the ranks: one id for two tokens would decode to either.
        clashing = sorted(token for token, i in special_tokens.items() if i < len(mergeable_ranks))
        if clashing:
            raise TokenizerError(
                f"tokenizer {name}: special token ids {clashing} collide with the ranks' ids "
                f"0..{len(mergeable_ranks) - 1}; special tokens take ids from {len(mergeable_ranks)} up"
            )
        if len(set(special_tokens.values())) != len(special_tokens):
            raise TokenizerError(f"tokenizer {name}: special tokens share an id ({special_tokens})")
        self.name = name
        self.pattern = pattern
        self.mergeable_ranks = mergeable_ranks
        self.special_tokens = dict(special_tokens)
        self.metadata = dict(metadata or {})
        try:
            self._encoding = tiktoken.Encoding(
                name=name,
                pat_str=pattern,
                mergeable_ranks=mergeable_ranks,
                special_tokens=self.special_tokens,
            )
        except ValueError as e:  # tiktoken's regex engine refused the pattern
            raise TokenizerError(f"tokenizer {name}: pattern: not a valid regular expression ({e})") from None
        self.vocab_size = self._encoding.max_token_value + 1
        self.eot_id = self.special_tokens[EOT]
        self.hash = _tokenizer_hash(pattern, mergeable_ranks, self.special_tokens)
        self._token_bytes: np.ndarray | None = None

    def __repr__(self) -> str:
        return f"Tokenizer(name={self.name!r}, vocab_size={self.vocab_size}, hash={self.hash[:12]})"

    def __getstate__(self):
        # Multiprocessing workers rebuild the encoding rather than pickling the Rust object.
        return {
            "name": self.name,
            "pattern": self.pattern,
            "mergeable_ranks": self.mergeable_ranks,
            "special_tokens": self.special_tokens,
            "metadata": self.metadata,
        }

    def __setstate__(self, state):
        self.__init__(**state)

    # Text in, ids out. Special-token strings inside text are encoded as ordinary text: a document that
    # contains "<|endoftext|>" must not end itself early.
    def encode(self, text: str) -> list[int]:
        return self._encoding.encode_ordinary(text)

    def encode_array(self, text: str) -> np.ndarray:
        """`encode` as a uint32 array, straight from tiktoken's buffer (no Python list in between)."""
        try:
            return self._encoding.encode_to_numpy(text, disallowed_special=())
        except UnicodeEncodeError:
            # A lone surrogate ("\ud800", which a JSON escape can produce) is not UTF-8. tiktoken's
            # encode_ordinary replaces it with U+FFFD; encode_to_numpy does not, so do the same here.
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
            return self._encoding.encode_to_numpy(text, disallowed_special=())

    def encode_batch(self, texts: list[str], *, num_threads: int = 8) -> list[list[int]]:
        return self._encoding.encode_ordinary_batch(texts, num_threads=num_threads)

    def decode(self, ids) -> str:
        return self._encoding.decode([int(i) for i in ids], errors="replace")

    def decode_token_bytes(self, token_id: int) -> bytes:
        return self._encoding.decode_single_token_bytes(int(token_id))

    def special(self, name: str) -> int:
        """Id of a special token such as `<|im_start|>`."""
        if name not in self.special_tokens:
            hint = (
                " (use a tokenizer with chat tokens: Tokenizer.with_chat_tokens())"
                if name in CHAT_SPECIALS
                else ""
            )
            raise TokenizerError(
                f"tokenizer {self.name}: no special token {name!r}; "
                f"it has {sorted(self.special_tokens)}{hint}"
            )
        return self.special_tokens[name]

    def token_bytes(self) -> np.ndarray:
        """int32 array, one entry per token id: the UTF-8 byte length of the token, 0 for special tokens.

        Bits per byte = sum(loss nats) / (ln 2 × sum(token_bytes[targets])): comparable across tokenizers.
        """
        if self._token_bytes is None:
            table = np.zeros(self.vocab_size, dtype=np.int32)
            for token, rank in self.mergeable_ranks.items():
                table[rank] = len(token)
            self._token_bytes = table
        return self._token_bytes

    @property
    def has_chat_tokens(self) -> bool:
        return all(s in self.special_tokens for s in CHAT_SPECIALS)

    def with_chat_tokens(self) -> "Tokenizer":
        """The same tokenizer with `<|im_start|>` and `<|im_end|>` appended after the vocabulary."""
        if self.has_chat_tokens:
            return self
        specials = dict(self.special_tokens)
        for token in CHAT_SPECIALS:
            specials[token] = max(max(specials.values()), len(self.mergeable_ranks) - 1) + 1
        return Tokenizer(
            name=f"{self.name}+chat",
            pattern=self.pattern,
            mergeable_ranks=self.mergeable_ranks,
            special_tokens=specials,
            metadata=self.metadata,
        )

    def without_chat_tokens(self) -> "Tokenizer":
        """The tokenizer with `<|im_start|>` and `<|im_end|>` removed: for `with_chat_tokens()`'s result,
        the one it was applied to (the trainer checks mid-training data against a pretraining checkpoint)."""
        if not any(s in self.special_tokens for s in CHAT_SPECIALS):
            return self
        return Tokenizer(
            name=self.name.removesuffix("+chat"),
            pattern=self.pattern,
            mergeable_ranks=self.mergeable_ranks,
            special_tokens={k: v for k, v in self.special_tokens.items() if k not in CHAT_SPECIALS},
            metadata=self.metadata,
        )

    def encode_chat(self, messages: list[ChatMessage]) -> tuple[list[int], list[int]]:
        """Render a conversation as `<|im_start|>role\\ncontent<|im_end|>\\n` per message.

        Returns (ids, mask): mask is 1 on the assistant's content tokens and its closing `<|im_end|>`
        (what the model must learn to produce, including when to stop) and 0 elsewhere. The conversation
        starts with end-of-text, which separates it from the previous document in a shard.
        """
        start, end = self.special(IM_START), self.special(IM_END)
        newline = self.encode("\n")
        ids, mask = [self.eot_id], [0]
        for message in messages:
            header = [start, *self.encode(f"{message.role}\n")]
            body = [*self.encode(message.content), end]
            learn = 1 if message.role == "assistant" else 0
            ids += header + body + newline
            mask += [0] * len(header) + [learn] * len(body) + [0] * len(newline)
        return ids, mask

    def encode_chat_prompt(self, messages: list[ChatMessage]) -> list[int]:
        """A conversation followed by the opening of the assistant's turn, ready for generation."""
        ids, _ = self.encode_chat(messages)
        return [*ids, self.special(IM_START), *self.encode("assistant\n")]

    def save(self, directory: str | os.PathLike, *, extra: dict | None = None) -> Path:
        """Write `tokenizer.json` (metadata) and `tokenizer.tiktoken` (ranks) into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        _atomic_write(directory / TOKENIZER_RANKS, _ranks_text(self.mergeable_ranks))
        meta = {
            "format_version": TOKENIZER_FORMAT_VERSION,
            "name": self.name,
            "pattern": self.pattern,
            "special_tokens": self.special_tokens,
            "vocab_size": self.vocab_size,
            "hash": self.hash,
            **self.metadata,
            **(extra or {}),
        }
        _atomic_write(directory / TOKENIZER_JSON, (json.dumps(meta, indent=1) + "\n").encode())
        return directory


def _ranks_text(ranks: dict[bytes, int]) -> bytes:
    lines = [base64.b64encode(token) + b" " + str(rank).encode() for token, rank in ranks.items()]
    lines.sort(key=lambda line: int(line.rsplit(b" ", 1)[1]))
    return b"\n".join(lines) + b"\n"


def _tokenizer_hash(pattern: str, ranks: dict[bytes, int], specials: dict[str, int]) -> str:
    digest = hashlib.sha256()
    digest.update(pattern.encode() + b"\n")
    digest.update(_ranks_text(ranks))
    digest.update(json.dumps(sorted(specials.items())).encode())
    return digest.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def read_ranks(path: str | os.PathLike) -> dict[bytes, int]:
    """Parse a `.tiktoken` file: one `base64(token) rank` per line."""
    ranks: dict[bytes, int] = {}
    for number, line in enumerate(Path(path).read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError:
            raise TokenizerError(f"{path}:{number}: not a `base64 rank` line") from None
    return ranks


def _gpt2_from_ranks_file(path: Path) -> Tokenizer:
    return _gpt2_tokenizer(read_ranks(path), path)


def _gpt2_tokenizer(ranks: dict[bytes, int], where: Path) -> Tokenizer:
    if len(ranks) != 50256:
        raise TokenizerError(f"{where}: {len(ranks)} ranks, GPT-2 has 50,256 (+ end-of-text)")
    return Tokenizer(name="gpt2", pattern=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: 50256})


def _gpt2_from_dir(directory: Path) -> Tokenizer | None:
    """GPT-2 from a directory of its files under their own names or tiktoken's cache names; None if the
    directory holds none of them."""
    for name in (GPT2_RANKS, CACHED_R50K_RANKS):
        if (directory / name).is_file():
            return _gpt2_from_ranks_file(directory / name)
    for vocab_bpe, encoder_json in (
        (GPT2_VOCAB_BPE, GPT2_ENCODER_JSON),
        (CACHED_VOCAB_BPE, CACHED_ENCODER_JSON),
    ):
        if (directory / vocab_bpe).is_file() and (directory / encoder_json).is_file():
            ranks = _ranks_from_data_gym(directory / vocab_bpe, directory / encoder_json)
            return _gpt2_tokenizer(ranks, directory / vocab_bpe)
    return None


def _ranks_from_data_gym(vocab_bpe: Path, encoder_json: Path) -> dict[bytes, int]:
    """GPT-2's original merges file as tiktoken ranks, as tiktoken's data_gym_to_mergeable_bpe_ranks does
    (without its download cache): the 256 bytes in GPT-2's order (printable first), then one token per
    merge in file order; the encoder file must agree."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    others = [b for b in range(256) if b not in printable]
    byte_order = printable + others
    char_to_byte = {chr(b): b for b in printable} | {chr(256 + n): b for n, b in enumerate(others)}

    def decode(token: str) -> bytes:
        return bytes(char_to_byte[c] for c in token)

    ranks = {bytes([b]): rank for rank, b in enumerate(byte_order)}
    try:
        for line in vocab_bpe.read_text(encoding="utf-8").split("\n")[1:-1]:
            first, second = line.split()
            ranks[decode(first) + decode(second)] = len(ranks)
        encoder = {decode(k): v for k, v in json.loads(encoder_json.read_text(encoding="utf-8")).items()}
    except (ValueError, KeyError) as e:  # includes UnicodeDecodeError and JSONDecodeError
        raise TokenizerError(f"{vocab_bpe}: not GPT-2's vocab.bpe / encoder.json pair ({e})") from None
    encoder.pop(EOT.encode(), None)
    if encoder != ranks:
        raise TokenizerError(
            f"{vocab_bpe}: does not match {encoder_json}; they must come from the same release"
        )
    return ranks


def _gpt2_from_tiktoken() -> Tokenizer:
    try:
        encoding = tiktoken.get_encoding("gpt2")
    except Exception as e:  # tiktoken raises requests/urllib errors of several kinds when offline
        raise TokenizerError(
            "tokenizer gpt2: tiktoken could not load GPT-2's vocabulary "
            f"({type(e).__name__}: {str(e)[:120]}). Without a network, {GPT2_FILES_HELP}"
        ) from None
    # tiktoken keeps the ranks and pattern as attributes without a public accessor.
    return Tokenizer(
        name="gpt2",
        pattern=encoding._pat_str,
        mergeable_ranks=dict(encoding._mergeable_ranks),
        special_tokens=dict(encoding._special_tokens),
    )


def load_tokenizer(spec: str | os.PathLike) -> Tokenizer:
    """`"gpt2"`, or a directory holding `tokenizer.json` + `tokenizer.tiktoken` or GPT-2's files (under
    their own names or in tiktoken's cache layout), or a `gpt2.tiktoken` file."""
    if str(spec) == "gpt2":
        gpt2_dir = os.environ.get("NANOSTUDY_GPT2_DIR")
        if gpt2_dir:
            tokenizer = _gpt2_from_dir(Path(gpt2_dir)) if Path(gpt2_dir).is_dir() else None
            if tokenizer is None:
                raise TokenizerError(
                    f"NANOSTUDY_GPT2_DIR={gpt2_dir}: holds none of GPT-2's files (gpt2.tiktoken, "
                    "vocab.bpe + encoder.json, or tiktoken's cache files); point it at a directory that "
                    "does, or unset it"
                )
            return tokenizer
        return _gpt2_from_tiktoken()
    path = Path(spec)
    if path.is_file() and path.name in (GPT2_RANKS, CACHED_R50K_RANKS):
        return _gpt2_from_ranks_file(path)
    if not path.is_dir():
        raise TokenizerError(
            f"tokenizer {str(spec)!r}: neither 'gpt2' nor an existing directory; give 'gpt2', a directory "
            "written by `nanostudy tokenizer train`, or a directory holding GPT-2's files (gpt2.tiktoken, "
            "vocab.bpe + encoder.json, or tiktoken's cache files)"
        )
    if (path / TOKENIZER_JSON).is_file():
        return _load_saved(path)
    tokenizer = _gpt2_from_dir(path)
    if tokenizer is None:
        raise TokenizerError(
            f"{path}: holds neither {TOKENIZER_JSON} + {TOKENIZER_RANKS} (a trained tokenizer) nor GPT-2's "
            f"files; for GPT-2, {GPT2_FILES_HELP}"
        )
    return tokenizer


def _load_saved(directory: Path) -> Tokenizer:
    meta_path, ranks_path = directory / TOKENIZER_JSON, directory / TOKENIZER_RANKS
    try:
        meta = json.loads(meta_path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TokenizerError(f"{meta_path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise TokenizerError(f"{meta_path}: not a JSON object")
    for key in ("name", "pattern", "special_tokens"):
        if key not in meta:
            raise TokenizerError(f"{meta_path}: missing key {key!r}")
    for key in ("name", "pattern"):
        if not isinstance(meta[key], str):
            raise TokenizerError(f"{meta_path}: {key}: must be a string, got {type(meta[key]).__name__}")
    specials = meta["special_tokens"]
    if not isinstance(specials, dict) or not all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in specials.values()
    ):
        raise TokenizerError(
            f"{meta_path}: special_tokens: must map each special token to its id (an integer >= 0), "
            f"got {specials!r}"
        )
    if not ranks_path.is_file():
        raise TokenizerError(f"{ranks_path}: missing; the tokenizer directory is incomplete, train it again")
    ranks = read_ranks(ranks_path)
    try:
        _check_ranks(meta["name"], ranks)
    except TokenizerError as e:
        raise TokenizerError(f"{ranks_path}: {e}") from None
    known = {"format_version", "name", "pattern", "special_tokens", "vocab_size", "hash"}
    try:
        tokenizer = Tokenizer(
            name=meta["name"],
            pattern=meta["pattern"],
            mergeable_ranks=ranks,
            special_tokens=specials,
            metadata={k: v for k, v in meta.items() if k not in known},
        )
    except TokenizerError as e:  # the ranks are checked: the pattern or the special tokens
        raise TokenizerError(f"{meta_path}: {e}") from None
    if "hash" in meta and meta["hash"] != tokenizer.hash:
        raise TokenizerError(
            f"{meta_path}: recorded hash {meta['hash'][:12]} differs from the files' {tokenizer.hash[:12]}: "
            "the ranks were modified; train the tokenizer again"
        )
    return tokenizer
