"""The reports' commands.

    nanostudy report STUDY [-o FILE] [--format html|png|svg|csv] [--db URL] [--metric bpb|loss] [--boot N]
    nanostudy fit TABLE.csv --n COL --d COL --loss COL [--flops COL] [--budget COL] [--json]
                                                                              (reports/fit_command.py)

STUDY is the study file (its `name:`, else its file name; the database beside it unless --db), or the
study's name with --db (or with a nanostudy.db in the current directory). This module is imported by every
`nanostudy` command to register its parsers, so it imports nothing heavy at module level: Altair,
vl-convert and scipy are loaded by the command that uses them.
"""

import sys
from pathlib import Path

from reports.fit_command import register_fit
from store import StoreNotFoundError, StoreOpenError, default_db_path, get_study, open_store


class StudyArgumentError(ValueError):
    """STUDY names no study file and no database was found for it."""


def resolve_study(study: str, db: str | None) -> tuple[str, str, Path]:
    """(study name, database, folder the study file is in) for a STUDY argument.

    The name comes from the study file's `name:` key (without one, as the runner names it, the file's name
    less .yaml), read with PyYAML: the reports may not import the runner's study loader (DESIGN's import
    directions), and the name is all the report needs of the file.
    """
    path = Path(study)
    if path.is_file():
        import yaml

        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as error:
            raise StudyArgumentError(f"{path}: cannot be read ({error.strerror or error})") from error
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            raise StudyArgumentError(f"{path}: not a readable study file ({error})") from error
        if not isinstance(doc, dict):
            raise StudyArgumentError(
                f"{path}: not a study file (expected a mapping of keys: name, mode, ...)"
            )
        name = doc.get("name", path.stem)  # as the runner names it: no `name` is the file's name
        if not isinstance(name, str) or not name:
            raise StudyArgumentError(f"{path}: the study's 'name' must be a non-empty string, got {name!r}")
        return name, str(db or default_db_path(path)), path.resolve().parent
    if path.suffix in (".yaml", ".yml"):
        raise StudyArgumentError(f"{path}: no such study file")
    return study, db or "nanostudy.db", Path.cwd()


def default_output(folder: Path, name: str, fmt: str) -> Path:
    """`<study dir>/reports/<study>.html`, the folder `<study dir>/reports/<study>-png/` for PNG files, or
    `<study dir>/reports/<study>-cells.csv` for the cell table."""
    names = {"html": f"{name}.html", "csv": f"{name}-cells.csv"}
    return folder / "reports" / names.get(fmt, f"{name}-{fmt}")


def write_cells_csv(store, name: str, path: Path) -> None:
    """Every cell of the study, one row each, with the columns of `reports.data.CellRow` (the report's cell
    table): N, D, C, losses, attempts, cost and speed. Empty fields where a value is unknown. Its done
    pretraining rows are what the report fits: `nanostudy fit FILE --n num_params --d num_tokens --loss
    val_bpb --flops flops` reads only those (by the `state` and `mode` columns) and gives the report's
    parametric law."""
    import csv
    import dataclasses

    from reports.data import CellRow, read_study
    from reports.html import write_atomically

    columns = [field.name for field in dataclasses.fields(CellRow)]
    rows = read_study(store, name).cells

    def write(file) -> None:
        writer = csv.writer(file)
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if (v := getattr(row, c)) is None else v for c in columns])

    write_atomically(path, write)  # as the HTML report: a reader never sees half a file


def make_report(
    study: str,
    *,
    db: str | None = None,
    out: Path | None = None,
    fmt: str = "html",
    metric: str = "bpb",
    n_boot: int = 1000,
    log=print,
) -> list[str]:
    """Write the report of STUDY (see the module docstring); returns what it left out. Raises
    StudyArgumentError, StoreNotFoundError, `reports.data.UnknownStudyError`."""
    from reports.report import write_report

    name, database, folder = resolve_study(study, db)
    with open_store(database, create=False) as store:
        record = get_study(store, name)
        if record is not None and not Path(study).is_file() and Path(record.path).parent.is_dir():
            folder = Path(record.path).resolve().parent
        target = out or default_output(folder, name, fmt)
        if fmt == "csv":
            write_cells_csv(store, name, target)
            log(f"cells: {target}")
            return []
        result = write_report(store, name, target, fmt=fmt, metric=metric, n_boot=n_boot)
    for line in result.left_out:
        log(f"left out: {line}")
    where = result.paths[0] if fmt == "html" else f"{len(result.paths)} {fmt.upper()} files in {target}"
    log(f"report: {where}")
    return result.left_out


def _cmd_report(args) -> int:
    from reports.data import UnknownStudyError

    def err(line: str) -> None:
        print(line, file=sys.stderr)

    if args.boot < 0:
        err(f"nanostudy report: error: --boot must be >= 0, got {args.boot}")
        return 2

    try:
        make_report(
            args.study, db=args.db, out=args.output, fmt=args.format, metric=args.metric, n_boot=args.boot,
            log=lambda line: (err if line.startswith("left out") else print)(line),
        )  # fmt: skip
    except (StudyArgumentError, StoreNotFoundError, StoreOpenError, UnknownStudyError) as error:
        err(f"nanostudy report: error: {error}")
        return 2
    except OSError as error:  # the output: a folder that cannot be made, a file where a folder goes, ...
        where = f"{error.filename}: " if error.filename else ""
        err(f"nanostudy report: error: cannot write the report: {where}{error.strerror or error}")
        return 2
    return 0


def report_after_run(args, exit_code: int) -> None:
    """`nanostudy run`'s last step (wired in runner/cli.py): the report of the study it ran, at the default
    place. Only after a run that finished (exit 0, or 1 with cells failed); a failure here is a warning."""
    if exit_code not in (0, 1):
        return
    try:
        make_report(args.study, db=args.db, log=lambda line: print(line, flush=True))
    except Exception as error:  # the run's outcome stands whatever happens to its report
        print(f"nanostudy run: warning: the report was not written: {error}", file=sys.stderr)


def register_report(subparsers) -> None:
    report = subparsers.add_parser(
        "report",
        help="the scaling report of a study: one offline HTML file (or its charts as PNG/SVG)",
        description=(
            "Fit the study's scaling laws and write a self-contained HTML report: summary, isoflop curves, "
            "N*(C), D*(C), L*(C), the parametric fit, training curves, evals, throughput, every cell."
        ),
    )
    report.add_argument("study", help="the study file, or the study's name with --db")
    report.add_argument("--db", help="database file or URL (default: nanostudy.db beside the study)")
    report.add_argument(
        "-o",
        "--output",
        type=Path,
        help="the HTML or CSV file, or the folder for --format png/svg (default: reports/ beside the study)",
    )
    report.add_argument(
        "--format",
        choices=("html", "png", "svg", "csv"),
        default="html",
        help="png/svg: one file per chart; csv: the table of every cell (no fits)",
    )
    report.add_argument(
        "--metric", choices=("bpb", "loss"), default="bpb", help="fit validation bits per byte or loss"
    )
    report.add_argument("--boot", type=int, default=1000, help="bootstrap resamples for the intervals")
    report.set_defaults(func=_cmd_report)


def register(subparsers) -> None:
    register_report(subparsers)
    register_fit(subparsers)
