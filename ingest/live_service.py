"""The streams `serve` watches: the catalog's `streams` run in one process with one model instance (this module's
`run_live_process`), started by `LiveSupervisor` when there is a stream to watch and restarted if it dies. The
process follows the catalog (streams added or deleted through the API show up within a second), writes each
stream's state and each event (as it starts, and again as it ends), and removes events past their retention."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from ingest.live import Event, Frame, Source, Thresholds, Watched, Watcher
from schema.catalog import Catalog, Stream, utcnow
from schema.settings import Settings
from schema.storage import is_remote

log = logging.getLogger(__name__)

SYNC_SECONDS = 1.0  # how often the process reads the catalog's streams and writes their state
RETENTION_CHECK_SECONDS = 3600.0
RESTART_SECONDS = (1.0, 5.0, 30.0)  # between restarts of a watcher process that died
SCORE_SECONDS = 180.0  # how much of each stream's score history the page's chart gets


def scores_path(settings: Settings, stream_id: int) -> Path:
    """Where the watcher process leaves a stream's recent scores for the page (rewritten every second)."""
    return settings.live_dir / "scores" / f"{int(stream_id)}.json"


def read_scores(settings: Settings, stream_id: int) -> dict | None:
    """{"prompts", "threshold", "exit_threshold", "points": [[t, [score per prompt]], ...]}, or None."""
    try:
        return json.loads(scores_path(settings, stream_id).read_text())
    except (OSError, ValueError):
        return None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).replace(tzinfo=None)


def add_stream(catalog: Catalog, settings: Settings, url: str, prompts: list[str], *, name: str | None = None,
               threshold: float | None = None, exit_threshold: float | None = None, min_seconds: float | None = None,
               fps: float | None = None, record: bool = False) -> Stream:
    """A stream for the watcher process, as the API and the page add it: a network URL only, prompts cleaned, the
    settings' defaults for what is not given (an exit threshold keeps the configured gap under a new threshold).
    Raises LiveError with what is wrong."""
    from ingest.live import LiveError, check_network_url, default_name, watch_prompts

    url = check_network_url(url)
    prompts = [p for p in watch_prompts(prompts) if p]
    if not prompts:
        raise LiveError("give at least one prompt")
    enter = settings.live_threshold if threshold is None else threshold
    leave = enter - (settings.live_threshold - settings.live_exit_threshold) if exit_threshold is None \
        else exit_threshold
    th = Thresholds(enter, leave, settings.live_min_seconds if min_seconds is None else min_seconds)
    return catalog.add_stream(url=url, name=(name or "").strip() or default_name(url), prompts=json.dumps(prompts),
                              threshold=th.enter, exit_threshold=th.leave, min_seconds=th.min_seconds,
                              fps=settings.live_fps if fps is None else fps, record=record)


def clip_recorder(catalog: Catalog, settings: Settings, name: str,
                  added: Callable[[Path, int], None] | None = None):
    """A Recorder whose clips enter the library through the normal ingest path, tagged with the source's name;
    `added(path, video_id)` is told each one's library id."""
    from ingest.library import enqueue_file
    from ingest.live import slug
    from ingest.live_record import Recorder

    tag = slug(name)[:64]

    def add(path: Path) -> None:
        done = enqueue_file(catalog, settings, path, title=f"{name} {path.stem}", tag=tag, move=True)
        if added is not None and done.video_id is not None:
            added(path, done.video_id)

    return Recorder(settings.live_dir / slug(name) / "clips", add)


