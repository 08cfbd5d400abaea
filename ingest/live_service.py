"""The streams `serve` watches: the catalog's `streams` run in one process with one model instance (this module's
`run_live_process`), started by `LiveSupervisor` when there is a stream to watch and restarted if it dies. The
process follows the catalog (streams added or deleted through the API show up within a second), writes each
stream's state and each event (as it starts, and again as it ends), and removes events past their retention."""

from __future__ import annotations

import json
import logging
import multiprocessing
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

from ingest.live import Event, Source, Thresholds, Watched, Watcher
from schema.catalog import Catalog, Stream, utcnow
from schema.settings import Settings

log = logging.getLogger(__name__)

SYNC_SECONDS = 1.0  # how often the process reads the catalog's streams and writes their state
RETENTION_CHECK_SECONDS = 3600.0
RESTART_SECONDS = (1.0, 5.0, 30.0)  # between restarts of a watcher process that died


def _iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).replace(tzinfo=None)


class LiveService:
    """The catalog's streams on one Watcher (one encoder for all of them)."""

    def __init__(self, settings: Settings, catalog: Catalog, encoder) -> None:
        self.settings, self.catalog = settings, catalog
        self.watcher = Watcher(encoder, settings.live_dir, on_event=self._on_event)
        self.running: dict[int, Watched] = {}
        self._ids: dict[int, int] = {}  # id(Event) -> its catalog row
        self._last_retention = 0.0

    def sync(self) -> None:
        """Start the streams the catalog has and this process does not; stop the ones it no longer has."""
        streams = {s.id: s for s in self.catalog.list_streams()}
        for key in [k for k in self.running if k not in streams]:
            log.info("stream %d removed: stopping it", key)
            self.watcher.remove(self.running.pop(key))
        for key, stream in streams.items():
            if key not in self.running:
                self.running[key] = self.watcher.add(self._watched(stream))
                log.info("stream %d (%s): watching for %d prompt(s)", key, self.running[key].source.shown,
                         len(self.running[key].prompts))

    def _watched(self, stream: Stream) -> Watched:
        source = Source(stream.url, fps=stream.fps, decode_size=self.watcher.encoder.decode_size, name=stream.name)
        return Watched(source, json.loads(stream.prompts),
                       Thresholds(stream.threshold, stream.exit_threshold, stream.min_seconds), key=stream.id)

    def report(self) -> None:
        for key, w in self.running.items():
            st = w.source.stats
            self.catalog.report_stream(key, state=st.state, reason=st.reason, frames=st.frames, dropped=st.dropped,
                                       reconnects=st.reconnects)

    def _on_event(self, kind: str, event: Event) -> None:
        if kind == "start":
            self._ids[id(event)] = self.catalog.start_event(
                stream_id=event.key, source=event.source, name=event.name, prompt=event.prompt, start=event.start,
                peak_score=event.peak_score, peak_softmax=event.peak_softmax, started_at=_iso(event.started_at))
            return
        row = self._ids.pop(id(event), None)
        if row is None:  # ended before its start was written (cannot happen: start is reported first)
            return
        thumbnail = None
        if event.thumbnail:
            thumbnail = Path(event.thumbnail).resolve().relative_to(self.settings.live_dir.resolve()).as_posix()
        self.catalog.end_event(row, end=event.end, peak_score=event.peak_score, peak_softmax=event.peak_softmax,
                               ended_at=_iso(event.ended_at) if event.ended_at else utcnow(), thumbnail=thumbnail)

    def remove_expired(self, now: datetime | None = None) -> int:
        """Events (and their thumbnails) that ended more than VIDSEARCH_LIVE_RETENTION_DAYS ago: removed."""
        before = (now or utcnow()) - timedelta(days=self.settings.live_retention_days)
        removed = self.catalog.remove_live_events(before)
        for row in removed:
            if row.thumbnail:
                (self.settings.live_dir / row.thumbnail).unlink(missing_ok=True)
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
            self.report()


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
        LiveService(runtime.settings, runtime.catalog, runtime.encoder).run(flag)
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
