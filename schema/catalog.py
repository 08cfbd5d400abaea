"""SQLAlchemy catalog: videos and ingestion jobs. The job table is the queue shared by all processes.

The tables are made and changed by migrations (schema/migrations), not from these models: a model change needs a new
revision (`python -m schema.migrations revision -m ...`), and tests/test_migrations.py fails until it has one."""

from __future__ import annotations

import enum
import os
import socket
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    false,
    func,
    select,
    tuple_,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker

from schema.lite_server import pid_alive
from schema.migrations import MigrationResult, ensure_schema


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


# Job (or expert run) id -> the fencing token (its `lease` column) its worker claimed it with. Every claim moves the
# token on, so a worker whose lease expired while it still worked cannot finish, fail or requeue what another
# worker now holds: its conditional UPDATEs match no row.
Leases = Mapping[int, int]


def db_now(s) -> datetime:
    """The database's clock, naive UTC: leases written and judged by workers on many hosts use one clock, not each
    host's. SQLite is a file on this host: its clock is this host's."""
    if s.get_bind().dialect.name == "postgresql":
        return s.scalar(select(func.timezone("UTC", func.now())))
    return utcnow()


class VideoStatus(str, enum.Enum):
    QUEUED = "queued"
    PROCESSING = "processing"
    READY = "ready"
    FAILED = "failed"


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class Base(DeclarativeBase):
    pass


class Video(Base):
    __tablename__ = "videos"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    title: Mapped[str] = mapped_column(Text)  # the client's file name: display only, never a path
    stored_path: Mapped[str] = mapped_column(Text)
    owned: Mapped[bool] = mapped_column(default=True)  # False when ingested in place (--link): never deleted by us
    # 64-bit: PostgreSQL's INTEGER ends at 2 GiB (SQLite's INTEGER is 64-bit already and stays as it is).
    size_bytes: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"))
    duration: Mapped[float | None] = mapped_column(Float)
    fps: Mapped[float | None] = mapped_column(Float)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    codec: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    tag: Mapped[str | None] = mapped_column(String(256), index=True)  # a label set at ingest (`--tag`), filterable
    status: Mapped[VideoStatus] = mapped_column(
        Enum(VideoStatus, values_callable=lambda e: [m.value for m in e]), default=VideoStatus.QUEUED, index=True
    )
    error: Mapped[str | None] = mapped_column(Text)

    jobs: Mapped[list[Job]] = relationship(back_populates="video", cascade="all, delete-orphan", passive_deletes=True)

    def as_dict(self) -> dict:
        return {
            "video_id": self.id,
            "title": self.title,
            "path": self.stored_path,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "duration": self.duration,
            "fps": self.fps,
            "width": self.width,
            "height": self.height,
            "codec": self.codec,
            "created_at": self.created_at.isoformat(timespec="seconds") + "Z",
            "tag": self.tag,
            "status": self.status.value,
            "error": self.error,
        }


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    video_id: Mapped[int] = mapped_column(ForeignKey("videos.id", ondelete="CASCADE"), index=True)
    state: Mapped[JobState] = mapped_column(
        Enum(JobState, values_callable=lambda e: [m.value for m in e]), default=JobState.QUEUED, index=True
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # A worker died while this job was running: it is retried alone, its frames decoded in a process of their own,
    # so a file that kills what decodes it is told apart from its batch neighbours and from an outside kill.
    suspect: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    crashes: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # decoder deaths seen on this file
    lease: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # fencing token (see Leases)
    error: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)

    video: Mapped[Video] = relationship(back_populates="jobs")


class ExpertState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"  # its segments are stored (none when the expert found nothing: then it is `unavailable`)
    UNAVAILABLE = "unavailable"  # the video has nothing for this expert (no audio track, no text): `reason` says
    FAILED = "failed"  # the expert itself failed on this video (crashed, timed out) too often: `reason` says


class ExpertRun(Base):
    """One expert (speech, text) on one video: its state for search (done, or unavailable with the reason) and the
    queue of the expert stage (queued, running), apart from the appearance jobs so a video is searchable by
    appearance first. One row per (video, expert); running an expert again reuses it."""

    __tablename__ = "expert_runs"
    __table_args__ = (UniqueConstraint("video_id", "expert", name="uq_expert_runs_video_expert"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    video_id: Mapped[int] = mapped_column(ForeignKey("videos.id", ondelete="CASCADE"), index=True)
    expert: Mapped[str] = mapped_column(String(32))
    state: Mapped[ExpertState] = mapped_column(
        Enum(ExpertState, values_callable=lambda e: [m.value for m in e], name="expertstate"),
        default=ExpertState.QUEUED, index=True,
    )
    reason: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    segments: Mapped[int] = mapped_column(Integer, default=0)  # rows stored in the expert's collection
    seconds: Mapped[float | None] = mapped_column(Float)  # what the last run cost (decode + model), for the README
    lease: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # fencing token (see Leases)
    worker: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)


class Stream(Base):
    """A live source watched by `serve`'s watcher process (added through the API or the page): its URL (as given, with
    any credentials: shown only redacted), prompts, thresholds, and the state the watcher last reported."""

    __tablename__ = "streams"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(String(128))
    prompts: Mapped[str] = mapped_column(Text)  # JSON list of strings
    threshold: Mapped[float] = mapped_column(Float)
    exit_threshold: Mapped[float] = mapped_column(Float)
    min_seconds: Mapped[float] = mapped_column(Float)
    fps: Mapped[float] = mapped_column(Float)
    record: Mapped[bool] = mapped_column(Boolean, default=False)  # each event's clip goes into the library
    state: Mapped[str] = mapped_column(String(16), default="waiting")  # waiting, connecting, live, retrying, failed
    reason: Mapped[str | None] = mapped_column(Text)
    frames: Mapped[int] = mapped_column(Integer, default=0)
    dropped: Mapped[int] = mapped_column(Integer, default=0)
    reconnects: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)


