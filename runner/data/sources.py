"""Where training text comes from: a `SourceSpec` names a source and its options; `iter_documents` streams it.

Sources (docs/data.md documents every option):
- `fineweb-edu`, `openwebtext`: pretraining corpora from the Hugging Face hub, streamed with `datasets`;
  `data_files` or `dataset` point the same code at local files or a local dataset folder.
- `task-mixture`: SmolTalk + MMLU auxiliary_train + GSM8K as chat conversations (runner/data/chat.py).
- `local`: the user's own `.txt` / `.jsonl` / `.parquet` files, any glob.
- `python-source`: the `.py` files of the running interpreter's standard library and site-packages; every
  machine has it, so the quickstart needs no network.

Documents come in a deterministic order, so two preparations of the same spec give the same shards.
"""

import fractions
import glob
import hashlib
import json
import os
import re
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from nanogpt.tokenizer import ChatMessage

SOURCE_NAMES = ("fineweb-edu", "openwebtext", "task-mixture", "local", "python-source")
HUB_IDS = {"fineweb-edu": "HuggingFaceFW/fineweb-edu", "openwebtext": "Skylion007/openwebtext"}
DEFAULT_CONFIGS = {"fineweb-edu": "sample-10BT"}
MIXTURE_SUBSETS = ("smoltalk", "mmlu", "gsm8k")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


class SourceError(ValueError):
    """A source that cannot produce documents; the message names it and says what to do."""


def parse_bytes(value: int | str, *, key: str = "max_bytes") -> int:
    """`20000000`, `"20MB"` (10^6) or `"20MiB"` (2^20) → bytes."""
    if isinstance(value, bool):
        raise ValueError(f"{key}: expected a size such as 20MB, got {value!r}")
    if isinstance(value, int):
        number = value
    else:
        match = _SIZE.match(str(value))
        if not match:
            raise ValueError(f"{key}: expected a size such as 20MB or 1.5GiB, got {value!r}")
        # Exact decimal arithmetic: in floats 16.1 * 1000 is 16099.999999999998, not a whole number.
        exact = fractions.Fraction(match.group(1)) * _UNITS[(match.group(2) or "b").lower()]
        if exact.denominator != 1:  # 1.5 bytes, not 1 (nor a refusal of 0.5 as "not positive")
            raise ValueError(f"{key}: a size in bytes must be a whole number, got {value!r}; e.g. 1.5MB")
        number = int(exact)
    if number <= 0:
        raise ValueError(f"{key}: must be positive, got {value!r}")
    return number


