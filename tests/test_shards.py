"""Shard files and manifests: round trips, dtype choice, and every way a file can be untrustworthy."""

import json

import numpy as np
import pytest

from nanogpt.shards import (
    HEADER_BYTES,
    Manifest,
    ShardError,
    ShardInfo,
    TokenizerInfo,
    epochs_needed,
    file_sha256,
    open_shard,
    read_header,
    read_manifest,
    tokens_available,
    verify_shards,
    write_manifest,
    write_shard,
)

HASH = "ab" * 32


def test_round_trip_uint16_with_mask(tmp_path):
    tokens = np.array([5, 0, 65535, 17], dtype=np.int64)
    mask = np.array([0, 1, 1, 0])
    path = tmp_path / "s.bin"
    digest = write_shard(
        path, tokens, tokenizer_name="bpe:16", tokenizer_hash=HASH, mask=mask, vocab_size=65536
    )
    assert digest == file_sha256(path)
    header = read_header(path)
    assert (header.itemsize, header.num_tokens, header.has_mask) == (2, 4, True)
    assert (header.tokenizer_name, header.tokenizer_hash) == ("bpe:16", HASH)
    got_tokens, got_mask = open_shard(path)
    assert got_tokens.dtype == np.uint16
    np.testing.assert_array_equal(got_tokens, tokens)
    np.testing.assert_array_equal(got_mask, mask)
    assert path.stat().st_size == HEADER_BYTES + 4 * 2 + 4


def test_large_vocab_uses_uint32_and_no_mask(tmp_path):
    tokens = np.array([70000, 1, 2])
    path = tmp_path / "s.bin"
    write_shard(path, tokens, tokenizer_name="big", tokenizer_hash=HASH, vocab_size=100_000)
    got, mask = open_shard(path)
    assert got.dtype == np.uint32 and mask is None
    np.testing.assert_array_equal(got, tokens)
    # The dtype follows the vocabulary, not the ids in this one shard.
    write_shard(path, np.array([1, 2]), tokenizer_name="big", tokenizer_hash=HASH, vocab_size=100_000)
    assert read_header(path).itemsize == 4


def test_token_outside_vocab_is_refused(tmp_path):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        write_shard(
            tmp_path / "s.bin", np.array([10]), tokenizer_name="t", tokenizer_hash=HASH, vocab_size=10
        )


def test_no_temp_file_left_behind(tmp_path):
    write_shard(tmp_path / "s.bin", np.arange(10), tokenizer_name="t", tokenizer_hash=HASH)
    assert [p.name for p in tmp_path.iterdir()] == ["s.bin"]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b"XXXXXXXX" + b[8:], "not a nanostudy token shard"),
        (lambda b: b[:-3], "truncated"),
        (lambda b: b + b"\0", "trailing bytes"),
        (lambda b: b[:100], "truncated header"),
        (lambda b: b[:8] + (99).to_bytes(4, "little") + b[12:], "format version 99"),
        (lambda b: b[:12] + (3).to_bytes(4, "little") + b[16:], "itemsize 3"),
    ],
)
def test_bad_shards_raise_with_the_path(tmp_path, damage, message):
    path = tmp_path / "s.bin"
    write_shard(path, np.arange(50), tokenizer_name="t", tokenizer_hash=HASH, mask=np.ones(50))
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ShardError, match=message) as info:
        open_shard(path)
    assert str(info.value).startswith(str(path))


def test_missing_shard(tmp_path):
    with pytest.raises(ShardError, match="missing"):
        open_shard(tmp_path / "nope.bin")


def _data_dir(tmp_path, tokens_per_shard=(100, 50), val=(30,), tokenizer_hash=HASH):
    splits = {}
    for split, sizes in (("train", tokens_per_shard), ("val", val)):
        infos = []
        for i, n in enumerate(sizes):
            name = f"{split}_{i:06d}.bin"
            digest = write_shard(tmp_path / name, np.arange(n) % 7, tokenizer_name="t", tokenizer_hash=HASH)
            infos.append(ShardInfo(file=name, num_tokens=n, sha256=digest))
        splits[split] = tuple(infos)
    tokenizer = TokenizerInfo(
        name="t",
        hash=tokenizer_hash,
        vocab_size=7,
        eot_id=6,
        path="tokenizer",
        special_tokens={"<|endoftext|>": 6},
    )
    manifest = Manifest(
        data_dir=tmp_path,
        format_version=1,
        identity="id",
        tokenizer=tokenizer,
        splits=splits,
        has_mask=False,
        source={"name": "test"},
    )
    write_manifest(manifest)
    return manifest


def test_manifest_round_trip_and_counts(tmp_path):
    written = _data_dir(tmp_path)
    read = read_manifest(tmp_path)
    assert read == written
    assert tokens_available(tmp_path, "train") == 150
    assert tokens_available(tmp_path, "val") == 30
    assert epochs_needed(tmp_path, 300) == pytest.approx(2.0)
    verify_shards(read)


def test_manifest_problems(tmp_path):
    with pytest.raises(ShardError, match="no manifest"):
        read_manifest(tmp_path)
    _data_dir(tmp_path)
    (tmp_path / "train_000001.bin").unlink()
    with pytest.raises(ShardError, match=r"train_000001\.bin: listed in .* but missing"):
        read_manifest(tmp_path)
    raw = json.loads((tmp_path / "manifest.json").read_text())
    del raw["tokenizer"]["hash"]
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ShardError, match="missing key 'hash'"):
        read_manifest(tmp_path)
    raw["tokenizer"]["hash"] = "ab" * 32
    raw["tokenizer"]["special_tokens"]["<|endoftext|>"] = "six"
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ShardError, match=r"manifest\.json: key '<\|endoftext\|>' has the wrong type \(str\)"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ShardError, match="not valid UTF-8 JSON"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_bytes(json.dumps(raw).encode("utf-16"))
    with pytest.raises(ShardError, match=r"manifest\.json: not valid UTF-8 JSON"):
        read_manifest(tmp_path)


def test_verify_catches_changed_bytes_and_foreign_tokenizer(tmp_path):
    manifest = _data_dir(tmp_path)
    path = tmp_path / "train_000000.bin"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(ShardError, match="checksum"):
        verify_shards(manifest)
    other = _data_dir(tmp_path, tokenizer_hash="cd" * 32)
    with pytest.raises(ShardError, match="written with tokenizer"):
        verify_shards(other)
