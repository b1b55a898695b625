"""TokenLoader: shapes, targets, masks, disjoint ranks, epochs, exact resume, validation from the start."""

import itertools
import json

import numpy as np
import pytest
import torch

from nanogpt.data import TokenLoader, tokens_available
from nanogpt.shards import Manifest, ShardError, ShardInfo, TokenizerInfo, write_manifest, write_shard

HASH = "ef" * 32


def make_data_dir(path, train_sizes=(1000, 700, 301), val_sizes=(200,), with_mask=False, masked_out=()):
    """Shards whose token at stream position p is p (mod 60000): every read can be checked by position.
    With a mask, the splits in `masked_out` have it 0 throughout."""
    path.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split, sizes in (("train", train_sizes), ("val", val_sizes)):
        start, infos = (0 if split == "train" else 50_000), []
        for i, n in enumerate(sizes):
            tokens = np.arange(start, start + n) % 60_000
            mask = (tokens % 3 != 0).astype(np.uint8) if with_mask else None
            if mask is not None and split in masked_out:
                mask[:] = 0
            name = f"{split}_{i:06d}.bin"
            digest = write_shard(
                path / name, tokens, tokenizer_name="t", tokenizer_hash=HASH, mask=mask, vocab_size=60_000
            )
            infos.append(ShardInfo(file=name, num_tokens=n, sha256=digest))
            start += n
        splits[split] = tuple(infos)
    tokenizer = TokenizerInfo(
        name="t",
        hash=HASH,
        vocab_size=60_000,
        eot_id=0,
        path="tokenizer",
        special_tokens={"<|endoftext|>": 0},
    )
    write_manifest(
        Manifest(
            data_dir=path,
            format_version=1,
            identity="x",
            tokenizer=tokenizer,
            splits=splits,
            has_mask=with_mask,
            source={},
        )
    )
    return path