class LiveService:
    """The catalog's streams on one Watcher (one encoder for all of them)."""

    def __init__(self, settings: Settings, catalog: Catalog, encoder,
                 delete_video: Callable[[int], None] | None = None) -> None:
        self.settings, self.catalog = settings, catalog
        self.delete_video = delete_video  # removes a clip from the library (vectors, row, file): retention
        self._clip_events: dict[str, list[int]] = {}  # clip path -> the events it holds
        self._clip_lock = threading.Lock()
        self.watcher = Watcher(encoder, settings.live_dir, on_event=self._on_event, on_scores=self._on_scores)
        self.running: dict[int, Watched] = {}
        self.history: dict[int, deque] = {}  # stream id -> (t, scores) of the last SCORE_SECONDS
        self._ids: dict[int, int] = {}  # id(Event) -> its catalog row
        self._last_retention = 0.0

    def sync(self) -> None:
        """Start the streams the catalog has and this process does not; stop the ones it no longer has."""
        streams = {s.id: s for s in self.catalog.list_streams()}
        for key in [k for k in self.running if k not in streams]:
            log.info("stream %d removed: stopping it", key)
            self.watcher.remove(self.running.pop(key))
            self.history.pop(key, None)
            scores_path(self.settings, key).unlink(missing_ok=True)
        for key, stream in streams.items():
            if key not in self.running:
                self.running[key] = self.watcher.add(self._watched(stream))
                log.info("stream %d (%s): watching for %d prompt(s)", key, self.running[key].source.shown,
                         len(self.running[key].prompts))

    def _watched(self, stream: Stream) -> Watched:
        recorder = clip_recorder(self.catalog, self.settings, stream.name, self._clip_added) if stream.record \
            else None
        source = Source(stream.url, fps=stream.fps, decode_size=self.watcher.encoder.decode_size, name=stream.name,
                        recorder=recorder)
        return Watched(source, json.loads(stream.prompts),
                       Thresholds(stream.threshold, stream.exit_threshold, stream.min_seconds), key=stream.id)

    def report(self) -> None:
        for key, w in self.running.items():
            st = w.source.stats
            self.catalog.report_stream(key, state=st.state, reason=st.reason, frames=st.frames, dropped=st.dropped,
                                       reconnects=st.reconnects)
            self._write_scores(key, w)

    def _on_scores(self, w: Watched, frame: Frame, scores: np.ndarray) -> None:
        if w.key is None:
            return
        t = frame.t
        points = self.history.setdefault(w.key, deque())
        points.append((round(t, 2), [round(float(x), 4) for x in scores]))
        while points and points[0][0] < t - SCORE_SECONDS:
            points.popleft()

    def _write_scores(self, key: int, w: Watched) -> None:
        path = scores_path(self.settings, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"prompts": w.prompts, "threshold": w.thresholds.enter,
                                   "exit_threshold": w.thresholds.leave, "points": list(self.history.get(key, ()))}))
        tmp.replace(path)  # the page never reads half a file

    def _on_event(self, kind: str, event: Event) -> None:
        if kind == "start":
            self._ids[id(event)] = self.catalog.start_event(
                stream_id=event.key, source=event.source, name=event.name, prompt=event.prompt, start=event.start,
                peak_score=event.peak_score, peak_softmax=event.peak_softmax, started_at=_iso(event.started_at))
            if event.clip:
                with self._clip_lock:
                    self._clip_events.setdefault(event.clip, []).append(self._ids[id(event)])
            return
        row = self._ids.pop(id(event), None)
        if row is None:  # ended before its start was written (cannot happen: start is reported first)
            return
        thumbnail = None
        if event.thumbnail:
            thumbnail = Path(event.thumbnail).resolve().relative_to(self.settings.live_dir.resolve()).as_posix()
        self.catalog.end_event(row, end=event.end, peak_score=event.peak_score, peak_softmax=event.peak_softmax,
                               ended_at=_iso(event.ended_at) if event.ended_at else utcnow(), thumbnail=thumbnail)

    def _clip_added(self, path: Path, video_id: int) -> None:
        """A recorded clip is in the library: its events point at it; the clips' size cap is kept."""
        with self._clip_lock:
            events = self._clip_events.pop(str(path), [])
        self.catalog.set_event_clip(events, video_id)
        self.cap_clips()

    def cap_clips(self) -> int:
        """Delete the oldest recorded clips from the library while they take more than VIDSEARCH_LIVE_CLIPS_MAX_GB."""
        if self.delete_video is None:
            return 0
        clips = self.catalog.clip_videos()
        # A clip in object storage: the size recorded when it was stored (content-addressed, never changes).
        sizes = {v.id: v.size_bytes if is_remote(v.stored_path) else _size(Path(v.stored_path)) for v in clips}
        total, cap, removed = sum(sizes.values()), self.settings.live_clips_max_gb * 2**30, 0
        for video in clips:
            if total <= cap:
                break
            self.delete_video(video.id)
            total -= sizes[video.id]
            removed += 1
        if removed:
            log.info("removed %d recorded clip(s): the clips' cap is %g GB", removed, self.settings.live_clips_max_gb)
        return removed

    def remove_expired(self, now: datetime | None = None) -> int:
        """Events (with their thumbnails and recorded clips) that ended more than VIDSEARCH_LIVE_RETENTION_DAYS ago:
        removed."""
        before = (now or utcnow()) - timedelta(days=self.settings.live_retention_days)
        removed = self.catalog.remove_live_events(before)
        for row in removed:
            if row.thumbnail:
                (self.settings.live_dir / row.thumbnail).unlink(missing_ok=True)
            if row.clip_video_id is not None and self.delete_video is not None:
                self.delete_video(row.clip_video_id)
        if removed:
            log.info("removed %d event(s) older than %g days", len(removed), self.settings.live_retention_days)
        return len(removed)

    def run(self, stop: threading.Event) -> None:
        next_sync = 0.0
        try:
            while not stop.is_set():
                now = time.monotonic()
                if now >= next_sync:
                    self.sync()
                    self.report()
                    next_sync = now + SYNC_SECONDS
                    if now - self._last_retention >= RETENTION_CHECK_SECONDS:
                        self._last_retention = now
                        self.remove_expired()
                self.watcher.step()
        finally:
            self.watcher.close()
            for key, w in self.running.items():  # watched again when serve starts again: waiting, not ended
                st = w.source.stats
                self.catalog.report_stream(key, state="waiting", reason="serve stopped", frames=st.frames,
                                           dropped=st.dropped, reconnects=st.reconnects)


