"""Live sources: text prompts matched against the frames of a camera, a stream or a file, turned into events.

One reader thread per source decodes with PyAV, samples `fps` frames a second and hands them over through a queue of
`QUEUE_FRAMES` (Frigate's way): a live source never waits for the model, a frame that finds the queue full is dropped
and counted. A file is read as fast as the model takes it (nothing dropped), or at its own pace with `realtime`. One
scoring loop embeds what every source queued, batched, and scores each frame against its source's prompts; per prompt
a smoothed score with hysteresis (enter at `enter`, leave below `leave`, open at least `min_seconds`) makes events.

Times are seconds since the source's first decoded frame, monotonic across reconnects: within a connection they
follow the stream's timestamps (which start anywhere and reset when a publisher restarts); a new connection continues
from the last time plus the wall-clock gap. Credentials in a URL are never logged or shown (`redact`).
"""

from __future__ import annotations

import logging
import math
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

log = logging.getLogger(__name__)

QUEUE_FRAMES = 2  # per source: the newest frames only; a model that falls behind drops, never piles up
NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "srt", "udp", "http", "https")
CONNECT_SECONDS = 10.0  # to open a source
READ_SECONDS = 5.0  # without a packet before a network source counts as dropped
BACKOFF_SECONDS = (0.5, 1.0, 2.0, 5.0, 10.0)  # between reconnects, the last one repeated
SMOOTH_SECONDS = 0.5  # time constant of the score's exponential smoothing
JUMP_SECONDS = 10.0  # a forward leap of the stream's clock beyond this is a reset, not a pause
LOGIT_SCALE = 100.0  # CLIP's trained temperature, for the softmax across a source's prompts


class LiveError(Exception):
    """A source that cannot be watched at all (a file that does not open, a bad prompt); str(e) says why."""


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_SECRET_KEYS = re.compile(r"(?i)^(pass|pwd|token|key|secret|auth|sig|apikey|api_key|access_token)")


def _scheme(url: str) -> str:
    found = _SCHEME.match(url)
    return found.group(1).lower() if found else ""


def redact(url: str) -> str:
    """`url` with its user and password (everything before the last @ ahead of the query, as a password may hold an
    unescaped / or :) and secret-looking query values (password=, token=, key=, ...) replaced: safe to log and show."""
    found = _SCHEME.match(url)
    if not found:
        return url
    head, rest = url[: found.end()], url[found.end():]
    base, sep, query = rest.partition("?")
    if "@" in base:
        base = "***@" + base.rsplit("@", 1)[1]
    if sep:
        query = "&".join(f"{k}=***" if _SECRET_KEYS.match(k) and v else f"{k}{eq}{v}"
                         for k, eq, v in (item.partition("=") for item in query.split("&")))
    return head + base + sep + query

