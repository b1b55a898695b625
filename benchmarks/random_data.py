"""Prepared data directories of random tokens, for benchmarks that measure speed, not learning."""

from pathlib import Path

import numpy as np

from nanogpt.shards import Manifest, ShardInfo, TokenizerInfo, file_sha256, write_manifest, write_shard
from nanogpt.tokenizer import EOT, GPT2_PATTERN, Tokenizer, load_tokenizer


def byte_tokenizer() -> Tokenizer:
    """256 byte tokens and end-of-text (vocabulary 257): CPU smoke runs need no tokenizer files."""
    ranks = {bytes([i]): i for i in range(256)}
    return Tokenizer(name="bytes", pattern=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: 256})


def make_random_data(root: Path, tokenizer_spec: str | None, *, train_tokens: int, val_tokens: int) -> Path:
    """`root/data`: uniformly random tokens of the tokenizer's vocabulary (GPT-2's files at
    `tokenizer_spec`, or bytes when None), one shard per split, with its manifest."""
    data_dir = root / "data"
    data_dir.mkdir(parents=True)
    if tokenizer_spec is None:
        tokenizer = byte_tokenizer()
        tokenizer.save(data_dir / "tokenizer")
        tokenizer_path = "tokenizer"
    else:
        tokenizer = load_tokenizer(tokenizer_spec)
        tokenizer_path = str(Path(tokenizer_spec).resolve())
    rng = np.random.default_rng(0)
    splits = {}
    for split, num_tokens in (("train", train_tokens), ("val", val_tokens)):
        path = data_dir / f"{split}_000.bin"
        tokens = rng.integers(0, tokenizer.vocab_size - 1, num_tokens, dtype=np.uint16)
        write_shard(path, tokens, tokenizer_name=tokenizer.name, tokenizer_hash=tokenizer.hash)
        splits[split] = (ShardInfo(file=path.name, num_tokens=num_tokens, sha256=file_sha256(path)),)
    write_manifest(
        Manifest(
            data_dir=data_dir,
            format_version=1,
            identity=f"random-benchmark-{tokenizer.name}-{train_tokens}-{val_tokens}",
            tokenizer=TokenizerInfo.of(tokenizer, tokenizer_path),
            splits=splits,
            has_mask=False,
            source={"kind": "random-benchmark"},
        )
    )
    return data_dir
