"""The `nanostudy` command line: one subcommand per module, each registering its own parser."""

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

# Each module here exposes `register(subparsers)`, which adds its subcommands and sets `func` on them;
# `func(args)` returns the exit code. Modules are imported only when the CLI runs, never at import time.
COMMAND_MODULES = [
    "runner.data.commands",
    "runner.run_commands",
    "reports.commands",
    "runner.chat_commands",
    "runner.eval_commands",
    # The terminal UI, registered here like the reports: a package the runner itself may not import.
    "tui.commands",
]
# Work that follows a command and belongs to another package, wired here, in the composition root, so that
# no runner module imports the reports (DESIGN: runner -> store, nanogpt; reports -> store): `nanostudy run`
# ends by writing the study's HTML report. Each hook, "module:function", is called as function(args,
# exit_code) after the command returns; it is imported only then, and whatever it raises is a warning that
# never changes the command's exit code.
AFTER_COMMAND = {
    "run": "reports.commands:report_after_run",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanostudy", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:  # the commands' imports take a second: a Ctrl-C then is an interrupt too, not a traceback
        from store import SchemaVersionError, StoreOpenError

        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:
        print("nanostudy: interrupted", file=sys.stderr)
        return 130
    try:
        with _sigterm_interrupts():
            code = int(args.func(args) or 0)
            sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
    except BrokenPipeError:
        # `nanostudy status --json | head -1`: the reader left. As a shell's commands do, no word and 141
        # (128 + SIGPIPE); stdout goes to /dev/null so that the interpreter's last flush fails no more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        print("nanostudy: interrupted", file=sys.stderr)
        return 130
    except (StoreOpenError, SchemaVersionError) as error:
        # Every command that opens the database: a bad --db, an unreachable server, another schema version.
        print(f"nanostudy {args.command}: error: {error}", file=sys.stderr)
        return 2
    if args.command in AFTER_COMMAND:
        _after(AFTER_COMMAND[args.command], args, code)
    return code


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM interrupts a command as Ctrl-C does (exit 130, "interrupted"), where Python's default would
    end the process at once with 143 and no word: a `run` stopped while it prepares data or plans, before
    its loop installs its own handlers (runner.run). The previous handler comes back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _after(hook: str, args: argparse.Namespace, code: int) -> None:
    module, function = hook.split(":")
    try:
        getattr(importlib.import_module(module), function)(args, code)
    except (Exception, KeyboardInterrupt) as error:
        print(f"nanostudy {args.command}: warning: {hook} failed: {error!r}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
