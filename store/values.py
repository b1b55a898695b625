"""The one place where values are made fit to store: non-finite floats become NULL, everywhere.

SQLite would store NaN as NULL anyway but inf as a real infinity, PostgreSQL stores both, and JSON has no
spelling for either (Python writes `NaN`, which PostgreSQL's JSON type rejects). So every write path runs
its floats through `finite` and its JSON through `clean_json`, and a reader never meets a NaN. Free text
from outside (a failed trainer's stderr, as a cell's reason) goes through `clean_text`.
"""

import functools
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, SupportsFloat

import sqlalchemy as sa


def finite(value: SupportsFloat | None) -> float | None:
    """`value` as a Python float, or None when it is None, NaN or ±inf (numpy scalars included)."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def clean_text(value: str | None) -> str | None:
    """Text every backend can store: PostgreSQL refuses a NUL character (the zero bytes a log file on a
    network filesystem is padded with after its node crashed), and neither takes a lone surrogate; each
    becomes U+FFFD."""
    if value is None:
        return None
    return _UNSTORABLE.sub("\ufffd", value)


def clean_json(value: Any) -> Any:
    """A copy of a JSON-able value with every non-finite float replaced by None, at any depth."""
    if isinstance(value, float):
        return finite(value)
    if isinstance(value, Mapping):
        return {str(key): clean_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(item) for item in value]
    return value


@functools.cache
def float_columns(table: sa.Table) -> frozenset[str]:
    """Names of the table's floating-point columns: the ones `clean_rows` passes through `finite`."""
    return frozenset(column.name for column in table.columns if isinstance(column.type, sa.Float))


@functools.cache
def json_columns(table: sa.Table) -> frozenset[str]:
    """Names of the table's JSON columns: the ones `clean_rows` passes through `clean_json`."""
    return frozenset(column.name for column in table.columns if isinstance(column.type, sa.JSON))


def clean_rows(
    table: sa.Table,
    rows: Iterable[Mapping[str, Any]],
    *,
    allowed: frozenset[str],
    required: frozenset[str],
    defaults: Mapping[str, Any] | None = None,
    fixed: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Rows ready for one executemany: every key of `allowed` and `fixed`, floats made finite or None.

    An unknown key is a caller's typo, not data to drop silently, and a missing required one is a broken
    event: both raise ValueError naming the table and key. Every row gets the same keys (missing ones from
    `defaults`, else None) because a bulk insert takes its column list from the first row; `fixed` values
    (the cell id) are set on every row. This runs once per ingested metric row, so it stays lean.
    """
    floats = tuple(float_columns(table) & allowed)
    jsons = tuple(json_columns(table) & allowed)
    template = dict.fromkeys(allowed) | dict(defaults or {})
    fixed = dict(fixed or {})
    cleaned = []
    for row in rows:
        if not row.keys() <= allowed:
            unknown = sorted(row.keys() - allowed)
            raise ValueError(f"{table.name}: unknown column(s) {unknown}; known: {sorted(allowed)}")
        out = {**template, **row, **fixed}
        for name in required:
            if out[name] is None:
                raise ValueError(f"{table.name}: row {dict(row)} lacks required {name!r}")
        for name in floats:
            value = out[name]
            # The common case, a finite Python float, costs one check; anything else goes through `finite`.
            if value is not None and not (type(value) is float and math.isfinite(value)):
                out[name] = finite(value)
        for name in jsons:
            out[name] = clean_json(out[name])
        cleaned.append(out)
    return cleaned
