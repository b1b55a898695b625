"""Two tiny checkpoints made by the real trainer on the CPU, for the chat engine, protocol, CLI and server.

- base: pretrained on the synthetic corpus (byte tokenizer, context 128);
- chat: mid-trained from it on conversations whose assistant always answers REPLY, so that it learns to say
  it and to end its turn with <|im_end|> (mode "mid-training", the byte tokenizer plus the chat markers).

Built once per test session under pytest's base temp directory (about 5 s on the CPU), whichever test
module asks first.
"""

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from trainer_fixtures import byte_tokenizer, corpus, make_data_dir, tiny_config, write_run

from nanogpt.shards import Manifest, ShardInfo, TokenizerInfo, write_manifest, write_shard
from nanogpt.tokenizer import ChatMessage, Tokenizer

REPLY = "the ball."
CONTEXT = 128


@dataclass(frozen=True)
class ChatCheckpoints:
    base: Path  # run directories
    chat: Path


def chat_checkpoints(tmp_path_factory) -> ChatCheckpoints:
    root = tmp_path_factory.getbasetemp() / "chat-checkpoints"
    done = ChatCheckpoints(base=root / "base-run", chat=root / "chat-run")
    if (root / "DONE").is_file():
        return done
    from nanogpt.train import EXIT_DONE, run

    quiet = {
        "eval": {"every_steps": None, "val_tokens": 256},
        "checkpoint": {"every_steps": None, "keep_last": 1},
    }
    base_data = make_data_dir(root / "base-data", train_tokens=20_000, val_tokens=2_000)
    config = tiny_config(
        base_data,
        model={"sequence_len": CONTEXT},
        train={"num_steps": 30, "total_batch_tokens": 1024, "device_batch_size": 8},
        **quiet,
    )
    assert run(write_run(done.base, config)) == EXIT_DONE

    chat_data = make_chat_data_dir(root / "chat-data", byte_tokenizer().with_chat_tokens())
    config = tiny_config(
        chat_data,
        mode="mid-training",
        init_from=str(done.base),
        train={"num_steps": 60, "total_batch_tokens": 1024, "device_batch_size": 8},
        **quiet,
    )
    del config["model"]  # the shape comes from the checkpoint
    assert run(write_run(done.chat, config)) == EXIT_DONE
    (root / "DONE").write_text("")
    return done


def make_chat_data_dir(path: Path, tokenizer: Tokenizer) -> Path:
    """Conversations as mid-training data: a user sentence, the assistant's REPLY; loss on the reply."""
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save(path / "tokenizer")
    splits = {}
    for split, num_conversations, seed in (("train", 400, 0), ("val", 40, 1)):
        rng = random.Random(seed)
        ids, mask = [], []
        for _ in range(num_conversations):
            question = corpus(1, rng.randrange(10**6))
            conversation = [
                ChatMessage(role="user", content=question),
                ChatMessage(role="assistant", content=REPLY),
            ]
            conversation_ids, conversation_mask = tokenizer.encode_chat(conversation)
            ids += conversation_ids
            mask += conversation_mask
        name = f"{split}_000000.bin"
        digest = write_shard(
            path / name,
            np.array(ids),
            tokenizer_name=tokenizer.name,
            tokenizer_hash=tokenizer.hash,
            mask=np.array(mask, dtype=np.uint8),
            vocab_size=tokenizer.vocab_size,
        )
        splits[split] = (ShardInfo(file=name, num_tokens=len(ids), sha256=digest),)
    info = TokenizerInfo.of(tokenizer, "tokenizer")
    write_manifest(
        Manifest(
            data_dir=path,
            format_version=1,
            identity=f"chat-{tokenizer.hash[:8]}",
            tokenizer=info,
            splits=splits,
            has_mask=True,
            source={"kind": "synthetic-chat"},
        )
    )
    return path
