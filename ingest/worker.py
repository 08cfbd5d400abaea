"""Claims queued jobs and runs decode -> embed -> store for them, recording each outcome in the catalog.

Write order (so search never sees half a video): vectors of the video are first deleted (a retried job may have
left some), then inserted, and only then is the catalog row marked ready. Search returns ready videos only, so a
crash between the two writes leaves nothing visible; the job is simply run again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ingest.decode import DecodeError, VideoInfo, iter_sampled_frames, probe
from ingest.encoder import ClipEncoder
from schema.catalog import Catalog, Job
from schema.vectors import VectorStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobResult:
    job_id: int
    video_id: int
    title: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class _Decoded:
    job: Job
    title: str
    info: VideoInfo
    pixels: torch.Tensor  # (frames, 3, H, W), preprocessed


def _info_fields(info: VideoInfo) -> dict:
    return {"duration": info.duration, "fps": info.fps, "width": info.width, "height": info.height,
            "codec": info.codec}


class Worker:
    """Processes jobs in batches of several videos so the model sees full batches of frames."""

    def __init__(self, catalog: Catalog, store: VectorStore, encoder: ClipEncoder, frames: int,
                 poll_seconds: float = 1.0) -> None:
        self.catalog = catalog
        self.store = store
        self.encoder = encoder
        self.frames = frames
        self.poll_seconds = poll_seconds
        self.videos_per_batch = max(1, encoder.batch_size // frames)

    def _decode(self, job: Job) -> _Decoded:
        video = self.catalog.get_video(job.video_id)
        if video is None:
            raise DecodeError("the video was deleted before it could be processed")
        path = Path(video.stored_path)
        if not path.is_file():
            raise DecodeError(f"the stored file is missing: {path}")
        info = probe(path)
        # Frames are resized by swscale while decoding and preprocessed at once: only small crops are held.
        size = self.encoder.decode_size(info.height, info.width)
        frames = iter_sampled_frames(path, self.frames, info, size=size)
        pixels = torch.stack([self.encoder.preprocess(f) for f in frames])
        return _Decoded(job, video.title, info, pixels)

    def process(self, jobs: list[Job]) -> list[JobResult]:
        """Run claimed jobs to completion. A broken file fails alone; storage errors propagate (jobs stay running
        until the caller requeues them)."""
        results: list[JobResult] = []
        decoded: list[_Decoded] = []
        for job in jobs:
            try:
                decoded.append(self._decode(job))
            except DecodeError as exc:
                results.append(self._fail(job, str(exc)))
            except (OSError, MemoryError, ValueError, RuntimeError) as exc:
                log.exception("unexpected error decoding job %d", job.id)
                results.append(self._fail(job, f"could not read the video: {exc}"))
        if decoded:
            vectors = self.encoder.embed_videos([d.pixels for d in decoded])
            ids = [d.job.video_id for d in decoded]
            self.store.delete(ids)
            self.store.add(ids, vectors)
            for item in decoded:
                self.catalog.finish_job(item.job.id, None, **_info_fields(item.info))
                results.append(JobResult(item.job.id, item.job.video_id, item.title))
        return results

    def _fail(self, job: Job, reason: str) -> JobResult:
        video = self.catalog.get_video(job.video_id)
        self.catalog.finish_job(job.id, reason)
        log.warning("job %d (video %d) failed: %s", job.id, job.video_id, reason)
        return JobResult(job.id, job.video_id, video.title if video else "?", reason)

    def run_once(self) -> list[JobResult]:
        """Claim one batch of queued jobs and process it. Interrupted or failed storage: the batch is requeued."""
        jobs = self.catalog.claim_jobs(self.videos_per_batch)
        if not jobs:
            return []
        try:
            return self.process(jobs)
        except BaseException:
            # Ctrl-C, or the vector store went away: give the unfinished jobs back to the queue.
            self.catalog.requeue_jobs([j.id for j in jobs])
            raise

    def run_until_empty(self, on_result: Callable[[JobResult], None] | None = None) -> list[JobResult]:
        done: list[JobResult] = []
        while batch := self.run_once():
            for result in batch:
                done.append(result)
                if on_result:
                    on_result(result)
        return done

    def run_forever(self, stop: threading.Event, on_result: Callable[[JobResult], None] | None = None) -> None:
        """Process jobs until `stop` is set; sleep when the queue is empty, back off when storage fails."""
        backoff = self.poll_seconds
        while not stop.is_set():
            try:
                batch = self.run_once()
            except Exception as exc:  # storage or model failure: keep the worker alive, retry later
                log.error("worker batch failed, jobs requeued, retrying in %.0f s: %s", backoff, exc)
                stop.wait(backoff)
                backoff = min(backoff * 2, 60.0)
                continue
            backoff = self.poll_seconds
            for result in batch:
                if on_result:
                    on_result(result)
            if not batch:
                stop.wait(self.poll_seconds)


def wait_for_jobs(catalog: Catalog, job_ids: list[int], timeout: float, poll: float = 0.5) -> bool:
    """True once none of `job_ids` is queued or running (used by tests and `ingest` without a local worker)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = [catalog.get_job(j) for j in job_ids]
        if all(j is None or j.state.value in ("done", "failed") for j in jobs):
            return True
        time.sleep(poll)
    return False
