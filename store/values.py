"""The one place where values are made fit to store: non-finite floats become NULL, everywhere.

SQLite would store NaN as NULL anyway but inf as a real infinity, PostgreSQL stores both, and JSON has no
spelling for either (Python writes `NaN`, which PostgreSQL's JSON type rejects). So every write path runs
its floats through `finite` and its JSON through `clean_json`, and a reader never meets a NaN.
"""

import math
from collections.abc import Iterable, Mapping
from typing import Any, SupportsFloat

import sqlalchemy as sa


def finite(value: SupportsFloat | None) -> float | None:
    """`value` as a Python float, or None when it is None, NaN or ±inf (numpy scalars included)."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def clean_json(value: Any) -> Any:
    """A copy of a JSON-able value with every non-finite float replaced by None, at any depth."""
    if isinstance(value, float):
        return finite(value)
    if isinstance(value, Mapping):
        return {str(key): clean_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(item) for item in value]
    return value


def float_columns(table: sa.Table) -> frozenset[str]:
    """Names of the table's floating-point columns: the ones `clean_rows` passes through `finite`."""
    return frozenset(column.name for column in table.columns if isinstance(column.type, sa.Float))


def json_columns(table: sa.Table) -> frozenset[str]:
    """Names of the table's JSON columns: the ones `clean_rows` passes through `clean_json`."""
    return frozenset(column.name for column in table.columns if isinstance(column.type, sa.JSON))


def clean_rows(
    table: sa.Table,
    rows: Iterable[Mapping[str, Any]],
    *,
    allowed: frozenset[str],
    required: frozenset[str],
    defaults: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """Rows ready for one executemany: every key of `allowed`, floats made finite or None.

    An unknown key is a caller's typo, not data to drop silently, and a missing required one is a broken
    event: both raise ValueError naming the table and key. Every row gets the same keys (missing ones from
    `defaults`, else None) because a bulk insert takes its column list from the first row.
    """
    floats = float_columns(table) & allowed
    jsons = json_columns(table) & allowed
    cleaned = []
    for row in rows:
        keys = row.keys()
        if not keys <= allowed:
            unknown = sorted(keys - allowed)
            raise ValueError(f"{table.name}: unknown column(s) {unknown}; known: {sorted(allowed)}")
        if not required <= keys or any(row[name] is None for name in required):
            missing = sorted(name for name in required if row.get(name) is None)
            raise ValueError(f"{table.name}: row {dict(row)} lacks required {missing}")
        out = {name: row.get(name, defaults.get(name)) for name in allowed}
        for name in floats:
            value = out[name]
            if value is not None:
                out[name] = finite(value)
        for name in jsons:
            out[name] = clean_json(out[name])
        cleaned.append(out)
    return cleaned