@dataclass(frozen=True, kw_only=True, slots=True)
class SourceSpec:
    name: str
    # fineweb-edu / openwebtext: hub config name, a hub id or local dataset folder replacing the default
    # hub id, or a glob of local parquet/jsonl files in the hub's schema (read through the same code path).
    config: str | None = None
    dataset: str | None = None
    data_files: str | None = None
    # local: globs of .txt / .jsonl / .parquet files; `format: chat` reads a list of {role, content} from
    # `messages_field` instead of text from `text_field`.
    paths: tuple[str, ...] = ()
    text_field: str = "text"
    format: str = "text"
    messages_field: str = "messages"
    # task-mixture: weight per subset (1.0 = every row once, 0.5 = half of them, 2.0 = twice) and, per
    # subset, a hub id or local folder replacing the default.
    weights: tuple[tuple[str, float], ...] = ()
    datasets: tuple[tuple[str, str], ...] = ()
    seed: int = 0
    # Any source: stop after this many documents / bytes of text (the document crossing the cap is kept).
    max_documents: int | None = None
    max_bytes: int | None = None

    def __post_init__(self):
        if self.name not in SOURCE_NAMES:
            raise ValueError(f"source: unknown source {self.name!r}; choose one of {', '.join(SOURCE_NAMES)}")
        if self.format not in ("text", "chat"):
            raise ValueError(f"format: must be 'text' or 'chat', got {self.format!r}")
        if self.format == "chat" and self.name == "python-source":
            # Conversations are rows of .jsonl / .parquet files; python-source reads .py files as text.
            raise ValueError("format: chat reads rows of local (or hub) files; python-source has only text")
        if self.name == "local" and not self.paths:
            raise ValueError("paths: the local source needs at least one file or glob")
        if self.name != "local" and self.paths:
            raise ValueError(f"paths: only the local source takes paths (source is {self.name})")
        if self.name not in HUB_IDS and (self.dataset or self.data_files or self.config):
            raise ValueError(
                f"config/dataset/data_files: only fineweb-edu and openwebtext take them ({self.name})"
            )
        if self.dataset and self.data_files:
            raise ValueError("dataset, data_files: give one of them, not both")
        if self.name != "task-mixture" and (self.weights or self.datasets):
            raise ValueError(f"weights/datasets: only task-mixture takes them (source is {self.name})")
        for subset, weight in self.weights:
            if subset not in MIXTURE_SUBSETS:
                raise ValueError(
                    f"weights: unknown subset {subset!r}; choose from {', '.join(MIXTURE_SUBSETS)}"
                )
            if not weight >= 0:
                raise ValueError(f"weights.{subset}: must be >= 0, got {weight}")
        for subset, _ in self.datasets:
            if subset not in MIXTURE_SUBSETS:
                raise ValueError(
                    f"datasets: unknown subset {subset!r}; choose from {', '.join(MIXTURE_SUBSETS)}"
                )
        for key in ("name", "text_field", "format", "messages_field", "config", "dataset", "data_files"):
            value = getattr(self, key)
            optional = key in ("config", "dataset", "data_files")
            if not (value is None and optional) and not isinstance(value, str):
                raise ValueError(f"{key}: expected a string, got {type(value).__name__} ({value!r})")
        for key in ("seed", "max_documents"):
            value = getattr(self, key)
            optional = key == "max_documents"
            if not (value is None and optional) and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{key}: expected an integer, got {type(value).__name__} ({value!r})")
        if self.seed < 0:
            raise ValueError(f"seed: must be >= 0, got {self.seed}")
        if self.max_documents is not None and self.max_documents <= 0:
            raise ValueError(f"max_documents: must be positive, got {self.max_documents}")
        if self.max_bytes is not None and self.max_bytes <= 0:
            raise ValueError(f"max_bytes: must be positive, got {self.max_bytes}")

    @classmethod
    def from_dict(cls, raw: dict | str) -> "SourceSpec":
        """Build from a study file's `data.source` (a name, or a mapping with `name` and options)."""
        if isinstance(raw, str):
            raw = {"name": raw}
        if not isinstance(raw, dict) or "name" not in raw:
            raise ValueError(f"source: expected a name or a mapping with 'name', got {raw!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"source: unknown option {unknown[0]!r}; options are {', '.join(sorted(known))}")
        values = dict(raw)
        if isinstance(values.get("paths"), str):
            values["paths"] = (values["paths"],)
        if "paths" in values:
            if not isinstance(values["paths"], list | tuple):
                raise ValueError(f"paths: expected a glob or a list of globs, got {values['paths']!r}")
            values["paths"] = tuple(str(p) for p in values["paths"])
        for key, kind, expected in (("weights", (int, float), "a number"), ("datasets", str, "a string")):
            if key in values:
                if not isinstance(values[key], dict):
                    raise ValueError(f"{key}: expected a mapping of subset to value, got {values[key]!r}")
                for subset, value in values[key].items():
                    if isinstance(value, bool) or not isinstance(value, kind):
                        raise ValueError(f"{key}.{subset}: expected {expected}, got {value!r}")
                values[key] = tuple(
                    sorted((str(k), float(v) if key == "weights" else v) for k, v in values[key].items())
                )
        if values.get("max_bytes") is not None:
            values["max_bytes"] = parse_bytes(values["max_bytes"])
        for key in ("seed", "max_documents"):  # 1e5 from JSON or YAML is a count; 150.5 is not
            if isinstance(values.get(key), float) and values[key].is_integer():
                values[key] = int(values[key])
        return cls(**values)

    def to_dict(self) -> dict:
        """Canonical, JSON-able form: every option, defaults included (the data directory's identity)."""
        out = asdict(self)
        out["paths"] = list(self.paths)
        out["weights"] = dict(self.weights)
        out["datasets"] = dict(self.datasets)
        return out

    @property
    def is_chat(self) -> bool:
        return self.name == "task-mixture" or self.format == "chat"


@dataclass(frozen=True, slots=True)
class Document:
    text: str | None = None
    messages: tuple[ChatMessage, ...] | None = None
    split: str | None = None  # set by sources with their own validation split; else held out by hash
    where: str | None = field(default=None, compare=False)  # `file:line` or `dataset row n`, for errors

    @property
    def num_bytes(self) -> int:
        if self.text is not None:
            return len(self.text.encode("utf-8", errors="replace"))
        return sum(len(m.content.encode("utf-8", errors="replace")) for m in self.messages or ())

    def content_key(self) -> bytes:
        """Bytes that identify the document (its hash decides train/validation)."""
        if self.text is not None:
            return self.text.encode("utf-8", errors="replace")
        return json.dumps([[m.role, m.content] for m in self.messages or ()]).encode(
            "utf-8", errors="replace"
        )


def iter_documents(spec: SourceSpec) -> Iterator[Document]:
    """The source's documents in a deterministic order, capped by max_documents / max_bytes."""
    if spec.name == "python-source":
        documents = _python_source()
    elif spec.name == "local":
        documents = _local(spec)
    elif spec.name == "task-mixture":
        from runner.data.chat import iter_task_mixture

        documents = iter_task_mixture(spec)
    else:
        documents = _hub_text(spec)
    num_documents = num_bytes = 0
    for document in documents:
        if document.text is not None and not document.text.strip():
            continue  # an empty (or blank) document would be an end-of-text token or two, teaching nothing
        if spec.max_documents is not None and num_documents >= spec.max_documents:
            return
        if spec.max_bytes is not None and num_bytes >= spec.max_bytes:
            return
        num_documents += 1
        num_bytes += document.num_bytes
        yield document


def check_source(spec: SourceSpec) -> None:
    """Fail fast, before any tokenizer work, on files that do not exist."""
    if spec.name == "local":
        local_files(spec)
    elif spec.data_files is not None:
        data_files_builder(spec.data_files)
    elif spec.dataset is not None and _looks_local(spec.dataset) and local_folder(spec.dataset) is None:
        raise SourceError(f"dataset: {spec.dataset!r} is not an existing folder")
    for subset, path in spec.datasets:
        if _looks_local(path) and local_folder(path) is None:
            raise SourceError(f"datasets.{subset}: {path!r} is not an existing folder")


def estimate_bytes(spec: SourceSpec) -> int | None:
    """Total text bytes the source will produce, when cheaply known (for the progress bar's ETA)."""
    total = None
    if spec.name == "python-source":
        total = sum(os.path.getsize(p) for p in python_source_files())
    elif spec.name == "local":
        total = sum(os.path.getsize(p) for p in local_files(spec))
    if spec.max_bytes is not None:
        total = spec.max_bytes if total is None else min(total, spec.max_bytes)
    return total


def fingerprint(spec: SourceSpec) -> dict:
    """What the spec alone does not pin down: which local files the source reads now (their paths, sizes
    and modification times), so that changed files make a new data directory and a new trained tokenizer.
    Hub datasets are pinned by their id and config alone."""
    if spec.name == "python-source":
        files = python_source_files()
        return {"python": sys.version, "files": len(files), "listing_sha256": _listing_digest(files)}
    if spec.name == "local":
        files = local_files(spec)
        return {"files": len(files), "listing_sha256": _listing_digest(files)}
    folders = dict(spec.datasets)
    if spec.dataset is not None:
        folders["dataset"] = spec.dataset
    out = {}
    if spec.data_files is not None:
        files = data_files_list(spec.data_files)
        out["data_files"] = {"files": len(files), "listing_sha256": _listing_digest(files)}
    for key, value in sorted(folders.items()):
        folder = local_folder(value)
        if folder is not None:
            files = folder_files(folder)
            out[key] = {"files": len(files), "listing_sha256": _listing_digest(files)}
    return out


def _listing_digest(files: list[str]) -> str:
    digest = hashlib.sha256()
    for path in files:
        stat = os.stat(path)
        digest.update(f"{os.path.abspath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _looks_local(value: str) -> bool:
    return value.startswith((".", "/", "~"))


def local_folder(value: str) -> Path | None:
    """The folder a `dataset` / `datasets.<subset>` value names, if it is one (datasets reads an existing
    folder before it asks the hub), else None."""
    folder = Path(value).expanduser()
    return folder if folder.is_dir() else None


def folder_files(folder: Path) -> list[str]:
    """Every file under a local dataset folder, sorted; hidden ones (.git, .cache) are not data."""
    found = []
    for directory, subdirs, files in os.walk(folder):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        found += [os.path.join(directory, f) for f in files if not f.startswith(".")]
    return sorted(found)


# ---------------------------------------------------------------------------------------------------------
# python-source


def python_source_roots() -> list[Path]:
    paths = sysconfig.get_paths()
    roots = {
        Path(paths[key]).resolve() for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths
    }
    return sorted(r for r in roots if r.is_dir())


def python_source_files() -> list[str]:
    """Every `.py` file under the interpreter's library roots, sorted (roots may nest: a set dedups)."""
    found: set[str] = set()
    for root in python_source_roots():
        for directory, subdirs, files in os.walk(root):
            subdirs[:] = [d for d in subdirs if d != "__pycache__"]
            found.update(os.path.join(directory, f) for f in files if f.endswith(".py"))
    return sorted(found)


def _python_source() -> Iterator[Document]:
    seen: set[bytes] = set()
    for path in python_source_files():
        try:
            raw = Path(path).read_bytes()
            text = raw.decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue  # unreadable or not UTF-8: a handful of test fixtures in the stdlib
        digest = hashlib.sha256(raw).digest()
        if not text.strip() or digest in seen:
            continue  # empty __init__.py files and vendored copies would only repeat themselves
        seen.add(digest)
        yield Document(text=text, where=path)


# ---------------------------------------------------------------------------------------------------------
# local files


def matching_files(pattern: str) -> list[str]:
    """The files a `paths` entry names (a path or a glob, `~` expanded; relative to the current directory)."""
    return sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p))


