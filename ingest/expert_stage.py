"""The expert stage: runs the experts (speech, text, audio) on ready videos, apart from the appearance pipeline.

Each claimed expert run (schema/catalog.py ExpertRun) goes to a process of its own pool, which decodes what that
expert needs (ingest/expert_input.py) and runs it, within the expert's own timeout: OCR of an hour of frames can take
far longer than decoding 120 frames, so it must not share the decode timeout. An expert that finds nothing records
"unavailable" with the reason; one that hangs is stopped at the timeout; one whose process dies is retried, then
recorded "failed". Either way the video stays searchable by appearance and by its other experts.

Write order: the new segments are inserted and flushed, the catalog records the run done (under its lease), then
the video's other rows in that expert's collection (an earlier run's) are deleted. A run whose video was deleted
meanwhile, or that another worker took over (this one's lease expired while it worked: see schema.catalog.Leases),
has exactly the rows it wrote removed again.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ingest.decode import Limits
from ingest.expert_input import read_input
from ingest.experts import Expert, ExpertUnavailable, TextSegment, VectorSegment, expert_class
from schema.catalog import Catalog, ExpertRun, ExpertState, worker_name
from schema.lexical import FullTextUnsupported
from schema.storage import Storage, is_remote, open_storage
from schema.vectors import VectorStoreError

if TYPE_CHECKING:
    from schema.settings import Settings

log = logging.getLogger(__name__)

# A run's process may die this many times (a crash, the OOM killer) before the expert is recorded failed for it.
MAX_EXPERT_ATTEMPTS = 2
HEARTBEAT_SECONDS = 30.0


class LexicalWriter(Protocol):
    """What the stage needs of one expert's collection (schema/lexical.py)."""

    def add(self, video_id: int, segments: Sequence[TextSegment] | Sequence[VectorSegment]) -> list[int]: ...
    def delete(self, video_ids: Sequence[int]) -> None: ...
    def delete_rows(self, pks: Sequence[int]) -> None: ...
    def delete_other_rows(self, video_id: int, keep: Sequence[int]) -> None: ...
    def flush(self) -> None: ...


@dataclass(frozen=True)
class Outcome:
    """What one expert found in one video (in its process): segments, or why there were none."""

    segments: list[TextSegment] | list[VectorSegment] = field(default_factory=list)
    unavailable: str | None = None
    seconds: float = 0.0
    model: str | None = None  # a dense expert's model key: its collection must hold vectors of that model only


@dataclass(frozen=True)
class ExpertResult:
    run_id: int
    video_id: int
    expert: str
    state: ExpertState
    reason: str | None = None
    segments: int = 0
    seconds: float = 0.0


_LOADED: dict[tuple, Expert] = {}  # in each pool process: experts already loaded, by name and configuration


def _identity(expert: Expert) -> tuple:
    return (expert.name, tuple(sorted((k, repr(v)) for k, v in vars(expert).items() if not k.startswith("_"))))


def run_expert(expert: Expert, path: str, limits: Limits) -> Outcome:
    """Decode what `expert` needs from the file and run it (what a pool process runs). The expert's engine loads
    once per process, on its first video."""
    loaded = _LOADED.setdefault(_identity(expert), expert)
    started = time.perf_counter()
    try:
        loaded.ensure_loaded()
        segments = loaded.run(read_input(Path(path), loaded.needs, limits))
    except ExpertUnavailable as exc:
        return Outcome([], str(exc), time.perf_counter() - started)
    if not segments:
        return Outcome([], f"the {expert.name} expert found nothing in this video", time.perf_counter() - started)
    return Outcome(segments, None, time.perf_counter() - started, getattr(loaded, "model_key", None))


