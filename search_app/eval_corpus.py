"""Synthetic clips with known content, for `vidsearch evaluate` and the tests (tests/videos.py, tests/speech_clips.py
and tests/text_clips.py re-export these): one copy of every writer.

- **Pictures**: coloured shapes ("a red circle") encoded with PyAV in real containers and codecs (render_frame,
  write_video); the tiny CLIP of search_app/tiny_clip.py is trained on exactly these frames.
- **Speech**: phrases spoken by festival's `text2wave` (Debian `festival` and `festvox-kallpc16k`, which pocketsphinx
  transcribes nearly word for word), laid at chosen times on an audio track and muxed with PyAV under a picture
  (speak, speech_track, write_speech_video, write_audio_video).
- **On-screen text**: words drawn by Pillow with the DejaVu font (Debian `fonts-dejavu-core`), on a plain or busy
  background or over any frame (text_frame, draw_text, write_text_video). RapidOCR reads the plain-background clips
  word for word; on the busy background it may misread a word now and then, as it does on real footage.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import wave
from collections.abc import Callable, Iterable, Iterator, Sequence
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

# -------------------------------------------------- pictures
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


# ---------------------------------------------------- speech
RATE = 16000
# Audio codec per container: AAC in MP4/MOV/MKV, Opus in WebM (what phones and browsers write).
AUDIO_CODECS = {".mp4": "aac", ".mov": "aac", ".mkv": "aac", ".webm": "libopus"}
VIDEO_CODECS = {".mp4": "libx264", ".mov": "libx264", ".mkv": "libx264", ".webm": "libvpx-vp9"}
_VIDEO_OPTIONS = {"libvpx-vp9": {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}}


def have_festival() -> bool:
    """Whether `text2wave` is installed (scripts/test.sh installs it)."""
    return shutil.which("text2wave") is not None


def speak(text: str, folder: str | os.PathLike) -> np.ndarray:
    """`text` spoken by festival as mono float32 at 16 kHz, leading and trailing silence trimmed (so the first word
    starts at sample 0). Cached in `folder` by text: each festival run costs about half a second."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    wav = folder / f"{hashlib.sha1(text.encode()).hexdigest()[:16]}.wav"
    if not wav.exists():
        part = wav.with_suffix(".part.wav")
        subprocess.run(["text2wave", "-F", str(RATE), "-o", str(part)], input=text.encode(), check=True,
                       capture_output=True, timeout=60)
        part.replace(wav)
    with wave.open(str(wav)) as w:
        if w.getframerate() != RATE or w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise RuntimeError(f"text2wave wrote {w.getframerate()} Hz x {w.getnchannels()}, expected 16 kHz mono")
        samples = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768.0
    loud = np.flatnonzero(np.abs(samples) > 0.02 * float(np.max(np.abs(samples))))
    return samples[loud[0] : loud[-1] + 1] if len(loud) else samples


def speech_track(phrases: Sequence[tuple[float, np.ndarray]], seconds: float) -> np.ndarray:
    """A `seconds`-long 16 kHz track, silent but for each (start seconds, samples) phrase laid in at its start."""
    track = np.zeros(int(round(seconds * RATE)), np.float32)
    for start, samples in phrases:
        at = int(round(start * RATE))
        if at + len(samples) > len(track):
            raise ValueError(f"a phrase starting at {start} s runs past the end of a {seconds} s clip")
        track[at : at + len(samples)] += samples
    return track


def write_speech_video(path: str | os.PathLike, phrases: Sequence[tuple[float, str]], seconds: float, *,
                       folder: str | os.PathLike, colour: tuple[int, int, int] = (40, 90, 160), size: int = 64,
                       fps: int = 5, audio_codec: str | None = None) -> Path:
    """A `seconds`-long video of one solid `colour` whose audio says each (start seconds, text) phrase from its start.

    The container comes from the suffix (.mp4/.mov/.mkv with AAC, .webm with Opus unless `audio_codec` says
    otherwise); `folder` caches festival's speech (see speak)."""
    return write_audio_video(path, speech_track([(start, speak(text, folder)) for start, text in phrases], seconds),
                             colour=colour, size=size, fps=fps, audio_codec=audio_codec)


