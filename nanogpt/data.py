"""The training and validation loader over a prepared data directory (see nanogpt/shards.py).

The split's shards form one token stream. Each optimizer step takes one *block* of the stream: its
S = world_size × micro_batches × batch_size sequences of seq_len tokens, plus the one token that is the
last sequence's last target, so S × T + 1 tokens. Rank r owns the r-th contiguous run of
micro_batches × batch_size sequences in the block and its k-th micro-batch is the k-th run of batch_size
sequences of those (inputs are B×T consecutive tokens, targets the same shifted by one). So the tokens of
a step depend only on S and T, never on how the step is split into ranks and micro-batches: a run on 1
GPU and one on 8 with the same total batch read the same tokens at every step, and no input token is read
by two ranks. The training split visits its blocks in a seeded random order that changes every epoch; the
validation split always reads its blocks in order from the start, so every evaluation sees the same
tokens. Targets whose loss-mask byte is 0 become -1, which the model's loss ignores.
"""

import os

import numpy as np
import torch

from nanogpt.shards import (
    Manifest,
    ShardError,
    check_shard_header,
    epochs_needed,
    open_shard,
    read_header,
    read_manifest,
    tokens_available,
)

__all__ = ["TokenLoader", "epochs_needed", "tokens_available"]

LAYOUT = 2  # the block layout above; 1: a block of world_size × (B×T + 1) tokens per micro-batch


