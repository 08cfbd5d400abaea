"""Claims queued jobs and runs decode -> embed -> store for them, recording each outcome in the catalog.

Write order (so search never sees half a video): thumbnails are written (files keyed by content hash, overwritten by
a retry), the segment vectors then the video vector are inserted, and only then is the catalog row marked ready;
last, the video's other rows (a crashed earlier attempt may have left some) are deleted. Search returns ready videos
only, so a crash before the finish leaves nothing visible (the job is simply run again), and one after it a
duplicate that the next attempt or `vidsearch doctor` removes.

Many workers on many hosts (schema.catalog.Leases): a claimed batch's leases are renewed from a thread every third of
the lease length, checked again just before its vectors are written, and the catalog marks a job done only under the
lease it was claimed with. A worker that lost a job while it worked (paused past its lease, cut off from the
database) writes nothing for it, or, lost between its write and its finish, deletes exactly the rows it wrote (their
primary keys): the successor's copy stays the only one.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ingest import thumbnails
from ingest.decode import Limits, Sampling, VideoInfo
from ingest.decode_pool import DecodeMode, DecodePool, DecodeRequest
from ingest.encoder import ClipEncoder
from ingest.expert_stage import ExpertResult, ExpertStage
from ingest.pipeline import Embedded, Stopped, embed_videos
from schema.catalog import Catalog, Job, Leases, Video, worker_name
from schema.storage import Storage, StorageError, is_remote, open_storage
from schema.vectors import Segments, VectorStore, VectorStoreError, VideoFields

log = logging.getLogger(__name__)

# A running job whose worker has not renewed it for this long is presumed dead and handed to another worker
# (VIDSEARCH_LEASE_SECONDS).
LEASE_SECONDS = 600.0
MAX_ATTEMPTS = 3
MISSING_OBJECT = "the stored video is missing from the object store (deleted outside vidsearch); add the video again"


# Decodes and embeds (job id, path) pairs somewhere else than in this process (a Ray cluster), yielding one Embedded
# per pair as each finishes; the event, when set, asks it to raise Stopped.
Embedder = Callable[[Iterable[tuple[int, Path]], threading.Event | None], Iterator[Embedded]]


class LeaseKeeper:
    """Renews a claimed batch's leases from a thread, every third of the lease length, for as long as the batch is
    processed (a decode or a model pass may take longer than the lease), and remembers the jobs found lost."""

    def __init__(self, catalog: Catalog, leases: Leases, lease_seconds: float) -> None:
        self.catalog = catalog
        self.leases = dict(leases)
        self.lost: set[int] = set()
        self._every = lease_seconds / 3
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        # Not joined: the thread ends at once (a renewal of a finished or requeued job matches no row), and a join
        # interrupted by SIGTERM/Ctrl-C at the wrong instant is one more place a worker's shutdown could stall.
        self._stop.set()

    def renew(self, job_ids: list[int] | None = None) -> set[int]:
        """Renew now (these jobs, or all the batch's still held); returns the ids still held."""
        with self._lock:
            asked = {j: self.leases[j] for j in (job_ids if job_ids is not None else self.leases)
                     if j in self.leases and j not in self.lost}
            held = self.catalog.renew(asked)
            self.lost |= set(asked) - held
            return held

    def done(self, job_ids: list[int]) -> None:
        with self._lock:
            for j in job_ids:
                self.leases.pop(j, None)

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            try:
                self.renew()
            except Exception as exc:  # the database is away for a moment: the next renewal may reach it
                log.warning("could not renew the leases of running jobs: %s", exc)


@dataclass(frozen=True)
class JobResult:
    job_id: int
    video_id: int
    title: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def segments_of(item: Embedded) -> Segments | None:
    """One segment per sampled frame: its vector and the span of the video it stands for. Moments (windows of
    consecutive segments) are formed at query time, so their length can change without re-embedding anything."""
    if item.frames is None or not item.spans or len(item.spans) != len(item.frames) or item.spans[-1][1] <= 0:
        return None  # unknown duration: no times to give
    spans = np.asarray(item.spans, dtype=np.float32)
    return Segments(spans[:, 0], spans[:, 1], item.frames)


def _info_fields(info: VideoInfo) -> dict:
    return {"duration": info.duration, "fps": info.fps, "width": info.width, "height": info.height,
            "codec": info.codec}


class Worker:
    """Streams claimed jobs through the decode/embed pipeline and writes finished videos in batches."""

    def __init__(self, catalog: Catalog, store: VectorStore, encoder: ClipEncoder, frames: int,
                 poll_seconds: float = 1.0, *, decode_workers: int = 2, claim_size: int = 16,
                 write_batch: int = 32, decode_mode: DecodeMode = "process",
                 decode_timeout: float | None = 120.0, limits: Limits = Limits(),  # noqa: B008 (frozen)
                 sampling: Sampling | None = None, thumbnails_dir: Path | None = None, max_crashes: int = 2,
                 experts: ExpertStage | None = None, expert_names: tuple[str, ...] = (),
                 lease_seconds: float = LEASE_SECONDS, identity: str | None = None,
                 storage: Storage | None = None, embedder: Embedder | None = None) -> None:
        self.catalog = catalog
        self.storage = storage  # where stored videos live; needed for videos in object storage
        self.store = store
        self.encoder = encoder
        self.frames = frames
        self.poll_seconds = poll_seconds
        self.decode_workers = decode_workers
        self.claim_size = claim_size
        self.write_batch = write_batch
        self.decode_mode = decode_mode
        self.decode_timeout = decode_timeout
        self.limits = limits
        self.sampling = sampling or Sampling(frames)  # how many frames a video of a given duration gets
        self.thumbnails_dir = thumbnails_dir  # None: no thumbnails
        self.max_crashes = max_crashes
        self.experts = experts  # the expert stage: runs the experts on videos the appearance pipeline made ready
        self.expert_names = expert_names if experts is not None else ()  # queued for each video made ready
        self.lease_seconds = lease_seconds
        self.identity = identity  # this host's worker identity (VIDSEARCH_WORKER_ID), None: the host name
        self.name = worker_name(identity)
        self.embedder = embedder  # None: this process's decode pool and model (embed_videos)
        self._keeper: LeaseKeeper | None = None  # the batch in progress's leases
        self._videos: dict[int, Video] = {}  # job id -> its catalog video, for the batch in progress
        self._pool: DecodePool | None = None  # started on first use, kept for the worker's life
        self._alone: DecodePool | None = None  # one decode process for suspect jobs when decoding in threads
        self._stop: threading.Event | None = None  # run_forever's: set, the batch in progress is put back

    @classmethod
    def from_settings(cls, catalog: Catalog, store: VectorStore, encoder: ClipEncoder, settings, *,
                      with_experts: bool = True) -> Worker:
        """This installation's worker. `with_experts`: also run the expert stage (VIDSEARCH_EXPERTS), writing to
        the experts' collections through `store.lexical` (the Store facade has it; a bare vector store, as the
        bench uses, does not and gets no experts)."""
        stage = None
        if with_experts and hasattr(store, "lexical"):
            stage = ExpertStage.from_settings(catalog, store.lexical, settings)
        return cls(catalog, store, encoder, settings.frames, settings.worker_poll_seconds,
                   decode_workers=settings.decode_workers, claim_size=settings.claim_size,
                   write_batch=settings.write_batch, decode_mode=settings.decode_mode,
                   decode_timeout=settings.decode_timeout_seconds,
                   limits=Limits.from_settings(settings), sampling=Sampling.from_settings(settings),
                   thumbnails_dir=settings.thumbnails_dir, max_crashes=settings.max_crashes,
                   experts=stage, expert_names=settings.expert_names, lease_seconds=settings.lease_seconds,
                   identity=settings.worker_id, storage=open_storage(settings))

    def decode_request(self) -> DecodeRequest:
        """What each claimed file is decoded into (the model's input, the sampling rule, the limits, thumbnails)."""
        return DecodeRequest(self.encoder.prep, self.sampling, self.limits, thumbs=self.thumbnails_dir is not None)

    def decode_pool(self) -> DecodePool:
        if self._pool is None:
            self._pool = DecodePool(self.decode_request(), workers=self.decode_workers, mode=self.decode_mode,
                                    timeout=self.decode_timeout)
        return self._pool

    def pool_for(self, jobs: list[Job]) -> DecodePool:
        """The decode pool for a claimed batch. A suspect job (its last worker died running it: see Job.suspect)
        comes alone and, when the worker decodes in threads, is decoded in a process of its own: a file that kills
        its decoder then takes down that process, which this worker sees and counts, instead of the worker."""
        if self.decode_mode == "process" or not any(job.suspect for job in jobs):
            return self.decode_pool()
        if self._alone is None:
            self._alone = DecodePool(self.decode_request(), workers=1, mode="process", timeout=self.decode_timeout)
        return self._alone

    def close(self) -> None:
        """Stop the decode workers."""
        for pool in (self._pool, self._alone):
            if pool is not None:
                pool.close()
        self._pool = self._alone = None
        if self.experts is not None:
            self.experts.close()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def process(self, jobs: list[Job], on_result: Callable[[JobResult], None] | None = None) -> list[JobResult]:
        """Run claimed jobs to completion, keeping their leases renewed. A broken file fails alone; storage errors
        propagate (unfinished jobs stay running until the caller requeues them)."""
        with LeaseKeeper(self.catalog, {j.id: j.lease for j in jobs}, self.lease_seconds) as keeper:
            self._keeper = keeper
            try:
                return self._process(jobs, on_result)
            finally:
                self._keeper = None

    @property
    def _leases(self) -> Leases:
        return self._keeper.leases if self._keeper is not None else {}

    def _process(self, jobs: list[Job], on_result: Callable[[JobResult], None] | None) -> list[JobResult]:
        by_id = {job.id: job for job in jobs}
        videos = self.catalog.videos_by_ids([job.video_id for job in jobs])
        titles = {job.id: videos[job.video_id].title if job.video_id in videos else "?" for job in jobs}
        self._videos = {job.id: videos[job.video_id] for job in jobs if job.video_id in videos}
        results: list[JobResult] = []

        def emit(result: JobResult) -> None:
            results.append(result)
            if on_result:
                on_result(result)

        # A video in object storage is decoded from a local copy in the bounded cache (schema/storage.py): the
        # decoders run in other processes, which a path reaches simply, and a timed-out or crashed decode needs no
        # network stream cleaned up. Copies are fetched as the pipeline asks for the next file (at most `prefetch`
        # ahead) and held, so not evicted, until this batch is done.
        held = contextlib.ExitStack()

        def items():
            for job in jobs:
                video = videos.get(job.video_id)
                if video is None:
                    emit(self._fail(job, titles[job.id], "the video was deleted before it was processed"))
                elif not is_remote(video.stored_path):
                    yield job.id, Path(video.stored_path)
                elif self.storage is None or not self.storage.remote:
                    emit(self._fail(job, titles[job.id], f"the video is in object storage ({video.stored_path}) "
                                    "and this worker has no VIDSEARCH_STORAGE=s3://... configured"))
                else:
                    try:
                        yield job.id, held.enter_context(self.storage.local_copy(video.stored_path))
                    except FileNotFoundError:
                        emit(self._fail(job, titles[job.id], MISSING_OBJECT))

        with held:
            self._embed(jobs, items(), by_id, titles, emit)
        return results

    def _embed(self, jobs: list[Job], items, by_id: dict[int, Job], titles: dict[int, str], emit) -> None:
        pending: list[Embedded] = []
        if self.embedder is not None:
            stream = self.embedder(items, self._stop)
        else:
            stream = embed_videos(self.encoder, items, self.sampling, pool=self.pool_for(jobs),
                                  prefetch=max(2, 2 * self.decode_workers), stop=self._stop)
        for item in stream:
            job = by_id[item.key]
            if item.error is not None:
                if (result := self._decode_failed(job, titles[job.id], item.error)) is not None:
                    emit(result)
                continue
            pending.append(item)
            if len(pending) >= self.write_batch:
                for r in self._write(pending, by_id, titles):
                    emit(r)
                pending = []
        for r in self._write(pending, by_id, titles):
            emit(r)
        self.store.flush()

    def _write(self, done: list[Embedded], jobs: dict[int, Job], titles: dict[int, str]) -> list[JobResult]:
        """Thumbnails and vectors first, then the catalog marks the videos ready (under this worker's leases), then
        the videos' other rows (a crashed earlier attempt's) are removed."""
        if not done:
            return []
        held = self._keeper.renew([d.key for d in done]) if self._keeper is not None else {d.key for d in done}
        for d in [d for d in done if d.key not in held]:
            log.warning("job %d (video %d) was taken over by another worker (this one's lease expired while it "
                        "worked); its result is dropped", d.key, jobs[d.key].video_id)
        done = [d for d in done if d.key in held]
        if not done:
            return []
        if self.thumbnails_dir is not None:
            for d in done:
                if d.thumbs and d.key in self._videos:
                    thumbnails.write(self.thumbnails_dir, self._videos[d.key].sha256, d.thumbs, d.poster)
                    if self.storage is not None and self.storage.remote:  # for the other hosts (see thumbnails)
                        thumbnails.upload(self.storage, self.thumbnails_dir, self._videos[d.key].sha256)
        rows = self._insert(done, jobs)
        finished = self.catalog.finish_jobs([(d.key, _info_fields(d.info)) for d in done], experts=self.expert_names,
                                            leases=self._leases or None)
        if self._keeper is not None:
            self._keeper.done(list(finished))
        kept = {jobs[d.key].video_id: rows[jobs[d.key].video_id] for d in done if d.key in finished}
        lost = [rows[jobs[d.key].video_id] for d in done if d.key not in finished]
        # Only a worker that finished may clear the other rows of its videos: one that lost its lease must not touch
        # the successor's, so it deletes exactly its own (by primary key). A crash in between leaves a duplicate,
        # never a gap, and `vidsearch doctor` removes it.
        if kept:
            self.store.delete_other_rows({v: [pk] for v, (pk, _) in kept.items()},
                                         {v: segs for v, (_, segs) in kept.items()})
        if lost:
            self.store.delete_rows([pk for pk, _ in lost], [p for _, segs in lost for p in segs])
            log.warning("%d job(s) were taken over by another worker while their vectors were written; this "
                        "worker's rows of them are removed", len(lost))
        return [JobResult(d.key, jobs[d.key].video_id, titles[d.key]) for d in done if d.key in finished]

    def _insert(self, done: list[Embedded], jobs: dict[int, Job]) -> dict[int, tuple[int, list[int]]]:
        """Insert the videos' segment vectors and vectors; returns video id -> (its vector's primary key, its
        segments' primary keys)."""
        video_ids = [jobs[d.key].video_id for d in done]
        with_segments = [(v, seg) for v, seg in zip(video_ids, map(segments_of, done), strict=True) if seg is not None]
        segment_pks = (self.store.add_segments([v for v, _ in with_segments], [seg for _, seg in with_segments])
                       if with_segments else [])
        segments_of_video: dict[int, list[int]] = {}
        at = 0
        for video_id, seg in with_segments:  # the keys come back in row order, video after video
            segments_of_video[video_id] = segment_pks[at : at + len(seg.starts)]
            at += len(seg.starts)
        # Duration as decoded (the catalog learns it in the same step), ingest time and tag from the catalog.
        fields = [replace(VideoFields.of(self._videos[d.key]) if d.key in self._videos else VideoFields(),
                          duration=d.info.duration) for d in done]
        pks = self.store.add(video_ids, np.stack([d.vector for d in done]), fields)
        return {v: (pk, segments_of_video.get(v, [])) for v, pk in zip(video_ids, pks, strict=True)}

    def _decode_failed(self, job: Job, title: str, reason: str) -> JobResult | None:
        """A file's decoding failed: fail the job, or (a decoder that died on it, or was stopped from outside) put
        it back in the queue. Returns the failed job's result, None for a job requeued."""
        kind = getattr(reason, "kind", "error")
        if kind == "stopped":  # the service manager is stopping us all: not the file's doing
            self.catalog.requeue_jobs([job.id], count_attempt=False, leases=self._leases or None)
            return None
        if kind == "crash":
            if self.catalog.crashed(job.id, reason, self.max_crashes, self._leases or None):
                failed = self.catalog.get_job(job.id)
                log.warning("job %d (video %d) failed: %s", job.id, job.video_id, failed.error if failed else reason)
                return JobResult(job.id, job.video_id, title, failed.error if failed else reason)
            log.warning("job %d (video %d): %s; it will be retried alone", job.id, job.video_id, reason)
            return None
        return self._fail(job, title, reason)

    def _fail(self, job: Job, title: str, reason: str) -> JobResult:
        self.catalog.finish_job(job.id, reason, self._leases or None)
        log.warning("job %d (video %d) failed: %s", job.id, job.video_id, reason)
        return JobResult(job.id, job.video_id, title, reason)

    def run_once(self, on_result: Callable[[JobResult], None] | None = None,
                 on_expert: Callable[[ExpertResult], None] | None = None) -> list[JobResult | ExpertResult]:
        """Claim queued jobs and process them; when there are none, run the expert stage on one batch of queued
        expert runs (appearance first, so new videos become searchable soonest). Interrupted or failed storage:
        unfinished jobs are requeued."""
        if requeued := self.catalog.recover(self.lease_seconds, MAX_ATTEMPTS, self.identity):
            log.warning("%d job(s) of a worker that stopped unexpectedly are queued again, to be retried one at a "
                        "time", len(requeued))
        jobs = self.catalog.claim_jobs(self.claim_size, self.name)
        if not jobs:
            return list(self._run_experts(on_expert))
        leases = {j.id: j.lease for j in jobs}
        try:
            return list(self.process(jobs, on_result))
        except Stopped:  # the service is stopping: what is not finished waits for the next start
            self.catalog.requeue_jobs([j.id for j in jobs], count_attempt=False, leases=leases)
            log.info("stopping: unfinished jobs put back in the queue")
            return []
        except KeyboardInterrupt:
            self.catalog.requeue_jobs([j.id for j in jobs], count_attempt=False, leases=leases)
            raise
        except StorageError as exc:
            # The video store cannot be reached: as for the vector store, the videos wait in the queue.
            self.catalog.requeue_jobs([j.id for j in jobs], count_attempt=False, leases=leases,
                                      reason=f"waiting for the video store, will retry: {exc}")
            raise
        except VectorStoreError as exc:
            # Milvus is down or refused: not the videos' fault. They wait in the queue, saying why, and the caller
            # retries with backoff; nothing was marked ready, so nothing unsearchable is visible.
            self.catalog.requeue_jobs([j.id for j in jobs], count_attempt=False, leases=leases,
                                      reason=f"waiting for the vector store, will retry: {exc}")
            raise
        except BaseException:
            # The vector store went away (or a bug): the unfinished jobs go back to the queue, and the attempt
            # counts, so a batch that always fails ends as failed jobs rather than an endless retry loop.
            self.catalog.requeue_jobs([j.id for j in jobs], leases=leases)
            raise

    def _run_experts(self, on_expert: Callable[[ExpertResult], None] | None) -> list[ExpertResult]:
        if self.experts is None:
            return []
        if requeued := self.catalog.recover_expert_runs(self.lease_seconds, self.identity):
            log.warning("%d expert run(s) of a worker that stopped unexpectedly are queued again", len(requeued))
        try:
            return self.experts.run_once(on_expert, self._stop)
        except Stopped:  # runs in progress were put back in the queue by the stage
            log.info("stopping: unfinished expert runs put back in the queue")
            return []

    def run_until_empty(self, on_result: Callable[[JobResult], None] | None = None,
                        on_expert: Callable[[ExpertResult], None] | None = None) -> list[JobResult]:
        """Process queued jobs, then queued expert runs, until none is left. Returns the jobs' results."""
        done: list[JobResult] = []
        while batch := self.run_once(on_result, on_expert):
            done += [r for r in batch if isinstance(r, JobResult)]
        return done

    def run_forever(self, stop: threading.Event, on_result: Callable[[JobResult], None] | None = None,
                    on_expert: Callable[[ExpertResult], None] | None = None) -> None:
        """Process jobs until `stop` is set; sleep when the queue is empty, back off when storage fails."""
        backoff = self.poll_seconds
        self._stop = stop
        try:
            while not stop.is_set():
                try:
                    batch = self.run_once(on_result, on_expert)
                except Exception as exc:  # storage or model failure: keep the worker alive, retry later
                    log.error("worker batch failed, jobs requeued, retrying in %.0f s: %s", backoff, exc)
                    stop.wait(backoff)
                    backoff = min(backoff * 2, 60.0)
                    continue
                backoff = self.poll_seconds
                if not batch:
                    stop.wait(self.poll_seconds)
        finally:
            self.close()