def local_files(spec: SourceSpec) -> list[str]:
    files: list[str] = []
    for pattern in spec.paths:
        matches = matching_files(pattern)
        if not matches:
            raise SourceError(f"paths: {pattern!r} matches no files; check the path or glob")
        files.extend(matches)
    if spec.format == "chat":
        # Conversations are rows; a text file has none (its text would go unmasked among them).
        for path in files:
            if Path(path).suffix.lower() not in (".jsonl", ".json", ".parquet"):
                raise SourceError(
                    f"{path}: format chat reads conversations from .jsonl / .parquet rows, not a text file; "
                    "leave it out of paths or drop format: chat"
                )
    return list(dict.fromkeys(files))


def _local(spec: SourceSpec) -> Iterator[Document]:
    for path in local_files(spec):
        suffix = Path(path).suffix.lower()
        if suffix in (".jsonl", ".json"):
            rows = _jsonl_rows(path)
        elif suffix == ".parquet":
            rows = _parquet_rows(path, spec)
        else:
            try:
                yield Document(text=Path(path).read_text(encoding="utf-8"), where=path)
            except UnicodeDecodeError:
                raise SourceError(
                    f"{path}: not UTF-8 text; local sources read .txt, .jsonl and .parquet"
                ) from None
            continue
        for number, row in enumerate(rows, start=1):
            yield _row_document(row, spec, where=f"{path}:{number}")


