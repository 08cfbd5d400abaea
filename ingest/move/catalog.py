"""Move stage 1: the catalog, copied table by table into another database (SQLite -> PostgreSQL, typically).

The destination's tables are made by its own migrations (ensure_schema), then every row is copied with its primary
key, tables in foreign-key order, in batches of `batch` rows, each batch one transaction. A rerun goes on past the
largest id already at the destination, so an interrupted copy is resumed, never duplicated. PostgreSQL's sequences
are then set past the largest ids, so the next video gets the next id.

Jobs and expert runs that are running at the source are refused rather than copied (as queued or otherwise): a
running worker would go on writing to the source, and what it finished there would be missing from the copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Integer, Table, create_engine, delete, func, insert, inspect, make_url, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from ingest.move.common import BatchHook, MoveError, Progress
from ingest.move.state import MoveState
from schema.catalog import Base, Catalog, ExpertRun, ExpertState, Job, JobState
from schema.migrations import MigrationError

TABLES: list[Table] = list(Base.metadata.sorted_tables)  # parents before children
ALEMBIC_TABLE = "alembic_version"
PRESET_TABLES = {"counters"}  # rows the migrations insert themselves (the `ready` counter)


@dataclass
class CatalogReport:
    destination: str  # shown without its password
    copied: dict[str, int] = field(default_factory=dict)  # rows written by this run, per table
    rows: dict[str, int] = field(default_factory=dict)  # rows at the destination after it, per table
    was_done: bool = False  # an earlier run completed this copy

    @property
    def nothing_to_do(self) -> bool:
        return self.was_done and not any(self.copied.values())


def shown_url(url: str) -> str:
    """A database URL as it may be printed: its password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"


def _same_database(a: str, b: str) -> bool:
    ua, ub = make_url(a), make_url(b)
    if ua.get_backend_name() == ub.get_backend_name() == "sqlite":
        from pathlib import Path

        return bool(ua.database) and Path(ua.database).resolve() == Path(ub.database or "").resolve()
    return ua.render_as_string(hide_password=False) == ub.render_as_string(hide_password=False)


def open_destination(url: str, source_url: str) -> Engine:
    """An engine on the destination database, checked to be reachable and not the source itself."""
    try:
        engine = create_engine(url, poolclass=NullPool)
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise MoveError(f"--to-database: not a database URL SQLAlchemy can use ({exc}); e.g. "
                        "postgresql+psycopg://user:password@host:5432/vidsearch") from exc
    if _same_database(url, source_url):
        raise MoveError("--to-database is the catalog in use now: give another database")
    try:
        with engine.connect():
            pass
    except SQLAlchemyError as exc:
        engine.dispose()
        raise MoveError(f"cannot reach the destination database {shown_url(url)}: "
                        f"{str(exc.orig if getattr(exc, 'orig', None) else exc).strip().splitlines()[0]}") from exc
    return engine


def destination_rows(engine: Engine) -> tuple[set[str], dict[str, int]]:
    """(every table of the destination, rows of each catalog table there)."""
    names = set(inspect(engine).get_table_names())
    with engine.connect() as conn:
        rows = {t.name: int(conn.scalar(select(func.count()).select_from(t)) or 0) for t in TABLES if t.name in names}
    return names, rows


def check_empty(engine: Engine, url: str) -> None:
    """Refuse a destination that holds anything but an empty catalog (e.g. made by `vidsearch migrate`)."""
    names, rows = destination_rows(engine)
    foreign = sorted(names - {t.name for t in TABLES} - {ALEMBIC_TABLE})
    filled = {name: n for name, n in rows.items() if n and name not in PRESET_TABLES}
    if foreign or filled:
        what = (f"tables that are not a vidsearch catalog ({', '.join(foreign[:5])})" if foreign else
                "a catalog with rows (" + ", ".join(f"{name}: {n}" for name, n in filled.items()) + ")")
        raise MoveError(f"the destination database {shown_url(url)} is not empty: it holds {what}, and no earlier "
                        "run of this move wrote there. Give an empty database.")


def check_quiet(source: Catalog, lease_seconds: float) -> None:
    """Refuse to move a library whose jobs or expert runs are running (see the module's docstring)."""
    from schema.settings import EXPERT_NAMES

    with source.sessions() as s:
        running = int(s.scalar(select(func.count(Job.id)).where(Job.state == JobState.RUNNING)) or 0)
        running_runs = int(s.scalar(select(func.count(ExpertRun.id))
                                    .where(ExpertRun.state == ExpertState.RUNNING)) or 0)
    if not running and not running_runs:
        return
    dead = len(source.dead_jobs(lease_seconds)) + sum(len(source.dead_expert_runs(e, lease_seconds))
                                                      for e in EXPERT_NAMES)
    busy = running + running_runs
    if dead < busy:
        raise MoveError(f"{busy - dead} job(s) or expert run(s) are being processed by a running `vidsearch worker` "
                        "or `vidsearch serve`: stop them first (what they finish would be missing from the copy), "
                        "then run this again")
    raise MoveError(f"{dead} job(s) or expert run(s) were left running by workers that are gone: run "
                    "`vidsearch doctor --repair` to queue them again, then run this again")