class TokenLoader:
    def __init__(
        self,
        data_dir: str | os.PathLike,
        *,
        split: str,
        batch_size: int,
        seq_len: int,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
        seed: int = 0,
        micro_batches: int = 1,
    ):
        if batch_size < 1 or seq_len < 1 or micro_batches < 1:
            raise ValueError(
                "batch_size, seq_len and micro_batches must be positive, got "
                f"{batch_size}, {seq_len} and {micro_batches}"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank: {rank} is not in [0, world_size={world_size})")
        self.manifest: Manifest = read_manifest(data_dir)
        self.split = split
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.rank = rank
        self.world_size = world_size
        self.micro_batches = micro_batches
        self.device = torch.device(device)
        self.seed = seed
        self.shuffle = split == "train"

        self._tokens: list[np.ndarray] = []
        self._masks: list[np.ndarray | None] = []
        for info, path in zip(self.manifest.shards(split), self.manifest.shard_paths(split), strict=True):
            check_shard_header(path, read_header(path), self.manifest, expected_tokens=info.num_tokens)
            tokens, mask = open_shard(path)
            self._tokens.append(tokens)
            self._masks.append(mask)
        # _starts[i] is the stream offset of shard i's first token.
        self._starts = np.cumsum([0] + [len(t) for t in self._tokens])
        self.tokens_per_epoch = int(self._starts[-1])
        self.window_tokens = batch_size * seq_len + 1  # one micro-batch's inputs and its last target
        self.block_tokens = world_size * micro_batches * batch_size * seq_len + 1
        self.blocks_per_epoch = self.tokens_per_epoch // self.block_tokens
        if self.blocks_per_epoch == 0:
            raise ShardError(
                f"{self.manifest.data_dir}: the {split} split holds {self.tokens_per_epoch:,} tokens, "
                f"fewer than one step needs ({world_size} ranks × {micro_batches} micro-batches × "
                f"{batch_size} × {seq_len} + 1 = {self.block_tokens:,}); "
                "prepare more data or use a smaller batch"
            )
        self.epoch = 0
        self.step_in_epoch = 0
        self.micro_batch = 0  # the next micro-batch of the current block
        self._order: np.ndarray | None = None
        self._pin = self.device.type == "cuda"

    def __repr__(self) -> str:
        return (
            f"TokenLoader({self.manifest.data_dir}, split={self.split}, rank={self.rank}/{self.world_size}, "
            f"micro_batches={self.micro_batches}, epoch={self.epoch}, "
            f"step_in_epoch={self.step_in_epoch}/{self.blocks_per_epoch})"
        )

    @property
    def tokens_per_step(self) -> int:
        """Input tokens all ranks consume per step (what a FLOP budget counts)."""
        return self.world_size * self.micro_batches * self.batch_size * self.seq_len

    def epochs_for(self, num_steps: int) -> float:
        """How many passes over this split `num_steps` optimizer steps (blocks) make (above 1: the run
        repeats data)."""
        return num_steps / self.blocks_per_epoch

    def _block_order(self) -> np.ndarray:
        if self._order is None:
            if self.shuffle:
                rng = np.random.default_rng([self.seed, self.epoch])
                self._order = rng.permutation(self.blocks_per_epoch)
            else:
                self._order = np.arange(self.blocks_per_epoch)
        return self._order

    def _read(self, start: int, length: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Tokens (and mask) of the stream in [start, start + length), across shard boundaries."""
        tokens, masks = [], []
        shard = int(np.searchsorted(self._starts, start, side="right")) - 1
        while length > 0:
            offset = start - int(self._starts[shard])
            take = min(length, len(self._tokens[shard]) - offset)
            tokens.append(self._tokens[shard][offset : offset + take])
            mask = self._masks[shard]
            masks.append(None if mask is None else mask[offset : offset + take])
            start, length, shard = start + take, length - take, shard + 1
        token_array = np.concatenate(tokens).astype(np.int64)
        mask_array = None if masks[0] is None else np.concatenate(masks)
        return token_array, mask_array

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y), both int64 of shape (B, T); y is -1 where the target's loss mask is 0."""
        block = int(self._block_order()[self.step_in_epoch])
        sequence = (self.rank * self.micro_batches + self.micro_batch) * self.batch_size
        self.micro_batch += 1
        if self.micro_batch == self.micro_batches:
            self.micro_batch = 0
            self.step_in_epoch += 1
            if self.step_in_epoch == self.blocks_per_epoch:
                self.epoch, self.step_in_epoch, self._order = self.epoch + 1, 0, None
        start = block * self.block_tokens + sequence * self.seq_len
        tokens, mask = self._read(start, self.window_tokens)
        x = torch.from_numpy(tokens[:-1]).view(self.batch_size, self.seq_len)
        targets = tokens[1:].copy()
        if mask is not None:
            targets[mask[1:] == 0] = -1
        y = torch.from_numpy(targets).view(self.batch_size, self.seq_len)
        if self._pin:
            x, y = x.pin_memory(), y.pin_memory()
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def reset(self) -> None:
        """Back to the start of epoch 0 (the validation loop calls this before every evaluation)."""
        self.epoch, self.step_in_epoch, self.micro_batch, self._order = 0, 0, 0, None

    def state_dict(self) -> dict:
        """JSON-able position; the same on every rank, since all ranks advance in lockstep."""
        return {
            "split": self.split,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "micro_batch": self.micro_batch,
            "layout": LAYOUT,
            "seed": self.seed,
            "world_size": self.world_size,
            "micro_batches": self.micro_batches,
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            "tokens_per_epoch": self.tokens_per_epoch,
            "data_identity": self.manifest.identity,
        }

    def load_state_dict(self, state: dict) -> None:
        # Resuming with another geometry or dataset would silently read different tokens: refuse.
        mine = self.state_dict()
        if state.get("layout", 1) != LAYOUT and (self.world_size, self.micro_batches) != (1, 1):
            # Layout 1 gave every rank and micro-batch its own block of B×T + 1 tokens; with one process
            # and one micro-batch per step the two layouts read the same tokens.
            raise ValueError(
                "loader state: the checkpoint was written with the data layout of an earlier version, "
                "which reads other tokens with several ranks or micro-batches: it cannot resume exactly"
            )
        state = {"micro_batches": 1, "micro_batch": 0, **state}
        for key in (
            "split",
            "seed",
            "world_size",
            "micro_batches",
            "batch_size",
            "seq_len",
            "tokens_per_epoch",
            "data_identity",
        ):
            if state.get(key) != mine[key]:
                raise ValueError(
                    f"loader state: {key} is {state.get(key)!r} in the checkpoint but {mine[key]!r} now; "
                    "an exact resume needs the same data and batch geometry"
                )
        self.epoch = int(state["epoch"])
        self.step_in_epoch = int(state["step_in_epoch"])
        self.micro_batch = int(state["micro_batch"])
        self._order = None