def _field(spec: SourceSpec) -> tuple[str, str]:
    """The field a row's document is read from, and the option that names it."""
    return (
        (spec.messages_field, "messages_field") if spec.format == "chat" else (spec.text_field, "text_field")
    )


def _row_document(row: dict, spec: SourceSpec, *, where: str) -> Document:
    key, option = _field(spec)
    if key not in row:
        raise SourceError(f"{where}: no field {key!r} (fields: {', '.join(sorted(row))}); set {option}")
    if spec.format == "chat":
        from runner.data.chat import messages_from_rows

        return Document(messages=messages_from_rows(row[key], where=where), where=where)
    if row[key] is None:  # a row without the field, in a file whose other rows have it
        raise SourceError(f"{where}: field {key!r} is missing or null; set {option} if it is another field")
    if not isinstance(row[key], str):
        raise SourceError(f"{where}: field {key!r} is {type(row[key]).__name__}, not text")
    return Document(text=row[key], where=where)


def _jsonl_rows(path: str) -> Iterator[dict]:
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise SourceError(f"{path}:{number}: not UTF-8 text; JSON lines must be UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise SourceError(f"{path}:{number}: not a JSON object ({e.msg})") from None
            if not isinstance(row, dict):
                raise SourceError(f"{path}:{number}: expected a JSON object per line")
            yield row


def _parquet_rows(path: str, spec: SourceSpec) -> Iterator[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise SourceError(f"{path}: not a readable parquet file ({_brief(e)})") from None
    key, option = _field(spec)
    if key not in parquet.schema_arrow.names:
        raise SourceError(
            f"{path}: no column {key!r} (columns: {', '.join(parquet.schema_arrow.names)}); set {option}"
        )
    batches = parquet.iter_batches(columns=[key], batch_size=1024)
    yield from iter_rows(
        (row for batch in batches for row in batch.to_pylist()),
        where=path,
        advice="the file is damaged; replace it",
    )


# ---------------------------------------------------------------------------------------------------------
# Hugging Face datasets


_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}
_COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")


def data_files_list(pattern: str) -> list[str]:
    """The files a `data_files` glob matches now, sorted (`**` recurses; folders are skipped)."""
    return sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p))


