"""Catalog schema migrations (Alembic), run at start-up by `Catalog` and by `vidsearch migrate`.

Several processes (web app, workers, CLI calls) may start at once on one database, so migrating happens under a lock:
an OS file lock next to a SQLite file, `pg_advisory_lock` on PostgreSQL. A database already at head costs one query
and no lock. Catalogs made before migrations existed (no `alembic_version` table) are stamped with the revision their
tables match, then upgraded.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)

SCRIPT_LOCATION = Path(__file__).resolve().parent

# The revisions that describe schemas made before migrations existed (see _legacy_revision). Frozen: never renumber.
BASELINE, COUNTERS, VIDEO_TAG = "0001", "0002", "0003"

# pg_advisory_lock key, shared by every vidsearch process on one database (advisory locks are per database).
PG_LOCK_KEY = 0x7669_6473_6D69_6772  # "vidsmigr"


class MigrationError(RuntimeError):
    """The catalog cannot be brought to this version's schema (unknown revision, foreign tables, ...)."""


@dataclass(frozen=True)
class MigrationResult:
    from_revision: str | None  # None: no alembic_version before (an empty database, or a catalog made before them)
    to_revision: str
    stamped: str | None = None  # the revision a pre-migrations catalog was recognised as, if one was

    @property
    def changed(self) -> bool:
        return self.from_revision != self.to_revision


def config(connection: Connection | None = None, script_location: Path = SCRIPT_LOCATION) -> Config:
    """Alembic's configuration, built in code (no alembic.ini); env.py migrates `connection`."""
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location))
    cfg.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    cfg.attributes["connection"] = connection
    return cfg


@functools.cache
def _scripts(script_location: Path = SCRIPT_LOCATION) -> ScriptDirectory:
    return ScriptDirectory.from_config(config(script_location=script_location))


def head(script_location: Path = SCRIPT_LOCATION) -> str:
    """The newest revision this version of vidsearch knows."""
    found = _scripts(script_location).get_current_head()
    assert found is not None, "no migration scripts"
    return found


def current(url: str) -> str | None:
    """The revision the catalog at `url` is at (None: not under migrations yet, or empty)."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return _version(conn)
    finally:
        engine.dispose()


def upgrade(url: str) -> MigrationResult:
    """Bring the catalog at `url` to head (what `vidsearch migrate` runs)."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        return ensure_schema(engine)
    finally:
        engine.dispose()


