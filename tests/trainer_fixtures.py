"""Tiny runs for the trainer's tests: a byte-level tokenizer, a learnable synthetic corpus, a config."""

import hashlib
import json
import random
from pathlib import Path

import numpy as np

from nanogpt.shards import Manifest, ShardInfo, TokenizerInfo, write_manifest, write_shard
from nanogpt.tokenizer import EOT, GPT2_PATTERN, Tokenizer

SUBJECTS = ["the cat", "a dog", "my friend", "the teacher", "one bird", "her brother"]
VERBS = ["sees", "likes", "finds", "takes", "wants", "helps"]
OBJECTS = ["the ball", "a book", "some bread", "the garden", "an apple", "the river"]


def byte_tokenizer() -> Tokenizer:
    """256 byte tokens and end-of-text: vocab 257, no merges, so every text encodes byte by byte."""
    return Tokenizer(
        name="bytes",
        pattern=GPT2_PATTERN,
        mergeable_ranks={bytes([i]): i for i in range(256)},
        special_tokens={EOT: 256},
    )


def corpus(num_sentences: int, seed: int) -> str:
    """Sentences from a tiny grammar: easy to learn, so the loss falls within a few dozen steps."""
    rng = random.Random(seed)
    return " ".join(
        f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}." for _ in range(num_sentences)
    )


def make_data_dir(
    path: Path,
    *,
    train_tokens: int = 40_000,
    val_tokens: int = 4_000,
    with_mask: bool = False,
    tokenizer: Tokenizer | None = None,
) -> Path:
    """A prepared data directory (manifest, shards, tokenizer/) over the synthetic corpus."""
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer or byte_tokenizer()
    tokenizer.save(path / "tokenizer")
    splits = {}
    for split, num_tokens, seed in (("train", train_tokens, 0), ("val", val_tokens, 1)):
        tokens = np.array([tokenizer.eot_id, *tokenizer.encode(corpus(num_tokens // 20, seed))][:num_tokens])
        # Mid-training style: learn only the second half of every 16 tokens.
        mask = (np.arange(len(tokens)) % 16 >= 8).astype(np.uint8) if with_mask else None
        name = f"{split}_000000.bin"
        digest = write_shard(
            path / name,
            tokens,
            tokenizer_name=tokenizer.name,
            tokenizer_hash=tokenizer.hash,
            mask=mask,
            vocab_size=tokenizer.vocab_size,
        )
        splits[split] = (ShardInfo(file=name, num_tokens=len(tokens), sha256=digest),)
    info = TokenizerInfo.of(tokenizer, "tokenizer")
    manifest = Manifest(
        data_dir=path,
        format_version=1,
        identity=f"synthetic-{train_tokens}-{val_tokens}-{with_mask}-{tokenizer.hash[:8]}",
        tokenizer=info,
        splits=splits,
        has_mask=with_mask,
        source={"kind": "synthetic"},
    )
    write_manifest(manifest)
    return path


def tiny_config(data_dir: Path, **overrides) -> dict:
    """A config dict for a model of depth 2, width 32, context 32: a step takes milliseconds on a CPU."""
    config = {
        "model": {"depth": 2, "aspect_ratio": 16, "head_dim": 16, "sequence_len": 32},
        "data": {"train_dir": str(data_dir)},
        "train": {"num_steps": 12, "total_batch_tokens": 256, "device_batch_size": 4},
        "optim": {"matrix_lr": 0.02, "embedding_lr": 0.2, "unembedding_lr": 0.01},
        "schedule": {"kind": "wsd", "warmup_frac": 0.0, "cooldown_frac": 0.3},
        "eval": {"every_steps": 6, "val_tokens": 512},
        "checkpoint": {"every_steps": 6, "keep_last": 5},
        "device": "cpu",
        "compile": False,
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def write_run(run_dir: Path, config: dict) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file under the roots with the sha256 of its bytes (to check that nothing written was touched)."""
    return {
        str(path): hashlib.sha256(path.read_bytes()).hexdigest()
        for root in roots
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }
