"""Probe videos and stream n uniformly sampled, upright RGB frames from them with PyAV."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import av
import av.error
import numpy as np

from schema.units import clock

if TYPE_CHECKING:
    from schema.settings import Settings

log = logging.getLogger(__name__)

# Seek to each sample when samples are further apart than this (seconds). A seek lands on the keyframe before
# the target and decodes forward from there, so it pays off once the gap between samples exceeds a typical
# keyframe interval (1-2 s for camera, phone and web video); for denser samples one straight pass decodes
# fewer frames than repeatedly re-decoding the same group of pictures.
SEEK_MIN_GAP = 2.0
# Float slack when comparing frame times to targets (well under one frame at any real frame rate).
_EPS = 1e-6
# Demuxers that FFmpeg offers for things that are not videos: still images and text rendered as "video".
_NOT_VIDEO_FORMATS = {"tty", "image2", "image2pipe", "lavfi"}
_AV_ERRORS = (av.error.FFmpegError, OSError, ValueError, EOFError)


class DecodeError(Exception):
    """A file that cannot be decoded as video; str(e) is a message a person understands."""


@dataclass(frozen=True)
class VideoInfo:
    duration: float | None  # seconds; None only if truly unknown even after scanning packets
    fps: float | None  # average frame rate
    width: int  # display width after rotation (upright)
    height: int  # display height after rotation (upright)
    codec: str  # e.g. 'h264', 'vp9', 'gif', 'mpeg4'
    frame_count: int | None
    rotation: int  # degrees clockwise needed to make stored frames upright: 0, 90, 180 or 270


@dataclass(frozen=True)
class Limits:
    """What a video may be before anything is decoded: a crafted header must not make us allocate gigabytes."""

    max_side: int | None = None  # pixels, the longer side
    max_duration: float | None = None  # seconds

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        """The limits every decode of this installation applies: ingestion and the timeline alike."""
        return cls(max_side=settings.max_video_side, max_duration=settings.max_duration_seconds)

    def check_size(self, width: int, height: int) -> None:
        if self.max_side and max(width, height) > self.max_side:
            raise DecodeError(f"the video is {width}×{height} pixels; the limit is {self.max_side} on the longer "
                              "side (VIDSEARCH_MAX_VIDEO_SIDE)")

    def check_duration(self, duration: float | None) -> None:
        if self.max_duration and duration is not None and duration > self.max_duration:
            raise DecodeError(f"the video lasts {clock(duration)}; the limit is {clock(self.max_duration)} "
                              "(VIDSEARCH_MAX_DURATION_SECONDS)")


# ----------------------------------------------------------------------------------------------- public API


def probe(path: str | os.PathLike, limits: Limits = Limits()) -> VideoInfo:  # noqa: B008 (frozen)
    """Read a video's metadata; decodes only the first frame (which carries the rotation), and only once the
    header's size and duration are within `limits`."""
    with _open(path) as container:
        stream = _video_stream(container)
        limits.check_size(stream.codec_context.width, stream.codec_context.height)
        limits.check_duration(_header_duration(container, stream))
        with _wrap("could not decode any frame"):
            first = next(container.decode(stream), None)
        if first is None:
            raise DecodeError("could not decode any frame: the video stream holds no pictures")
        rotation = _clockwise_rotation(first, stream)
        width, height = (first.height, first.width) if rotation in (90, 270) else (first.width, first.height)
        duration = _header_duration(container, stream)
        frame_count = stream.frames or None
        fps = _rate(stream)
        codec = _codec_name(stream)
    limits.check_size(width, height)
    if duration is None:
        # Headers did not say (live-recorded WebM/MKV, raw streams): walk the packets, without decoding them.
        duration, packets = _scan_packets(path, fps)
        frame_count = frame_count or packets or None
        limits.check_duration(duration)
    if fps is None and duration and frame_count:
        fps = frame_count / duration
    return VideoInfo(duration=duration, fps=fps, width=width, height=height, codec=codec,
                     frame_count=frame_count, rotation=rotation)