def downgrade(url: str, revision: str) -> MigrationResult:
    """Take the catalog at `url` back to `revision` ("base": no tables), e.g. before installing an older vidsearch.
    Data in the columns and tables that go is lost."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with _migrating(engine) as conn, conn.begin():
            before = MigrationContext.configure(conn).get_current_revision()
            command.downgrade(config(conn), revision)
            if conn.dialect.name == "sqlite":
                _check_foreign_keys(conn)
            after = MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
    log.info("catalog schema downgraded from %s to %s", before, after or "nothing")
    return MigrationResult(before, after or "base")


def ensure_schema(engine: Engine, script_location: Path = SCRIPT_LOCATION) -> MigrationResult:
    """Bring the database behind `engine` to head, under the migration lock unless it is there already.
    `script_location`: another copy of the migration scripts (tests, the revision helper)."""
    target = head(script_location)
    with engine.connect() as conn:
        found = _version(conn)
    if found == target:
        return MigrationResult(found, target)
    with _migrating(engine) as conn:
        return _migrate(conn, script_location)


@contextlib.contextmanager
def _migrating(engine: Engine) -> Iterator[Connection]:
    """A connection fit for schema changes, held under the migration lock."""
    if engine.dialect.name == "sqlite":
        if _sqlite_in_memory(engine.url):  # private to this engine: nobody to lock out, and only its pool reaches it
            with engine.connect() as conn:
                yield conn
            return
        with _file_lock(_lock_path(engine.url)), _sqlite_migration_engine(engine.url) as migrating:
            with migrating.connect() as conn:
                yield conn
        return
    with engine.connect() as conn, _advisory_lock(conn):
        yield conn


def _version(conn: Connection) -> str | None:
    """One query: the single revision in alembic_version, or None (no table, no row, or several: the slow path
    then sorts it out under the lock)."""
    try:
        rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    except (OperationalError, ProgrammingError):  # no such table (SQLite / PostgreSQL)
        conn.rollback()
        return None
    conn.rollback()
    return rows[0] if len(rows) == 1 else None


def _migrate(conn: Connection, script_location: Path) -> MigrationResult:
    """Stamp a pre-migrations catalog, then upgrade to head, all in one transaction (DDL is transactional on
    PostgreSQL, and on SQLite through _sqlite_migration_engine)."""
    cfg, scripts = config(conn, script_location), _scripts(script_location)
    target = scripts.get_current_head()
    with conn.begin():
        before = MigrationContext.configure(conn).get_current_revision()  # again: another process may have migrated
        stamped = None
        if before is None:
            stamped = _legacy_revision(conn)
            if stamped is not None:
                command.stamp(cfg, stamped)
        elif before not in {s.revision for s in scripts.walk_revisions()}:
            raise MigrationError(f"the catalog is at schema revision {before}, which this version of vidsearch does "
                                 f"not know (newest: {target}): it was opened by a newer vidsearch; upgrade vidsearch")
        if before != target:
            command.upgrade(cfg, "head")
        if conn.dialect.name == "sqlite":
            _check_foreign_keys(conn)
        after = MigrationContext.configure(conn).get_current_revision()
    if after != target:
        raise MigrationError(f"catalog migration ended at revision {after}, expected {target}")
    if before != after:
        log.info("catalog schema upgraded from %s to %s%s", before or "nothing", after,
                 f" (recognised an earlier catalog as {stamped})" if stamped else "")
    return MigrationResult(before, after, stamped)


def _legacy_revision(conn: Connection) -> str | None:
    """Which revision a catalog made before migrations matches: each of these versions created its tables with
    `create_all` and added `videos.tag` by hand, so the newest feature present tells the revision. None: no
    catalog tables at all (a fresh database, migrated from nothing)."""
    inspector = inspect(conn)
    tables = set(inspector.get_table_names())
    if not tables & {"videos", "jobs", "counters"}:
        return None
    if not {"videos", "jobs"} <= tables:
        raise MigrationError(f"the catalog database has some of vidsearch's tables but not videos and jobs "
                             f"(found: {', '.join(sorted(tables))}): it is not a catalog an earlier version made")
    if "counters" not in tables:
        return BASELINE
    ready = conn.execute(text("SELECT count(*) FROM counters WHERE name = 'ready'")).scalar_one()
    if not ready:  # earlier versions inserted it right after create_all; 0002 inserts it for migrated catalogs
        conn.execute(text("INSERT INTO counters (name, value) VALUES ('ready', 0)"))
    if "tag" not in {c["name"] for c in inspector.get_columns("videos")}:
        return COUNTERS
    if "ix_videos_tag" not in {i["name"] for i in inspector.get_indexes("videos")}:
        # The earlier code added the column, then the index: a crash in between left the column alone.
        conn.execute(text("CREATE INDEX ix_videos_tag ON videos (tag)"))
    return VIDEO_TAG


def _check_foreign_keys(conn: Connection) -> None:
    """SQLite migrates with foreign keys off (see _sqlite_migration_engine): check before committing that no
    migration left a dangling reference."""
    broken = conn.execute(text("PRAGMA foreign_key_check")).fetchall()
    if broken:
        raise MigrationError(f"catalog migration would leave {len(broken)} broken foreign key(s), e.g. {broken[0]}")


def _sqlite_in_memory(url: URL) -> bool:
    database = url.database or ""
    return database in ("", ":memory:") or "mode=memory" in database or url.query.get("mode") == "memory"


def _lock_path(url: URL) -> Path:
    return Path(f"{url.database}.migrate.lock")  # beside the database file; left in place (deleting it races)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive flock; the OS releases it when its holder dies, so a crashed migration blocks nobody."""
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process to finish migrating the catalog (%s)", path)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _advisory_lock(conn: Connection) -> Iterator[None]:
    """PostgreSQL's session-level advisory lock on the connection that migrates (released if it drops)."""
    if conn.dialect.name != "postgresql":
        log.warning("no migration lock for %s databases: start one vidsearch process first", conn.dialect.name)
        yield
        return
    if not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": PG_LOCK_KEY}).scalar_one():
        log.info("waiting for another process to finish migrating the catalog")
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": PG_LOCK_KEY})
    conn.commit()  # the lock outlives this transaction; _migrate opens its own
    try:
        yield
    finally:
        conn.rollback()
        conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": PG_LOCK_KEY})
        conn.commit()


@contextlib.contextmanager
def _sqlite_migration_engine(url: URL) -> Iterator[Engine]:
    """A SQLite engine fit for schema changes. Python's sqlite3 commits DDL as it goes unless a transaction was
    begun explicitly, so BEGIN IMMEDIATE is emitted here: a failed migration rolls back whole. Foreign keys are
    off (they cannot change inside a transaction), because batch mode copies a table and drops the old one, and a
    DROP of `videos` with them on would cascade-delete every job."""
    engine = create_engine(url, poolclass=NullPool)

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # no implicit transactions: the "begin" hook below owns them
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=OFF")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    try:
        yield engine
    finally:
        engine.dispose()

