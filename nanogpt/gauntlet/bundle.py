"""Where the eval data lives, and fetching it where there is a network.

The bundle is a folder of JSONL files, `<category>/<file>.jsonl` as in llm-foundry's
`scripts/eval/local_data/` (nanogpt/gauntlet/tasks.py names each task's file); the layout of nanochat's
eval_bundle.zip, with the same paths under `eval_data/`, is read too. Which folder: `eval.bundle` in the
config (or `--eval-bundle`), else $NANOSTUDY_EVAL_BUNDLE, else ~/.cache/nanostudy/eval_bundle.

`fetch_bundle` downloads the files it lacks: by default each task's file from llm-foundry's repository
(the gauntlet's own data, every v0.3 task including HellaSwag, MMLU, SQuAD and CoQA); or, given a URL
ending in `.zip` (e.g. NANOCHAT_BUNDLE_URL), the archive, from which it takes the files the tasks name.
Any URL urllib opens works, `file://` included (the tests use that; these machines have no network).
"""

import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from nanogpt.gauntlet.tasks import TaskSpec

BUNDLE_ENV = "NANOSTUDY_EVAL_BUNDLE"
LLM_FOUNDRY_DATA_URL = "https://raw.githubusercontent.com/mosaicml/llm-foundry/main/scripts/eval/local_data/"
NANOCHAT_BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"
DOWNLOAD_TIMEOUT_S = 60.0


class BundleError(ValueError):
    """No usable eval bundle (the message says where it looked and how to get one)."""


def default_bundle_dir() -> Path:
    """$NANOSTUDY_EVAL_BUNDLE, else ~/.cache/nanostudy/eval_bundle."""
    configured = os.environ.get(BUNDLE_ENV)
    return (
        Path(configured).expanduser() if configured else Path.home() / ".cache" / "nanostudy" / "eval_bundle"
    )


def resolve_bundle(bundle: str | os.PathLike | None) -> Path:
    """The bundle folder to read: the given one, else the default."""
    return Path(bundle).expanduser() if bundle else default_bundle_dir()


def check_bundle(bundle_dir: Path) -> None:
    """BundleError unless `bundle_dir` is a folder; which tasks it holds is each task's own business."""
    if not bundle_dir.is_dir():
        raise BundleError(
            f"{bundle_dir}: no eval bundle here; set eval.bundle (or --eval-bundle, or ${BUNDLE_ENV}) to a "
            "folder of the gauntlet's JSONL files, or fetch them with `nanostudy eval --download`"
        )


def has_file(bundle_dir: Path, spec: TaskSpec) -> bool:
    return (bundle_dir / spec.file).is_file() or (bundle_dir / "eval_data" / spec.file).is_file()


@dataclass(kw_only=True, slots=True)
class FetchReport:
    fetched: list[str] = field(default_factory=list)  # files written
    present: list[str] = field(default_factory=list)  # files that were there already
    failed: list[str] = field(default_factory=list)  # "file: why" for those that could not be had


def fetch_bundle(
    bundle_dir: str | os.PathLike,
    specs: Iterable[TaskSpec],
    *,
    source: str = LLM_FOUNDRY_DATA_URL,
    timeout_s: float = DOWNLOAD_TIMEOUT_S,
    log: Callable[[str], None] = lambda message: None,
) -> FetchReport:
    """Download the tasks' files that `bundle_dir` lacks from `source` (a base URL, or a .zip archive's
    URL); each file is written whole (temp file, rename) or not at all. Never raises for one file: the
    report lists what failed and why."""
    bundle_dir = Path(bundle_dir)
    report = FetchReport()
    wanted = []
    for spec in {spec.file: spec for spec in specs}.values():
        (report.present if has_file(bundle_dir, spec) else wanted).append(spec.file)
    if not wanted:
        return report
    bundle_dir.mkdir(parents=True, exist_ok=True)
    if source.endswith(".zip"):
        _fetch_from_zip(bundle_dir, wanted, source, timeout_s, report, log)
        return report
    base = source if source.endswith("/") else source + "/"
    for k, file in enumerate(wanted):
        try:
            with urllib.request.urlopen(base + file, timeout=timeout_s) as response:
                _write_atomically(bundle_dir / file, response)
        except urllib.error.HTTPError as e:  # the server answered: this file only
            report.failed.append(f"{file}: {e.code} {e.reason} ({base + file})")
            continue
        except urllib.error.URLError as e:
            if isinstance(e.reason, FileNotFoundError):  # file://: this file only
                report.failed.append(f"{file}: not found ({base + file})")
                continue
            # No connection: the other files would fail the same way, after as many timeouts.
            report.failed += [f"{other}: not fetched ({e.reason}; {base})" for other in wanted[k:]]
            break
        except (OSError, ValueError) as e:  # a timeout, a malformed URL
            report.failed += [f"{other}: not fetched ({e}; {base})" for other in wanted[k:]]
            break
        report.fetched.append(file)
        log(f"fetched {file}")
    return report


def _fetch_from_zip(
    bundle_dir: Path, wanted: list[str], url: str, timeout_s: float, report: FetchReport, log
) -> None:
    with tempfile.TemporaryDirectory(dir=bundle_dir, prefix=".download-") as tmp:
        archive = Path(tmp) / "bundle.zip"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                _write_atomically(archive, response)
            log(f"fetched {url}")
            with zipfile.ZipFile(archive) as zf:
                # The archive's folders above `<category>/<file>` vary (eval_bundle/eval_data/ for nanochat).
                members = [name for name in zf.namelist() if not name.endswith("/")]
                for file in wanted:
                    found = next((m for m in members if m == file or m.endswith("/" + file)), None)
                    if found is None:
                        report.failed.append(f"{file}: not in {url}")
                        continue
                    with zf.open(found) as member:
                        _write_atomically(bundle_dir / file, member)
                    report.fetched.append(file)
        except (urllib.error.URLError, OSError, ValueError, zipfile.BadZipFile) as e:
            why = getattr(e, "reason", None) or e
            report.failed += [f"{file}: {why}" for file in wanted if file not in report.fetched]


def _write_atomically(path: Path, stream) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as out:
            shutil.copyfileobj(stream, out)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