class LiveEvent(Base):
    """A prompt seen on a stream: written when it starts (`end` empty) and again when it ends."""

    __tablename__ = "live_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    stream_id: Mapped[int | None] = mapped_column(ForeignKey("streams.id", ondelete="SET NULL"), index=True)
    source: Mapped[str] = mapped_column(Text)  # redacted URL
    name: Mapped[str] = mapped_column(String(128))
    prompt: Mapped[str] = mapped_column(Text)
    start: Mapped[float] = mapped_column(Float)  # seconds since the watcher's first frame of the stream
    end: Mapped[float | None] = mapped_column(Float)
    peak_score: Mapped[float] = mapped_column(Float)
    peak_softmax: Mapped[float] = mapped_column(Float)
    started_at: Mapped[datetime] = mapped_column(DateTime, index=True)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime)
    thumbnail: Mapped[str | None] = mapped_column(Text)  # path under the data folder's live/ folder
    clip_video_id: Mapped[int | None] = mapped_column(ForeignKey("videos.id", ondelete="SET NULL"))  # --record
    seq: Mapped[int] = mapped_column(Integer, default=0, index=True)  # bumped on every write: what SSE follows


class Counter(Base):
    """Named counters. `ready` changes whenever the set of ready videos (or their vectors) may have changed, so a
    search process can tell with one primary-key read whether its in-memory copy of the vectors is current. Its row
    is inserted by the migration that creates the table (schema/migrations/versions/0002_counters.py)."""

    __tablename__ = "counters"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(Integer, default=0)


READY_COUNTER = "ready"


def _bump_ready(s) -> None:
    s.execute(update(Counter).where(Counter.name == READY_COUNTER).values(value=Counter.value + 1))


def _video_conditions(status: VideoStatus | None, title: str | None) -> list:
    conditions = [] if status is None else [Video.status == status]
    if title:
        conditions.append(Video.title.icontains(title, autoescape=True))
    return conditions


