"""`nanostudy prepare`: a source and a tokenizer in, a data directory of token shards out.

The data directory's name carries a hash of everything that decides its bytes (source spec and the files it
currently covers, tokenizer hash, shard size, validation fraction), so studies that ask for the same data
share one directory and a second preparation finds the manifest and does nothing. One process at a time
prepares a directory (`runner.data.lock`): a second one started meanwhile waits, then finds it prepared.

Resumable: shards are written in order with atomic renames. After every chunk of documents that completed a
shard, `.prepare/state.json` records how many source documents are consumed, the finished shards, and (in
a numbered file beside it) the tokens already tokenized but not yet in a shard. An interrupted run resumes
from there and produces the same bytes as an uninterrupted one. The manifest is written last.
"""

import hashlib
import itertools
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nanogpt.shards import (
    MANIFEST_NAME,
    SPLITS,
    Manifest,
    ShardError,
    ShardInfo,
    TokenizerInfo,
    open_shard,
    read_header,
    read_manifest,
    write_manifest,
    write_shard,
)
from nanogpt.tokenizer import Tokenizer, TokenizerError, load_tokenizer
from runner.data.lock import exclusive
from runner.data.sources import (
    SourceError,
    SourceSpec,
    check_source,
    estimate_bytes,
    fingerprint,
    iter_documents,
    parse_bytes,
)
from runner.data.tokenize import TokenizePool, chunked, is_validation

FORMAT_VERSION = 1
DEFAULT_SHARD_TOKENS = 50_000_000
DEFAULT_VAL_FRACTION = 0.01
DEFAULT_TOKENIZER_TRAIN_BYTES = 100_000_000
STATE_DIR = ".prepare"


@dataclass(frozen=True, kw_only=True, slots=True)
class PrepareConfig:
    source: SourceSpec
    tokenizer: str  # "gpt2", "bpe:<vocab_size>", or a tokenizer directory
    shard_tokens: int = DEFAULT_SHARD_TOKENS
    val_fraction: float = DEFAULT_VAL_FRACTION
    tokenizer_train_bytes: int = DEFAULT_TOKENIZER_TRAIN_BYTES  # text a bpe:<n> tokenizer is trained on

    def __post_init__(self):
        if not isinstance(self.tokenizer, str):
            raise ValueError(
                f"tokenizer: expected gpt2, bpe:<vocab size> or a directory, got {self.tokenizer!r}"
            )
        for key, kind in (
            ("shard_tokens", int),
            ("tokenizer_train_bytes", int),
            ("val_fraction", int | float),
        ):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, kind):
                raise ValueError(f"{key}: expected a number, got {type(value).__name__} ({value!r})")
        if self.shard_tokens < 1:
            raise ValueError(f"shard_tokens: must be positive, got {self.shard_tokens}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction: must be in [0, 1), got {self.val_fraction}")
        if self.val_fraction == 0 and self.source.name != "task-mixture":
            # Only task-mixture brings its own validation split; elsewhere nothing would be held out.
            raise ValueError(
                f"val_fraction: 0 would leave the validation split of {self.source.name} empty (the trainer "
                "needs one); give a fraction such as 0.01"
            )
        if self.tokenizer.startswith("bpe:"):
            bpe_vocab_size(self.tokenizer)

    @classmethod
    def from_dict(cls, raw: dict) -> "PrepareConfig":
        """From a study file's `data:` mapping: source, tokenizer, and optionally the sizes."""
        known = {"source", "tokenizer", "shard_tokens", "val_fraction", "tokenizer_train_bytes"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"data: unknown key {unknown[0]!r}; keys are {', '.join(sorted(known))}")
        for key in ("source", "tokenizer"):
            if key not in raw:
                raise ValueError(f"data: missing key {key!r}")
        values = dict(raw)
        values["source"] = SourceSpec.from_dict(raw["source"])
        if "tokenizer_train_bytes" in values:
            values["tokenizer_train_bytes"] = parse_bytes(
                values["tokenizer_train_bytes"], key="tokenizer_train_bytes"
            )
        return cls(**values)


@dataclass(frozen=True, kw_only=True, slots=True)
class PrepareResult:
    data_dir: Path
    status: str  # "prepared" | "already prepared" | "interrupted"
    manifest: Manifest | None