def sample_timestamps(duration: float, n: int) -> list[float]:
    """n uniform timestamps: the centres of n equal segments of [0, duration]."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    duration = max(0.0, duration)
    return [(i + 0.5) * duration / n for i in range(n)]


@dataclass(frozen=True)
class Sampling:
    """How many frames to sample from a video: `frames` for short ones, one every `interval` seconds for long
    ones (so that moments of a long video are not 12 frames apart), never more than `max_frames`."""

    frames: int = 12
    interval: float | None = None  # seconds; None: always `frames`
    max_frames: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Sampling:
        """The one sampling rule: `frames`, or a frame every half moment (VIDSEARCH_MOMENT_SECONDS), so that a moment
        window always spans about two samples; at most `max_frames`. Ingestion, the timeline and the bench use it."""
        return cls(settings.frames, settings.moment_seconds / 2, settings.max_frames)

    def count(self, duration: float | None) -> int:
        n = self.frames
        if self.interval and duration and duration > 0:
            n = max(n, math.ceil(duration / self.interval - 1e-9))
            if self.max_frames:
                n = max(self.frames, min(n, self.max_frames))
        return n


def frame_spans(duration: float | None, n: int) -> list[tuple[float, float]]:
    """The part of [0, duration] each of n uniform samples stands for: (start, end) seconds around its timestamp."""
    d = max(0.0, duration or 0.0)
    return [(i * d / n, (i + 1) * d / n) for i in range(n)]


def iter_sampled_frames(path: str | os.PathLike, n: int, info: VideoInfo | None = None, *,
                        size: tuple[int, int] | None = None, seek: bool | None = None) -> Iterator[np.ndarray]:
    """Yield exactly n upright HxWx3 uint8 RGB frames, uniformly over the duration, in time order.

    Each target time gets the first frame shown at or after it; past the last frame the last one repeats,
    so videos with fewer than n frames still give n. Only the kept frames are ever converted or held.
    size: (height, width) of the upright output; the resize happens in swscale during the RGB conversion,
    which is several times cheaper than converting a full-resolution frame and resizing it afterwards.
    seek: force seeking (True) or one straight pass (False); None chooses by the gap between samples.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    info = info or probe(path)
    targets = sample_timestamps(info.duration or 0.0, n)
    if seek is None:
        seek = (info.duration or 0.0) / n > SEEK_MIN_GAP
    done = 0
    if seek:
        try:
            for frame in _sample_by_seeking(path, targets, size):
                done += 1
                yield frame
            return
        except _SeekUnreliable as why:
            log.info("seeking in %s is unreliable (%s); decoding straight through instead", path, why)
    yield from _sample_straight_through(path, targets[done:], size)


def sample_frames(path: str | os.PathLike, n: int) -> tuple[VideoInfo, list[np.ndarray]]:
    """probe + all n sampled frames as a list."""
    info = probe(path)
    return info, list(iter_sampled_frames(path, n, info))


def looks_like_video(path: str | os.PathLike) -> bool:
    """True if PyAV can open the file and it has a video stream (GIF counts). Never raises."""
    try:
        with _open(path) as container:
            _video_stream(container)
        return True
    except DecodeError:
        return False
    except Exception:  # content sniffing must never take the caller down
        log.warning("unexpected error while sniffing %s", path, exc_info=True)
        return False


# --------------------------------------------------------------------------------------------- opening


@contextmanager
def _wrap(what: str) -> Iterator[None]:
    """Turn PyAV/OS errors into DecodeError('<what>: <reason>'), keeping the original chained."""
    try:
        yield
    except DecodeError:
        raise
    except _AV_ERRORS as err:
        raise DecodeError(f"{what}: {_reason(err)}") from err


def _reason(err: BaseException) -> str:
    if isinstance(err, av.error.FFmpegError) and err.strerror:
        return err.strerror
    return str(err) or type(err).__name__