def _integer_key(table: Table):
    keys = list(table.primary_key.columns)
    return keys[0] if len(keys) == 1 and isinstance(keys[0].type, Integer) else None


def copy_catalog(source: Catalog, url: str, state: MoveState, *, batch: int, progress: Progress,
                 on_batch: BatchHook) -> CatalogReport:
    """Copy every row of `source` into the database at `url` (see the module's docstring)."""
    engine = open_destination(url, str(source.engine.url.render_as_string(hide_password=False)))
    try:
        if state.section("catalog", url) is None:
            check_empty(engine, url)
        section = state.begin("catalog", url, shown_url(url))
        was_done = bool(section.get("done"))
    finally:
        engine.dispose()
    try:
        dest = Catalog(url)  # the destination's own migrations make its tables
    except (MigrationError, SQLAlchemyError) as exc:
        raise MoveError(f"could not create the catalog's tables in {shown_url(url)}: {exc}") from exc
    report = CatalogReport(shown_url(url), was_done=was_done)
    try:
        with source.engine.connect() as conn:
            wanted = {t.name: int(conn.scalar(select(func.count()).select_from(t)) or 0) for t in TABLES}
        _, before = destination_rows(dest.engine)
        bar = progress("catalog", sum(max(0, wanted[t.name] - before.get(t.name, 0)) for t in TABLES))
        try:
            for table in TABLES:
                key = _integer_key(table)
                copy = _copy_by_key if key is not None else _copy_whole
                report.copied[table.name] = copy(source.engine, dest.engine, table, batch, bar, on_batch)
        finally:
            bar.close()
        _reset_sequences(dest.engine)
        _, report.rows = destination_rows(dest.engine)
        differ = {name: (n, report.rows.get(name, 0)) for name, n in wanted.items() if report.rows.get(name, 0) != n}
        if differ:
            raise MoveError("the source catalog changed while it was being moved (" + ", ".join(
                f"{name}: {a} rows there, {b} here" for name, (a, b) in differ.items()) + "): stop every worker "
                "and `vidsearch serve`, then run this again")
        section["done"] = True
        state.save()
    finally:
        dest.close()
    return report


def _copy_by_key(src: Engine, dst: Engine, table: Table, batch: int, bar, on_batch: BatchHook) -> int:
    """Rows past the destination's largest id, in id order, `batch` per transaction."""
    key = _integer_key(table)
    with dst.connect() as conn:
        last = conn.scalar(select(func.max(key)))
    copied = 0
    while True:
        query = select(table).order_by(key).limit(batch)
        if last is not None:
            query = query.where(key > last)
        with src.connect() as conn:
            rows = [dict(r) for r in conn.execute(query).mappings()]
        if not rows:
            return copied
        try:
            with dst.begin() as conn:
                conn.execute(insert(table), rows)
        except SQLAlchemyError as exc:
            cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            raise MoveError(f"the destination refused {table.name} rows {rows[0][key.name]}..{rows[-1][key.name]}: "
                            f"{cause}") from exc
        last = rows[-1][key.name]
        copied += len(rows)
        bar.update(len(rows))
        on_batch("catalog", table.name, len(rows))


def _copy_whole(src: Engine, dst: Engine, table: Table, batch: int, bar, on_batch: BatchHook) -> int:
    """A small table without an integer key (counters): its rows replace those of the same keys, at once."""
    keys = list(table.primary_key.columns)
    with src.connect() as conn:
        rows = [dict(r) for r in conn.execute(select(table)).mappings()]
    if not rows:
        return 0
    with dst.connect() as conn:
        present = {tuple(r) for r in conn.execute(select(*keys))}
    with dst.begin() as conn:
        for row in rows:
            conn.execute(delete(table).where(*[k == row[k.name] for k in keys]))
        conn.execute(insert(table), rows)
    new = sum(1 for r in rows if tuple(r[k.name] for k in keys) not in present)
    bar.update(new)
    on_batch("catalog", table.name, len(rows))
    return new


def _reset_sequences(engine: Engine) -> None:
    """PostgreSQL: each table's id sequence continues after its largest copied id."""
    if engine.dialect.name != "postgresql":
        return  # SQLite's next id is max(id) + 1 by itself
    preparer = engine.dialect.identifier_preparer
    with engine.begin() as conn:
        for table in TABLES:
            key = _integer_key(table)
            if key is None:
                continue
            conn.execute(text(
                f"SELECT setval(pg_get_serial_sequence(:table, :column), "
                f"COALESCE((SELECT MAX({preparer.quote(key.name)}) FROM {preparer.format_table(table)}), 0) + 1, "
                "false)"), {"table": table.name, "column": key.name})
