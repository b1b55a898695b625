"""`nanostudy eval`: the eval gauntlet on finished checkpoints, the scores stored beside the loss.

    nanostudy eval studies/isoflop.yaml [--tasks core|quick|chat|task,task] [--eval-bundle DIR] [--db URL]
    nanostudy eval runs/isoflop/3f2a9c1b7d4e [--db studies/nanostudy.db] [--device cpu|cuda] [--json]
    nanostudy eval studies/isoflop.yaml --download     # first fetch the bundle's missing files (network)

STUDY (a study file, or a study's name with --db): the final checkpoint of every done cell, as the store
recorded it (`store.final_checkpoint`), is scored and its rows are stored. CHECKPOINT (a checkpoint
directory, a run directory or its `checkpoints/`): scored and printed; stored as well with --db, when that
database holds the run's cell (the run directory's name is the cell id). The preset is `--tasks` (default
core); the bundle `--eval-bundle`, else the study's `eval.bundle`, else $NANOSTUDY_EVAL_BUNDLE, else
~/.cache/nanostudy/eval_bundle.

Storing from here, beside a runner: the runner is the database's only writer of a cell's life (states,
attempts, metrics from its trainer's events). This command writes nothing of that: it adds eval rows to
done cells only, through `store.add_evals`, which refuses any cell that is not done. A done cell is final,
so no runner or trainer writes its rows any more. A (cell, step, task) key already stored (the trainer's own
evaluation at the last step, or an earlier `nanostudy eval`) keeps its score, unless it had none (the task's
file was missing then) and this scoring has one; a scoring that scores more of the preset's tasks than are
stored replaces the averages and their tasks' scores together. Writing to the cell's run directory instead
is not an option: a finished run's events.jsonl ends with its `end` event.
"""

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from store import (
    CellState,
    Store,
    add_evals,
    cells_of,
    evals_of,
    final_checkpoint,
    get_cell,
    get_study,
    open_store,
)

# Where `nanostudy run` and `--download` fetch missing task files from (a base URL, or a .zip archive's URL).
BUNDLE_URL_ENV = "NANOSTUDY_EVAL_BUNDLE_URL"


# -- the bundle -------------------------------------------------------------------------------------------


def ensure_bundles(configs: Iterable[Mapping[str, Any]], *, log: Callable[[str], None] = print) -> None:
    """Before a study runs: every cell config with an eval preset needs its bundle folder. Files it lacks are
    fetched ($NANOSTUDY_EVAL_BUNDLE_URL, else llm-foundry's data); when some stay missing (no network) the
    tasks are scored without them, and said so; when none of a preset's tasks has its data, ValueError."""
    from nanogpt.gauntlet.bundle import LLM_FOUNDRY_DATA_URL, fetch_bundle, has_file
    from nanogpt.gauntlet.tasks import resolve

    wanted: dict[Path, dict[str, Any]] = {}  # bundle -> {task name: spec}
    for config in configs:
        section = config.get("eval") or {}
        if section.get("preset") is None:
            continue
        specs, _ = resolve(section["preset"])
        wanted.setdefault(Path(section["bundle"]), {}).update({spec.name: spec for spec in specs})
    for bundle, specs in wanted.items():
        if all(has_file(bundle, spec) for spec in specs.values()):
            continue
        source = os.environ.get(BUNDLE_URL_ENV) or LLM_FOUNDRY_DATA_URL
        report = fetch_bundle(bundle, specs.values(), source=source, log=log)
        missing = [name for name, spec in specs.items() if not has_file(bundle, spec)]
        if len(missing) == len(specs):
            why = report.failed[0] if report.failed else "nothing to fetch"
            raise ValueError(
                f"eval bundle {bundle}: no task of the eval gauntlet has its data there, and fetching failed "
                f"({why}); set eval.bundle to a folder of the gauntlet's JSONL files"
            )
        if missing:
            log(f"warning: eval bundle {bundle}: no data for {', '.join(missing)}; they are not scored")