@contextmanager
def _open(path: str | os.PathLike) -> Iterator[av.container.InputContainer]:
    """Open for reading with clear errors for missing, empty and non-media files; always closes."""
    p = Path(path)
    if p.is_dir():
        raise DecodeError("not a video file: it is a directory")
    try:
        size = p.stat().st_size
    except FileNotFoundError as err:
        raise DecodeError("file not found") from err
    except OSError as err:
        raise DecodeError(f"cannot read file: {_reason(err)}") from err
    if size == 0:
        raise DecodeError("file is empty")
    with _wrap("not a readable video file"):
        container = av.open(str(p), mode="r")
    try:
        if container.format.name in _NOT_VIDEO_FORMATS or container.format.name.endswith("_pipe"):
            kind = "text" if container.format.name == "tty" else "a still image or other non-video input"
            raise DecodeError(f"not a video file: it looks like {kind} ({container.format.name})")
        yield container
    finally:
        container.close()


def _video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    """The main video stream; cover art attached to audio files does not count."""
    candidates = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not candidates:
        raise DecodeError("no video stream found (audio-only or not a video)")
    stream = next((s for s in candidates if s.disposition & av.stream.Disposition.default), candidates[0])
    if stream.codec_context is None:
        raise DecodeError(f"unsupported video codec: {stream.codec.name if stream.codec else 'unknown'}")
    stream.thread_type = "AUTO"
    return stream


def _codec_name(stream: av.video.stream.VideoStream) -> str:
    # The canonical name is the format ('av1'), not the decoder picked for it ('libdav1d').
    try:
        return stream.codec_context.codec.canonical_name
    except AttributeError:
        return stream.codec_context.name


# ------------------------------------------------------------------------------------------- metadata


def _header_duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return None


def _rate(stream: av.video.stream.VideoStream) -> float | None:
    rate = stream.average_rate or stream.guessed_rate
    return float(rate) if rate else None


def _scan_packets(path: str | os.PathLike, fps: float | None) -> tuple[float | None, int]:
    """Duration (last pts + its duration - first pts) and packet count from a demux-only pass."""
    first: float | None = None
    end: float | None = None
    count = 0
    with _open(path) as container, _wrap("could not read packets"):
        stream = _video_stream(container)
        tb = stream.time_base or Fraction(1, 1)
        for packet in container.demux(stream):
            ts = packet.pts if packet.pts is not None else packet.dts
            if packet.size == 0:
                continue  # the demuxer's end-of-stream marker
            count += 1
            if ts is None:
                continue
            start = float(ts * tb)
            # Some muxers leave packet durations at 0: assume one frame's worth for the last one.
            length = float(packet.duration * tb) if packet.duration else (1 / fps if fps else 0.0)
            first = start if first is None else min(first, start)
            end = start + length if end is None else max(end, start + length)
    if end is not None and first is not None:
        return end - first, count
    if count and fps:  # no timestamps at all: trust the frame rate
        return count / fps, count
    return None, count


def _clockwise_rotation(frame: av.VideoFrame, stream: av.video.stream.VideoStream) -> int:
    """Degrees clockwise that turn this stored frame upright (0/90/180/270)."""
    # VideoFrame.rotation reads the display matrix FFmpeg attaches to each decoded frame: counter-clockwise
    # degrees in [-180, 180]. Old files may only carry the legacy 'rotate' tag (clockwise degrees).
    ccw = frame.rotation
    if not ccw:
        try:
            return round(float(stream.metadata.get("rotate", 0)) / 90) % 4 * 90
        except ValueError:
            return 0
    return round(-ccw / 90) % 4 * 90


def _to_rgb(frame: av.VideoFrame, stream: av.video.stream.VideoStream,
            size: tuple[int, int] | None = None) -> np.ndarray:
    """Upright, C-contiguous HxWx3 uint8 RGB (handles palettes, 10-bit and any other pixel format).

    size: (height, width) of the upright result, produced by swscale's bicubic filter during the conversion."""
    quarter_turns = _clockwise_rotation(frame, stream) // 90
    if size is None:
        image = frame.to_ndarray(format="rgb24")
    else:
        height, width = size if quarter_turns % 2 == 0 else size[::-1]  # stored frames are sideways
        image = frame.to_ndarray(format="rgb24", width=width, height=height, interpolation="BICUBIC")
    if quarter_turns:
        image = np.rot90(image, -quarter_turns)  # np.rot90 turns counter-clockwise for positive k
    return np.ascontiguousarray(image)