def check_network_url(url: str) -> str:
    """`url` if it is a network source anyone may add through the web app or the API: rtsp(s), rtmp, srt, udp, http(s)
    with a host. Files, devices and FFmpeg's own protocols (file:, concat:, subfile:, pipe:, ...) would read the
    server's disk: those are for `vidsearch watch` on the command line only."""
    url = url.strip()
    if not url or any(c.isspace() or ord(c) < 32 for c in url):
        raise LiveError("the URL is empty or contains spaces or control characters")
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as exc:
        raise LiveError(f"not a URL: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in NETWORK_SCHEMES:
        raise LiveError(f"only network streams can be added here ({', '.join(NETWORK_SCHEMES)}); "
                        f"{scheme + ':' if scheme else 'a path'} is not one: files and devices are for "
                        "`vidsearch watch` on the command line")
    if not host:
        raise LiveError(f"the {scheme} URL has no host")
    return url


def is_network(url: str) -> bool:
    """A live source: anything with a network scheme, or a capture device. Files and the rest are read to the end."""
    scheme = _scheme(url)
    return (scheme in NETWORK_SCHEMES or scheme in ("tcp", "rtp", "rist", "tls", "mmsh", "mmst", "rtmps", "rtmpt")
            or url.startswith("/dev/"))

def default_name(url: str) -> str:
    """A short name for a source: a file's stem, else the host, port and path (no credentials, no query)."""
    if not _scheme(url):
        return Path(url).stem or "source"
    base = redact(url)[len(_scheme(url)) + 3:].partition("?")[0].partition("#")[0]
    return base.rsplit("@", 1)[-1].rstrip("/")[:128] or "stream"

def slug(name: str) -> str:
    """A name as a folder name: letters, digits, dot, dash and underscore."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "source"


@dataclass(frozen=True)
class Thresholds:
    """Hysteresis on the smoothed cosine: an event opens at `enter` or above, and closes below `leave` once it has been
    open for `min_seconds`."""

    enter: float = 0.27
    leave: float = 0.24
    min_seconds: float = 1.0

    def __post_init__(self) -> None:
        if self.leave > self.enter:
            raise LiveError(f"the exit threshold ({self.leave}) must not be above the threshold ({self.enter})")
        if self.min_seconds < 0:
            raise LiveError("--min-seconds must be 0 or more")


@dataclass
class Event:
    """A prompt matched on a source from `start` to `end` (seconds since the source's first frame)."""

    source: str  # redacted
    name: str
    prompt: str
    start: float
    end: float | None
    peak_score: float
    peak_softmax: float
    started_at: str  # ISO 8601, UTC
    ended_at: str | None
    thumbnail: str | None = None  # path of the peak frame's JPEG, under the data folder
    clip: str | None = None  # with recording: the clip's file (it enters the library once written)
    key: int | None = field(default=None, repr=False)  # the stream's catalog id, when `serve` watches it

    def as_json(self) -> dict:
        out = asdict(self)
        del out["key"]
        out["start"], out["peak_score"] = round(self.start, 2), round(self.peak_score, 4)
        out["end"] = None if self.end is None else round(self.end, 2)
        out["peak_softmax"] = round(self.peak_softmax, 4)
        return out


@dataclass
class _Open:
    event: Event
    peak_frame: np.ndarray


class PromptTracker:
    """One prompt on one source: smooths its scores and opens and closes its events."""

    def __init__(self, prompt: str, thresholds: Thresholds, smooth_seconds: float = SMOOTH_SECONDS) -> None:
        self.prompt, self.thresholds, self.smooth_seconds = prompt, thresholds, smooth_seconds
        self.smoothed: float | None = None
        self._last_t: float | None = None
        self.open: _Open | None = None

    def update(self, t: float, score: float, softmax: float, frame: np.ndarray, new_event: Callable[..., Event]
               ) -> tuple[Event | None, _Open | None]:
        """Feed one frame's score at time `t`: (the event that started, the one that ended), either may be None."""
        if self.smoothed is None or self._last_t is None:
            self.smoothed = score
        else:
            weight = 1.0 - math.exp(-max(t - self._last_t, 0.0) / self.smooth_seconds) if self.smooth_seconds else 1.0
            self.smoothed += weight * (score - self.smoothed)
        self._last_t = t
        th = self.thresholds
        if self.open is None:
            if self.smoothed >= th.enter:
                self.open = _Open(new_event(self.prompt, t, score, softmax), frame)
                return self.open.event, None
            return None, None
        if score > self.open.event.peak_score:
            self.open.event.peak_score, self.open.event.peak_softmax, self.open.peak_frame = score, softmax, frame
        if self.smoothed < th.leave and t - self.open.event.start >= th.min_seconds:
            return None, self.close(t)
        return None, None

    def close(self, t: float) -> _Open | None:
        """End the open event (if any) at `t`."""
        done, self.open = self.open, None
        if done is not None:
            done.event.end = max(t, done.event.start)
        return done


@dataclass
class Frame:
    t: float  # seconds since the source's first frame
    rgb: np.ndarray | None  # HxWx3 uint8 at the model's decode size; None marks where the source was lost
    wall: float = 0.0  # time.monotonic() when it was decoded: how long it waited is measured from here


@dataclass
class SourceStats:
    state: str = "connecting"  # connecting, live, retrying, ended, failed
    reason: str | None = None
    frames: int = 0  # sampled and queued
    dropped: int = 0  # sampled, but the queue was full
    reconnects: int = 0
    max_queue: int = 0  # the most frames ever waiting: never above QUEUE_FRAMES


class Source:
    """One source read by its own thread into a bounded queue."""

    def __init__(self, url: str, *, fps: float, decode_size: Callable[[int, int], tuple[int, int]],
                 realtime: bool = False, stop: threading.Event | None = None, name: str | None = None,
                 queue_frames: int = QUEUE_FRAMES, recorder=None) -> None:
        if fps <= 0:
            raise LiveError("--fps must be above 0")
        if queue_frames < 1:  # 0 would make queue.Queue unbounded
            raise ValueError("a source's queue holds at least one frame")
        self.url, self.fps, self.decode_size, self.realtime = url, fps, decode_size, realtime
        self.recorder = recorder  # ingest.live_record.Recorder: event clips from the packets
        self.shown = redact(url)
        self.name = name or default_name(url)
        self.network = is_network(url)
        # http(s) that is not a playlist is a file on a server: its end is the end, not a reason to start over
        self._http_file = _scheme(url) in ("http", "https") and ".m3u8" not in url.lower()
        self.stop = stop or threading.Event()
        self.frames: queue.Queue[Frame | None] = queue.Queue(maxsize=queue_frames)
        self.stats = SourceStats()
        self._thread = threading.Thread(target=self._run, name=f"live-{slug(self.name)}", daemon=True)
        self._offset = 0.0  # added to this connection's stream times
        self._last: float | None = None  # time of the last sampled frame
        self._last_wall: float | None = None

    def start(self) -> Source:
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def _run(self) -> None:
        attempt = 0
        try:
            while not self.stop.is_set():
                try:
                    for frame in self._connection():
                        attempt = 0
                        self._hand_over(frame)
                        if self.stop.is_set():
                            break
                except LiveError as exc:
                    self.stats.state, self.stats.reason = "failed", str(exc)
                    log.error("%s: %s", self.name, exc)
                    return
                except Exception as exc:  # noqa: BLE001 - PyAV/FFmpeg raise many types for a dropped stream
                    if not self.network:
                        self.stats.state, self.stats.reason = "failed", _reason(exc)
                        log.error("%s: %s", self.name, self.stats.reason)
                        return
                    self._retry(_reason(exc), attempt)
                    attempt += 1
                    continue
                if not self.network or self.stop.is_set() or self._http_file:
                    break  # a file, or a file over http, ended, or asked to stop; a playlist or stream may come back
                self._retry("the stream ended", attempt)
                attempt += 1
            if self.stats.state != "failed":
                self.stats.state = "ended"
        finally:
            self._put_end()

    def _retry(self, reason: str, attempt: int) -> None:
        wait = BACKOFF_SECONDS[min(attempt, len(BACKOFF_SECONDS) - 1)]
        if self._last is not None and attempt == 0:  # what was open ends where the picture was lost, not after
            self._put_marker(Frame(self._last, None))
        self.stats.state, self.stats.reason = "retrying", reason
        self.stats.reconnects += 1
        log.warning("%s (%s): %s; reconnecting in %.1f s", self.name, self.shown, reason, wait)
        self.stop.wait(wait)

    def _connection(self) -> Iterator[Frame]:
        import av

        self.stats.state, self.stats.reason = "connecting", None
        microseconds = str(int(READ_SECONDS * 1e6))
        # udp's own read timeout; elsewhere the generic one (rtmp's "timeout" would make it listen for a publisher)
        options = {} if not self.network else {"timeout" if _scheme(self.url) == "udp" else "rw_timeout": microseconds}
        try:
            container = av.open(self.url, options=options, timeout=(CONNECT_SECONDS, READ_SECONDS))
        except av.error.FileNotFoundError as exc:
            if self.network:
                raise
            raise LiveError(f"cannot open {self.shown}: no such file") from exc
        except av.error.InvalidDataError as exc:
            if self.network:
                raise
            raise LiveError(f"cannot open {self.shown}: not a video FFmpeg can read") from exc
        except (av.error.HTTPUnauthorizedError, av.error.HTTPForbiddenError) as exc:  # asking again will not help
            raise LiveError(f"cannot open {self.shown}: the server refused it ({exc.strerror})") from exc
        except OSError as exc:
            if self.network:
                raise
            raise LiveError(f"cannot open {self.shown}: {exc.strerror or exc}") from exc
        with container:
            if not container.streams.video:
                raise LiveError(f"{self.shown} has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            first: float | None = None
            wall0 = time.monotonic()
            if self._last is not None:  # a reconnect: continue after the gap, as a clock on the wall saw it
                gap = time.monotonic() - (self._last_wall or time.monotonic())
                self._offset = self._last + max(gap, 1.0 / self.fps)
            next_t = self._offset
            previous: float | None = None
            if self.recorder is not None:
                self.recorder.connect(stream)
            for decoded in self._decoded(container, stream):
                if self.stop.is_set():
                    return
                own = decoded.time if decoded.time is not None else time.monotonic() - wall0
                if first is None:
                    first = own
                    self.stats.state = "live"
                    log.info("%s (%s): live", self.name, self.shown)
                elif previous is not None and not -0.5 < own - previous < JUMP_SECONDS and self._last is not None:
                    # The stream's clock reset or leapt (a publisher restarted on the same UDP port, a camera's
                    # clock wrapped): carry on from the last time plus the gap a wall clock saw.
                    gap = time.monotonic() - (self._last_wall or time.monotonic())
                    self._offset, first = self._last + max(gap, 1.0 / self.fps), own
                    next_t, wall0 = self._offset, time.monotonic()
                    log.info("%s: the stream's timestamps jumped by %.1f s; times continue from %.1f s", self.name,
                             own - previous, self._offset)
                previous = own
                t = self._offset + max(own - first, 0.0)
                if self._last is not None and t <= self._last:  # out of order by a little: keep times increasing
                    t = self._last + 1e-3
                if t + 1e-6 < next_t:
                    continue
                next_t = max(next_t + 1.0 / self.fps, t)  # never a burst after a stall
                if self.realtime and not self.network:
                    self.stop.wait(max(0.0, (t - self._offset) - (time.monotonic() - wall0)))
                h, w = self.decode_size(decoded.height, decoded.width)
                rgb = decoded.to_ndarray(format="rgb24", width=w, height=h)
                self._last, self._last_wall = t, time.monotonic()
                yield Frame(t, rgb, self._last_wall)

    def _decoded(self, container, stream) -> Iterator:
        """The stream's frames; with a recorder, each packet is handed to it once decoded (muxing consumes it)."""
        if self.recorder is None:
            yield from container.decode(stream)
            return
        try:
            for packet in container.demux(stream):
                frames = packet.decode()
                self.recorder.packet(packet)
                yield from frames
        finally:
            self.recorder.close()

    def _hand_over(self, frame: Frame) -> None:
        if self.network or self.realtime:
            try:
                self.frames.put_nowait(frame)
                self.stats.frames += 1
            except queue.Full:
                self.stats.dropped += 1
        else:  # a file read as fast as the model goes: wait for room, drop nothing
            while not self.stop.is_set():
                try:
                    self.frames.put(frame, timeout=0.2)
                    self.stats.frames += 1
                    break
                except queue.Full:
                    continue
        self.stats.max_queue = max(self.stats.max_queue, self.frames.qsize())

    def _put_end(self) -> None:
        self._put_marker(None)

    def _put_marker(self, marker: Frame | None) -> None:
        while True:  # a marker must get in: a file waits for room, a live source (or a stop) makes room
            try:
                if self.network or self.realtime or self.stop.is_set():
                    self.frames.put_nowait(marker)
                else:
                    self.frames.put(marker, timeout=0.2)
                return
            except queue.Full:
                if not (self.network or self.realtime or self.stop.is_set()):
                    continue
                try:
                    self.frames.get_nowait()
                    self.stats.dropped += 1
                except queue.Empty:
                    pass


def _reason(exc: Exception) -> str:
    """What went wrong, in words, without FFmpeg's error numbers or the URL (which may hold a password)."""
    import av

    if isinstance(exc, av.error.ExitError):  # PyAV's read timeout interrupted FFmpeg
        return f"nothing received for {READ_SECONDS:g} s"
    if getattr(exc, "errno", None) == 5:  # EIO: what FFmpeg's udp and tcp readers say when their timeout passes
        return f"nothing received for {READ_SECONDS:g} s (input/output error)"
    text = getattr(exc, "strerror", None) or (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return re.sub(r"[a-z][a-z0-9+.-]*://[^\s'\"]+", lambda m: redact(m.group(0)), text)


@dataclass
class Watched:
    """A source with its prompts: what the scoring loop needs."""

    source: Source
    prompts: list[str]
    thresholds: Thresholds
    key: int | None = None  # the catalog's stream id, for a stream `serve` watches
    trackers: list[PromptTracker] = field(default_factory=list)
    vectors: np.ndarray | None = None  # (prompts, dim)
    ended: bool = False

    def __post_init__(self) -> None:
        if not self.prompts or any(not p.strip() for p in self.prompts):
            raise LiveError("give at least one prompt, none of them empty")
        self.trackers = [PromptTracker(p, self.thresholds) for p in self.prompts]


class Watcher:
    """Scores the frames of every source against its prompts with one encoder, and reports events."""

    def __init__(self, encoder, thumbnails: Path, *, batch_size: int = 16,
                 on_event: Callable[[str, Event], None] | None = None,
                 on_scores: Callable[[Watched, Frame, np.ndarray], None] | None = None) -> None:
        self.encoder, self.thumbnails, self.batch_size = encoder, thumbnails, batch_size
        self.on_event, self.on_scores = on_event, on_scores
        self.watched: list[Watched] = []
        self.events: list[Event] = []  # every finished event, in the order they ended
        self.last_t: dict[int, float] = {}

    def add(self, watched: Watched) -> Watched:
        watched.vectors = self.encoder.embed_texts(watched.prompts)
        self.watched.append(watched)
        watched.source.start()
        return watched

    def remove(self, watched: Watched) -> None:
        """Stop watching a source: its open events are closed and reported, its reader stops."""
        watched.source.stop.set()
        self._close_all(watched)
        watched.ended = True
        self.watched.remove(watched)
        watched.source.join(CONNECT_SECONDS + READ_SECONDS)

    def step(self, wait: float = 0.02) -> int:
        """Score what the sources queued (one batch); waits `wait` when nothing was. The frames scored."""
        batch, closing = self._collect()
        if batch:
            self._score(batch)
        for w in closing:
            self._close_all(w)
        if not batch and not closing:
            time.sleep(wait)
        return len(batch)

    def run(self, stop: threading.Event, max_seconds: float | None = None) -> list[Event]:
        """Score until every source ended, `stop` is set or `max_seconds` passed; open events are closed."""
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        try:
            while not stop.is_set() and not all(w.ended for w in self.watched):
                if deadline is not None and time.monotonic() >= deadline:
                    break
                self.step()
        finally:
            self.close()
        return self.events

    def close(self) -> None:
        """Stop every source; open events are closed and reported."""
        for w in self.watched:
            w.source.stop.set()
        for w in self.watched:
            self._close_all(w)
        for w in self.watched:
            w.source.join(CONNECT_SECONDS + READ_SECONDS)

    def _collect(self) -> tuple[list[tuple[Watched, Frame]], list[Watched]]:
        """(frames to score, sources whose open events close once those are scored: ended, or lost for a while).
        A source's frames after its marker wait for the next batch, so they never reopen what the marker closes."""
        batch: list[tuple[Watched, Frame]] = []
        closing: list[Watched] = []
        for w in self.watched:
            while not w.ended and len(batch) < self.batch_size:
                try:
                    frame = w.source.frames.get_nowait()
                except queue.Empty:
                    break
                if frame is None or frame.rgb is None:
                    w.ended = frame is None
                    closing.append(w)
                    break
                batch.append((w, frame))
        return batch, closing

    def _score(self, batch: list[tuple[Watched, Frame]]) -> None:
        import torch

        pixels = torch.stack([self.encoder.preprocess(frame.rgb) for _, frame in batch])
        images = self.encoder.embed_pixels(pixels).numpy()
        for (w, frame), image in zip(batch, images, strict=True):
            scores = w.vectors @ image
            logits = LOGIT_SCALE * (scores - scores.max())
            softmax = np.exp(logits) / np.exp(logits).sum()
            self.last_t[id(w)] = frame.t
            if self.on_scores is not None:
                self.on_scores(w, frame, scores)
            for tracker, score, share in zip(w.trackers, scores, softmax, strict=True):
                started, ended = tracker.update(frame.t, float(score), float(share), frame.rgb,
                                                lambda p, t, s, sm, w=w: self._new_event(w, p, t, s, sm))
                if started is not None:
                    if w.source.recorder is not None:
                        started.clip = str(w.source.recorder.start())
                    if self.on_event is not None:
                        self.on_event("start", started)
                if ended is not None:
                    self._finish(ended, w)

    def _new_event(self, w: Watched, prompt: str, t: float, score: float, softmax: float) -> Event:
        return Event(source=w.source.shown, name=w.source.name, prompt=prompt, start=t, end=None, peak_score=score,
                     peak_softmax=softmax, started_at=_now(), ended_at=None, key=w.key)

    def _close_all(self, w: Watched) -> None:
        t = self.last_t.get(id(w), 0.0)
        for tracker in w.trackers:
            if (done := tracker.close(t)) is not None:
                self._finish(done, w)

    def _finish(self, done: _Open, w: Watched) -> None:
        from ingest.thumbnails import jpeg_thumbnail

        event = done.event
        event.ended_at = _now()
        folder = self.thumbnails / slug(event.name)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{event.started_at[:19].replace(':', '')}-{uuid.uuid4().hex[:8]}.jpg"
        path.write_bytes(jpeg_thumbnail(done.peak_frame))
        event.thumbnail = str(path)
        if w.source.recorder is not None and event.clip is not None:
            w.source.recorder.stop()
        self.events.append(event)
        if self.on_event is not None:
            self.on_event("end", event)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def watch_prompts(prompts: Sequence[str]) -> list[str]:
    """Prompts as given, stripped, duplicates dropped in order."""
    return list(dict.fromkeys(p.strip() for p in prompts))
