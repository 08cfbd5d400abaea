"""A corpus of bad files, generated: each must fail alone with a reason a person understands."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from tests.videos import write_video


def _encode(path: Path, width: int, height: int, count: int, fps: int = 30, options: dict | None = None,
            gop: int | None = None) -> Path:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast", **(options or {})})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if gop:
            stream.codec_context.gop_size = gop
        for i in range(count):
            frame = av.VideoFrame.from_ndarray(np.roll(base, i, axis=1), format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def write_slow_to_sample(path: Path) -> Path:
    """Valid, but one keyframe in 80 s of video: every seek re-decodes from the start, so sampling it takes
    seconds of CPU, the stand-in for a file crafted to keep a decoder busy."""
    return _encode(path, 160, 120, 2400, options={"g": "100000", "keyint_min": "100000", "sc_threshold": "0"},
                   gop=100000)


def write_audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=44100)
        samples = (np.sin(np.arange(44100) / 20) * 0.3).astype(np.float32)[None]
        for start in range(0, 44100, 1024):
            frame = av.AudioFrame.from_ndarray(samples[:, start : start + 1024].copy(), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 44100, start
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def write_no_frames(path: Path) -> Path:
    """A container with a video stream and not one picture in it (zero duration)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        out.start_encoding()
    return path


def write_corpus(folder: Path, good: Path) -> dict[str, tuple[str, ...]]:
    """Bad files in `folder`; returns file name -> phrases one of which its failure reason must contain."""
    folder.mkdir(parents=True, exist_ok=True)
    real = good.read_bytes()
    not_video = ("not a video",)
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "truncated.mp4").write_bytes(real[: len(real) // 3])
    (folder / "random.mkv").write_bytes(np.random.default_rng(1).bytes(64_000))
    (folder / "notes.avi").write_text("this is a shopping list, not a video\n" * 200)
    flipped = bytearray(real)
    rng = np.random.default_rng(2)
    for i in rng.integers(len(real) // 4, len(real) // 2, len(real) // 100):  # the pictures, not the index
        flipped[i] ^= 0xFF
    (folder / "bitflipped.mp4").write_bytes(bytes(flipped))
    write_audio_only(folder / "audio_only.mp4")
    write_no_frames(folder / "no_frames.mp4")
    _encode(folder / "absurd_resolution.mp4", 10_000, 16, 2)
    write_slow_to_sample(folder / "slow_to_sample.mp4")
    return {
        "empty.mp4": not_video,
        "truncated.mp4": (*not_video, "could not", "truncated", "no pictures"),
        "random.mkv": not_video,
        "notes.avi": not_video,
        "bitflipped.mp4": (*not_video, "could not", "damaged", "no pictures"),  # may also decode: then it is fine
        "audio_only.mp4": not_video,
        "no_frames.mp4": (*not_video, "no pictures", "could not"),
        "absurd_resolution.mp4": ("10000×16 pixels; the limit is 8192",),
        "slow_to_sample.mp4": ("longer than 1 s",),
    }


def write_good(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [write_video(folder / "good_red_circle.mp4", colour="red", shape="circle", seconds=1, fps=8),
            write_video(folder / "good_blue_square.webm", colour="blue", shape="square", seconds=1, fps=8),
            write_video(folder / "good_green_triangle.mkv", colour="green", shape="triangle", seconds=1, fps=8)]