def bpe_vocab_size(spec: str) -> int:
    try:
        vocab_size = int(spec.removeprefix("bpe:"))
    except ValueError:
        raise ValueError(f"tokenizer: {spec!r} should be bpe:<vocab size>, e.g. bpe:16384") from None
    from runner.data.bpe import MIN_VOCAB_SIZE

    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"tokenizer: {spec!r}: the vocabulary needs at least {MIN_VOCAB_SIZE} ids")
    return vocab_size


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def resolve_tokenizer(config: PrepareConfig, *, root: Path, progress: bool = True) -> Tokenizer:
    """Load the tokenizer the config names, training a `bpe:<n>` one on the source first if needed."""
    if config.tokenizer.startswith("bpe:"):
        tokenizer = trained_tokenizer(config, root=root, progress=progress)
        # The trainer's thread pool has run in this process; tell `tokenizers` that the tokenizing workers
        # forked next do not use it (otherwise each prints a deadlock warning).
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    else:
        tokenizer = load_tokenizer(config.tokenizer)
    return tokenizer.with_chat_tokens() if config.source.is_chat else tokenizer


def _bpe_recipe(config: PrepareConfig) -> dict:
    """Everything that decides a trained tokenizer: it is cached under a hash of this."""
    from nanogpt.tokenizer import GPT4_PATTERN

    return {
        "source": config.source.to_dict(),
        "fingerprint": fingerprint(config.source),
        "vocab_size": bpe_vocab_size(config.tokenizer),
        "train_bytes": config.tokenizer_train_bytes,
        "val_fraction": config.val_fraction,
        "pattern": GPT4_PATTERN,
    }


def _trained_tokenizer_dir(config: PrepareConfig, root: Path, recipe: dict | None = None) -> Path:
    recipe = recipe or _bpe_recipe(config)
    return Path(root) / "tokenizers" / f"bpe{recipe['vocab_size']}-{_digest(recipe)[:12]}"


def trained_tokenizer(config: PrepareConfig, *, root: Path, progress: bool = True) -> Tokenizer:
    """A BPE trained on the source's training documents (never its validation ones), cached by inputs."""
    recipe = _bpe_recipe(config)
    directory = _trained_tokenizer_dir(config, root, recipe)
    if (directory / "tokenizer.json").is_file():
        return load_tokenizer(directory)
    with exclusive(directory, root=root, doing="training the tokenizer"):
        # Another process may have trained it while this one waited for the lock.
        if (directory / "tokenizer.json").is_file():
            return load_tokenizer(directory)
        return _train_tokenizer(config, recipe, directory, progress=progress)


def _train_tokenizer(config: PrepareConfig, recipe: dict, directory: Path, *, progress: bool) -> Tokenizer:
    from runner.data.bpe import capped_texts, train_bpe

    vocab_size = recipe["vocab_size"]
    num_texts = 0

    def texts():
        nonlocal num_texts
        for doc in iter_documents(config.source):
            if not is_validation(doc, config.val_fraction):
                num_texts += 1
                yield doc.text if doc.text is not None else "\n".join(m.content for m in doc.messages)

    start_s = time.perf_counter()
    if progress:
        print(f"tokenizer: training bpe:{vocab_size} on {config.source.name} ...", file=sys.stderr)
    tokenizer = train_bpe(
        capped_texts(texts(), config.tokenizer_train_bytes),
        vocab_size=vocab_size,
        metadata={"trained_on": recipe},
        progress=progress,
    )
    if num_texts == 0:
        raise _empty_corpus(config)
    tokenizer.save(directory)
    if progress:
        print(f"tokenizer: {directory} ({time.perf_counter() - start_s:.1f} s)", file=sys.stderr)
    return tokenizer


def identity(config: PrepareConfig, tokenizer: Tokenizer) -> str:
    return _digest(
        {
            "format": FORMAT_VERSION,
            "source": config.source.to_dict(),
            "fingerprint": fingerprint(config.source),
            "tokenizer": tokenizer.hash,
            "shard_tokens": config.shard_tokens,
            "val_fraction": config.val_fraction,
        }
    )


