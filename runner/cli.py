"""The `nanostudy` command line."""

import sys


def main(argv: list[str] | None = None) -> int:
    print("nanostudy: not yet", file=sys.stderr)
    return 2
