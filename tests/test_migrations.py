"""Catalog migrations on real SQLite files and a real PostgreSQL server: fresh catalogs, catalogs made before
migrations existed (created by `create_all`, `tag` added by hand), concurrent start-ups, and models == migrations."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import multiprocessing
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Integer, MetaData, create_engine, inspect, make_url, text
from sqlalchemy.pool import NullPool

from schema import migrations
from schema.catalog import Base, Catalog, JobState, VideoStatus
from schema.migrations import MigrationError, current, downgrade, ensure_schema, head
from schema.migrations.__main__ import new_revision

# The DDL the first release's `Base.metadata.create_all` emitted (schema/catalog.py at 1cb69a5), per dialect.
FIRST_RELEASE = {
    "sqlite": [
        """CREATE TABLE videos (id INTEGER NOT NULL, sha256 VARCHAR(64) NOT NULL, title TEXT NOT NULL,
        stored_path TEXT NOT NULL, owned BOOLEAN NOT NULL, size_bytes INTEGER NOT NULL, duration FLOAT, fps FLOAT,
        width INTEGER, height INTEGER, codec VARCHAR(64), created_at DATETIME NOT NULL, status VARCHAR(10) NOT NULL,
        error TEXT, PRIMARY KEY (id))""",
        "CREATE UNIQUE INDEX ix_videos_sha256 ON videos (sha256)",
        "CREATE INDEX ix_videos_status ON videos (status)",
        """CREATE TABLE jobs (id INTEGER NOT NULL, video_id INTEGER NOT NULL, state VARCHAR(7) NOT NULL,
        attempts INTEGER NOT NULL, error TEXT, worker VARCHAR(128), created_at DATETIME NOT NULL, started_at DATETIME,
        finished_at DATETIME, updated_at DATETIME NOT NULL, PRIMARY KEY (id),
        FOREIGN KEY(video_id) REFERENCES videos (id) ON DELETE CASCADE)""",
        "CREATE INDEX ix_jobs_state ON jobs (state)",
        "CREATE INDEX ix_jobs_video_id ON jobs (video_id)",
    ],
    "postgresql": [
        "CREATE TYPE videostatus AS ENUM ('queued', 'processing', 'ready', 'failed')",
        "CREATE TYPE jobstate AS ENUM ('queued', 'running', 'done', 'failed')",
        """CREATE TABLE videos (id SERIAL NOT NULL, sha256 VARCHAR(64) NOT NULL, title TEXT NOT NULL,
        stored_path TEXT NOT NULL, owned BOOLEAN NOT NULL, size_bytes INTEGER NOT NULL, duration FLOAT, fps FLOAT,
        width INTEGER, height INTEGER, codec VARCHAR(64), created_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
        status videostatus NOT NULL, error TEXT, PRIMARY KEY (id))""",
        "CREATE UNIQUE INDEX ix_videos_sha256 ON videos (sha256)",
        "CREATE INDEX ix_videos_status ON videos (status)",
        """CREATE TABLE jobs (id SERIAL NOT NULL, video_id INTEGER NOT NULL, state jobstate NOT NULL,
        attempts INTEGER NOT NULL, error TEXT, worker VARCHAR(128), created_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
        started_at TIMESTAMP WITHOUT TIME ZONE, finished_at TIMESTAMP WITHOUT TIME ZONE,
        updated_at TIMESTAMP WITHOUT TIME ZONE NOT NULL, PRIMARY KEY (id),
        FOREIGN KEY(video_id) REFERENCES videos (id) ON DELETE CASCADE)""",
        "CREATE INDEX ix_jobs_state ON jobs (state)",
        "CREATE INDEX ix_jobs_video_id ON jobs (video_id)",
    ],
}
# Added by `create_all` from ab97d10 on (same DDL on both dialects), with its row inserted at every start.
COUNTERS = ["CREATE TABLE counters (name VARCHAR(32) NOT NULL, value INTEGER NOT NULL, PRIMARY KEY (name))",
            "INSERT INTO counters (name, value) VALUES ('ready', 7)"]
# What `Catalog._add_missing_columns` ran from 4c31fca on.
TAG_BY_HAND = ['ALTER TABLE videos ADD COLUMN "tag" VARCHAR(256)', "CREATE INDEX ix_videos_tag ON videos (tag)"]

VIDEO_COLUMNS = ("id, sha256, title, stored_path, owned, size_bytes, duration, fps, width, height, codec, created_at, "
                 "status, error")
JOB_COLUMNS = "id, video_id, state, attempts, error, worker, created_at, started_at, finished_at, updated_at"
# Without ids, as the application inserted them (PostgreSQL's sequences must advance): ids 1 and 2.
ROWS = [
    f"INSERT INTO videos ({VIDEO_COLUMNS[4:]}) VALUES ('a1', 'beach.mp4', '/v/a1.mp4', TRUE, 1000, 12.5, 25.0, 640, "
    "360, 'h264', '2026-11-22 10:00:00.000000', 'ready', NULL)",
    f"INSERT INTO videos ({VIDEO_COLUMNS[4:]}) VALUES ('b2', 'broken.avi', '/v/b2.avi', FALSE, 20, NULL, NULL, NULL, "
    "NULL, NULL, '2026-11-22 11:00:00.000000', 'failed', 'not a video')",
    f"INSERT INTO jobs ({JOB_COLUMNS[4:]}) VALUES (1, 'done', 1, NULL, 'host:12', '2026-11-22 10:00:00.000000', "
    "'2026-11-22 10:00:01.000000', '2026-11-22 10:00:09.000000', '2026-11-22 10:00:09.000000')",
    f"INSERT INTO jobs ({JOB_COLUMNS[4:]}) VALUES (2, 'failed', 3, 'not a video', NULL, '2026-11-22 11:00:00.000000', "
    "NULL, '2026-11-22 11:00:05.000000', '2026-11-22 11:00:05.000000')",
]


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """An empty catalog database on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.db'}"
    return request.getfixturevalue("postgres_url")