class _SplitWriter:
    """Buffers one split's tokens and writes every full shard as soon as it exists."""

    def __init__(self, split: str, data_dir: Path, tokenizer: Tokenizer, shard_tokens: int, with_mask: bool):
        self.split, self.data_dir, self.tokenizer = split, data_dir, tokenizer
        self.shard_tokens, self.with_mask = shard_tokens, with_mask
        self.shards: list[ShardInfo] = []
        self._tokens: list[np.ndarray] = []
        self._masks: list[np.ndarray] = []
        self._pending = 0

    def add(self, tokens: np.ndarray, mask: np.ndarray | None) -> None:
        if len(tokens):
            self._tokens.append(tokens)
            self._masks.append(mask if mask is not None else np.zeros(0, np.uint8))
            self._pending += len(tokens)

    def carry(self) -> tuple[np.ndarray, np.ndarray]:
        tokens = np.concatenate(self._tokens) if self._tokens else np.zeros(0, np.uint32)
        masks = np.concatenate(self._masks) if self._masks else np.zeros(0, np.uint8)
        self._tokens, self._masks = ([tokens], [masks]) if len(tokens) else ([], [])
        return tokens, masks

    def write_full(self) -> int:
        written = 0
        while self._pending >= self.shard_tokens:
            tokens, masks = self.carry()
            self._write(tokens[: self.shard_tokens], masks[: self.shard_tokens])
            rest, rest_mask = tokens[self.shard_tokens :], masks[self.shard_tokens :]
            self._tokens, self._masks = ([rest], [rest_mask]) if len(rest) else ([], [])
            self._pending = len(rest)
            written += 1
        return written

    def write_rest(self) -> None:
        if self._pending:
            tokens, masks = self.carry()
            self._write(tokens, masks)
            self._tokens, self._masks, self._pending = [], [], 0

    def _write(self, tokens: np.ndarray, masks: np.ndarray) -> None:
        name = f"{self.split}_{len(self.shards):06d}.bin"
        digest = write_shard(
            self.data_dir / name,
            tokens,
            tokenizer_name=self.tokenizer.name,
            tokenizer_hash=self.tokenizer.hash,
            mask=masks if self.with_mask else None,
            vocab_size=self.tokenizer.vocab_size,
        )
        self.shards.append(ShardInfo(file=name, num_tokens=len(tokens), sha256=digest))


class _State:
    """`.prepare/state.json` + `.prepare/carry-<n>.npz`: what a resumed run needs."""

    def __init__(self, data_dir: Path, identity: str):
        self.dir = data_dir / STATE_DIR
        self.path = self.dir / "state.json"
        self.identity = identity

    def load(self, writers: dict[str, _SplitWriter]) -> tuple[int, int, int]:
        """Restore the writers; returns (documents consumed, bytes consumed, checkpoint number).

        A state that cannot be read back (a crash between its files, a deleted carry file) is dropped and
        the preparation starts over: it rewrites the same shards, so nothing is lost but time."""
        if not self.path.is_file():
            return 0, 0, 0
        try:
            state = json.loads(self.path.read_text())
            carry_path = self.dir / f"carry-{state['checkpoint']}.npz"
        except (json.JSONDecodeError, KeyError, TypeError):
            return self._restart(f"{self.path} is unreadable")
        if state.get("identity") != self.identity:
            raise ShardError(
                f"{self.path}: belongs to a different preparation; delete {self.dir} and run again"
            )
        try:
            with np.load(carry_path) as carry:
                carried = {split: (carry[f"{split}_tokens"], carry[f"{split}_mask"]) for split in writers}
        except (OSError, ValueError, KeyError) as e:
            return self._restart(f"{carry_path} is missing or unreadable ({type(e).__name__})")
        shards = {split: [ShardInfo(**entry) for entry in state["splits"][split]] for split in writers}
        for infos in shards.values():
            for info in infos:
                # A shard the state lists but that is gone or changed (deleted by hand) cannot be resumed
                # from; starting over rewrites it, where an error would repeat at every run.
                try:
                    num_tokens = read_header(self.dir.parent / info.file).num_tokens
                except ShardError as e:
                    return self._restart(str(e).split(";")[0])
                if num_tokens != info.num_tokens:
                    return self._restart(f"{self.dir.parent / info.file} differs from {self.path}")
        for split, writer in writers.items():
            writer.shards.extend(shards[split])
            writer.add(*carried[split])
        return state["documents"], state["bytes"], state["checkpoint"]

    def _restart(self, reason: str) -> tuple[int, int, int]:
        print(f"prepare: {reason}; preparing {self.dir.parent} from the start", file=sys.stderr)
        self.clear()
        return 0, 0, 0

    def save(
        self, writers: dict[str, _SplitWriter], *, documents: int, num_bytes: int, checkpoint: int
    ) -> None:
        self.dir.mkdir(exist_ok=True)
        arrays = {}
        for split, writer in writers.items():
            arrays[f"{split}_tokens"], arrays[f"{split}_mask"] = writer.carry()
        carry_path = self.dir / f"carry-{checkpoint}.npz"
        with open(self.dir / ".carry.tmp", "wb") as f:
            np.savez(f, **arrays)
        os.replace(self.dir / ".carry.tmp", carry_path)
        state = {
            "identity": self.identity,
            "documents": documents,
            "bytes": num_bytes,
            "checkpoint": checkpoint,
            "splits": {
                s: [{"file": i.file, "num_tokens": i.num_tokens, "sha256": i.sha256} for i in w.shards]
                for s, w in writers.items()
            },
        }
        (self.dir / "state.tmp").write_text(json.dumps(state))
        os.replace(self.dir / "state.tmp", self.path)
        for old in self.dir.glob("carry-*.npz"):
            if old != carry_path:
                old.unlink()

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def data_dir_for(config: PrepareConfig, tokenizer: Tokenizer, *, root: str | os.PathLike) -> tuple[Path, str]:
    """The data directory `config` prepares into with this (resolved) tokenizer, and its identity."""
    data_id = identity(config, tokenizer)
    return Path(root) / f"{config.source.name}-{tokenizer.name.replace('+', '-')}-{data_id[:12]}", data_id