def download(bundle: Path, preset: str, *, log: Callable[[str], None] = print) -> int:
    """`--download`: fetch the preset's missing files into the bundle; returns how many are still missing."""
    from nanogpt.gauntlet.bundle import LLM_FOUNDRY_DATA_URL, fetch_bundle
    from nanogpt.gauntlet.tasks import resolve

    specs, _ = resolve(preset)
    source = os.environ.get(BUNDLE_URL_ENV) or LLM_FOUNDRY_DATA_URL
    report = fetch_bundle(bundle, specs, source=source, log=log)
    for failure in report.failed:
        log(f"warning: {failure}")
    log(f"eval bundle {bundle}: {len(report.fetched)} fetched, {len(report.present)} present")
    return len(report.failed)


# -- scoring ----------------------------------------------------------------------------------------------


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    preset: str,
    bundle: Path,
    device: str = "auto",
    max_examples: int | None = None,
    max_batch_tokens: int | None = None,
):
    """(step, GauntletResult) of one checkpoint: the model loaded on `device` ("auto": CUDA when there is
    one), bf16 autocast on CUDA, the preset's tasks from the bundle."""
    import torch

    from nanogpt.gauntlet.evaluate import load_for_eval, prepare, run_gauntlet
    from nanogpt.gauntlet.scoring import DEFAULT_BATCH_TOKENS

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tokenizer, meta = load_for_eval(checkpoint, device)
    gauntlet = prepare(preset, bundle, tokenizer, max_examples=max_examples)
    autocast = (
        torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        if device == "cuda"
        else contextlib.nullcontext()
    )
    try:
        with autocast:
            result = run_gauntlet(
                model, gauntlet, tokenizer, max_batch_tokens=max_batch_tokens or DEFAULT_BATCH_TOKENS
            )
    finally:
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    return int(meta["step"]), result


def eval_rows(step: int, result) -> list[dict[str, Any]]:
    """The store's eval rows of a result, exactly as the runner's ingest makes them from `eval` events."""
    from nanogpt.events import sanitize
    from runner.ingest import rows_of

    stamp = time.time()
    events = [sanitize({"kind": "eval", "time": stamp, "step": step, **event}) for event in result.events()]
    return rows_of(events)["evals"]


def store_scores(store: Store, cell_id: str, step: int, result) -> tuple[int, int]:
    """Add the result's rows to a done cell: (rows written, new or filling in a stored row; rows kept as they
    were stored)."""
    rows = eval_rows(step, result)
    added = add_evals(store, cell_id, rows)
    return added, len(rows) - added


def headline(result) -> str:
    """The result's main average in one phrase, e.g. `core_average 0.1234 ± 0.0101`; without averages (a
    list of tasks), each task's centered score."""
    from nanogpt.gauntlet.tasks import average_name

    if not result.aggregates:
        return ", ".join(f"{s.name} {s.centered:.4f}" for s in result.scores) or "nothing scored"
    main = result.aggregates[-1]
    name = average_name(result.preset, main.name, result.max_examples)
    return f"{name} {main.score:.4f} ± {main.stderr:.4f}"


