"""Token shards on disk and the manifest that lists them (numpy only: the runner imports this module).

A shard is a 256-byte little-endian header, then the tokens (uint16 or uint32), then optionally one loss-mask
byte per token (1 = train on this token as a target, 0 = not; mid-training masks everything but the
assistant's replies). Documents inside the token stream are separated by the tokenizer's end-of-text token.

A prepared data directory holds `manifest.json` (written last, atomically, by `runner.data.prepare`) next to
its shards and a `tokenizer/` directory. `read_manifest` validates it; `open_shard` validates each shard.
"""

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SHARD_MAGIC = b"NSTOKENS"
SHARD_FORMAT_VERSION = 1
HEADER_BYTES = 256
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT_VERSION = 1
SPLITS = ("train", "val")

# magic, format version, token itemsize, number of tokens, has-mask flag, then two fixed-width ASCII fields.
_HEADER_STRUCT = struct.Struct("<8sIIQI")
_NAME_BYTES = 96
_HASH_BYTES = 64  # sha256 hex digest
assert _HEADER_STRUCT.size + _NAME_BYTES + _HASH_BYTES <= HEADER_BYTES


class ShardError(ValueError):
    """A shard or manifest that cannot be trusted. The message starts with the offending path."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ShardHeader:
    format_version: int
    itemsize: int
    num_tokens: int
    has_mask: bool
    tokenizer_name: str
    tokenizer_hash: str

    @property
    def dtype(self) -> np.dtype:
        return np.dtype("<u2") if self.itemsize == 2 else np.dtype("<u4")

    @property
    def file_bytes(self) -> int:
        return HEADER_BYTES + self.num_tokens * self.itemsize + (self.num_tokens if self.has_mask else 0)


def itemsize_for_vocab(vocab_size: int) -> int:
    """Bytes per token: uint16 holds ids below 65,536, larger vocabularies need uint32."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size: must be positive, got {vocab_size}")
    return 2 if vocab_size <= 2**16 else 4


def _encode_header(header: ShardHeader) -> bytes:
    name = header.tokenizer_name.encode("utf-8")
    digest = header.tokenizer_hash.encode("ascii")
    if len(name) > _NAME_BYTES:
        raise ValueError(f"tokenizer_name: longer than {_NAME_BYTES} bytes: {header.tokenizer_name!r}")
    if len(digest) != _HASH_BYTES:
        raise ValueError(f"tokenizer_hash: expected a sha256 hex digest, got {header.tokenizer_hash!r}")
    fixed = _HEADER_STRUCT.pack(
        SHARD_MAGIC, header.format_version, header.itemsize, header.num_tokens, int(header.has_mask)
    )
    raw = fixed + name.ljust(_NAME_BYTES, b"\0") + digest
    return raw.ljust(HEADER_BYTES, b"\0")


def write_shard(
    path: str | os.PathLike,
    tokens: np.ndarray,
    *,
    tokenizer_name: str,
    tokenizer_hash: str,
    mask: np.ndarray | None = None,
    vocab_size: int | None = None,
) -> str:
    """Write one shard atomically (temp file, fsync, rename) and return the sha256 hex of the file's bytes.

    The token dtype is chosen from `vocab_size` when given (so every shard of a dataset has the same dtype),
    else from the largest token id.
    """
    path = Path(path)
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"{path}: tokens must be 1-D, got shape {tokens.shape}")
    if tokens.size and (tokens.min() < 0):
        raise ValueError(f"{path}: negative token id {int(tokens.min())}")
    max_id = int(tokens.max()) if tokens.size else 0
    itemsize = itemsize_for_vocab(vocab_size if vocab_size is not None else max_id + 1)
    if vocab_size is not None and max_id >= vocab_size:
        raise ValueError(f"{path}: token id {max_id} is outside the vocabulary of size {vocab_size}")
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != tokens.shape:
            raise ValueError(f"{path}: mask shape {mask.shape} differs from tokens shape {tokens.shape}")
    header = ShardHeader(
        format_version=SHARD_FORMAT_VERSION,
        itemsize=itemsize,
        num_tokens=int(tokens.size),
        has_mask=mask is not None,
        tokenizer_name=tokenizer_name,
        tokenizer_hash=tokenizer_hash,
    )
    digest = hashlib.sha256()
    chunks = [_encode_header(header), tokens.astype(header.dtype, copy=False).tobytes()]
    if mask is not None:
        chunks.append((mask != 0).astype(np.uint8).tobytes())
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        for chunk in chunks:
            digest.update(chunk)
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return digest.hexdigest()


