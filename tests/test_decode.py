"""Decoding real files written with PyAV: containers, codecs, sampling by time, rotation, seeking and bad input."""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import av
import numpy as np
import pytest

from ingest import decode
from ingest.decode import (
    DecodeError,
    VideoInfo,
    iter_sampled_frames,
    looks_like_video,
    probe,
    sample_frames,
    sample_timestamps,
)
from tests.videos import COLOURS, SHAPES, render_frame, write_long_video, write_video


def centre_rgb(frame: np.ndarray, half: int = 4) -> np.ndarray:
    h, w = frame.shape[:2]
    return frame[h // 2 - half:h // 2 + half, w // 2 - half:w // 2 + half].reshape(-1, 3).mean(axis=0)


def assert_colour(frame: np.ndarray, colour: str, tol: float = 40.0) -> None:
    got = centre_rgb(frame)
    assert np.abs(got - np.array(COLOURS[colour])).max() < tol, (colour, got)


def solid(colour: str, height: int = 64, width: int = 64) -> np.ndarray:
    return np.full((height, width, 3), COLOURS[colour], dtype=np.uint8)


def write_audio(path: Path, codec: str) -> Path:
    """One second of a 440 Hz tone, audio only."""
    rate = 16000
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        fmt = stream.codec_context.format.name
        size = stream.codec_context.frame_size or 1024
        for i in range(0, rate, size):
            t = (np.arange(i, i + size) / rate).astype(np.float32)
            samples = 0.3 * np.sin(2 * np.pi * 440 * t)
            data = (samples * 32767).astype(np.int16) if fmt.startswith("s16") else samples
            frame = av.AudioFrame.from_ndarray(data.reshape(1, -1), format=fmt, layout="mono")
            frame.sample_rate, frame.pts = rate, i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def remux_live_webm(src: Path, dst: Path) -> Path:
    """Copy packets into a WebM written in live mode: no duration anywhere, like a browser recording."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", format="webm", options={"live": "1"}) as out:
        stream = inp.streams.video[0]
        target = out.add_stream_from_template(stream)
        for packet in inp.demux(stream):
            if packet.dts is None:
                continue
            packet.stream = target
            out.mux(packet)
    return dst


# ------------------------------------------------------------------------------------ containers and codecs

CASES = [
    ("clip.mp4", {}, "h264", "red"),
    ("clip.webm", {}, "vp9", "green"),
    ("clip.mkv", {}, "h264", "blue"),
    ("clip.avi", {}, "mpeg4", "yellow"),
    ("clip.mov", {}, "h264", "green"),
    ("clip.gif", {}, "gif", "blue"),
    ("ten_bit.mp4", {"pix_fmt": "yuv420p10le"}, "h264", "red"),
    ("ten_bit.mkv", {"codec": "libx265", "pix_fmt": "yuv420p10le"}, "hevc", "yellow"),
    ("vp8.webm", {"codec": "libvpx"}, "vp8", "red"),
]


@pytest.mark.parametrize(("name", "kwargs", "codec", "colour"), CASES, ids=[c[0] for c in CASES])
def test_each_container_and_codec_gives_n_frames_of_the_right_colour(tmp_path, name, kwargs, codec, colour):
    path = write_video(tmp_path / name, colour=colour, shape="circle", seconds=1.0, fps=8, **kwargs)
    info, frames = sample_frames(path, 5)

    assert info.codec == codec
    assert (info.width, info.height, info.rotation) == (64, 64, 0)
    assert info.duration == pytest.approx(1.0, abs=0.1)
    assert info.fps == pytest.approx(8, rel=0.1)
    assert len(frames) == 5
    for frame in frames:
        assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8 and frame.flags.c_contiguous
        assert_colour(frame, colour)
    assert looks_like_video(path)


def test_shapes_are_distinguishable_after_decoding(tmp_path):
    outlines = {}
    for shape in SHAPES:
        _, frames = sample_frames(write_video(tmp_path / f"{shape}.mp4", colour="red", shape=shape), 1)
        outlines[shape] = frames[0][..., 0] > 128
    assert len({mask.sum() for mask in outlines.values()}) == len(SHAPES)
    assert render_frame("red", "triangle").shape == (64, 64, 3)


# -------------------------------------------------------------------------------------------------- sampling


def test_sample_timestamps_are_segment_centres():
    assert sample_timestamps(10.0, 4) == pytest.approx([1.25, 3.75, 6.25, 8.75])
    assert sample_timestamps(3.0, 1) == [1.5]
    assert sample_timestamps(0.0, 3) == [0.0, 0.0, 0.0]
    stamps = sample_timestamps(7.3, 9)
    assert np.diff(stamps) == pytest.approx([7.3 / 9] * 8)
    with pytest.raises(ValueError):
        sample_timestamps(1.0, 0)


def test_single_frame_video_gives_n_copies(tmp_path):
    path = write_video(tmp_path / "still.mp4", [solid("blue")], fps=10)
    info, frames = sample_frames(path, 6)
    assert info.frame_count == 1
    assert len(frames) == 6
    for frame in frames:
        assert_colour(frame, "blue")
        np.testing.assert_array_equal(frame, frames[0])
    frames[1][:] = 0  # repeats are copies: changing one does not change the others
    assert_colour(frames[2], "blue")


@pytest.mark.parametrize("suffix", [".gif", ".mp4"])
def test_fewer_frames_than_samples_repeat_in_time_order(tmp_path, suffix):
    path = write_video(tmp_path / f"three{suffix}", [solid(c) for c in ("red", "green", "blue")], fps=3)
    _, frames = sample_frames(path, 10)
    assert len(frames) == 10
    order = [min(COLOURS, key=lambda c: np.abs(centre_rgb(f) - COLOURS[c]).sum()) for f in frames]
    assert order == sorted(order, key=["red", "green", "blue"].index)
    assert order[-1] == "blue" and order.count("blue") >= 3


def test_variable_frame_rate_is_sampled_by_time_not_by_index(tmp_path):
    # Red before 1 s, green from 1 s to 3 s, blue after 3 s, with irregular gaps between frames.
    times = [0.0, 0.03, 0.3, 0.35, 0.9, 1.0, 1.05, 1.6, 2.4, 2.45, 2.95, 3.0, 3.5, 3.9, 3.95]
    colours = ["red" if t < 1 else "green" if t < 3 else "blue" for t in times]
    path = write_video(tmp_path / "vfr.mp4", [solid(c) for c in colours], timestamps=times)
    info, frames = sample_frames(path, 8)
    assert info.duration == pytest.approx(4.0, abs=0.15)
    # Targets ~0.25, 0.75, 1.25 ... 3.75 s; each takes the first frame at or after it. Sampling by frame
    # index instead would pick a red frame for the third target.
    expected = ["red", "red", "green", "green", "green", "green", "blue", "blue"]
    for frame, colour in zip(frames, expected, strict=True):
        assert_colour(frame, colour)


def test_irregular_frame_durations_still_give_n_frames(tmp_path):
    path = write_video(tmp_path / "vfr.webm", colour="yellow", seconds=1.0, fps=10, vfr=True)
    info, frames = sample_frames(path, 7)
    assert len(frames) == 7 and info.duration == pytest.approx(1.0, abs=0.15)
    for frame in frames:
        assert_colour(frame, "yellow")


def test_iter_sampled_frames_is_lazy(tmp_path, monkeypatch):
    path = write_video(tmp_path / "lazy.mp4", colour="red")
    info = probe(path)
    converted = []
    original = decode._to_rgb
    monkeypatch.setattr(decode, "_to_rgb", lambda *a: converted.append(1) or original(*a))
    frames = iter_sampled_frames(path, 4, info)
    assert inspect.isgenerator(frames) and not converted
    next(frames)
    assert len(converted) == 1  # one frame converted per frame asked for, nothing decoded ahead and held
    assert len(list(frames)) == 3


# -------------------------------------------------------------------------------------------------- rotation


def quadrants(height: int, width: int) -> np.ndarray:
    """Asymmetric picture: top-left red, top-right green, bottom half blue."""
    image = solid("blue", height, width)
    image[: height // 2, : width // 2] = COLOURS["red"]
    image[: height // 2, width // 2:] = COLOURS["green"]
    return image


@pytest.mark.parametrize(("suffix", "rotation"), [(".mp4", 90), (".mp4", 180), (".mp4", 270), (".mov", 90),
                                                  (".mkv", 270)])
def test_rotated_video_decodes_upright(tmp_path, suffix, rotation):
    upright = quadrants(64, 32)  # portrait, like a phone held upright
    path = write_video(tmp_path / f"phone{suffix}", [upright] * 4, fps=4, rotation=rotation)
    with av.open(str(path)) as container:  # really stored sideways, with a display matrix to undo it
        stored = next(container.decode(video=0))
        assert (stored.width, stored.height) == ((64, 32) if rotation in (90, 270) else (32, 64))
        assert stored.rotation != 0

    info, frames = sample_frames(path, 2)
    assert info.rotation == rotation
    assert (info.width, info.height) == (32, 64)
    frame = frames[0]
    assert frame.shape == (64, 32, 3) and frame.flags.c_contiguous
    assert_colour(frame[:32, :16], "red")
    assert_colour(frame[:32, 16:], "green")
    assert_colour(frame[32:], "blue")


# ----------------------------------------------------------------------------------- duration and seeking


def test_missing_duration_is_found_from_packets(tmp_path):
    src = write_video(tmp_path / "src.webm", colour="green", seconds=2.0, fps=8)
    path = remux_live_webm(src, tmp_path / "live.webm")
    with av.open(str(path)) as container:
        assert container.duration is None and container.streams.video[0].duration is None
    info, frames = sample_frames(path, 4)
    assert info.duration == pytest.approx(2.0, abs=0.15)
    assert info.frame_count == 16
    assert len(frames) == 4
    for frame in frames:
        assert_colour(frame, "green")


@pytest.fixture(scope="module")
def long_video(tmp_path_factory) -> Path:
    return write_long_video(tmp_path_factory.mktemp("long") / "long.mp4")


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".webm", ".avi", ".gif", "live.webm"])
def test_sparse_samples_seek_and_match_a_straight_pass(tmp_path, monkeypatch, suffix):
    if suffix == "live.webm":  # no cues and no duration: seeking has no index to use
        long_video = remux_live_webm(write_long_video(tmp_path / "src.webm"), tmp_path / suffix)
    else:
        long_video = write_long_video(tmp_path / f"long{suffix}")
    info = probe(long_video)
    assert info.duration == pytest.approx(60.0, abs=0.3)
    calls = []
    original = decode._seek_and_advance
    monkeypatch.setattr(decode, "_seek_and_advance", lambda *a: calls.append(a[-1]) or original(*a))
    seeking = list(iter_sampled_frames(long_video, 8, info))
    assert len(calls) == 8

    monkeypatch.setattr(decode, "SEEK_MIN_GAP", math.inf)
    calls.clear()
    straight = list(iter_sampled_frames(long_video, 8, info))
    assert not calls
    assert len(seeking) == len(straight) == 8
    for a, b in zip(seeking, straight, strict=True):
        np.testing.assert_array_equal(a, b)
    # The clip cycles red, green, blue, yellow each second; targets fall at 3.75 s, 11.25 s, ...
    names = list(COLOURS)
    for frame, t in zip(straight, sample_timestamps(info.duration, 8), strict=True):
        assert_colour(frame, names[int(math.ceil(t * 5) / 5) % 4])


def test_seek_failure_falls_back_to_a_straight_pass(long_video, monkeypatch):
    info = probe(long_video)
    expected = list(decode._sample_straight_through(long_video, sample_timestamps(info.duration, 6)))
    calls = []
    original = decode._seek_and_advance

    def flaky(*args):
        calls.append(1)
        if len(calls) == 3:
            raise decode._SeekUnreliable("simulated")
        return original(*args)

    monkeypatch.setattr(decode, "_seek_and_advance", flaky)
    frames = list(iter_sampled_frames(long_video, 6, info))
    assert len(calls) == 3 and len(frames) == 6
    for a, b in zip(frames, expected, strict=True):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------------- bad input


def test_still_image_is_not_a_video(tmp_path):
    path = tmp_path / "photo.png"
    with av.open(str(path), "w", format="image2") as out:
        stream = out.add_stream("png", rate=1)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "rgb24"
        out.mux(stream.encode(av.VideoFrame.from_ndarray(render_frame("red", "square"), format="rgb24")))
        out.mux(stream.encode(None))
    assert not looks_like_video(path)
    with pytest.raises(DecodeError, match="not a video file"):
        probe(path)


def bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, words the error message must contain)."""
    empty = tmp_path / "empty.mp4"
    empty.touch()
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    text = tmp_path / "notes.txt"
    text.write_text("just some notes\n" * 200)
    text_mp4 = tmp_path / "notes.mp4"
    text_mp4.write_text("definitely not a video\n" * 200)
    folder = tmp_path / "folder.mp4"
    folder.mkdir()
    return {
        "empty": (empty, "file is empty"),
        "random bytes": (noise, "not a readable video file"),
        "text": (text, "not a video"),
        "text named .mp4": (text_mp4, "not a"),
        "aac audio": (write_audio(tmp_path / "tone.m4a", "aac"), "no video stream found"),
        "wav audio": (write_audio(tmp_path / "tone.wav", "pcm_s16le"), "no video stream found"),
        "directory": (folder, "directory"),
        "missing": (tmp_path / "nope.mp4", "not found"),
    }


def test_bad_files_raise_readable_decode_errors(tmp_path):
    for name, (path, words) in bad_files(tmp_path).items():
        with pytest.raises(DecodeError) as err:
            probe(path)
        assert words in str(err.value), (name, str(err.value))
        with pytest.raises(DecodeError):
            sample_frames(path, 3)
        with pytest.raises(DecodeError):
            list(iter_sampled_frames(path, 3))
        assert not looks_like_video(path), name


def test_av_errors_are_chained(tmp_path):
    path = tmp_path / "noise.mp4"
    path.write_bytes(b"\x00\x01garbage" * 1000)
    with pytest.raises(DecodeError) as err:
        probe(path)
    assert isinstance(err.value.__cause__, av.error.FFmpegError)


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".webm", ".avi"])
def test_truncated_video_decodes_what_is_there_or_raises_decode_error(tmp_path, suffix):
    full = write_video(tmp_path / f"full{suffix}", colour="red", seconds=2.0, fps=8)
    cut = tmp_path / f"cut{suffix}"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    assert isinstance(looks_like_video(cut), bool)
    try:
        info, frames = sample_frames(cut, 5)
    except DecodeError as err:
        assert str(err)
        return
    assert isinstance(info, VideoInfo)
    assert len(frames) == 5
    for frame in frames:
        assert frame.shape == (64, 64, 3)
        assert_colour(frame, "red")


def test_n_must_be_positive(tmp_path):
    path = write_video(tmp_path / "clip.mp4")
    with pytest.raises(ValueError):
        list(iter_sampled_frames(path, 0))