def eval_study(
    store: Store,
    study_name: str,
    *,
    preset: str,
    bundle: Path,
    device: str = "auto",
    max_examples: int | None = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Score and store every done cell's final checkpoint. Cells whose rows for this preset are all stored
    already are skipped: a row without a score counts only while its task's file is still not in the bundle
    (then scoring again cannot add it). A cell whose checkpoint cannot be read (deleted, damaged) is named
    and the others are scored. One dict per cell: cell, checkpoint, step, added, kept, events (or skipped,
    or error)."""
    from nanogpt.checkpoint import CheckpointError
    from nanogpt.gauntlet.bundle import has_file
    from nanogpt.gauntlet.tasks import resolve, result_name
    from nanogpt.tokenizer import TokenizerError

    study = get_study(store, study_name)
    if study is None:
        raise LookupError(f"study {study_name!r}: not in {store.name}")
    specs, preset_max = resolve(preset)
    cap = preset_max if max_examples is None else max_examples
    out = []
    done = cells_of(store, study.id, states=[CellState.DONE])
    if not done:
        total = len(cells_of(store, study.id))
        log(f"study {study_name}: no finished cells to evaluate (0 of {total} done); nothing scored")
    for cell in done:
        checkpoint = final_checkpoint(store, cell.id)
        if checkpoint is None or cell.run_dir is None:
            log(f"cell {cell.id}: done but no final checkpoint in the database; skipped")
            out.append({"cell": cell.id, "skipped": "no final checkpoint"})
            continue
        path = Path(cell.run_dir) / checkpoint.path
        rows = evals_of(store, cell_id=cell.id)
        stored = {row.task: row.score for row in rows if row.step == checkpoint.step}
        names = {spec.name: result_name(spec.name, cap) for spec in specs}
        unscored = [
            spec
            for spec in specs
            if names[spec.name] not in stored or (stored[names[spec.name]] is None and has_file(bundle, spec))
        ]
        if not unscored:
            log(f"cell {cell.id}: step {checkpoint.step} already scored on {preset}; skipped")
            out.append({"cell": cell.id, "step": checkpoint.step, "skipped": "already scored"})
            continue
        t0 = time.time()
        try:
            step, result = evaluate_checkpoint(
                path, preset=preset, bundle=bundle, device=device, max_examples=cap
            )
        except (CheckpointError, TokenizerError) as error:  # this cell's files: the others are scored
            log(f"cell {cell.id}: error: {error}; not scored")
            out.append({"cell": cell.id, "checkpoint": str(path), "error": str(error)})
            continue
        added, kept = store_scores(store, cell.id, step, result)
        where = f"cell {cell.id} (depth {cell.depth}, {cell.flops_budget:.1e} FLOPs, step {step})"
        also = f", {kept} already there" if kept else ""
        log(f"{where}: {headline(result)}; {added} rows stored{also} ({time.time() - t0:.0f}s)")
        out.append(
            {
                "cell": cell.id,
                "checkpoint": str(path),
                "step": step,
                "added": added,
                "kept": kept,
                "events": result.events(),
            }
        )
    return out


# -- the command ------------------------------------------------------------------------------------------


def _study_target(target: str, db: str | None) -> tuple[Store, str, Path | None] | None:
    """(store, study name, the bundle its file names or None) when TARGET is a study file or (with --db) a
    study name, as `runner.api.resolve_study` reads it (only the file's name, and here its `eval.bundle`: a
    study edited since it ran, or whose data is elsewhere, is still scored); None for anything else (a
    checkpoint or run directory). FileNotFoundError for a study file (.yaml, .yml) that is not there."""
    from runner.api import STUDY_SUFFIXES, resolve_study
    from runner.study import study_bundle

    path = Path(target)
    if not path.is_file() and path.suffix not in STUDY_SUFFIXES and (db is None or path.exists()):
        return None
    database, name = resolve_study(target, db)
    return open_store(database, create=False), name, study_bundle(path) if path.is_file() else None


def _cmd_eval(args) -> int:
    from nanogpt.checkpoint import CheckpointError
    from nanogpt.gauntlet.bundle import BundleError, resolve_bundle
    from nanogpt.gauntlet.tasks import resolve
    from nanogpt.shards import ShardError
    from nanogpt.tokenizer import TokenizerError
    from runner.study import StudyError

    def log(message: str) -> None:
        print(message, file=sys.stderr if args.json else sys.stdout, flush=True)

    preset = args.tasks
    try:
        resolve(preset)
        if args.max_examples is not None and args.max_examples < 1:
            raise ValueError(f"--max-examples: must be a positive integer, got {args.max_examples}")
        if args.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise ValueError("--device cuda: no CUDA device here; give --device cpu (or auto)")
        target = _study_target(args.target, args.db)
        named = target[2] if target else None
        bundle = (
            Path(args.eval_bundle).expanduser().resolve()
            if args.eval_bundle
            else named
            if named is not None
            else resolve_bundle(None)
        )
        if args.download:
            download(bundle, preset, log=log)
        _check_bundle_data(bundle, preset, downloaded=args.download)
        if target is not None:
            store, name, _ = target
            with store:
                results = eval_study(
                    store,
                    name,
                    preset=preset,
                    bundle=bundle,
                    device=args.device,
                    max_examples=args.max_examples,
                    log=log,
                )
        else:
            results = [_eval_checkpoint_target(args, preset, bundle, log)]
    except StudyError as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        return 2
    except (
        BundleError,
        CheckpointError,
        ShardError,
        TokenizerError,
        LookupError,
        FileNotFoundError,
        ValueError,
    ) as error:
        print(f"nanostudy eval: error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(results, indent=1))
    failed = [result["cell"] for result in results if "error" in result]
    if failed:
        print(f"nanostudy eval: {len(failed)} cell(s) not scored: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _check_bundle_data(bundle: Path, preset: str, *, downloaded: bool = False) -> None:
    """BundleError unless the bundle holds the file of at least one of the preset's tasks: scoring without
    any would only store a null row for every task (nothing scored). `downloaded`: --download was tried."""
    from nanogpt.gauntlet.bundle import BundleError, check_bundle, has_file
    from nanogpt.gauntlet.tasks import resolve

    check_bundle(bundle)
    specs, _ = resolve(preset)
    if not any(has_file(bundle, spec) for spec in specs):
        fetch = (
            " (--download could not fetch them: see above)"
            if downloaded
            else ", or fetch them with --download"
        )
        raise BundleError(
            f"{bundle}: holds none of the files of the tasks of {preset!r} (such as {specs[0].file}); point "
            f"--eval-bundle at a folder of the gauntlet's JSONL files{fetch}"
        )


def _eval_checkpoint_target(args, preset: str, bundle: Path, log) -> dict[str, Any]:
    from nanogpt.checkpoint import resolve_checkpoint

    directory = resolve_checkpoint(args.target)
    run_dir = directory.parent.parent  # RUN_DIR/checkpoints/step_XXXXXX
    if args.db is not None:  # before the scoring (minutes to hours): a wrong --db must not waste it
        with open_store(args.db, create=False) as store:
            _cell_of_run(store, run_dir)
    step, result = evaluate_checkpoint(
        directory, preset=preset, bundle=bundle, device=args.device, max_examples=args.max_examples
    )
    if not args.json:
        log(result.table())
    out: dict[str, Any] = {"checkpoint": str(directory), "step": step, "events": result.events()}
    if args.db is None:
        log(f"{directory}: step {step}: {headline(result)} (not stored: give --db to store it)")
        return out
    with open_store(args.db, create=False) as store:
        cell = _cell_of_run(store, run_dir)
        added, kept = store_scores(store, cell.id, step, result)
    log(f"{directory}: step {step}: {headline(result)}; cell {cell.id}: {added} rows stored, {kept} kept")
    out.update(cell=cell.id, added=added, kept=kept)
    return out


def _cell_of_run(store: Store, run_dir: Path):
    """The cell whose run directory is `run_dir` (its name is the cell id); LookupError if none is."""
    cell = get_cell(store, run_dir.name)
    if cell is None or cell.run_dir is None or Path(cell.run_dir).resolve() != run_dir.resolve():
        raise LookupError(
            f"{run_dir}: not the run directory of a cell in {store.name} (leave out --db to score it only)"
        )
    return cell


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="score finished checkpoints on the eval gauntlet and store the scores",
        description=(
            "Score a checkpoint, or every done cell of a study, on in-context benchmarks (the Eval "
            "Gauntlet: docs/evals.md) and store the scores with the cells."
        ),
    )
    parser.add_argument(
        "target", help="a study file (or a study's name with --db), or a checkpoint/run directory"
    )
    parser.add_argument("--tasks", default="core", help="core (default), quick, chat, or task,task,...")
    parser.add_argument("--eval-bundle", dest="eval_bundle", help="the folder of the eval data (JSONL files)")
    parser.add_argument("--db", help="database file or URL (default: nanostudy.db beside the study)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--max-examples", dest="max_examples", type=int, help="examples per task (default: all)"
    )
    parser.add_argument("--download", action="store_true", help="first fetch the task files the bundle lacks")
    parser.add_argument(
        "--json", action="store_true", help="print the results as JSON (the log goes to stderr)"
    )
    parser.set_defaults(func=_cmd_eval)