# -------------------------------------------------------------------------------------------- decoding


class _SeekUnreliable(Exception):
    """Seeking did not land at or before the target: fall back to decoding straight through."""


def _timed(frames: Iterator[av.VideoFrame], stream: av.video.stream.VideoStream, origin: float,
           fps: float | None) -> Iterator[tuple[float, av.VideoFrame]]:
    """(seconds since the stream start, frame); frames without a pts get one frame after the previous."""
    tb = stream.time_base or Fraction(1, 1)
    step = 1 / fps if fps else 0.04
    previous = -step
    for frame in frames:
        t = float(frame.pts * tb) - origin if frame.pts is not None else previous + step
        previous = t
        yield t, frame


def _origin(stream: av.video.stream.VideoStream) -> float:
    """Stream start time in seconds: targets are measured from here."""
    if stream.start_time is not None and stream.time_base:
        return float(stream.start_time * stream.time_base)
    return 0.0


def _sample_straight_through(path: str | os.PathLike, targets: list[float],
                             size: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
    """One decoding pass; each target takes the first frame at/after it, the last frame fills in at the end."""
    if not targets:
        return
    with _open(path) as container:
        stream = _video_stream(container)
        frames = _timed(container.decode(stream), stream, _origin(stream), _rate(stream))
        picked, last = None, None  # (frame, its RGB array once converted), last decoded frame
        index = 0
        try:
            for t, frame in frames:
                last = frame
                if t < targets[index] - _EPS:
                    continue
                picked = _to_rgb(frame, stream, size)
                repeat = False  # one frame may serve several close targets: hand out copies after the first
                while index < len(targets) and t >= targets[index] - _EPS:
                    yield picked.copy() if repeat else picked
                    repeat, index = True, index + 1
                if index == len(targets):
                    return
        except _AV_ERRORS as err:
            if last is None:
                raise DecodeError(f"could not decode any frame: {_reason(err)}") from err
            # Damaged or truncated data part-way: keep what was decoded rather than losing the whole file.
            log.warning("decoding %s stopped early (%s); repeating the last good frame", path, _reason(err))
        if last is None:
            raise DecodeError("could not decode any frame: the video stream holds no pictures")
        tail = _to_rgb(last, stream, size)
        for _ in range(index, len(targets)):
            yield tail.copy()


def _sample_by_seeking(path: str | os.PathLike, targets: list[float],
                       size: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
    """Seek to each target's keyframe and decode forward to it; same picks as the straight pass."""
    with _open(path) as container:
        stream = _video_stream(container)
        origin, fps = _origin(stream), _rate(stream)
        tb = stream.time_base or Fraction(1, 1)
        current: tuple[float, av.VideoFrame] | None = None  # the latest decoded frame
        for target in targets:
            if current is None or current[0] < target - _EPS:
                current = _seek_and_advance(container, stream, tb, origin, fps, target)
            if current is None:
                raise _SeekUnreliable("no frame at or after the target")  # straight pass fills in the tail
            yield _to_rgb(current[1], stream, size)  # repeats are rare here (samples are seconds apart): no cache


def _seek_and_advance(container: av.container.InputContainer, stream: av.video.stream.VideoStream, tb: Fraction,
                      origin: float, fps: float | None, target: float) -> tuple[float, av.VideoFrame] | None:
    """Seek to the keyframe before `target` and return the first frame at/after it (None at end of stream)."""
    try:
        container.seek(math.floor((origin + target) / tb), stream=stream, backward=True)
        frames = _timed(container.decode(stream), stream, origin, fps)
        first = True
        for t, frame in frames:
            # Landing after the target means a frame before it may have been skipped: we cannot trust this.
            if first and t > target + _EPS and t > _EPS:
                raise _SeekUnreliable(f"landed at {t:.3f}s for a target at {target:.3f}s")
            first = False
            if t >= target - _EPS:
                return t, frame
        return None
    except _AV_ERRORS as err:
        raise _SeekUnreliable(_reason(err)) from err