@contextlib.contextmanager
def connect(url: str) -> Iterator:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def execute(url: str, statements: list[str]) -> None:
    with connect(url) as conn:
        for statement in statements:
            conn.execute(text(statement))
        conn.commit()


def rows(url: str) -> dict[str, list[tuple]]:
    with connect(url) as conn:
        return {"videos": [tuple(r) for r in conn.execute(text(f"SELECT {VIDEO_COLUMNS} FROM videos ORDER BY id"))],
                "jobs": [tuple(r) for r in conn.execute(text(f"SELECT {JOB_COLUMNS} FROM jobs ORDER BY id"))]}


def layout(url: str) -> dict[str, tuple]:
    """Columns (name, type, nullable) and indexes of every catalog table."""
    with connect(url) as conn:
        insp = inspect(conn)
        return {t: (sorted((c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(t)),
                    sorted((i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in insp.get_indexes(t)))
                for t in insp.get_table_names() if t != "alembic_version"}


def version_rows(url: str) -> list[str]:
    with connect(url) as conn:
        return list(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())


def ready_counter(url: str) -> list[int]:
    with connect(url) as conn:
        return list(conn.execute(text("SELECT value FROM counters WHERE name = 'ready'")).scalars())


def backend(url: str) -> str:
    return make_url(url).get_backend_name()


# --- catalogs made before migrations existed ----------------------------------------------------------------------
@pytest.mark.parametrize("made_by, stamped, counter", [("first release", "0001", 0), ("counters", "0002", 7)])
def test_old_catalog_without_tag_is_upgraded_in_place(db_url, made_by, stamped, counter):
    execute(db_url, FIRST_RELEASE[backend(db_url)] + (COUNTERS if made_by == "counters" else []) + ROWS)
    before = rows(db_url)

    catalog = Catalog(db_url)
    try:
        assert (catalog.migration.from_revision, catalog.migration.stamped) == (None, stamped)
        assert catalog.migration.to_revision == head()
        assert rows(db_url) == before
        assert version_rows(db_url) == [head()]
        assert ready_counter(db_url) == [counter]  # kept, or created by the counters revision
        old = catalog.get_video(1)
        assert (old.title, old.status, old.tag, old.duration) == ("beach.mp4", VideoStatus.READY, None, 12.5)
        assert catalog.jobs_for([2])[2].state == JobState.FAILED
        assert catalog.ready_jobs() == {1: 1}
        video, _ = catalog.add_video(sha256="c3", title="drone.mp4", stored_path="/v/c3.mp4", size_bytes=5, tag="drone")
        assert catalog.get_video(video.id).tag == "drone" and catalog.tags() == ["drone"]
        catalog.delete_video(video.id)
        assert catalog.ready_generation() == counter + 1  # the counter row is there for bumps to land on
    finally:
        catalog.close()
    assert "ix_videos_tag" in {name for name, _, _ in layout(db_url)["videos"][1]}


def test_catalog_that_gained_tag_by_hand_is_stamped_not_altered(db_url):
    execute(db_url, FIRST_RELEASE[backend(db_url)] + COUNTERS + ROWS + TAG_BY_HAND
            + ["UPDATE videos SET tag = 'sea' WHERE id = 1"])
    before_rows, before_layout = rows(db_url), layout(db_url)

    catalog = Catalog(db_url)
    try:
        assert (catalog.migration.from_revision, catalog.migration.stamped) == (None, "0003")
        assert catalog.get_video(1).tag == "sea" and catalog.tags() == ["sea"]
    finally:
        catalog.close()
    # Up to 0003 nothing was altered; later revisions only added what they add (0004: two columns of jobs; 0005:
    # the expert_runs table; 0006: streams and live_events; 0007: jobs.lease and, on PostgreSQL, a 64-bit
    # videos.size_bytes).
    after = layout(db_url)
    if backend(db_url) == "postgresql":
        assert ("size_bytes", "BIGINT", False) in after["videos"][0]
        columns = [c if c[0] != "size_bytes" else ("size_bytes", "INTEGER", False) for c in after["videos"][0]]
        after["videos"] = (columns, after["videos"][1])
    added = {("crashes", "INTEGER", False), ("suspect", "BOOLEAN", False), ("lease", "INTEGER", False)}
    assert set(after["jobs"][0]) - set(before_layout["jobs"][0]) == added
    assert set(after) - set(before_layout) == {"expert_runs", "streams", "live_events"}
    same = {name: table for name, table in after.items() if name not in ("jobs", "expert_runs", "streams",
                                                                         "live_events")}
    assert same == {name: table for name, table in before_layout.items() if name != "jobs"}
    assert after["jobs"][1] == before_layout["jobs"][1]
    assert rows(db_url) == before_rows
    assert version_rows(db_url) == [head()]


def test_tag_column_without_its_index_gets_the_index(tmp_path):
    url = f"sqlite:///{tmp_path / 'catalog.db'}"  # the earlier code crashed between its ALTER and CREATE INDEX
    execute(url, FIRST_RELEASE["sqlite"] + COUNTERS + ROWS + TAG_BY_HAND[:1])
    Catalog(url).close()
    assert ("ix_videos_tag", ("tag",), False) in layout(url)["videos"][1]
    assert version_rows(url) == [head()]


def test_tables_that_are_not_an_old_catalog_are_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    execute(url, COUNTERS)
    with pytest.raises(MigrationError, match="not a catalog an earlier version made"):
        Catalog(url)
    assert layout(url).keys() == {"counters"}


# --- fresh catalogs, the fast path, the lock ---------------------------------------------------------------------
def test_fresh_catalog(db_url):
    catalog = Catalog(db_url)
    try:
        assert (catalog.migration.from_revision, catalog.migration.to_revision) == (None, head())
        assert catalog.migration.stamped is None and catalog.migration.changed
        assert catalog.ready_generation() == 0 and catalog.list_videos() == []
    finally:
        catalog.close()
    assert set(layout(db_url)) == {"videos", "jobs", "counters", "expert_runs", "streams", "live_events"}
    assert ready_counter(db_url) == [0] and current(db_url) == head()
    again = Catalog(db_url)
    try:
        assert (again.migration.from_revision, again.migration.changed) == (head(), False)
    finally:
        again.close()


def test_in_memory_catalog():
    catalog = Catalog("sqlite://")
    try:
        assert catalog.migration.to_revision == head()
        video, _ = catalog.add_video(sha256="a", title="t", stored_path="/x", size_bytes=1, tag="t")
        assert catalog.tags() == ["t"]
    finally:
        catalog.close()


@contextlib.contextmanager
def holding_migration_lock(url: str) -> Iterator[None]:
    """Hold the lock a migrating process takes, as another process would."""
    if backend(url) == "sqlite":
        with open(migrations._lock_path(make_url(url)), "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield
        return
    with connect(url) as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": migrations.PG_LOCK_KEY})
        conn.commit()
        yield


def open_in_thread(url: str) -> tuple[threading.Thread, list]:
    outcome: list = []

    def run() -> None:
        try:
            catalog = Catalog(url)
            outcome.append(catalog.migration)
            catalog.close()
        except Exception as exc:  # handed to the test thread
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_migration_waits_for_the_lock_but_a_current_catalog_does_not(db_url, caplog):
    caplog.set_level(logging.INFO, logger="schema.migrations")
    with holding_migration_lock(db_url):
        thread, outcome = open_in_thread(db_url)
        waiting = threading.Event()
        for _ in range(600):  # until it says it waits (or has wrongly finished)
            if "waiting for another process" in caplog.text or not thread.is_alive():
                waiting.set()
                break
            thread.join(0.1)
        assert waiting.is_set() and thread.is_alive() and outcome == []
        assert current(db_url) is None  # nothing migrated while another process holds the lock
    thread.join(60)
    assert outcome and outcome[0].from_revision is None and outcome[0].to_revision == head()

    with holding_migration_lock(db_url):  # at head: one query, no lock, so it does not wait
        thread, outcome = open_in_thread(db_url)
        thread.join(60)
        finished = not thread.is_alive()
    thread.join()
    assert finished and outcome[0].from_revision == head()


def _open_catalog(url: str, barrier, results) -> None:
    """In a spawned process: wait for the others, then open the catalog."""
    barrier.wait(timeout=120)
    try:
        catalog = Catalog(url)
        results.put((catalog.migration.from_revision, catalog.migration.to_revision, None))
        catalog.close()
    except Exception as exc:
        results.put((None, None, repr(exc)))


def test_processes_starting_at_once_migrate_once(db_url):
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(4), context.Queue()
    procs = [context.Process(target=_open_catalog, args=(db_url, barrier, results)) for _ in range(4)]
    for proc in procs:
        proc.start()
    try:
        outcomes = [results.get(timeout=180) for _ in procs]
    finally:
        for proc in procs:
            proc.join(60)
    assert [error for _, _, error in outcomes] == [None] * 4
    assert sorted(str(before) for before, _, _ in outcomes) == sorted(["None"] + [head()] * 3)  # one migrated
    assert {after for _, after, _ in outcomes} == {head()}
    assert version_rows(db_url) == [head()] and ready_counter(db_url) == [0]


# --- the migrations themselves ------------------------------------------------------------------------------------
def test_migrations_match_the_models(db_url):
    """A model change without a migration fails here."""
    Catalog(db_url).close()
    with connect(db_url) as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
        changed = MetaData()
        for table in Base.metadata.tables.values():
            table.to_metadata(changed)
        changed.tables["videos"].append_column(Column("probe", Integer))
        assert [diff[0] for diff in compare_metadata(context, changed)] == ["add_column"]


def test_downgrade_and_upgrade_again(db_url):
    catalog = Catalog(db_url)
    video, job = catalog.add_video(sha256="a", title="t", stored_path="/x", size_bytes=1, tag="t")
    catalog.close()

    assert downgrade(db_url, "0002").to_revision == "0002"
    assert "tag" not in {name for name, _, _ in layout(db_url)["videos"][0]}
    # SQLite copies `videos` to drop the column: with foreign keys on, dropping the old table would cascade to jobs.
    assert [r[:3] for r in rows(db_url)["jobs"]] == [(job.id, video.id, "queued")]

    downgrade(db_url, "base")
    assert layout(db_url) == {} and version_rows(db_url) == []
    if backend(db_url) == "postgresql":
        with connect(db_url) as conn:
            assert conn.execute(text("SELECT typname FROM pg_type WHERE typname IN ('videostatus', 'jobstate')")
                                ).all() == []
    again = Catalog(db_url)
    assert again.migration.to_revision == head() and again.list_videos() == []
    again.close()


BROKEN_REVISION = '''
import sqlalchemy as sa
from alembic import op

revision = "{revision}"
down_revision = "{down}"


def upgrade():
    op.create_table("probe", sa.Column("id", sa.Integer, primary_key=True))
    with op.batch_alter_table("videos") as batch:
        batch.add_column(sa.Column("probe", sa.Integer))
    raise RuntimeError("half done")
'''


def next_revision() -> str:
    return f"{int(head()) + 1:04d}"


def copy_of_the_scripts(tmp_path: Path) -> Path:
    scripts = tmp_path / "migrations"
    shutil.copytree(migrations.SCRIPT_LOCATION, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    return scripts


def test_a_failing_migration_changes_nothing(db_url, tmp_path):
    Catalog(db_url).close()
    scripts = copy_of_the_scripts(tmp_path)
    (scripts / "versions" / f"{next_revision()}_broken.py").write_text(
        BROKEN_REVISION.replace("{revision}", next_revision()).replace("{down}", head()))
    before = layout(db_url)
    engine = create_engine(db_url, poolclass=NullPool)
    try:
        with pytest.raises(RuntimeError, match="half done"):
            ensure_schema(engine, scripts)
    finally:
        engine.dispose()
    assert layout(db_url) == before and current(db_url) == head()


def test_catalog_from_a_newer_version_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    Catalog(url).close()
    execute(url, ["UPDATE alembic_version SET version_num = '0099'"])
    with pytest.raises(MigrationError, match="newer vidsearch"):
        Catalog(url)


def test_revision_helper_numbers_the_next_revision(tmp_path):
    scripts = copy_of_the_scripts(tmp_path)
    path = new_revision("add probe", script_location=scripts)
    assert path == scripts / "versions" / f"{next_revision()}_add_probe.py"
    source = path.read_text()
    assert f"down_revision: str | None = '{head()}'" in source
    assert "op." not in source  # the models and the migrations agree: nothing to autogenerate
