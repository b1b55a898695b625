"""`nanostudy tui [STUDY] [--db URL]`: the terminal UI.

STUDY is a study file (its database beside it unless --db) or a study's name (in --db, else nanostudy.db
here); without it, the TUI lists the database's studies. This module is imported by every `nanostudy`
command to register its parser, so Textual is imported only when the TUI starts.
"""

import argparse
import sys

EXIT_OK, EXIT_BAD_INPUT = 0, 2
MIN_REFRESH_S = 0.01  # a shorter period (or NaN) fires the poll timer back to back and the screen freezes


def _cmd_tui(args) -> int:
    from runner.api import resolve_study

    if args.study is None:
        db, name = args.db or "nanostudy.db", None
    else:
        try:
            db, name = resolve_study(args.study, args.db)
        except (ValueError, FileNotFoundError) as error:  # StudyError, or a study file that is not there
            print(f"nanostudy tui: error: {error}", file=sys.stderr)
            return EXIT_BAD_INPUT
    if not args.refresh_s >= MIN_REFRESH_S:
        print(
            f"nanostudy tui: error: --refresh-s must be at least {MIN_REFRESH_S} s, got {args.refresh_s}",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    from tui.app import NanostudyApp

    NanostudyApp(db, name, poll_s=args.refresh_s).run()
    return EXIT_OK


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "tui",
        help="the terminal UI: live progress, GPUs, chat with the best checkpoint",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("study", nargs="?", help="a study file or a study's name; without it, pick one")
    parser.add_argument("--db", help="database file or URL (default: nanostudy.db beside the study)")
    parser.add_argument("--refresh-s", type=float, default=1.0, dest="refresh_s", help="poll period (1 s)")
    parser.set_defaults(func=_cmd_tui)