SQLITE_BUSY_MS = 30_000


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # WAL lets the UI read while a worker writes; busy_timeout makes writers from several processes wait, not fail.
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
    _switch_to_wal(cursor)
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _switch_to_wal(cursor) -> None:
    """PRAGMA journal_mode=WAL, retried while the database is locked: the switch does not wait out busy_timeout
    when several processes open a new catalog at once (SQLite 3.40: 43 of 200 rounds of 4 processes failed with
    "database is locked" on a fresh file; test_processes_starting_at_once_migrate_once flaked in CI with it)."""
    import sqlite3

    deadline = time.monotonic() + SQLITE_BUSY_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class Catalog:
    """Owns the engine and session factory; every method is one short transaction."""

    def __init__(self, url: str) -> None:
        self.engine: Engine = create_engine(url)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        # Creates or upgrades the tables (Alembic, under a lock); one query when the catalog is current.
        self.migration: MigrationResult = ensure_schema(self.engine)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    # --- videos -------------------------------------------------------------------------------------------------
    def get_video(self, video_id: int) -> Video | None:
        with self.sessions() as s:
            return s.get(Video, video_id)

    def find_by_sha(self, sha256: str) -> Video | None:
        with self.sessions() as s:
            return s.scalar(select(Video).where(Video.sha256 == sha256))

    def list_videos(self, status: VideoStatus | None = None) -> list[Video]:
        """Every video (or every one with `status`): for commands that need them all; lists shown to people page
        with page_videos."""
        with self.sessions() as s:
            query = select(Video).order_by(Video.id)
            if status is not None:
                query = query.where(Video.status == status)
            return list(s.scalars(query))

    def page_videos(self, limit: int, *, after: int | None = None, status: VideoStatus | None = None,
                    title: str | None = None, newest_first: bool = False) -> list[Video]:
        """Up to `limit` videos in id order (descending with `newest_first`) that come after the id `after`: keyset
        paging, so a page does not shift when videos before it are added or deleted. `title`: a case-insensitive
        substring of the title (matched literally: % and _ are not wildcards)."""
        with self.sessions() as s:
            query = select(Video).where(*_video_conditions(status, title))
            if after is not None:
                query = query.where(Video.id < after if newest_first else Video.id > after)
            query = query.order_by(Video.id.desc() if newest_first else Video.id)
            return list(s.scalars(query.limit(limit)))

    def count_videos(self, status: VideoStatus | None = None, *, title: str | None = None,
                     newer_than: int | None = None) -> int:
        """How many videos match (`status`, `title` as in page_videos); with `newer_than`, only those of a larger
        id, i.e. those before that video in a newest-first list."""
        with self.sessions() as s:
            query = select(func.count(Video.id)).where(*_video_conditions(status, title))
            if newer_than is not None:
                query = query.where(Video.id > newer_than)
            return int(s.scalar(query) or 0)

    def tags(self) -> list[str]:
        """The distinct tags of the library's videos, sorted."""
        with self.sessions() as s:
            return sorted(s.scalars(select(Video.tag).where(Video.tag.is_not(None)).distinct()))

    def videos_by_ids(self, ids: Sequence[int]) -> dict[int, Video]:
        if not ids:
            return {}
        with self.sessions() as s:
            return {v.id: v for v in s.scalars(select(Video).where(Video.id.in_(list(ids))))}

    def add_video(self, **fields) -> tuple[Video, Job]:
        """Insert a video with a queued job, atomically."""
        with self.sessions.begin() as s:
            video = Video(status=VideoStatus.QUEUED, **fields)
            s.add(video)
            s.flush()
            job = Job(video_id=video.id, state=JobState.QUEUED)
            s.add(job)
            s.flush()
            return video, job

    def requeue_video(self, video_id: int) -> Job:
        """Give a failed video a fresh job."""
        with self.sessions.begin() as s:
            video = s.get(Video, video_id)
            if video is None:
                raise KeyError(video_id)
            video.status, video.error = VideoStatus.QUEUED, None
            job = Job(video_id=video_id, state=JobState.QUEUED)
            s.add(job)
            _bump_ready(s)
            s.flush()
            return job

    def delete_video(self, video_id: int) -> Video | None:
        with self.sessions.begin() as s:
            video = s.get(Video, video_id)
            if video is not None:
                s.delete(video)
                _bump_ready(s)
            return video

    def ready_generation(self) -> int:
        """Changes whenever the ready set may have changed (see Counter)."""
        with self.sessions() as s:
            return int(s.scalar(select(Counter.value).where(Counter.name == READY_COUNTER)) or 0)

    def ready_jobs(self) -> dict[int, int]:
        """Ready video id -> id of the job that produced its current vectors (a re-ingest has a new job)."""
        with self.sessions() as s:
            rows = s.execute(select(Video.id, func.max(Job.id)).join(Job)
                             .where(Video.status == VideoStatus.READY, Job.state == JobState.DONE)
                             .group_by(Video.id))
            return {int(v): int(j) for v, j in rows}

    # --- jobs ---------------------------------------------------------------------------------------------------
    def claim_jobs(self, limit: int, worker: str | None = None) -> list[Job]:
        """Atomically move up to `limit` queued jobs to running; safe with many worker processes on many hosts. A
        suspect job (see Job.suspect) is claimed alone: its batch is just itself. Each claimed job's `lease` is its
        new fencing token."""
        worker = worker or worker_name()
        with self.sessions.begin() as s:
            now = db_now(s)
            return (self._claim(s, worker, now, 1, suspect=True)
                    or self._claim(s, worker, now, limit, suspect=False))

    @staticmethod
    def _claim(s, worker: str, now: datetime, limit: int, *, suspect: bool) -> list[Job]:
        # UPDATE ... WHERE id IN (the oldest queued ids) AND state='queued': a job another process claimed first
        # matches no row, so no two workers ever run the same job.
        oldest = (select(Job.id).where(Job.state == JobState.QUEUED, Job.suspect == suspect)
                  .order_by(Job.id).limit(limit))
        rows = s.execute(
            update(Job)
            .where(Job.id.in_(_pick(s, oldest)), Job.state == JobState.QUEUED)
            .values(state=JobState.RUNNING, worker=worker, started_at=now, updated_at=now, attempts=Job.attempts + 1,
                    lease=Job.lease + 1)
            .returning(Job.id, Job.video_id)
        ).all()
        if not rows:
            return []
        s.execute(update(Video).where(Video.id.in_([r.video_id for r in rows])).values(status=VideoStatus.PROCESSING))
        return [s.get(Job, job_id) for job_id in sorted(r.id for r in rows)]

    @staticmethod
    def _held(job_id: int, leases: Leases | None):
        """The condition that the job is running under the caller's lease (any running lease when none is given:
        single-process callers such as tests and doctor)."""
        held = (Job.id == job_id) & (Job.state == JobState.RUNNING)
        return held if leases is None else held & (Job.lease == leases.get(job_id, -1))

    def finish_job(self, job_id: int, error: str, leases: Leases | None = None) -> bool:
        """Mark a running job failed, and its video failed with the reason. False when the job is no longer the
        caller's (deleted with its video, or its lease was taken over)."""
        with self.sessions.begin() as s:
            row = s.execute(update(Job).where(self._held(job_id, leases))
                            .values(state=JobState.FAILED, error=error, finished_at=db_now(s))
                            .returning(Job.video_id)).first()
            if row is None:
                return False
            s.execute(update(Video).where(Video.id == row.video_id).values(status=VideoStatus.FAILED, error=error))
            return True

    def finish_jobs(self, done: Sequence[tuple[int, dict]], experts: Sequence[str] = (),
                    leases: Leases | None = None) -> set[int]:
        """Mark many running jobs done in one transaction, each with its video's probed metadata, and queue `experts`
        for those videos (in the same transaction: a crash cannot leave a ready video that its experts never run
        on). Returns the ids finished; the others were no longer the caller's (see finish_job)."""
        finished: set[int] = set()
        with self.sessions.begin() as s:
            now = db_now(s)
            for job_id, video_fields in done:
                row = s.execute(update(Job).where(self._held(job_id, leases))
                                .values(state=JobState.DONE, error=None, finished_at=now)
                                .returning(Job.video_id)).first()
                if row is None:  # deleted while being processed, or taken over by another worker
                    continue
                finished.add(job_id)
                video = s.get(Video, row.video_id)
                if video is not None:
                    for name, value in video_fields.items():
                        setattr(video, name, value)
                    video.status, video.error = VideoStatus.READY, None
                    for expert in experts:  # what an expert found stays valid: the file (its hash) is the same
                        self._queue_expert(s, video.id, expert, keep_done=True)
            if finished:
                _bump_ready(s)
        return finished

    # --- experts ------------------------------------------------------------------------------------------------
    @staticmethod
    def _queue_expert(s, video_id: int, expert: str, *, keep_done: bool = False) -> None:
        run = s.scalar(select(ExpertRun).where(ExpertRun.video_id == video_id, ExpertRun.expert == expert))
        if run is None:
            s.add(ExpertRun(video_id=video_id, expert=expert, state=ExpertState.QUEUED, attempts=0, segments=0))
        elif keep_done and run.state in (ExpertState.DONE, ExpertState.UNAVAILABLE):
            return
        elif run.state != ExpertState.RUNNING:
            run.state, run.reason, run.attempts, run.worker, run.started_at = ExpertState.QUEUED, None, 0, None, None

    def request_experts(self, experts: Sequence[str], *, again: bool = False) -> dict[str, int]:
        """Queue `experts` for every ready video that has no result from them yet (`again`: for every ready video,
        redoing what is done); runs already queued or running are left as they are, so an interrupted
        `vidsearch reindex --experts` simply continues. Returns how many runs were queued per expert."""
        queued = {expert: 0 for expert in experts}
        with self.sessions.begin() as s:
            ready = list(s.scalars(select(Video.id).where(Video.status == VideoStatus.READY)))
            for expert in experts:
                runs = {r.video_id: r for r in s.scalars(select(ExpertRun).where(ExpertRun.expert == expert))}
                for video_id in ready:
                    run = runs.get(video_id)
                    if run is not None and run.state in (ExpertState.QUEUED, ExpertState.RUNNING):
                        continue
                    if run is not None and run.state != ExpertState.FAILED and not again:
                        continue
                    self._queue_expert(s, video_id, expert)
                    queued[expert] += 1
        return queued

    def queue_experts_for(self, video_ids: Sequence[int], expert: str) -> None:
        """Queue `expert` again for these videos (doctor, after its stored segments were found wrong)."""
        with self.sessions.begin() as s:
            for video_id in video_ids:
                if s.get(Video, video_id) is not None:
                    self._queue_expert(s, video_id, expert)

    def dead_expert_runs(self, expert: str, lease_seconds: float, identity: str | None = None) -> list[int]:
        """Videos whose `expert` run is left running by a worker that is gone."""
        with self.sessions() as s:
            gone = _worker_gone(lease_seconds, db_now(s), identity)
            running = s.scalars(select(ExpertRun).where(ExpertRun.state == ExpertState.RUNNING,
                                                        ExpertRun.expert == expert))
            return [run.video_id for run in running if gone(run.worker, run.updated_at)]

    def claim_expert_runs(self, limit: int, worker: str | None = None) -> list[ExpertRun]:
        """Atomically move up to `limit` queued expert runs of ready videos to running (oldest first), as
        claim_jobs does; each claimed run's `lease` is its new fencing token."""
        worker = worker or worker_name()
        with self.sessions.begin() as s:
            now = db_now(s)
            oldest = (select(ExpertRun.id).join(Video, Video.id == ExpertRun.video_id)
                      .where(ExpertRun.state == ExpertState.QUEUED, Video.status == VideoStatus.READY)
                      .order_by(ExpertRun.id).limit(limit))
            rows = s.execute(
                update(ExpertRun).where(ExpertRun.id.in_(_pick(s, oldest, ExpertRun)),
                                        ExpertRun.state == ExpertState.QUEUED)
                .values(state=ExpertState.RUNNING, worker=worker, started_at=now, updated_at=now,
                        attempts=ExpertRun.attempts + 1, lease=ExpertRun.lease + 1)
                .returning(ExpertRun.id)).all()
            return [s.get(ExpertRun, run_id) for run_id in sorted(r.id for r in rows)]

    @staticmethod
    def _run_held(s, run_id: int, lease: int | None) -> ExpertRun | None:
        """The run, locked, if it is running (under `lease`, when given)."""
        query = select(ExpertRun).where(ExpertRun.id == run_id, ExpertRun.state == ExpertState.RUNNING)
        if lease is not None:
            query = query.where(ExpertRun.lease == lease)
        return s.scalar(query.with_for_update())

    def finish_expert_run(self, run_id: int, state: ExpertState, *, reason: str | None = None, segments: int = 0,
                          seconds: float | None = None, lease: int | None = None) -> bool:
        """Record a running expert's outcome. False when the run is gone (its video was deleted meanwhile), was
        taken back (the video was ingested again) or was taken over (its lease expired and another worker claimed
        it): the caller removes what it stored then."""
        with self.sessions.begin() as s:
            run = self._run_held(s, run_id, lease)
            if run is None:
                return False
            run.state, run.reason, run.segments, run.seconds = state, reason, segments, seconds
            run.finished_at, run.worker = db_now(s), None
            return True  # (the ready counter stays: the experts' segments are read live, not from the memory copy)

    def retry_expert_run(self, run_id: int, reason: str, max_attempts: int, lease: int | None = None) -> bool:
        """The expert failed on this video (its process crashed): queue it again, or after `max_attempts` record
        it failed with `reason`. Returns True if it failed for good."""
        with self.sessions.begin() as s:
            run = self._run_held(s, run_id, lease)
            if run is None:
                return False
            if run.attempts >= max_attempts:
                times = f" ({run.attempts} times)" if run.attempts > 1 else ""
                run.state, run.reason, run.finished_at, run.worker = ExpertState.FAILED, reason + times, utcnow(), None
                return True
            run.state, run.reason, run.worker, run.started_at = ExpertState.QUEUED, reason, None, None
            return False

    def requeue_expert_runs(self, run_ids: Sequence[int], leases: Leases | None = None) -> None:
        """Give running expert runs back to the queue without counting an attempt (a stop, an outage)."""
        if run_ids:
            with self.sessions.begin() as s:
                query = select(ExpertRun).where(ExpertRun.id.in_(list(run_ids)), ExpertRun.state == ExpertState.RUNNING)
                if leases is not None:
                    query = query.where(tuple_(ExpertRun.id, ExpertRun.lease).in_(
                        [(i, leases[i]) for i in run_ids if i in leases]))
                for run in s.scalars(query.with_for_update()):
                    run.state, run.worker, run.started_at = ExpertState.QUEUED, None, None
                    run.attempts = max(0, run.attempts - 1)

    def heartbeat_experts(self, run_ids: Sequence[int]) -> None:
        """Renew running expert runs, whoever holds them (single-process callers; workers use renew_experts)."""
        if run_ids:
            with self.sessions.begin() as s:
                s.execute(update(ExpertRun).where(ExpertRun.id.in_(list(run_ids)),
                                                  ExpertRun.state == ExpertState.RUNNING).values(updated_at=db_now(s)))

    def renew_experts(self, leases: Leases) -> set[int]:
        """As renew, for expert runs."""
        if not leases:
            return set()
        with self.sessions.begin() as s:
            rows = s.execute(update(ExpertRun)
                             .where(tuple_(ExpertRun.id, ExpertRun.lease).in_(list(leases.items())),
                                    ExpertRun.state == ExpertState.RUNNING)
                             .values(updated_at=db_now(s)).returning(ExpertRun.id))
            return {int(r.id) for r in rows}

    def recover_expert_runs(self, lease_seconds: float, identity: str | None = None) -> list[int]:
        """Queue again the running expert runs whose worker died (as `recover` does for jobs)."""
        requeued = []
        with self.sessions.begin() as s:
            gone = _worker_gone(lease_seconds, db_now(s), identity)
            for run in s.scalars(select(ExpertRun).where(ExpertRun.state == ExpertState.RUNNING)
                                 .with_for_update(skip_locked=True)):
                if gone(run.worker, run.updated_at):
                    run.state, run.worker, run.started_at = ExpertState.QUEUED, None, None
                    run.attempts = max(0, run.attempts - 1)
                    requeued.append(run.id)
        return requeued

    def expert_runs(self, video_ids: Sequence[int]) -> dict[int, dict[str, ExpertRun]]:
        """video id -> expert -> its run, for these videos."""
        out: dict[int, dict[str, ExpertRun]] = {}
        ids = list(video_ids)
        with self.sessions() as s:
            for start in range(0, len(ids), 500):
                for run in s.scalars(select(ExpertRun).where(ExpertRun.video_id.in_(ids[start : start + 500]))):
                    out.setdefault(run.video_id, {})[run.expert] = run
        return out

    def expert_counts(self) -> dict[str, dict[str, int]]:
        """expert -> state -> how many videos (for status, progress and doctor)."""
        out: dict[str, dict[str, int]] = {}
        with self.sessions() as s:
            for expert, state, n in s.execute(select(ExpertRun.expert, ExpertRun.state, func.count())
                                              .group_by(ExpertRun.expert, ExpertRun.state)):
                out.setdefault(expert, {st.value: 0 for st in ExpertState})[state.value] = int(n)
        return out

    def expert_segment_counts(self, expert: str) -> dict[int, int]:
        """video id -> segments the catalog says are stored for `expert` (done runs only)."""
        with self.sessions() as s:
            rows = s.execute(select(ExpertRun.video_id, ExpertRun.segments)
                             .where(ExpertRun.expert == expert, ExpertRun.state == ExpertState.DONE))
            return {int(v): int(n) for v, n in rows}

    def requeue_jobs(self, job_ids: Sequence[int], *, count_attempt: bool = True, reason: str | None = None,
                     leases: Leases | None = None) -> None:
        """Give running jobs back to the queue (those still under `leases`, when given). An interruption (Ctrl-C) or
        an outage of the vector store does not count as an attempt; a failure does, so a job that keeps failing is
        eventually given up instead of retried forever. `reason` is shown on the job and its video until the next
        attempt succeeds."""
        if not job_ids:
            return
        with self.sessions.begin() as s:
            query = select(Job).where(Job.id.in_(list(job_ids)), Job.state == JobState.RUNNING)
            if leases is not None:
                query = query.where(tuple_(Job.id, Job.lease).in_([(i, leases[i]) for i in job_ids if i in leases]))
            for job in s.scalars(query.with_for_update()):
                job.state, job.worker, job.started_at, job.error = JobState.QUEUED, None, None, reason
                if not count_attempt:
                    job.attempts = max(0, job.attempts - 1)
                s.execute(update(Video).where(Video.id == job.video_id)
                          .values(status=VideoStatus.QUEUED, error=reason))

    def renew(self, leases: Leases) -> set[int]:
        """Renew the leases of running jobs (a worker that stops renewing is presumed dead after the lease length).
        Returns the ids still held: one missing was taken back (its lease expired and another worker claimed it,
        or its video was deleted), and its worker must drop it without writing anything."""
        if not leases:
            return set()
        with self.sessions.begin() as s:
            rows = s.execute(update(Job)
                             .where(tuple_(Job.id, Job.lease).in_(list(leases.items())), Job.state == JobState.RUNNING)
                             .values(updated_at=db_now(s)).returning(Job.id))
            return {int(r.id) for r in rows}

    def heartbeat(self, job_ids: Sequence[int]) -> None:
        """Renew the lease of running jobs, whoever holds them (single-process callers; workers use renew)."""
        if job_ids:
            with self.sessions.begin() as s:
                s.execute(update(Job).where(Job.id.in_(list(job_ids)), Job.state == JobState.RUNNING)
                          .values(updated_at=db_now(s)))

    def recover(self, lease_seconds: float, max_attempts: int, identity: str | None = None) -> list[int]:
        """Requeue running jobs whose worker died (its pid is gone on this host, or its lease expired by the
        database's clock), and give up on queued jobs that already failed `max_attempts` times. Returns the
        requeued job ids. `identity`: this host's worker identity (see worker_name)."""
        requeued = []
        with self.sessions.begin() as s:
            for job in self._dead_jobs(s, lease_seconds, identity, lock=True):
                # A worker's death (SIGKILL, a reboot, the OOM killer, or a file that crashed a decoder running in
                # a thread) cannot be pinned on one file from here, so it fails none: the attempt is given back and
                # each of its jobs is retried alone, decoded in a process of its own, where a crash is seen and
                # counted by a live worker (crashed). An outside kill can therefore never fail a good file.
                job.state, job.worker, job.started_at, job.suspect = JobState.QUEUED, None, None, True
                job.attempts = max(0, job.attempts - 1)
                s.execute(update(Video).where(Video.id == job.video_id).values(status=VideoStatus.QUEUED))
                requeued.append(job.id)
            for job in s.scalars(select(Job).where(Job.state == JobState.QUEUED, Job.attempts >= max_attempts)
                                 .with_for_update(skip_locked=True)):
                reason = f"gave up after {job.attempts} attempts (the worker failed each time; see its log)"
                job.state, job.error, job.finished_at = JobState.FAILED, reason, utcnow()
                s.execute(update(Video).where(Video.id == job.video_id)
                          .values(status=VideoStatus.FAILED, error=reason))
        return requeued

    def crashed(self, job_id: int, reason: str, max_crashes: int, leases: Leases | None = None) -> bool:
        """The process decoding a running job's file died (a crash, the OOM killer). The job fails once that has
        happened `max_crashes` times, with `reason`; before that it is retried alone. Returns True if it failed."""
        with self.sessions.begin() as s:
            job = s.scalar(select(Job).where(self._held(job_id, leases)).with_for_update())
            if job is None:
                return False
            job.crashes += 1
            video = s.get(Video, job.video_id)
            if job.crashes >= max_crashes:
                error = reason if job.crashes == 1 else f"{reason} ({job.crashes} times)"
                job.state, job.error, job.finished_at = JobState.FAILED, error, utcnow()
                if video is not None:
                    video.status, video.error = VideoStatus.FAILED, error
                return True
            # Not the attempt's fault yet (another process's memory use can get a decoder OOM-killed): try alone.
            error = f"{reason}; retrying it alone ({job.crashes} of {max_crashes})"
            job.state, job.worker, job.started_at, job.suspect, job.error = JobState.QUEUED, None, None, True, error
            job.attempts = max(0, job.attempts - 1)
            if video is not None:
                video.status, video.error = VideoStatus.QUEUED, error
            return False

    def dead_jobs(self, lease_seconds: float, identity: str | None = None) -> list[Job]:
        """Running jobs whose worker is gone (see `recover`)."""
        with self.sessions() as s:
            return self._dead_jobs(s, lease_seconds, identity)

    @staticmethod
    def _dead_jobs(s, lease_seconds: float, identity: str | None, *, lock: bool = False) -> list[Job]:
        gone = _worker_gone(lease_seconds, db_now(s), identity)
        query = select(Job).where(Job.state == JobState.RUNNING)
        if lock:  # PostgreSQL: two recovering workers never both requeue (and both un-count) one job
            query = query.with_for_update(skip_locked=True)
        return [job for job in s.scalars(query) if gone(job.worker, job.updated_at)]

    def fail_video(self, video_id: int, reason: str) -> None:
        """Mark a video failed (and its unfinished jobs), e.g. when its stored file has disappeared."""
        with self.sessions.begin() as s:
            video = s.get(Video, video_id)
            if video is None:
                return
            if video.status == VideoStatus.READY:
                _bump_ready(s)
            video.status, video.error = VideoStatus.FAILED, reason
            for job in s.scalars(select(Job).where(Job.video_id == video_id,
                                                   Job.state.in_([JobState.QUEUED, JobState.RUNNING]))):
                job.state, job.error, job.finished_at = JobState.FAILED, reason, utcnow()

    def video_states(self) -> dict[int, tuple[VideoStatus, str]]:
        """Every video: id -> (status, stored path)."""
        with self.sessions() as s:
            return {int(i): (st, p) for i, st, p in s.execute(select(Video.id, Video.status, Video.stored_path))}

    def get_job(self, job_id: int) -> Job | None:
        with self.sessions() as s:
            return s.get(Job, job_id)

    def jobs_for(self, video_ids: Sequence[int]) -> dict[int, Job]:
        """The latest job of each video."""
        with self.sessions() as s:
            rows = s.scalars(select(Job).where(Job.video_id.in_(list(video_ids))).order_by(Job.id))
            return {job.video_id: job for job in rows}

    def workers(self) -> list[dict]:
        """The workers holding running jobs: name, how many, and seconds since their last renewal (by the
        database's clock), most recently renewed first. What `vidsearch status` shows of a fleet of workers."""
        with self.sessions() as s:
            now = db_now(s)
            rows = s.execute(select(Job.worker, func.count(), func.max(Job.updated_at))
                             .where(Job.state == JobState.RUNNING).group_by(Job.worker))
            found = [{"worker": w, "running": int(n), "renewed_s_ago": max(0.0, (now - last).total_seconds())}
                     for w, n, last in rows]
        return sorted(found, key=lambda w: (w["renewed_s_ago"], w["worker"] or ""))

    def job_counts(self) -> dict[str, int]:
        with self.sessions() as s:
            counts = {state: n for state, n in s.execute(select(Job.state, func.count()).group_by(Job.state))}
        return {state.value: int(counts.get(state, 0)) for state in JobState}

    def failed_jobs(self, limit: int = 100) -> list[tuple[Job, Video]]:
        with self.sessions() as s:
            rows = s.execute(
                select(Job, Video).join(Video)
                .where(Job.state == JobState.FAILED, Video.status == VideoStatus.FAILED)
                .order_by(Job.id.desc())
                .limit(limit)
            )
            return [(job, video) for job, video in rows]


    # --- live streams and their events ------------------------------------------------------------------------------
    def add_stream(self, **fields) -> Stream:
        with self.sessions.begin() as s:
            stream = Stream(state="waiting", frames=0, dropped=0, reconnects=0, **fields)  # for the watcher process
            s.add(stream)
            s.flush()
            return stream

    def list_streams(self) -> list[Stream]:
        with self.sessions() as s:
            return list(s.scalars(select(Stream).order_by(Stream.id)))

    def get_stream(self, stream_id: int) -> Stream | None:
        with self.sessions() as s:
            return s.get(Stream, stream_id)

    def delete_stream(self, stream_id: int) -> Stream | None:
        """Remove a stream; its events stay (their stream_id becomes empty), with their thumbnails."""
        with self.sessions.begin() as s:
            stream = s.get(Stream, stream_id)
            if stream is not None:
                s.execute(update(LiveEvent).where(LiveEvent.stream_id == stream_id).values(stream_id=None))
                s.delete(stream)
            return stream

    def report_stream(self, stream_id: int, *, state: str, reason: str | None, frames: int, dropped: int,
                      reconnects: int) -> None:
        with self.sessions.begin() as s:
            s.execute(update(Stream).where(Stream.id == stream_id).values(
                state=state, reason=reason, frames=frames, dropped=dropped, reconnects=reconnects, updated_at=utcnow()))

    def start_event(self, **fields) -> int:
        """Record an event as it starts (no end yet); its id."""
        with self.sessions.begin() as s:
            event_row = LiveEvent(seq=_next_seq(s), **fields)
            s.add(event_row)
            s.flush()
            return event_row.id

    def end_event(self, event_id: int, **fields) -> None:
        with self.sessions.begin() as s:
            s.execute(update(LiveEvent).where(LiveEvent.id == event_id).values(seq=_next_seq(s), **fields))

    def live_events(self, *, since: datetime | None = None, stream_id: int | None = None, after_seq: int | None = None,
                    limit: int = 1000) -> list[LiveEvent]:
        """Events that started at or after `since` (newest first), or, with `after_seq`, every event written since
        (started or ended), in the order they were written."""
        with self.sessions() as s:
            query = select(LiveEvent)
            if since is not None:
                query = query.where(LiveEvent.started_at >= since)
            if stream_id is not None:
                query = query.where(LiveEvent.stream_id == stream_id)
            if after_seq is not None:
                query = query.where(LiveEvent.seq > after_seq).order_by(LiveEvent.seq)
            else:
                query = query.order_by(LiveEvent.started_at.desc(), LiveEvent.id.desc())
            return list(s.scalars(query.limit(limit)))

    def set_event_clip(self, event_ids: Sequence[int], video_id: int) -> None:
        """The recorded clip of these events is this library video (one clip can hold overlapping events)."""
        if not event_ids:
            return
        with self.sessions.begin() as s:
            s.execute(update(LiveEvent).where(LiveEvent.id.in_(list(event_ids)))
                      .values(clip_video_id=video_id, seq=_next_seq(s)))

    def clip_videos(self) -> list[Video]:
        """Library videos that are recorded clips of events, oldest first."""
        with self.sessions() as s:
            ids = select(LiveEvent.clip_video_id).where(LiveEvent.clip_video_id.is_not(None))
            return list(s.scalars(select(Video).where(Video.id.in_(ids)).order_by(Video.id)))

    def live_seq(self) -> int:
        """The newest event write: where a follower starts."""
        with self.sessions() as s:
            return int(s.scalar(select(func.max(LiveEvent.seq))) or 0)

    def remove_live_events(self, before: datetime) -> list[LiveEvent]:
        """Delete the events that ended before `before` (retention); the removed rows, for their thumbnails."""
        with self.sessions.begin() as s:
            rows = list(s.scalars(select(LiveEvent).where(LiveEvent.ended_at.is_not(None),
                                                          LiveEvent.ended_at < before)))
            for row in rows:
                s.delete(row)
            return rows