def read_header(path: str | os.PathLike) -> ShardHeader:
    """Parse and check a shard's header against the file's size."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
        size = path.stat().st_size
    except FileNotFoundError:
        raise ShardError(
            f"{path}: shard file is missing; delete the data directory and prepare again"
        ) from None
    except OSError as e:  # no permission, an I/O error on a network filesystem
        raise ShardError(f"{path}: cannot be read ({e.strerror})") from None
    if len(raw) < HEADER_BYTES:
        raise ShardError(f"{path}: truncated header ({len(raw)} of {HEADER_BYTES} bytes)")
    magic, version, itemsize, num_tokens, has_mask = _HEADER_STRUCT.unpack_from(raw)
    if magic != SHARD_MAGIC:
        raise ShardError(f"{path}: not a nanostudy token shard (magic {magic!r}, expected {SHARD_MAGIC!r})")
    if version != SHARD_FORMAT_VERSION:
        raise ShardError(
            f"{path}: shard format version {version}, this code reads {SHARD_FORMAT_VERSION}; delete the "
            "data directory and prepare again"
        )
    if itemsize not in (2, 4):
        raise ShardError(f"{path}: token itemsize {itemsize} (expected 2 or 4)")
    if has_mask not in (0, 1):
        raise ShardError(f"{path}: corrupt has-mask flag {has_mask}")
    offset = _HEADER_STRUCT.size
    name = raw[offset : offset + _NAME_BYTES].rstrip(b"\0").decode("utf-8", errors="replace")
    digest = raw[offset + _NAME_BYTES : offset + _NAME_BYTES + _HASH_BYTES].decode("ascii", errors="replace")
    header = ShardHeader(
        format_version=version,
        itemsize=itemsize,
        num_tokens=num_tokens,
        has_mask=bool(has_mask),
        tokenizer_name=name,
        tokenizer_hash=digest,
    )
    if size != header.file_bytes:
        problem = "truncated" if size < header.file_bytes else "has trailing bytes"
        raise ShardError(
            f"{path}: {problem}: header says {num_tokens} tokens ({header.file_bytes} bytes), file has "
            f"{size} bytes; delete the data directory and prepare again"
        )
    return header


def open_shard(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Memory-map a shard: (tokens, mask or None). Raises ShardError for a bad or truncated file."""
    header = read_header(path)
    if header.num_tokens == 0:
        empty_mask = np.zeros(0, dtype=np.uint8) if header.has_mask else None
        return np.zeros(0, dtype=header.dtype), empty_mask
    tokens = np.memmap(path, dtype=header.dtype, mode="r", offset=HEADER_BYTES, shape=(header.num_tokens,))
    mask = None
    if header.has_mask:
        mask_offset = HEADER_BYTES + header.num_tokens * header.itemsize
        mask = np.memmap(path, dtype=np.uint8, mode="r", offset=mask_offset, shape=(header.num_tokens,))
    return tokens, mask


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------------
# The manifest


@dataclass(frozen=True, kw_only=True, slots=True)
class ShardInfo:
    file: str  # relative to the data directory
    num_tokens: int
    sha256: str