def find_prepared(config: PrepareConfig, *, root: str | os.PathLike) -> Path | None:
    """The data directory of `config` if it is prepared already, else None; trains, reads and writes
    nothing beyond finding the source's files (for `nanostudy plan`). Absolute, as `prepare` returns it."""
    root = Path(root).resolve()
    try:
        if config.tokenizer.startswith("bpe:"):
            directory = _trained_tokenizer_dir(config, root)
            if not (directory / "tokenizer.json").is_file():
                return None
            tokenizer = load_tokenizer(directory)
        else:
            tokenizer = load_tokenizer(config.tokenizer)
        tokenizer = tokenizer.with_chat_tokens() if config.source.is_chat else tokenizer
        data_dir, data_id = data_dir_for(config, tokenizer, root=root)
        if not (data_dir / MANIFEST_NAME).is_file() or read_manifest(data_dir).identity != data_id:
            return None
    except (TokenizerError, ShardError, SourceError, OSError):
        return None
    return data_dir


def prepare(
    config: PrepareConfig,
    *,
    root: str | os.PathLike,
    num_workers: int | None = None,
    progress: bool = True,
    stop_after_shards: int | None = None,
) -> PrepareResult:
    """Prepare (or find already prepared) the data directory for `config` under `root`. The directory is
    absolute whatever `root` is: trainers read it from their own run directories.

    `stop_after_shards` stops cleanly after that many shards were written in this call, as an interruption
    would (used to test resumption); the next call continues.
    """
    root = Path(root).resolve()
    check_source(config.source)
    tokenizer = resolve_tokenizer(config, root=root, progress=progress)
    data_dir, data_id = data_dir_for(config, tokenizer, root=root)
    if (found := _already_prepared(data_dir, data_id)) is not None:
        return found
    with exclusive(data_dir, root=root):
        # Another process may have prepared it while this one waited for the lock.
        if (found := _already_prepared(data_dir, data_id)) is not None:
            return found
        return _prepare_into(
            data_dir,
            data_id,
            config,
            tokenizer,
            num_workers,
            progress=progress,
            stop_after_shards=stop_after_shards,
        )


def _already_prepared(data_dir: Path, data_id: str) -> PrepareResult | None:
    if not (data_dir / MANIFEST_NAME).is_file():
        return None
    manifest = read_manifest(data_dir)
    if manifest.identity == data_id:
        return PrepareResult(data_dir=data_dir, status="already prepared", manifest=manifest)
    raise ShardError(f"{data_dir}: holds a different preparation; delete it and run again")


