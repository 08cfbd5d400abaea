"""Tiny synthetic videos for tests: coloured shapes encoded with PyAV in real containers and codecs."""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 20, 20),
    "green": (20, 200, 20),
    "blue": (20, 20, 230),
    "yellow": (230, 230, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

# Default codec per container suffix; the caller may override with a compatible one.
DEFAULT_CODECS: dict[str, str] = {
    ".mp4": "libx264",
    ".mov": "libx264",
    ".mkv": "libx264",
    ".webm": "libvpx-vp9",
    ".avi": "mpeg4",
    ".gif": "gif",
}
# Containers that can carry a display matrix (rotation) in their headers.
ROTATABLE = {".mp4", ".mov", ".mkv", ".webm"}
# Encoder options that keep tiny test clips fast to write without changing what they look like.
_CODEC_OPTIONS: dict[str, dict[str, str]] = {
    "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"},
    "libvpx": {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"},
    "libx265": {"x265-params": "log-level=error"},
}
_MS = Fraction(1, 1000)


def render_frame(
    colour: str,
    shape: str,
    size: int = 64,
    *,
    jitter: int = 0,
    background: tuple[int, int, int] = (0, 0, 0),
) -> np.ndarray:
    """A size x size RGB frame with one filled shape; `jitter` moves and scales it a little, deterministically."""
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; expected one of {sorted(COLOURS)}")
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    rng = random.Random(jitter)
    spread = max(1, size // 20) if jitter else 0  # small enough that the shape always covers the centre
    cx = size / 2 + rng.randint(-spread, spread)
    cy = size / 2 + rng.randint(-spread, spread)
    r = size * (0.36 - (0.04 * rng.random() if jitter else 0.0))

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    if shape == "circle":
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    elif shape == "square":
        mask = (np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= r)
    else:  # upward triangle: apex at the top, base at the bottom, wide enough to cover the centre
        top, bottom = cy - r, cy + r
        half_width = (yy - top) / (bottom - top) * r * 1.2
        mask = (yy >= top) & (yy <= bottom) & (np.abs(xx - cx) <= half_width)

    frame = np.empty((size, size, 3), dtype=np.uint8)
    frame[:] = background
    frame[mask] = COLOURS[colour]
    return frame


def write_video(
    path: str | os.PathLike,
    frames: Iterable[np.ndarray] | None = None,
    *,
    colour: str = "red",
    shape: str = "circle",
    seconds: float = 1.0,
    fps: float = 10,
    size: int | None = 64,
    codec: str | None = None,
    pix_fmt: str | None = None,
    rotation: int = 0,
    vfr: bool = False,
    timestamps: Sequence[float] | None = None,
) -> Path:
    """Encode a small video with PyAV; the container comes from the suffix, the codec defaults per container.

    frames: upright HxWx3 uint8 RGB frames; if None, `seconds * fps` jittered colour/shape frames of `size`.
    rotation: degrees clockwise (0/90/180/270) a player must turn the stored picture, like a phone clip:
        frames are stored turned the other way and a display matrix is written, so players (and our decoder)
        show them upright again, exactly as given.
    vfr: irregular frame durations (alternately short and long, same mean rate).
    timestamps: explicit presentation time in seconds of each frame (implies variable frame rate).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in DEFAULT_CODECS:
        raise ValueError(f"unsupported container {suffix!r}; expected one of {sorted(DEFAULT_CODECS)}")
    codec = codec or DEFAULT_CODECS[suffix]
    pix_fmt = pix_fmt or ("rgb8" if codec == "gif" else "yuv420p")
    if rotation % 360 not in (0, 90, 180, 270):
        raise ValueError("rotation must be a multiple of 90 degrees")
    if rotation % 360 and suffix not in ROTATABLE:
        raise ValueError(f"{suffix} cannot carry rotation metadata; use one of {sorted(ROTATABLE)}")
    if (vfr or timestamps is not None) and suffix == ".avi":
        raise ValueError("AVI is constant frame rate only")

    if frames is None:
        count = max(1, round(seconds * fps))
        frames = (render_frame(colour, shape, size or 64, jitter=i) for i in range(count))
    quarter_turns = (rotation % 360) // 90
    stored = (np.ascontiguousarray(np.rot90(f, quarter_turns)) for f in frames)

    variable = vfr or timestamps is not None
    with av.open(str(path), "w") as out:
        stream = None
        for index, (pts, image) in enumerate(zip(_pts_ms(fps, vfr, timestamps), stored, strict=False)):
            if stream is None:
                stream = _add_stream(out, codec, pix_fmt, fps, image.shape, rotation, variable=variable)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if variable:
                frame.pts, frame.time_base = pts, _MS
            else:
                frame.pts = index
            out.mux(stream.encode(frame))
        if stream is None:
            raise ValueError("no frames to write")
        out.mux(stream.encode(None))
    return path


def write_long_video(path: str | os.PathLike, seconds: float = 60.0, fps: float = 5, size: int = 64) -> Path:
    """A long but cheap clip (60 s, 5 fps, 64x64, keyframe every 2 s) whose colour cycles every second."""
    names = list(COLOURS)
    count = round(seconds * fps)
    frames = (render_frame(names[int(i / fps) % len(names)], SHAPES[i % len(SHAPES)], size, jitter=i)
              for i in range(count))
    return write_video(path, frames, fps=fps)


def _pts_ms(fps: float, vfr: bool, timestamps: Sequence[float] | None) -> Iterator[int]:
    """Presentation times in milliseconds: given ones, irregular ones, or a regular grid."""
    if timestamps is not None:
        yield from (round(t * 1000) for t in timestamps)
        return
    step, t, i = 1000 / fps, 0.0, 0
    while True:
        yield round(t)
        # Alternate 0.5x and 1.5x frame durations: the mean rate stays `fps` but no two neighbours agree.
        t += step * ((0.5 if i % 2 == 0 else 1.5) if vfr else 1.0)
        i += 1


def _add_stream(
    out: av.container.OutputContainer,
    codec: str,
    pix_fmt: str,
    fps: float,
    shape: tuple[int, ...],
    rotation: int,
    *,
    variable: bool,
) -> av.video.stream.VideoStream:
    height, width = shape[:2]
    if pix_fmt.startswith("yuv420") and (height % 2 or width % 2):
        raise ValueError(f"{pix_fmt} needs even width and height, got {width}x{height}")
    rate = Fraction(fps).limit_denominator(1000)
    stream = out.add_stream(codec, rate=rate, options=_CODEC_OPTIONS.get(codec, {}))
    stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
    if codec != "gif":
        stream.codec_context.gop_size = max(1, round(fps * 2))  # a keyframe every 2 s, so seeking has targets
    if variable:
        stream.codec_context.time_base = _MS
    if rotation % 360:
        # PyAV's helper takes counter-clockwise degrees; ours are the clockwise turn players apply.
        stream.set_display_rotation(-(rotation % 360))
    return stream
