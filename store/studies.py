"""Studies and their fitted laws: the rows that belong to a whole study rather than to one cell."""

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlmodel import col, select

from store.cells import NewCell, add_cells_in, replan_in
from store.engine import Store, now
from store.schema import Fit, Study
from store.values import clean_json

_studies: sa.Table = Study.__table__  # type: ignore[attr-defined]
_fits: sa.Table = Fit.__table__  # type: ignore[attr-defined]


def upsert_study(store: Store, *, name: str, path: str, spec: Mapping[str, Any]) -> Study:
    """The study named `name`, created or, when it exists, updated with the current file's path and spec.

    Re-running an edited study file keeps its id (and so its cells); the spec kept is the newest.
    """
    with store.write() as conn:
        _upsert_study_in(conn, name=name, path=path, spec=spec)
    study = get_study(store, name)
    assert study is not None, f"study {name!r} vanished right after it was written"
    return study


def record_study(
    store: Store, *, name: str, path: str, spec: Mapping[str, Any], cells: Sequence[NewCell]
) -> tuple[Study, int, int]:
    """`upsert_study` and `store.cells.add_cells` in one transaction, the cells being the study's whole
    plan: (the study, how many cells are new to it, how many cells an earlier plan of it had that this one
    leaves out: they keep their results but leave the study's status, report and fits). When the cells
    cannot be added, the study is not recorded either (no empty study is left)."""
    with store.write() as conn:
        study_id = _upsert_study_in(conn, name=name, path=path, spec=spec)
        added = add_cells_in(conn, study_id, cells)
        left_out = replan_in(conn, study_id, [cell.id for cell in cells])
    study = get_study(store, name)
    assert study is not None, f"study {name!r} vanished right after it was written"
    return study, added, left_out


def _upsert_study_in(conn: Connection, *, name: str, path: str, spec: Mapping[str, Any]) -> int:
    if not name:
        raise ValueError("study name: must not be empty")
    spec_json = clean_json(dict(spec))
    stamp = now()
    found = conn.execute(sa.select(_studies.c.id).where(_studies.c.name == name)).scalar()
    if found is None:
        return conn.execute(
            sa.insert(_studies)
            .values(name=name, path=str(path), spec=spec_json, created_at=stamp, updated_at=stamp)
            .returning(_studies.c.id)
        ).scalar_one()
    conn.execute(
        sa.update(_studies)
        .where(_studies.c.id == found)
        .values(path=str(path), spec=spec_json, updated_at=stamp)
    )
    return found


def get_study(store: Store, name: str) -> Study | None:
    with store.session() as session:
        return session.exec(select(Study).where(Study.name == name)).first()


def list_studies(store: Store) -> list[Study]:
    with store.session() as session:
        return list(session.exec(select(Study).order_by(col(Study.created_at))).all())


def save_fit(store: Store, study_id: int, *, kind: str, metric: str, params: Mapping[str, Any]) -> Fit:
    """Record a fit; older fits of the same kind and metric stay, and `latest_fits` picks the newest."""
    if not kind or not metric:
        raise ValueError(f"fit: kind and metric must not be empty (got kind={kind!r}, metric={metric!r})")
    with store.write() as conn:
        fit_id = conn.execute(
            sa.insert(_fits)
            .values(
                study_id=study_id, kind=kind, metric=metric, params=clean_json(dict(params)), created_at=now()
            )
            .returning(_fits.c.id)
        ).scalar_one()
    with store.session() as session:
        fit = session.get(Fit, fit_id)
    assert fit is not None
    return fit


def latest_fits(store: Store, study_id: int) -> list[Fit]:
    """The newest fit of each (kind, metric) of the study, ordered by kind then metric."""
    newest = (
        sa.select(sa.func.max(_fits.c.id))
        .where(_fits.c.study_id == study_id)
        .group_by(_fits.c.kind, _fits.c.metric)
    )
    with store.session() as session:
        query = select(Fit).where(col(Fit.id).in_(newest)).order_by(col(Fit.kind), col(Fit.metric))
        return list(session.exec(query).all())
