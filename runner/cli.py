"""The `nanostudy` command line: one subcommand per module, each registering its own parser."""

import argparse
import importlib
import sys

# Each module here exposes `register(subparsers)`, which adds its subcommands and sets `func` on them;
# `func(args)` returns the exit code. Modules are imported only when the CLI runs, never at import time.
COMMAND_MODULES = [
    "runner.data.commands",
    "runner.run_commands",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanostudy", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("nanostudy: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