def _prepare_into(
    data_dir: Path,
    data_id: str,
    config: PrepareConfig,
    tokenizer: Tokenizer,
    num_workers: int | None,
    *,
    progress: bool,
    stop_after_shards: int | None,
) -> PrepareResult:
    """The preparation itself, from its saved state if an earlier one was interrupted; the caller holds the
    data directory's lock."""
    # A shard an interrupted run was writing is a temporary file (`write_shard`): never read, but as large as
    # a shard. With the lock held, no process is writing one now.
    for partial in data_dir.glob(".*.bin.tmp-*"):
        partial.unlink()
    tokenizer_dir = data_dir / "tokenizer"
    if (
        not (tokenizer_dir / "tokenizer.json").is_file()
        or load_tokenizer(tokenizer_dir).hash != tokenizer.hash
    ):
        tokenizer.save(tokenizer_dir)

    with_mask = config.source.is_chat
    writers = {s: _SplitWriter(s, data_dir, tokenizer, config.shard_tokens, with_mask) for s in SPLITS}
    state = _State(data_dir, data_id)
    documents_done, bytes_done, checkpoint = state.load(writers)
    written_now = 0
    documents = itertools.islice(iter_documents(config.source), documents_done, None)
    with TokenizePool(tokenizer, val_fraction=config.val_fraction, num_workers=num_workers) as pool:
        bar = _progress_bar(config.source, initial=bytes_done, enabled=progress)
        start_s, documents_at_start, bytes_at_start = time.perf_counter(), documents_done, bytes_done
        for chunk in pool.imap(chunked(documents)):
            writers["train"].add(chunk.train_tokens, chunk.train_mask)
            writers["val"].add(chunk.val_tokens, chunk.val_mask)
            documents_done += chunk.num_documents
            bytes_done += chunk.num_bytes
            written = writers["train"].write_full() + writers["val"].write_full()
            if written:
                checkpoint += 1
                state.save(writers, documents=documents_done, num_bytes=bytes_done, checkpoint=checkpoint)
                written_now += written
            bar.update(chunk.num_bytes)
            elapsed_s = max(time.perf_counter() - start_s, 1e-9)
            bar.set_postfix_str(
                f"{(bytes_done - bytes_at_start) / elapsed_s / 1e6:.2f} MB/s, "
                f"{(documents_done - documents_at_start) / elapsed_s:,.0f} docs/s, "
                f"{sum(len(w.shards) for w in writers.values())} shards"
            )
            if stop_after_shards is not None and written_now >= stop_after_shards:
                bar.close()
                return PrepareResult(data_dir=data_dir, status="interrupted", manifest=None)
    bar.close()
    if documents_done == 0:
        raise _empty_corpus(config)
    for writer in writers.values():
        writer.write_rest()
    for split, writer in writers.items():
        if not writer.shards:
            raise SourceError(
                f"source {config.source.name}: the {split} split is empty after {documents_done} documents "
                f"(val_fraction {config.val_fraction}); give more data or change val_fraction"
            )
        # Chat data trains on assistant tokens only (mask 1): without any, a run would learn nothing and
        # validate nothing, yet report done.
        if with_mask and not any(open_shard(data_dir / info.file)[1].any() for info in writer.shards):
            raise SourceError(
                f"source {config.source.name}: the {split} split has no assistant tokens to train on after "
                f"{documents_done} documents (only assistant turns are trained); check the conversations' "
                "roles"
            )
    manifest = Manifest(
        data_dir=data_dir,
        format_version=1,
        identity=data_id,
        tokenizer=TokenizerInfo.of(tokenizer, "tokenizer"),
        splits={split: tuple(writer.shards) for split, writer in writers.items()},
        has_mask=with_mask,
        source={
            **config.source.to_dict(),
            "fingerprint": fingerprint(config.source),
            "documents": documents_done,
            "text_bytes": bytes_done,
            "shard_tokens": config.shard_tokens,
            "val_fraction": config.val_fraction,
        },
    )
    write_manifest(manifest)
    state.clear()
    return PrepareResult(data_dir=data_dir, status="prepared", manifest=read_manifest(data_dir))


def _empty_corpus(config: PrepareConfig) -> SourceError:
    return SourceError(
        f"source {config.source.name}: empty corpus: it produced no documents with text (empty ones are "
        "skipped); check its files and options"
    )


def _progress_bar(source: SourceSpec, *, initial: int, enabled: bool):
    from tqdm import tqdm

    # Bytes of source text drive the bar, so its ETA is in time. The rates are our postfix (always MB/s,
    # where tqdm's own would switch between kB/s and MB/s), then documents/s and shards.
    total = estimate_bytes(source)
    counts = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}"
    return tqdm(
        total=total,
        initial=initial,
        unit="B",
        unit_scale=True,
        unit_divisor=1000,
        desc=f"prepare {source.name}",
        file=sys.stderr,
        disable=not enabled,
        dynamic_ncols=True,
        bar_format=(counts if total is not None else "{desc}: {n_fmt} [{elapsed}") + "{postfix}]",
    )
