"""The training and validation loader over a prepared data directory (see nanogpt/shards.py).

The split's shards form one token stream, cut into *sequences* of seq_len (T) input tokens: sequence i
holds the stream's tokens [i·T, (i+1)·T) as inputs and the same shifted by one as targets, so every token
is an input exactly once per epoch. An epoch is an order of the sequences: a seeded permutation that
changes every epoch for the training split (so a step mixes sequences from all over the corpus, however
the corpus was ordered when it was prepared), the stream's own order for the validation split (so every
evaluation sees the same tokens). Optimizer step s takes the next S = world_size × micro_batches ×
batch_size sequences of that order; rank r owns the r-th run of micro_batches × batch_size of them and its
k-th micro-batch is the k-th run of batch_size sequences of those. So the tokens of a step depend only on
S and T, never on how the step is split into ranks and micro-batches: a run on 1 GPU and one on 8 with the
same total batch read the same tokens at every step, and no sequence is read by two ranks. Targets whose
loss-mask byte is 0 become -1, which the model's loss ignores.
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

# The layout above. Earlier versions read contiguous blocks: 1, world_size × (B×T + 1) tokens per
# micro-batch in a shuffled order of blocks; 2, one block of S×T + 1 tokens per step.
LAYOUT = 3


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

        self.vocab_size = self.manifest.tokenizer.vocab_size
        self._paths = list(self.manifest.shard_paths(split))
        self._tokens: list[np.ndarray] = []
        self._masks: list[np.ndarray | None] = []
        for info, path in zip(self.manifest.shards(split), self._paths, strict=True):
            check_shard_header(path, read_header(path), self.manifest, expected_tokens=info.num_tokens)
            tokens, mask = open_shard(path)
            self._tokens.append(tokens)
            self._masks.append(mask)
        # Chat data trains only where its loss mask is 1 (the assistant's tokens): none at all trains and
        # validates on nothing, yet a run would end done. Data prepared today is refused at preparation;
        # this catches what was prepared before that check (the first shard with one ends the search).
        if self._masks and self._masks[0] is not None and not any(mask.any() for mask in self._masks):
            raise ShardError(
                f"{self.manifest.data_dir}: the {split} split has no token to train on (its loss mask, which "
                "marks the assistant's tokens of chat data, is 0 throughout); check the conversations' roles "
                "and prepare the data again"
            )
        # _starts[i] is the stream offset of shard i's first token.
        self._starts = np.cumsum([0] + [len(t) for t in self._tokens])
        self.tokens_per_epoch = int(self._starts[-1])
        # The last sequence's last target is one token past its inputs.
        self.sequences_per_epoch = max(0, self.tokens_per_epoch - 1) // seq_len
        self.sequences_per_step = world_size * micro_batches * batch_size
        self.blocks_per_epoch = self.sequences_per_epoch // self.sequences_per_step  # optimizer steps
        if self.blocks_per_epoch == 0:
            raise ShardError(
                f"{self.manifest.data_dir}: the {split} split holds {self.tokens_per_epoch:,} tokens, "
                f"fewer than one step needs ({world_size} ranks × {micro_batches} micro-batches × "
                f"{batch_size} sequences × {seq_len} + 1 = "
                f"{self.sequences_per_step * seq_len + 1:,}); prepare more data or use a smaller batch"
            )
        self.epoch = 0
        self.step_in_epoch = 0
        self.micro_batch = 0  # the next micro-batch of the current step
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

    def _sequence_order(self) -> np.ndarray:
        """This epoch's order of the sequences (uint32 where it fits: 4 bytes a sequence on every rank)."""
        if self._order is None:
            count = self.sequences_per_epoch
            if self.shuffle:
                order = np.random.default_rng([self.seed, self.epoch]).permutation(count)
            else:
                order = np.arange(count)
            self._order = order.astype(np.uint32) if count < 2**32 else order
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
        first = self.step_in_epoch * self.sequences_per_step
        first += (self.rank * self.micro_batches + self.micro_batch) * self.batch_size
        sequences = self._sequence_order()[first : first + self.batch_size]
        self.micro_batch += 1
        if self.micro_batch == self.micro_batches:
            self.micro_batch = 0
            self.step_in_epoch += 1
            if self.step_in_epoch == self.blocks_per_epoch:
                self.epoch, self.step_in_epoch, self._order = self.epoch + 1, 0, None
        T = self.seq_len
        reads = [self._read(int(i) * T, T + 1) for i in sequences]
        tokens = np.stack([r[0] for r in reads])  # (B, T + 1)
        # One max over the batch on the host: an id past the vocabulary (a damaged shard with a valid
        # header) would index past the embedding (an IndexError) or a padded row (an infinite loss).
        if tokens.max() >= self.vocab_size:
            raise self._out_of_vocabulary(sequences, tokens)
        x = torch.from_numpy(tokens[:, :-1].copy())
        targets = tokens[:, 1:].copy()
        if reads[0][1] is not None:
            mask = np.stack([r[1] for r in reads])
            targets[mask[:, 1:] == 0] = -1
        y = torch.from_numpy(targets)
        if self._pin:
            x, y = x.pin_memory(), y.pin_memory()
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def _out_of_vocabulary(self, sequences: np.ndarray, tokens: np.ndarray) -> ShardError:
        """The error for the first token of this batch past the vocabulary, naming its shard."""
        row, column = (int(i[0]) for i in np.nonzero(tokens >= self.vocab_size))
        start = int(sequences[row]) * self.seq_len + column  # its offset in the split's stream
        shard = int(np.searchsorted(self._starts, start, side="right")) - 1
        offset = start - int(self._starts[shard])
        return ShardError(
            f"{self._paths[shard]}: token id {int(tokens[row, column])} at token {offset:,} "
            f"is outside the vocabulary of {self.vocab_size} ({self.manifest.tokenizer.name}); the shard is "
            "damaged: delete the data directory and prepare again"
        )

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
        if state.get("layout", 1) != LAYOUT:
            raise ValueError(
                f"loader state: the checkpoint was written with data layout {state.get('layout', 1)} (an "
                f"earlier version read contiguous blocks of the stream), this version reads layout {LAYOUT} "
                "(shuffled sequences): the run cannot resume exactly; finish it with the version that "
                "started it, or start it again"
            )
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
        # A position past the epoch (a hand-edited or damaged checkpoint) would read no sequences, or others.
        bounds = {"epoch": None, "step_in_epoch": self.blocks_per_epoch, "micro_batch": self.micro_batches}
        for key, end in bounds.items():
            value = state[key]
            is_int = isinstance(value, int) and not isinstance(value, bool)
            if not is_int or value < 0 or (end is not None and value >= end):
                where = "a non-negative integer" if end is None else f"an integer in [0, {end})"
                raise ValueError(f"loader state: {key} is {value!r} in the checkpoint, not {where}")
        self.epoch = state["epoch"]
        self.step_in_epoch = state["step_in_epoch"]
        self.micro_batch = state["micro_batch"]
        self._order = None
