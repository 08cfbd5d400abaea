"""Videos with real speech for tests: phrases spoken by festival's `text2wave` (Debian `festival` and
`festvox-kallpc16k`, which pocketsphinx transcribes nearly word for word), laid at chosen times on an audio track and
muxed with PyAV under a plain picture. Clips made with the same colour have identical pictures, so only what is said
tells them apart."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import wave
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

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
                      size: int = 64, fps: int = 5, audio_codec: str | None = None) -> Path:
    """A video of one solid `colour` as long as `track` (mono float32 at 16 kHz, sample 0 at time 0) with that audio."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in AUDIO_CODECS:
        raise ValueError(f"unsupported container {suffix!r}; expected one of {sorted(AUDIO_CODECS)}")
    codec = audio_codec or AUDIO_CODECS[suffix]
    seconds = len(track) / RATE
    picture = np.empty((size, size, 3), np.uint8)
    picture[:] = colour
    with av.open(str(path), "w") as out:
        video = out.add_stream(VIDEO_CODECS[suffix], rate=fps, options=_VIDEO_OPTIONS.get(VIDEO_CODECS[suffix], {}))
        video.width = video.height = size
        video.pix_fmt = "yuv420p"
        video.codec_context.gop_size = fps * 2
        audio = out.add_stream(codec, rate=48000 if codec == "libopus" else 44100, layout="mono")
        # Interleave roughly by time (a frame of picture, then its audio), as real files are.
        block = RATE // fps
        for k in range(max(1, int(round(seconds * fps)))):
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
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
