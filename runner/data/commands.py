"""`nanostudy prepare` and `nanostudy tokenizer train`."""

import json
import os
import sys
import time
from pathlib import Path

from nanogpt.shards import ShardError
from nanogpt.tokenizer import TokenizerError
from runner.data.prepare import DEFAULT_TOKENIZER_TRAIN_BYTES, DEFAULT_VAL_FRACTION
from runner.data.sources import SourceError, SourceSpec
from runner.run_commands import positive_int


def default_data_root() -> Path:
    """Prepared data is shared between studies: one cache per user, or NANOSTUDY_DATA_DIR."""
    return Path(os.environ.get("NANOSTUDY_DATA_DIR") or Path.home() / ".cache" / "nanostudy" / "data")


def _source_options(pairs: list[str]) -> dict:
    """`--set key=value` pairs; values parse as JSON where they can (numbers, lists, mappings)."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set: expected key=value, got {pair!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def _data_section(args) -> dict:
    """The `data:` mapping, from a study file or from the flags (flags override the file)."""
    data: dict = {}
    if args.study:
        import yaml

        path = Path(args.study)
        if not path.is_file():
            raise ValueError(f"{path}: no such study file")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not a readable YAML study file ({' '.join(str(e).split())})") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("data"), dict):
            raise ValueError(f"{path}: has no `data:` mapping (source, tokenizer)")
        data = dict(raw["data"])
    if args.source:
        data["source"] = {"name": args.source}
    if args.set:
        source = data.get("source") or {}
        source = {"name": source} if isinstance(source, str) else dict(source)
        data["source"] = {**source, **_source_options(args.set)}
    for key in ("tokenizer", "shard_tokens", "val_fraction"):
        if getattr(args, key) is not None:
            data[key] = getattr(args, key)
    if "source" not in data:
        raise ValueError("prepare: give a study file or --source NAME")
    data.setdefault("tokenizer", "gpt2")
    return data


def _cmd_prepare(args) -> int:
    from runner.data.prepare import PrepareConfig, prepare

    flags = (args.source, args.set, args.tokenizer, args.shard_tokens, args.val_fraction)
    if args.study and not any(flag is not None for flag in flags):
        return _prepare_study(args)
    config = PrepareConfig.from_dict(_data_section(args))
    start_s = time.perf_counter()
    result = prepare(config, root=args.root, num_workers=args.workers, progress=not args.quiet)
    manifest = result.manifest
    assert manifest is not None, "prepare returns a manifest unless stopped on purpose"
    print(f"{result.status}: {result.data_dir}")
    print(
        f"  tokenizer {manifest.tokenizer.name} (vocab {manifest.tokenizer.vocab_size:,}); "
        f"train {manifest.num_tokens('train'):,} tokens in {len(manifest.shards('train'))} shards; "
        f"val {manifest.num_tokens('val'):,} tokens; {time.perf_counter() - start_s:.1f} s"
    )
    return 0


def _prepare_study(args) -> int:
    """Every stage's data of a study, as `nanostudy run` prepares it (mid-training data in mode `all` with the
    pretraining tokenizer); the study file is validated first."""
    from runner.run_commands import prepare_data
    from runner.study import StudyError, load

    try:
        study = load(args.study)
    except StudyError as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        return 2
    prepare_data(study, root=args.root, log=print, progress=not args.quiet, num_workers=args.workers)
    return 0


def _cmd_tokenizer_train(args) -> int:
    from nanogpt.tokenizer import load_tokenizer
    from runner.data.bpe import capped_texts, train_bpe
    from runner.data.sources import iter_documents, parse_bytes
    from runner.data.tokenize import is_validation

    source = SourceSpec.from_dict({"name": args.source, **_source_options(args.set or [])})
    max_bytes = parse_bytes(args.max_bytes, key="--max-bytes")
    if not 0.0 <= args.val_fraction < 1.0:
        raise ValueError(f"--val-fraction: must be in [0, 1), got {args.val_fraction}")
    val_texts: list[str] = []
    num_texts = 0

    def texts():
        nonlocal num_texts
        for doc in iter_documents(source):
            text = doc.text if doc.text is not None else "\n".join(m.content for m in doc.messages)
            if is_validation(doc, args.val_fraction):
                if len(val_texts) < 200:
                    val_texts.append(text)
            else:
                num_texts += 1
                yield text

    start_s = time.perf_counter()
    tokenizer = train_bpe(
        capped_texts(texts(), max_bytes),
        vocab_size=args.vocab_size,
        metadata={"trained_on": source.to_dict(), "train_bytes": max_bytes},
        progress=not args.quiet,
    )
    if num_texts == 0:  # as prepare refuses it: a tokenizer of single bytes, learned from nothing
        raise SourceError(
            f"source {source.name}: empty corpus: no training documents with text (empty ones are skipped, "
            f"val_fraction {args.val_fraction} held out {len(val_texts)}); check its files and options"
        )
    out = tokenizer.save(args.out)
    elapsed_s = time.perf_counter() - start_s
    check = load_tokenizer(out)
    val_bytes = sum(len(t.encode()) for t in val_texts)
    val_tokens = sum(len(check.encode(t)) for t in val_texts)
    print(f"trained {tokenizer.name}: {out} (vocab {tokenizer.vocab_size:,}, {elapsed_s:.1f} s)")
    if val_tokens:
        print(f"  {val_bytes / val_tokens:.2f} bytes per token on {len(val_texts)} held-out documents")
    return 0


def _guarded(func):
    """User mistakes (bad source, missing files, bad shards, a --root or --out that cannot be written) print
    one line and exit 2, no traceback."""

    def run(args) -> int:
        try:
            return func(args)
        except (SourceError, ShardError, TokenizerError, ValueError) as e:
            print(f"nanostudy {args.command}: error: {e}", file=sys.stderr)
            return 2
        except OSError as e:  # a path not writable, not a directory, a full disk: name the path
            where = f"{e.filename}: " if e.filename else ""
            print(f"nanostudy {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
            return 2

    return run


def register(subparsers) -> None:
    prepare = subparsers.add_parser(
        "prepare",
        help="tokenize a corpus into shards (once; later runs find it prepared)",
        description="Tokenize a source into token shards under --root (docs/data.md lists sources).",
    )
    prepare.add_argument(
        "study", nargs="?", help="a study file whose `data:` section names source and tokenizer"
    )
    prepare.add_argument("--source", help="fineweb-edu | openwebtext | task-mixture | local | python-source")
    prepare.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="a source option, e.g. max_bytes=20MB (repeatable)",
    )
    prepare.add_argument("--tokenizer", help="gpt2 | bpe:<vocab size> | a tokenizer directory (default gpt2)")
    prepare.add_argument("--shard-tokens", type=int, dest="shard_tokens", help="tokens per shard")
    prepare.add_argument(
        "--val-fraction", type=float, dest="val_fraction", help="documents held out (by hash)"
    )
    prepare.add_argument("--root", type=Path, default=default_data_root(), help="where data directories live")
    prepare.add_argument(
        "--workers", type=positive_int, default=None, help="tokenizing processes (default: all cores)"
    )
    prepare.add_argument("--quiet", action="store_true", help="no progress bar")
    prepare.set_defaults(func=_guarded(_cmd_prepare))

    tokenizer = subparsers.add_parser("tokenizer", help="tokenizer tools")
    tokenizer_commands = tokenizer.add_subparsers(dest="tokenizer_command", required=True, metavar="COMMAND")
    train = tokenizer_commands.add_parser(
        "train",
        help="train a byte-level BPE on a source and save it in tiktoken's format",
        description="Train a byte-level BPE (Hugging Face tokenizers) and save it for tiktoken.",
    )
    train.add_argument("--source", required=True, help="a source name (see nanostudy prepare)")
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="a source option (repeatable)")
    train.add_argument(
        "--vocab-size", type=int, required=True, dest="vocab_size", help="ids in all, specials included"
    )
    train.add_argument(
        "--max-bytes",
        default=DEFAULT_TOKENIZER_TRAIN_BYTES,
        dest="max_bytes",
        help="text to train on (e.g. 100MB)",
    )
    train.add_argument(
        "--val-fraction",
        type=float,
        default=DEFAULT_VAL_FRACTION,
        dest="val_fraction",
        help="held out, as in prepare",
    )
    train.add_argument(
        "--out", type=Path, required=True, help="directory to write tokenizer.json/.tiktoken into"
    )
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=_guarded(_cmd_tokenizer_train))