def write_audio_video(path: str | os.PathLike, track: np.ndarray, *, colour: tuple[int, int, int] = (40, 90, 160),
                      size: int = 64, fps: int = 5, audio_codec: str | None = None,
                      frames: Callable[[int], np.ndarray] | None = None) -> Path:
    """A video as long as `track` (mono float32 at 16 kHz, sample 0 at time 0) with that audio. Its picture is one
    solid `colour` (size x size), or `frames(i)` for frame i (HxWx3 uint8, even sides, the same size throughout)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in AUDIO_CODECS:
        raise ValueError(f"unsupported container {suffix!r}; expected one of {sorted(AUDIO_CODECS)}")
    codec = audio_codec or AUDIO_CODECS[suffix]
    seconds = len(track) / RATE
    if frames is None:
        picture = np.empty((size, size, 3), np.uint8)
        picture[:] = colour

        def frames(_i: int) -> np.ndarray:
            return picture

    height, width = frames(0).shape[:2]
    with av.open(str(path), "w") as out:
        video = out.add_stream(VIDEO_CODECS[suffix], rate=fps, options=_VIDEO_OPTIONS.get(VIDEO_CODECS[suffix], {}))
        video.width, video.height = width, height
        video.pix_fmt = "yuv420p"
        video.codec_context.gop_size = fps * 2
        audio = out.add_stream(codec, rate=48000 if codec == "libopus" else 44100, layout="mono")
        # Interleave roughly by time (a frame of picture, then its audio), as real files are.
        block = RATE // fps
        for k in range(max(1, int(round(seconds * fps)))):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames(k)), format="rgb24")
            frame.pts = k
            out.mux(video.encode(frame))
            piece = track[k * block : (k + 1) * block]
            if len(piece):
                sound = av.AudioFrame.from_ndarray(np.ascontiguousarray(piece[None, :]), format="flt", layout="mono")
                sound.sample_rate, sound.pts, sound.time_base = RATE, k * block, Fraction(1, RATE)
                out.mux(audio.encode(sound))  # PyAV resamples to the encoder's rate, format and frame size
        rest = track[max(1, int(round(seconds * fps))) * block :]
        if len(rest):
            sound = av.AudioFrame.from_ndarray(np.ascontiguousarray(rest[None, :]), format="flt", layout="mono")
            sound.sample_rate, sound.pts, sound.time_base = RATE, len(track) - len(rest), Fraction(1, RATE)
            out.mux(audio.encode(sound))
        out.mux(audio.encode(None))
        out.mux(video.encode(None))
    return path


# ---------------------------------------------- on-screen text
FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")
PLAIN = (24, 28, 56)  # dark blue: white words on it read like a title card


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont:
    if not FONT.exists():
        raise FileNotFoundError(f"{FONT} is missing: apt-get install fonts-dejavu-core")
    return ImageFont.truetype(str(FONT), size)


def busy_background(width: int, height: int, index: int) -> np.ndarray:
    """A moving, colourful picture (like ffmpeg's testsrc): colour bars, a diagonal gradient and a checker that
    scroll a few pixels every frame, so no two frames are alike."""
    yy, xx = np.mgrid[0:height, 0:width]
    shift = 7 * index
    bars = np.array([(230, 230, 230), (230, 230, 20), (20, 230, 230), (20, 230, 20),
                     (230, 20, 230), (230, 20, 20), (20, 20, 230)], np.float32)
    frame = bars[((xx + shift) * len(bars) // width) % len(bars)]
    gradient = ((xx + yy + 3 * shift) % 256 / 255.0)[..., None]
    frame = frame * (0.55 + 0.45 * gradient)
    checker = (((xx + shift) // 24 + yy // 24) % 2 == 0)[..., None]
    frame = np.where(checker, frame * 0.7, frame)
    return frame.astype(np.uint8)


def text_frame(texts: Sequence[str], width: int = 640, height: int = 360, *, background: str = "plain",
               index: int = 0, font_size: int | None = None) -> np.ndarray:
    """One RGB frame (height, width, 3) with `texts` as centred lines, white with a black outline."""
    if background == "plain":
        image = Image.new("RGB", (width, height), PLAIN)
    elif background == "busy":
        image = Image.fromarray(busy_background(width, height, index))
    else:
        raise ValueError(f"background must be 'plain' or 'busy', not {background!r}")
    return draw_text(np.asarray(image), texts, font_size=font_size)


def draw_text(frame: np.ndarray, texts: Sequence[str], *, font_size: int | None = None,
              centre: float = 0.5) -> np.ndarray:
    """A copy of `frame` with `texts` as lines centred across it, white with a black outline; the block of lines is
    centred at `centre` of the height (0.5: the middle, 0.9: near the bottom, like a caption)."""
    image = Image.fromarray(np.ascontiguousarray(frame))
    width, height = image.size
    if texts:
        draw = ImageDraw.Draw(image)
        font = _font(font_size or max(12, height // 9))
        gap = font.size // 2
        boxes = [draw.textbbox((0, 0), t, font=font) for t in texts]
        total = sum(b[3] - b[1] for b in boxes) + gap * (len(texts) - 1)
        y = min(height - total, max(0, int((2 * centre * height - total) // 2)))
        for text, box in zip(texts, boxes, strict=True):
            x = (width - (box[2] - box[0])) // 2
            draw.text((x - box[0], y - box[1]), text, font=font, fill=(255, 255, 255),
                      stroke_width=max(1, font.size // 16), stroke_fill=(0, 0, 0))
            y += box[3] - box[1] + gap
    return np.asarray(image)


def write_text_video(
    path: str | os.PathLike,
    texts: Sequence[tuple[str, float, float]],
    *,
    seconds: float,
    size: tuple[int, int] = (640, 360),
    fps: float = 5,
    background: str = "plain",
    font_size: int | None = None,
    codec: str | None = None,
) -> Path:
    """Encode a clip of `seconds` at `fps` and `size` (width, height) in which each (text, start, end) of `texts` is
    shown from `start` to `end` seconds (a frame at time t shows the texts with start <= t < end, stacked as lines,
    in the order given). `background`: "plain" (one dark colour, every frame alike) or "busy" (a moving colourful
    pattern, see busy_background). The container comes from the suffix (write_video). Returns `path`.

    Example: write_text_video(tmp / "a.mp4", [("PLATFORM NINE", 2, 5)], seconds=7) shows the words from 2 s to 5 s.
    """
    width, height = size
    count = max(1, round(seconds * fps))

    def frames() -> Iterator[np.ndarray]:
        for i in range(count):
            t = i / fps
            shown = [text for text, start, end in texts if start <= t < end]
            yield text_frame(shown, width, height, background=background, index=i, font_size=font_size)

    kwargs = {"codec": codec} if codec else {}
    return write_video(path, frames(), fps=fps, **kwargs)