def _init_process() -> None:
    import signal

    # Ctrl-C reaches the whole process group; the worker requeues its runs and stops these processes itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class ExpertStage:
    """Claims expert runs and carries them out; `run_once` does one claimed batch."""

    def __init__(self, catalog: Catalog, lexical: Callable[[str], LexicalWriter], experts: Callable[[str], Expert],
                 *, workers: int = 1, claim_size: int = 4, timeout: float | None = 1800.0,
                 limits: Limits = Limits(), max_attempts: int = MAX_EXPERT_ATTEMPTS,  # noqa: B008 (frozen)
                 lease_seconds: float = 600.0, identity: str | None = None,
                 storage: Storage | None = None) -> None:
        self.catalog = catalog
        self.storage = storage  # where stored videos live: a video in object storage is read from a cached copy
        self.lexical = lexical  # expert name -> its collection
        self.experts = experts  # expert name -> a (not yet loaded) expert
        self.workers = workers
        self.claim_size = claim_size
        self.timeout = timeout
        self.limits = limits
        self.max_attempts = max_attempts
        self.renew_seconds = min(HEARTBEAT_SECONDS, lease_seconds / 3)  # a lease is renewed well before it ends
        self.identity = identity  # VIDSEARCH_WORKER_ID (None: the host name)
        self._pool = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, catalog: Catalog, lexical: Callable[[str], LexicalWriter], settings: Settings
                      ) -> ExpertStage:
        cache: dict[str, Expert] = {}

        def expert(name: str) -> Expert:
            if name not in cache:
                cache[name] = expert_class(name).from_settings(settings)
            return cache[name]

        return cls(catalog, lexical, expert, claim_size=settings.expert_claim_size,
                   timeout=settings.expert_timeout_seconds, limits=Limits.from_settings(settings),
                   lease_seconds=settings.lease_seconds, identity=settings.worker_id,
                   storage=open_storage(settings))

    def pool(self):
        with self._lock:
            if self._pool is None:
                from pebble import ProcessPool

                # spawn, not fork: the parent runs torch and gRPC threads, which a forked child can deadlock on.
                self._pool = ProcessPool(max_workers=self.workers, initializer=_init_process,
                                         context=multiprocessing.get_context("spawn"))
            return self._pool

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.stop()
                self._pool.join()
                self._pool = None

    def run_once(self, on_result: Callable[[ExpertResult], None] | None = None,
                 stop: threading.Event | None = None) -> list[ExpertResult]:
        """Claim up to claim_size queued runs and carry them out. Returns their results ([] when none was queued).
        Setting `stop` puts the unfinished runs back in the queue and raises Stopped."""
        from ingest.pipeline import Stopped  # torch: not imported by the pool processes, which import this module

        runs = self.catalog.claim_expert_runs(self.claim_size, worker_name(self.identity))
        if not runs:
            return []
        videos = self.catalog.videos_by_ids(sorted({r.video_id for r in runs}))
        results: list[ExpertResult] = []
        window: dict[Future, ExpertRun] = {}
        held = contextlib.ExitStack()  # cached copies of videos in object storage, kept until their runs are done
        try:
            for run in runs:
                video = videos.get(run.video_id)
                if video is None:
                    continue  # deleted meanwhile: its run went with it
                try:
                    expert = self.experts(run.expert)
                    self.lexical(run.expert)  # a server without full-text search is refused before any work
                except (KeyError, ImportError, FullTextUnsupported) as exc:
                    results.append(self._record(run, ExpertState.FAILED, f"the {run.expert} expert cannot run "
                                                f"here: {exc}", on_result=on_result))
                    continue
                path = video.stored_path
                if is_remote(path):
                    try:
                        if self.storage is None or not self.storage.remote:
                            raise FileNotFoundError(f"{path}: this worker has no VIDSEARCH_STORAGE=s3://... set")
                        path = str(held.enter_context(self.storage.local_copy(path)))
                    except FileNotFoundError as exc:
                        results.append(self._record(run, ExpertState.FAILED, f"the stored video cannot be read: "
                                                    f"{exc}", on_result=on_result))
                        continue
                future = self.pool().schedule(run_expert, args=(expert, path, self.limits),
                                              timeout=self.timeout)
                window[future] = run
            last_beat = time.monotonic()
            while window:
                done, _ = wait(window, timeout=0.5, return_when=FIRST_COMPLETED)
                if stop is not None and stop.is_set():
                    raise Stopped
                if time.monotonic() - last_beat > self.renew_seconds:
                    held = self.catalog.renew_experts({r.id: r.lease for r in window.values()})
                    for future in [f for f, r in window.items() if r.id not in held and f not in done]:
                        lost = window.pop(future)  # another worker took it over: its result is not ours to write
                        future.cancel()
                        log.warning("video %d: the %s run was taken over by another worker (this one's lease "
                                    "expired); dropping it", lost.video_id, lost.expert)
                    last_beat = time.monotonic()
                for future in done:
                    run = window.pop(future)
                    results.append(self._finish(run, future, on_result))
        except BaseException:
            for future in window:
                future.cancel()
            self.catalog.requeue_expert_runs([r.id for r in window.values()], {r.id: r.lease for r in window.values()})
            raise
        finally:
            held.close()
        return results

    def _finish(self, run: ExpertRun, future: Future, on_result) -> ExpertResult:
        from pebble import ProcessExpired

        try:
            outcome: Outcome = future.result()
        except (FutureTimeout, TimeoutError):
            return self._record(run, ExpertState.FAILED, f"the {run.expert} expert took longer than "
                                f"{self.timeout:g} s on this video and was stopped (VIDSEARCH_EXPERT_TIMEOUT_SECONDS)",
                                on_result=on_result)
        except ProcessExpired as exc:
            reason = f"the {run.expert} expert's process died on this video (exit code {exc.exitcode})"
            if self.catalog.retry_expert_run(run.id, reason, self.max_attempts, run.lease):
                log.warning("video %d: %s; the %s expert is recorded as failed for it", run.video_id, reason,
                            run.expert)
                result = ExpertResult(run.id, run.video_id, run.expert, ExpertState.FAILED, reason)
                if on_result:
                    on_result(result)
                return result
            log.warning("video %d: %s; retrying", run.video_id, reason)
            return ExpertResult(run.id, run.video_id, run.expert, ExpertState.QUEUED, reason)
        except Exception as exc:  # the engine raised on this video: that expert fails for it, nothing else does
            log.warning("the %s expert failed on video %d", run.expert, run.video_id, exc_info=True)
            return self._record(run, ExpertState.FAILED, f"the {run.expert} expert failed: "
                                f"{exc.__class__.__name__}: {exc}", on_result=on_result)
        if outcome.unavailable is not None:
            return self._record(run, ExpertState.UNAVAILABLE, outcome.unavailable, seconds=outcome.seconds,
                                on_result=on_result)
        store = self.lexical(run.expert)
        if outcome.model is not None and hasattr(store, "bind"):  # a dense collection: one model's vectors only
            try:
                store.bind(outcome.model, len(outcome.segments[0].vector))
            except VectorStoreError as exc:
                return self._record(run, ExpertState.FAILED, str(exc), on_result=on_result)
        if not self.catalog.renew_experts({run.id: run.lease}):  # taken over or deleted: write nothing
            return ExpertResult(run.id, run.video_id, run.expert, ExpertState.QUEUED, "taken over by another worker")
        pks = store.add(run.video_id, outcome.segments)
        store.flush()
        result = self._record(run, ExpertState.DONE, None, segments=len(outcome.segments), seconds=outcome.seconds,
                              on_result=on_result)
        if result.state != ExpertState.DONE:  # the video went away, or another worker took the run: take ours out
            store.delete_rows(pks)
        else:  # only the run's holder replaces what an earlier run stored (as the worker does: see worker.py)
            store.delete_other_rows(run.video_id, pks)
            store.flush()
        return result

    def _record(self, run: ExpertRun, state: ExpertState, reason: str | None, *, segments: int = 0,
                seconds: float = 0.0, on_result=None) -> ExpertResult:
        kept = self.catalog.finish_expert_run(run.id, state, reason=reason, segments=segments, seconds=seconds,
                                              lease=run.lease)
        result = ExpertResult(run.id, run.video_id, run.expert, state if kept else ExpertState.QUEUED, reason,
                              segments, seconds)
        if state in (ExpertState.UNAVAILABLE, ExpertState.FAILED):
            log.info("video %d: %s %s: %s", run.video_id, run.expert, state.value, reason)
        if on_result and kept:
            on_result(result)
        return result