def test_shapes_targets_and_disjoint_ranks(tmp_path):
    data = make_data_dir(tmp_path)
    loaders = [
        TokenLoader(data, split="train", batch_size=2, seq_len=8, rank=r, world_size=3) for r in range(3)
    ]
    assert loaders[0].tokens_per_epoch == tokens_available(data, "train") == 2001
    # 2000 // 8 = 250 sequences (the last token is only a target), 6 a step.
    assert loaders[0].blocks_per_epoch == 250 // (3 * 2)
    seen, rows = [], []
    for _ in range(loaders[0].blocks_per_epoch):
        for loader in loaders:
            x, y = loader.next_batch()
            assert x.shape == y.shape == (2, 8) and x.dtype == y.dtype == torch.int64
            # A row is a sequence of the stream (tokens equal their positions): 8 consecutive positions,
            # starting on a multiple of 8, its targets the same shifted by one.
            for row_x, row_y in zip(x.tolist(), y.tolist(), strict=True):
                assert row_x == list(range(row_x[0], row_x[0] + 8)) and row_x[0] % 8 == 0
                assert row_y == [t + 1 for t in row_x]
                rows.append(row_x[0] // 8)
            seen.append(set(x.flatten().tolist()))
    union = set().union(*seen)
    assert len(union) == sum(len(s) for s in seen)  # no input token read twice by any rank in an epoch
    assert all(loader.epoch == 1 for loader in loaders)
    # The sequences come shuffled, not in runs of the stream: a step mixes the whole corpus.
    jumps = sum(abs(a - b) > 1 for a, b in itertools.pairwise(rows))
    assert rows != sorted(rows) and jumps > len(rows) // 2


def _step_tokens(data, *, world_size, micro_batches, batch_size, steps, seed=3):
    """The (input, target) pairs of each step, over every rank and micro-batch, as a sorted list."""
    loaders = [
        TokenLoader(
            data,
            split="train",
            batch_size=batch_size,
            seq_len=8,
            rank=r,
            world_size=world_size,
            micro_batches=micro_batches,
            seed=seed,
        )
        for r in range(world_size)
    ]
    out = []
    for _ in range(steps):
        pairs = []
        for loader in loaders:
            for _ in range(micro_batches):
                x, y = loader.next_batch()
                pairs += list(zip(x.flatten().tolist(), y.flatten().tolist(), strict=True))
        out.append(sorted(pairs))
    return out


def test_a_steps_tokens_do_not_depend_on_how_it_is_split_into_ranks_and_micro_batches(tmp_path):
    """12 sequences per step read as 1 rank × 1 × 12, 1 × 4 × 3, 2 × 3 × 2, 3 × 2 × 2, 4 × 1 × 3, 6 × 2 × 1:
    the same tokens at every step, over more than an epoch (250 sequences // 12 = 20 steps), so runs on 1
    and N GPUs with one total batch train on the same data."""
    data = make_data_dir(tmp_path)
    splits = [(1, 1, 12), (1, 4, 3), (2, 3, 2), (3, 2, 2), (4, 1, 3), (6, 2, 1)]
    runs = [_step_tokens(data, world_size=w, micro_batches=g, batch_size=b, steps=25) for w, g, b in splits]
    assert all(run == runs[0] for run in runs[1:])
    assert len({tuple(step) for step in runs[0]}) == 25  # the next epoch groups its sequences anew
    assert runs[0] != _step_tokens(data, world_size=1, micro_batches=1, batch_size=12, steps=25, seed=4)


def test_training_order_is_seeded_and_changes_per_epoch(tmp_path):
    data = make_data_dir(tmp_path)

    def first_tokens(seed, steps):
        loader = TokenLoader(data, split="train", batch_size=1, seq_len=16, seed=seed)
        return [int(loader.next_batch()[0][0, 0]) for _ in range(steps)]

    per_epoch = 2000 // 16  # sequences, one a step
    a = first_tokens(0, 2 * per_epoch)
    assert a == first_tokens(0, 2 * per_epoch)
    assert a != first_tokens(1, 2 * per_epoch)
    assert sorted(a[:per_epoch]) == sorted(a[per_epoch:]) and a[:per_epoch] != a[per_epoch:]


def test_resume_is_exact(tmp_path):
    data = make_data_dir(tmp_path)
    reference = TokenLoader(data, split="train", batch_size=3, seq_len=10, seed=5)
    expected = [reference.next_batch() for _ in range(150)]  # crosses two epoch boundaries
    first = TokenLoader(data, split="train", batch_size=3, seq_len=10, seed=5)
    for _ in range(77):
        first.next_batch()
    state = json.loads(json.dumps(first.state_dict()))
    second = TokenLoader(data, split="train", batch_size=3, seq_len=10, seed=5)
    second.load_state_dict(state)
    for x_expected, y_expected in expected[77:]:
        x, y = second.next_batch()
        assert torch.equal(x, x_expected) and torch.equal(y, y_expected)
    assert second.epoch == reference.epoch == 2


def test_resume_within_a_step_is_exact(tmp_path):
    data = make_data_dir(tmp_path)
    reference = TokenLoader(data, split="train", batch_size=3, seq_len=10, micro_batches=4, seed=5)
    expected = [reference.next_batch() for _ in range(10)]
    first = TokenLoader(data, split="train", batch_size=3, seq_len=10, micro_batches=4, seed=5)
    for _ in range(6):  # a step and a half
        first.next_batch()
    second = TokenLoader(data, split="train", batch_size=3, seq_len=10, micro_batches=4, seed=5)
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert (second.step_in_epoch, second.micro_batch) == (1, 2)
    for x_expected, _ in expected[6:]:
        assert torch.equal(second.next_batch()[0], x_expected)


def test_resume_with_other_geometry_is_refused(tmp_path):
    data = make_data_dir(tmp_path)
    state = TokenLoader(data, split="train", batch_size=3, seq_len=10).state_dict()
    with pytest.raises(ValueError, match="batch_size is 3 in the checkpoint but 4 now"):
        TokenLoader(data, split="train", batch_size=4, seq_len=10).load_state_dict(state)
    with pytest.raises(ValueError, match="micro_batches is 1 in the checkpoint but 2 now"):
        TokenLoader(data, split="train", batch_size=3, seq_len=10, micro_batches=2).load_state_dict(state)


def test_a_state_of_an_earlier_layout_is_refused(tmp_path):
    """Layouts 1 (no `layout` key) and 2 read contiguous blocks of the stream: other tokens than the
    shuffled sequences of now, so no exact resume from them."""
    data = make_data_dir(tmp_path)
    loader = TokenLoader(data, split="train", batch_size=3, seq_len=10, seed=5)
    current = loader.state_dict()
    layout_1 = {k: v for k, v in current.items() if k not in ("layout", "micro_batch", "micro_batches")}
    for old, number in ((layout_1, 1), ({**current, "layout": 2}, 2)):
        with pytest.raises(ValueError, match=f"written with data layout {number} .*cannot resume exactly"):
            loader.load_state_dict(old)


def test_val_reads_in_order_from_start(tmp_path):
    data = make_data_dir(tmp_path)
    loader = TokenLoader(data, split="val", batch_size=2, seq_len=5)
    x, _ = loader.next_batch()
    assert x.flatten().tolist() == list(range(50_000, 50_005)) + list(range(50_005, 50_010))
    loader.next_batch()
    loader.reset()
    assert torch.equal(loader.next_batch()[0], x)


def test_mask_turns_targets_into_minus_one(tmp_path):
    data = make_data_dir(tmp_path, with_mask=True)
    loader = TokenLoader(data, split="val", batch_size=1, seq_len=30)
    x, y = loader.next_batch()
    positions = torch.arange(50_001, 50_031)
    expected = torch.where(positions % 3 != 0, positions, torch.full_like(positions, -1))
    assert torch.equal(y[0], expected)
    assert torch.equal(x[0], positions - 1)


@pytest.mark.parametrize("split", ["train", "val"])
def test_a_split_whose_loss_mask_is_0_throughout_is_refused(tmp_path, split):
    """Chat data prepared before preparation refused it: no assistant token in a split, nothing to train or
    validate on. The loader says so, naming the data; the other split loads."""
    data = make_data_dir(tmp_path, with_mask=True, masked_out=(split,))
    with pytest.raises(ShardError, match=f"^{tmp_path}: the {split} split has no token to train on"):
        TokenLoader(data, split=split, batch_size=1, seq_len=30)
    other = "val" if split == "train" else "train"
    assert TokenLoader(data, split=other, batch_size=1, seq_len=30).next_batch()[1].max() > 0


def test_too_little_data_and_bad_arguments(tmp_path):
    data = make_data_dir(tmp_path)
    with pytest.raises(ShardError, match="fewer than one step needs"):
        TokenLoader(data, split="val", batch_size=4, seq_len=64)
    with pytest.raises(ValueError, match="rank"):
        TokenLoader(data, split="train", batch_size=1, seq_len=4, rank=2, world_size=2)
    with pytest.raises(ValueError, match="split"):
        TokenLoader(data, split="test", batch_size=1, seq_len=4)


def test_foreign_shard_is_refused(tmp_path):
    data = make_data_dir(tmp_path)
    write_shard(data / "train_000001.bin", np.arange(700), tokenizer_name="other", tokenizer_hash="00" * 32)
    with pytest.raises(ShardError, match=r"train_000001\.bin: written with tokenizer other"):
        TokenLoader(data, split="train", batch_size=1, seq_len=4)
