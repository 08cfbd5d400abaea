"""Claims queued jobs and runs decode -> embed -> store for them, recording each outcome in the catalog.

Write order (so search never sees half a video): thumbnails are written (files keyed by content hash, overwritten by
a retry), the video's vectors and segment vectors are deleted (a retried job may have left some), the segment vectors
then the video vector are inserted, and only then is the catalog row marked ready. Search returns ready videos only,
so a crash between the writes leaves nothing visible; the job is simply run again.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ingest import thumbnails
from ingest.decode import Limits, Sampling, VideoInfo
from ingest.decode_pool import DecodeMode, DecodePool, DecodeRequest
from ingest.encoder import ClipEncoder
from ingest.expert_stage import ExpertResult, ExpertStage
from ingest.pipeline import Embedded, Stopped, embed_videos
from schema.catalog import Catalog, Job, Video
from schema.storage import Storage, StorageError, is_remote, open_storage
from schema.vectors import Segments, VectorStore, VectorStoreError, VideoFields

log = logging.getLogger(__name__)

# A running job whose worker has not renewed it for this long is presumed dead and handed to another worker.
LEASE_SECONDS = 600.0
MAX_ATTEMPTS = 3
MISSING_OBJECT = "the stored video is missing from the object store (deleted outside vidsearch); add the video again"


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
                 storage: Storage | None = None) -> None:
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
                   experts=stage, expert_names=settings.expert_names, storage=open_storage(settings))

    def _request(self) -> DecodeRequest:
        return DecodeRequest(self.encoder.prep, self.sampling, self.limits, thumbs=self.thumbnails_dir is not None)

    def decode_pool(self) -> DecodePool:
        if self._pool is None:
            self._pool = DecodePool(self._request(), workers=self.decode_workers, mode=self.decode_mode,
                                    timeout=self.decode_timeout)
        return self._pool

    def pool_for(self, jobs: list[Job]) -> DecodePool:
        """The decode pool for a claimed batch. A suspect job (its last worker died running it: see Job.suspect)
        comes alone and, when the worker decodes in threads, is decoded in a process of its own: a file that kills
        its decoder then takes down that process, which this worker sees and counts, instead of the worker."""
        if self.decode_mode == "process" or not any(job.suspect for job in jobs):
            return self.decode_pool()
        if self._alone is None:
            self._alone = DecodePool(self._request(), workers=1, mode="process", timeout=self.decode_timeout)
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
        """Run claimed jobs to completion. A broken file fails alone; storage errors propagate (unfinished jobs
        stay running until the caller requeues them)."""
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
        for item in embed_videos(self.encoder, items, self.sampling, pool=self.pool_for(jobs),
                                 prefetch=max(2, 2 * self.decode_workers), stop=self._stop):
            self.catalog.heartbeat([j.id for j in jobs])
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
        """Thumbnails and vectors first (replacing any a retried job left), then the catalog marks the videos ready."""
        if not done:
            return []
        if self.thumbnails_dir is not None:
            for d in done:
                if d.thumbs and d.key in self._videos:
                    thumbnails.write(self.thumbnails_dir, self._videos[d.key].sha256, d.thumbs, d.poster)
        video_ids = [jobs[d.key].video_id for d in done]
        self.store.delete(video_ids)
        with_segments = [(jobs[d.key].video_id, segments_of(d)) for d in done]
        with_segments = [(v, s) for v, s in with_segments if s is not None]
        if with_segments:
            self.store.add_segments([v for v, _ in with_segments], [s for _, s in with_segments])
        # Duration as decoded (the catalog learns it in the same step), ingest time and tag from the catalog.
        fields = [replace(VideoFields.of(self._videos[d.key]) if d.key in self._videos else VideoFields(),
                          duration=d.info.duration) for d in done]
        self.store.add(video_ids, np.stack([d.vector for d in done]), fields)
        self.catalog.finish_jobs([(d.key, _info_fields(d.info)) for d in done], experts=self.expert_names)
        return [JobResult(d.key, jobs[d.key].video_id, titles[d.key]) for d in done]

    def _decode_failed(self, job: Job, title: str, reason: str) -> JobResult | None:
        """A file's decoding failed: fail the job, or (a decoder that died on it, or was stopped from outside) put
        it back in the queue. Returns the failed job's result, None for a job requeued."""
        kind = getattr(reason, "kind", "error")
        if kind == "stopped":  # the service manager is stopping us all: not the file's doing
            self.catalog.requeue_jobs([job.id], count_attempt=False)
            return None
        if kind == "crash":
            if self.catalog.crashed(job.id, reason, self.max_crashes):
                failed = self.catalog.get_job(job.id)
                log.warning("job %d (video %d) failed: %s", job.id, job.video_id, failed.error if failed else reason)
                return JobResult(job.id, job.video_id, title, failed.error if failed else reason)
            log.warning("job %d (video %d): %s; it will be retried alone", job.id, job.video_id, reason)
            return None
        return self._fail(job, title, reason)

    def _fail(self, job: Job, title: str, reason: str) -> JobResult:
        self.catalog.finish_job(job.id, reason)
        log.warning("job %d (video %d) failed: %s", job.id, job.video_id, reason)
        return JobResult(job.id, job.video_id, title, reason)

    def run_once(self, on_result: Callable[[JobResult], None] | None = None,
                 on_expert: Callable[[ExpertResult], None] | None = None) -> list[JobResult | ExpertResult]:
        """Claim queued jobs and process them; when there are none, run the expert stage on one batch of queued
        expert runs (appearance first, so new videos become searchable soonest). Interrupted or failed storage:
        unfinished jobs are requeued."""
        if requeued := self.catalog.recover(LEASE_SECONDS, MAX_ATTEMPTS):
            log.warning("%d job(s) of a worker that stopped unexpectedly are queued again, to be retried one at a "
                        "time", len(requeued))
        jobs = self.catalog.claim_jobs(self.claim_size)
        if not jobs:
            return list(self._run_experts(on_expert))
        try:
            return list(self.process(jobs, on_result))
        except Stopped:  # the service is stopping: what is not finished waits for the next start
            self.catalog.requeue_jobs([j.id for j in jobs], count_attempt=False)
            log.info("stopping: unfinished jobs put back in the queue")
            return []
        except KeyboardInterrupt:
            self.catalog.requeue_jobs([j.id for j in jobs], count_attempt=False)
            raise
        except StorageError as exc:
            # The video store cannot be reached: as for the vector store, the videos wait in the queue.
            self.catalog.requeue_jobs([j.id for j in jobs], count_attempt=False,
                                      reason=f"waiting for the video store, will retry: {exc}")
            raise
        except VectorStoreError as exc:
            # Milvus is down or refused: not the videos' fault. They wait in the queue, saying why, and the caller
            # retries with backoff; nothing was marked ready, so nothing unsearchable is visible.
            self.catalog.requeue_jobs([j.id for j in jobs], count_attempt=False,
                                      reason=f"waiting for the vector store, will retry: {exc}")
            raise
        except BaseException:
            # The vector store went away (or a bug): the unfinished jobs go back to the queue, and the attempt
            # counts, so a batch that always fails ends as failed jobs rather than an endless retry loop.
            self.catalog.requeue_jobs([j.id for j in jobs])
            raise

    def _run_experts(self, on_expert: Callable[[ExpertResult], None] | None) -> list[ExpertResult]:
        if self.experts is None:
            return []
        if requeued := self.catalog.recover_expert_runs(LEASE_SECONDS):
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