@dataclass(frozen=True, kw_only=True, slots=True)
class TokenizerInfo:
    name: str
    hash: str
    vocab_size: int
    eot_id: int
    path: str  # where the tokenizer lives, relative to the data directory (or absolute)
    special_tokens: dict[str, int]

    @classmethod
    def of(cls, tokenizer, path: str) -> "TokenizerInfo":
        """The manifest's record of a `nanogpt.tokenizer.Tokenizer` saved at `path`."""
        return cls(
            name=tokenizer.name,
            hash=tokenizer.hash,
            vocab_size=tokenizer.vocab_size,
            eot_id=tokenizer.eot_id,
            path=path,
            special_tokens=tokenizer.special_tokens,
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Manifest:
    data_dir: Path
    format_version: int
    identity: str  # hash of (source spec, tokenizer hash, shard size, val fraction)
    tokenizer: TokenizerInfo
    splits: dict[str, tuple[ShardInfo, ...]]
    has_mask: bool
    source: dict  # the source spec as prepared, its fingerprint and document/byte counts (for humans)

    @property
    def tokenizer_dir(self) -> Path:
        return self.data_dir / self.tokenizer.path

    def num_tokens(self, split: str) -> int:
        return sum(s.num_tokens for s in self.shards(split))

    def shards(self, split: str) -> tuple[ShardInfo, ...]:
        if split not in self.splits:
            raise ValueError(f"split: {split!r} is not one of {sorted(self.splits)} in {self.data_dir}")
        return self.splits[split]

    def shard_paths(self, split: str) -> list[Path]:
        return [self.data_dir / s.file for s in self.shards(split)]

    def to_json(self) -> dict:
        return {
            "format_version": self.format_version,
            "identity": self.identity,
            "tokenizer": {
                "name": self.tokenizer.name,
                "hash": self.tokenizer.hash,
                "vocab_size": self.tokenizer.vocab_size,
                "eot_id": self.tokenizer.eot_id,
                "path": self.tokenizer.path,
                "special_tokens": self.tokenizer.special_tokens,
            },
            "has_mask": self.has_mask,
            "source": self.source,
            "splits": {
                split: [{"file": s.file, "num_tokens": s.num_tokens, "sha256": s.sha256} for s in shards]
                for split, shards in self.splits.items()
            },
        }


def write_manifest(manifest: Manifest) -> Path:
    """Write `manifest.json` atomically: its presence means the directory is complete."""
    path = Path(manifest.data_dir) / MANIFEST_NAME
    tmp = path.with_name(f".{MANIFEST_NAME}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(manifest.to_json(), f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def _require(obj: dict, key: str, kind: type | tuple[type, ...], where: Path):
    if not isinstance(obj, dict) or key not in obj:
        raise ShardError(
            f"{where}: missing key {key!r}; the manifest is corrupt, delete it and prepare again"
        )
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ShardError(f"{where}: key {key!r} has the wrong type ({type(value).__name__})")
    return value


def read_manifest(data_dir: str | os.PathLike) -> Manifest:
    """Load and validate `DATA_DIR/manifest.json`; every listed shard file must exist."""
    data_dir = Path(data_dir)
    path = data_dir / MANIFEST_NAME
    if not path.is_file():
        raise ShardError(
            f"{path}: no manifest; this directory is not a prepared dataset (or its preparation did not "
            "finish): run `nanostudy prepare`"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ShardError(f"{path}: not valid UTF-8 JSON ({e}); delete it and prepare again") from None
    except OSError as e:
        raise ShardError(f"{path}: cannot be read ({e.strerror})") from None
    version = _require(raw, "format_version", int, path)
    if version != MANIFEST_FORMAT_VERSION:
        raise ShardError(f"{path}: manifest format {version}, this code reads {MANIFEST_FORMAT_VERSION}")
    tok = _require(raw, "tokenizer", dict, path)
    specials = _require(tok, "special_tokens", dict, path)
    tokenizer = TokenizerInfo(
        name=_require(tok, "name", str, path),
        hash=_require(tok, "hash", str, path),
        vocab_size=_require(tok, "vocab_size", int, path),
        eot_id=_require(tok, "eot_id", int, path),
        path=_require(tok, "path", str, path),
        special_tokens={str(name): _require(specials, name, int, path) for name in specials},
    )
    splits: dict[str, tuple[ShardInfo, ...]] = {}
    raw_splits = _require(raw, "splits", dict, path)
    for split in SPLITS:
        entries = _require(raw_splits, split, list, path)
        shards = []
        for entry in entries:
            info = ShardInfo(
                file=_require(entry, "file", str, path),
                num_tokens=_require(entry, "num_tokens", int, path),
                sha256=_require(entry, "sha256", str, path),
            )
            if not (data_dir / info.file).is_file():
                raise ShardError(
                    f"{data_dir / info.file}: listed in {path} but missing; delete {data_dir} and prepare "
                    "again"
                )
            shards.append(info)
        splits[split] = tuple(shards)
    return Manifest(
        data_dir=data_dir,
        format_version=version,
        identity=_require(raw, "identity", str, path),
        tokenizer=tokenizer,
        splits=splits,
        has_mask=_require(raw, "has_mask", bool, path),
        source=_require(raw, "source", dict, path),
    )


def verify_shards(manifest: Manifest) -> None:
    """Check every shard's checksum, header and tokenizer against the manifest (reads every byte)."""
    for split in SPLITS:
        for info in manifest.shards(split):
            shard_path = manifest.data_dir / info.file
            header = read_header(shard_path)
            check_shard_header(shard_path, header, manifest, expected_tokens=info.num_tokens)
            if file_sha256(shard_path) != info.sha256:
                raise ShardError(
                    f"{shard_path}: checksum differs from {MANIFEST_NAME}; delete {manifest.data_dir} and "
                    "prepare again"
                )


def check_shard_header(path: Path, header: ShardHeader, manifest: Manifest, *, expected_tokens: int) -> None:
    """A shard must belong to the manifest's tokenizer and hold the number of tokens the manifest says."""
    if header.tokenizer_hash != manifest.tokenizer.hash:
        raise ShardError(
            f"{path}: written with tokenizer {header.tokenizer_name} ({header.tokenizer_hash[:12]}), the "
            f"manifest says {manifest.tokenizer.name} ({manifest.tokenizer.hash[:12]}); delete the data "
            "directory and prepare again"
        )
    if header.num_tokens != expected_tokens:
        raise ShardError(f"{path}: {header.num_tokens} tokens, the manifest says {expected_tokens}")
    if header.has_mask != manifest.has_mask:
        raise ShardError(f"{path}: loss mask presence differs from the manifest")


def tokens_available(data_dir: str | os.PathLike, split: str = "train") -> int:
    """Number of tokens in a prepared split (the planner compares it with a cell's token budget)."""
    return read_manifest(data_dir).num_tokens(split)


def epochs_needed(data_dir: str | os.PathLike, num_tokens: int, split: str = "train") -> float:
    """Passes over the split that a run of `num_tokens` training tokens makes (> 1: it repeats data)."""
    available = tokens_available(data_dir, split)
    if available == 0:
        raise ShardError(f"{data_dir}: the {split} split holds no tokens")
    return num_tokens / available
