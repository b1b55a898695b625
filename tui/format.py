"""How the TUI writes numbers: short, fixed-width where it helps a column line up, "–" for unknown."""

import math
import re

UNKNOWN = "–"
STATE_STYLES = {
    "pending": "dim",
    "running": "bold cyan",
    "done": "green",
    "failed": "bold red",
    "diverged": "magenta",
    "cancelled": "yellow",
}
_SPARK = "▁▂▃▄▅▆▇█"
# Terminal escape sequences (colours, cursor moves, titles) and the other control characters but tab and
# newline: a trainer's stderr may hold them (FORCE_COLOR, a coloured traceback, a progress bar).
_TERMINAL_CODES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[ -/]*[0-~]?|[\x00-\x08\x0b-\x1f\x7f]"
)


def si(number: float | None, *, digits: int = 3) -> str:
    """1234567 -> '1.23M'; 1e15 -> '1.00P'. For token counts, FLOPs, rates."""
    if number is None or not math.isfinite(number):
        return UNKNOWN
    for threshold, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(number) >= threshold:
            return f"{number / threshold:.{digits - 1}f}{suffix}"
    return f"{number:.0f}"


def flops(number: float) -> str:
    """A FLOP budget as a grid label, to 3 significant digits: 1e15, 7.5e10, 1.25e15 (as the report and the
    runner's log name it; one digit made 1.5e15, 2e15 and 2.5e15 all '2e15')."""
    mantissa, _, exponent = f"{number:.2e}".partition("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def fixed(number: float | None, decimals: int = 3) -> str:
    return UNKNOWN if number is None or not math.isfinite(number) else f"{number:.{decimals}f}"


def percent(fraction: float | None) -> str:
    return UNKNOWN if fraction is None else f"{100 * fraction:.0f}%"


def duration(seconds: float | None) -> str:
    """3725 -> '1h02m'; 59 -> '59s'."""
    if seconds is None or not math.isfinite(seconds):
        return UNKNOWN
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def progress_bar(done: int, total: int, width: int = 10) -> str:
    """'█████░░░░░  50%': a text bar, so that a thousand rows cost no widgets."""
    fraction = min(1.0, done / total) if total > 0 else 0.0
    filled = round(fraction * width)
    return "█" * filled + "░" * (width - filled) + f" {100 * fraction:3.0f}%"


def sparkline(values: list[float], *, lowest: float = 0.0, highest: float | None = None) -> str:
    """Block characters for a short history, scaled to [lowest, highest] (default: the values' max)."""
    if not values:
        return ""
    top = max(values) if highest is None else highest
    span = top - lowest
    if span <= 0:
        return _SPARK[0] * len(values)
    levels = len(_SPARK) - 1
    return "".join(_SPARK[round(min(1.0, max(0.0, (v - lowest) / span)) * levels)] for v in values)


def printable(text: str) -> str:
    """Text from a log or a trainer's stderr without terminal escape sequences and control characters:
    written to the screen as they are, they recoloured it and shifted every column after them."""
    return _TERMINAL_CODES.sub("", text)