def data_files_builder(pattern: str) -> tuple[str, list[str]]:
    """The `datasets` builder for the files the glob matches (by their extension, not the glob's: `dir/*`
    may hold parquet) and the files."""
    files = data_files_list(pattern)
    if not files:
        raise SourceError(f"data_files: {pattern!r} matches no files; check the path or glob")
    builders = {}
    for path in files:
        name = path.lower()
        for compression in _COMPRESSIONS:
            name = name.removesuffix(compression)
        builders.setdefault(_BUILDERS.get(Path(name).suffix), path)
    if None in builders:
        raise SourceError(
            f"data_files: {pattern!r} matches {builders[None]}, which is neither .parquet nor .jsonl/.json; "
            "give a glob of parquet or jsonl files only"
        )
    if len(builders) > 1:
        raise SourceError(
            f"data_files: {pattern!r} matches both parquet and jsonl files ({', '.join(builders.values())}); "
            "give a glob that matches one kind"
        )
    return next(iter(builders)), files


HUB_ADVICE = (
    "Without access to the Hugging Face hub, download it elsewhere and give `dataset: <local folder>` or "
    "`data_files: <glob of parquet/jsonl files>`"
)


def load_hub_dataset(path: str, *, config: str | None, split: str, advice: str = HUB_ADVICE):
    """`datasets.load_dataset(..., streaming=True)`, with an error that says what to do offline (`advice`:
    the options of the source at hand)."""
    import datasets

    try:
        folder = local_folder(path)
        return datasets.load_dataset(
            str(folder) if folder else path, name=config, split=split, streaming=True
        )
    except SourceError:
        raise
    except Exception as e:  # datasets raises many kinds (connection, missing config, bad files)
        raise SourceError(
            f"dataset {path!r} (config {config}, split {split}) could not be loaded: {_brief(e)}. {advice}"
        ) from None


def iter_rows(dataset, *, where: str, advice: str) -> Iterator[dict]:
    """The rows of a streamed dataset. Streaming reads the files only now, so a bad file (a parquet file
    read as JSON, a truncated download, a lost connection) fails here, not at load time: name the source."""
    rows = iter(dataset)
    number = 0
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except SourceError:
            raise
        except Exception as e:
            raise SourceError(f"{where}: reading row {number + 1} failed: {_brief(e)}; {advice}") from None
        number += 1
        yield row


def _brief(error: Exception) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:200]}"


def _hub_text(spec: SourceSpec) -> Iterator[Document]:
    if spec.data_files is not None:
        yield from _data_files_text(spec)
        return
    path = spec.dataset or HUB_IDS[spec.name]
    config = spec.config or (None if spec.dataset else DEFAULT_CONFIGS.get(spec.name))
    dataset = load_hub_dataset(path, config=config, split="train")
    if spec.dataset is not None:
        where = f"{spec.name}: dataset {spec.dataset!r}"
        advice = "check the dataset's files (or its network access), or give `data_files: <glob>`"
    else:
        where = f"{spec.name}: {path} (config {config})"
        advice = (
            "check the network, or download the files elsewhere and give `data_files: <glob>` or "
            "`dataset: <local folder>`"
        )
    rows = iter_rows(dataset, where=where, advice=advice)
    for number, row in enumerate(rows, start=1):
        yield _row_document(row, spec, where=f"{path} row {number}")


def _data_files_text(spec: SourceSpec) -> Iterator[Document]:
    """The rows of the files a `data_files` glob matches, one file after another (in sorted order, as
    one stream over them all would read them), so that an error names the file and its row."""
    import datasets

    builder, files = data_files_builder(spec.data_files)
    advice = "check that the files are intact parquet or jsonl files in the hub's schema"
    for file in files:
        where = f"{spec.name}: data_files {spec.data_files!r}: {file}"
        try:
            dataset = datasets.load_dataset(
                builder, data_files={"train": [file]}, split="train", streaming=True
            )
        except Exception as e:  # datasets raises many kinds
            raise SourceError(f"{where}: could not be loaded: {_brief(e)}; {advice}") from None
        for number, row in enumerate(iter_rows(dataset, where=where, advice=advice), start=1):
            yield _row_document(row, spec, where=f"{file} row {number}")
