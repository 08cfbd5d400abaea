"""Clips of live events: the last seconds of a stream's packets are kept (from a keyframe), and each event's stretch,
from `preroll` seconds before it started to `postroll` seconds after it ended, is remuxed (no re-encoding) into a
Matroska file handed to `on_clip`, which puts it into the library like any other video.

The reader thread feeds packets (`packet`); the scoring thread says when events start and end (`start`, `stop`).
Overlapping events (two prompts at once) share one clip: it ends `postroll` after the last of them.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)

PREROLL_SECONDS = 5.0
POSTROLL_SECONDS = 3.0
MAX_CLIP_SECONDS = 600.0  # a clip is closed (and a new one begun) after this long: an event that never ends


class Recorder:
    def __init__(self, folder: Path, on_clip: Callable[[Path], None], *, preroll: float = PREROLL_SECONDS,
                 postroll: float = POSTROLL_SECONDS, max_seconds: float = MAX_CLIP_SECONDS) -> None:
        self.folder, self.on_clip = folder, on_clip
        self.preroll, self.postroll, self.max_seconds = preroll, postroll, max_seconds
        self._lock = threading.Lock()
        self._open_events = 0  # events in progress (the scoring thread's count)
        self._wanted = False  # a clip should be being written
        self._buffer: deque = deque()  # (seconds, packet, keyframe) of this connection
        self._template = None
        self._out = None  # (container, stream, path, base dts, first seconds)
        self._until: float | None = None  # close when a packet reaches this time (postroll after the last end)
        self.path: Path | None = None  # the clip being written (or the next one's name, once asked for)
        self.clips: list[Path] = []

    # --- the scoring thread ---------------------------------------------------------------------------------------
    def start(self) -> Path:
        """An event started: make sure a clip is being written; the path it goes to."""
        with self._lock:
            self._open_events += 1
            self._wanted = True
            if self.path is None:
                stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")[:-3]
                self.path = self.folder / f"{stamp}.mkv"
            return self.path

    def stop(self) -> None:
        """An event ended: the clip closes `postroll` seconds later unless another event is still open."""
        with self._lock:
            self._open_events = max(0, self._open_events - 1)

    # --- the reader thread ----------------------------------------------------------------------------------------
    def connect(self, stream) -> None:
        """A new connection: its video stream is the template of the clips; the packets kept so far are dropped."""
        self._finish()
        self._template, self._buffer = stream, deque()

    def packet(self, packet) -> None:
        if packet.dts is None or packet.time_base is None or self._template is None:
            return  # a flush packet, or before connect
        seconds = float(packet.dts * packet.time_base)
        with self._lock:
            wanted, open_events = self._wanted, self._open_events
        if self._out is None:
            self._buffer.append((seconds, packet, packet.is_keyframe))
            self._trim(seconds)
            if wanted:
                self._begin()
            return
        self._write(packet)
        first = self._out[4]
        if open_events == 0 and self._until is None:
            self._until = seconds + self.postroll
        elif open_events > 0:
            self._until = None
        if (self._until is not None and seconds >= self._until) or seconds - first >= self.max_seconds:
            self._finish()

    def close(self) -> None:
        """The connection ended (or the watcher stops): a clip in progress is finished with what it has."""
        self._finish()
        self._template, self._buffer = None, deque()

    def _trim(self, newest: float) -> None:
        """Keep the packets from the last keyframe at least `preroll` seconds before the newest one."""
        keys = [i for i, (_, _, key) in enumerate(self._buffer) if key]
        while len(keys) >= 2 and self._buffer[keys[1]][0] <= newest - self.preroll:
            for _ in range(keys[1]):
                self._buffer.popleft()
            keys = [i for i, (_, _, key) in enumerate(self._buffer) if key]
        if not keys and len(self._buffer) > 2000:  # no keyframe at all yet: nothing decodable to keep
            self._buffer.clear()

    def _begin(self) -> None:
        import av

        while self._buffer and not self._buffer[0][2]:  # a clip starts at a keyframe
            self._buffer.popleft()
        if not self._buffer:
            return  # wait for the first keyframe
        with self._lock:
            path = self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        container = av.open(str(path), "w", format="matroska")
        stream = container.add_stream_from_template(self._template)
        first_seconds, first_packet, _ = self._buffer[0]
        self._out = (container, stream, path, first_packet.dts, first_seconds)
        self._until = None
        for _, packet, _ in self._buffer:
            self._write(packet)
        self._buffer.clear()
        log.info("recording %s", path)

    def _write(self, packet) -> None:
        container, stream, _, base, _ = self._out
        if packet.dts is None:
            return
        packet.dts -= base
        if packet.pts is not None:
            packet.pts -= base
        packet.stream = stream
        try:
            container.mux(packet)
        except ValueError as exc:  # a packet out of order (a broken stream): skip it, keep the clip
            log.debug("clip: packet skipped: %s", exc)

    def _finish(self) -> None:
        if self._out is None:
            return
        container, _, path, _, _ = self._out
        self._out, self._until = None, None
        try:
            container.close()
        except Exception as exc:  # noqa: BLE001 - a clip that cannot be finished is lost alone
            log.warning("clip %s could not be finished: %s", path, exc)
            path.unlink(missing_ok=True)
            return
        with self._lock:
            still_open = self._open_events > 0
            self._wanted = still_open  # an event still open (a clip at its length limit) continues in a new one
            self.path = None
        if still_open:
            self.start_next()
        self.clips.append(path)
        try:
            self.on_clip(path)
        except Exception as exc:  # noqa: BLE001 - the library refusing a clip must not stop the watcher
            log.error("clip %s was not added to the library: %s", path, exc)

    def start_next(self) -> None:
        with self._lock:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")[:-3]
            self.path = self.folder / f"{stamp}.mkv"