def _pick(s, oldest, table=Job):
    """The ids a claim takes: on PostgreSQL selected first, FOR UPDATE SKIP LOCKED, so concurrent claimers take
    different rows instead of queueing behind each other's row locks and coming back empty. (Not as a subquery of
    the UPDATE: PostgreSQL may evaluate that again per row, each time skipping the rows it just locked, and claim
    more than the limit: seen here.) SQLite has one writer at a time: the subquery runs inside the UPDATE."""
    if s.get_bind().dialect.name == "postgresql":
        return list(s.scalars(oldest.with_for_update(skip_locked=True, of=table)))
    return oldest


def _next_seq(s) -> int:
    return int(s.scalar(select(func.max(LiveEvent.seq))) or 0) + 1

def _worker_gone(lease_seconds: float, now: datetime, identity: str | None = None):
    """A test of (worker name, last renewal) -> whether that worker is gone: its lease expired by the database's
    clock `now`, or it has this host's identity and its pid is dead here (seen at once, no lease to wait out).
    For jobs and expert runs alike."""
    mine = identity or socket.gethostname()
    stale_before = now - timedelta(seconds=lease_seconds)

    def gone(worker: str | None, updated_at: datetime) -> bool:
        name, _, pid = (worker or "").rpartition(":")
        return (name == mine and pid.isdigit() and not pid_alive(int(pid))) or updated_at < stale_before

    return gone


def worker_name(identity: str | None = None) -> str:
    """`<identity>:<pid>`. The identity is the host name unless set (VIDSEARCH_WORKER_ID): containers that share a
    host name, or pid namespaces, need one each, since a dead pid is only judged on the identity's own host."""
    return f"{identity or socket.gethostname()}:{os.getpid()}"