def run_live_process(stop) -> None:
    """Entry point of the watcher process (spawned by LiveSupervisor): settings from the environment, as serve's."""
    import signal

    from ingest.runtime import Runtime

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # serve's Ctrl-C reaches the whole group: serve stops this one
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runtime = Runtime(Settings())
    flag = threading.Event()
    threading.Thread(target=lambda: (stop.wait(), flag.set()), daemon=True).start()
    try:
        from ingest.library import delete_video

        def delete(video_id: int) -> None:
            delete_video(runtime.catalog, runtime.store, video_id, runtime.settings.thumbnails_dir,
                         storage=runtime.storage)

        LiveService(runtime.settings, runtime.catalog, runtime.encoder, delete).run(flag)
    finally:
        runtime.close()


class LiveSupervisor:
    """In `serve`: runs the watcher process while the catalog has streams, restarts it when it dies."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._ctx = multiprocessing.get_context("spawn")
        self._process = None
        self._stop_child = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vidsearch-live", daemon=True)
        self.restarts = 0

    def start(self) -> LiveSupervisor:
        self._thread.start()
        return self

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None and self._process.is_alive() else None

    def _run(self) -> None:
        deaths = 0
        while not self._stop.is_set():
            try:
                wanted = bool(self.catalog.list_streams())
            except Exception as exc:  # noqa: BLE001 - the catalog is busy or gone for a moment: ask again
                log.warning("live: cannot read the streams: %s", exc)
                wanted = self._process is not None
            alive = self._process is not None and self._process.is_alive()
            if self._process is not None and not alive and self._stop_child is not None and \
                    not self._stop_child.is_set():
                code = self._process.exitcode
                wait = RESTART_SECONDS[min(deaths, len(RESTART_SECONDS) - 1)]
                deaths += 1
                self.restarts += 1
                log.error("live: the watcher process stopped unexpectedly (exit code %s); restarting in %.0f s",
                          code, wait)
                self._process = None
                if self._stop.wait(wait):
                    break
                continue
            if wanted and not alive:
                self._spawn()
            elif not wanted and alive:
                self._end_child()
            elif alive:
                deaths = 0
            self._stop.wait(2.0)
        self._end_child()

    def _spawn(self) -> None:
        self._stop_child = self._ctx.Event()
        self._process = self._ctx.Process(target=run_live_process, args=(self._stop_child,), name="vidsearch-live",
                                          daemon=True)
        self._process.start()
        log.info("live: watcher process %d started", self._process.pid)

    def _end_child(self) -> None:
        if self._process is None:
            return
        self._stop_child.set()
        self._process.join(20)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)
        self._process = None

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)
        else:
            self._end_child()
