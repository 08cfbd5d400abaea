"""ingest/audio.py on real encoded files: tracks of any codec, channel count and rate come out as mono float32 at the
rate asked for, on the video's timeline; files without usable audio get a reason, never a crash."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from ingest.audio import AudioUnavailable, decode_audio, iter_audio, pcm16


def write_clip(path: Path, seconds: float = 2.0, *, audio: dict | None = None, video: bool = True) -> Path:
    """A clip with a grey video track and, if asked, a tone: audio = {rate, layout, codec, freq, delay, level}."""
    with av.open(str(path), "w") as out:
        vs = None
        if video:
            vs = out.add_stream("libvpx" if path.suffix == ".webm" else "mpeg4", rate=8)
            vs.width = vs.height = 32
            vs.pix_fmt = "yuv420p"
        if audio is not None:
            rate, layout = audio.get("rate", 44100), audio.get("layout", "stereo")
            stream = out.add_stream(audio.get("codec", "aac"), rate=rate, layout=layout)
            channels = stream.codec_context.channels
            fmt = stream.codec_context.format.name
            delay = audio.get("delay", 0.0)
            n = int((seconds - delay) * rate)
            t = np.arange(n) / rate
            tone = (audio.get("level", 0.5) * np.sin(2 * np.pi * audio.get("freq", 440.0) * t)).astype(np.float32)
            block = 1024
            for i in range(0, n, block):
                piece = tone[i : i + block]
                planar = np.repeat(piece[None, :], channels, axis=0)
                if fmt == "s16":
                    data = (planar.T.reshape(1, -1) * 32767).astype(np.int16)
                elif fmt.endswith("p"):
                    data = planar.astype(np.float32 if fmt == "fltp" else np.int16)
                else:
                    data = planar.T.reshape(1, -1).astype(np.float32)
                frame = av.AudioFrame.from_ndarray(data, format=fmt, layout=layout)
                frame.sample_rate = rate
                frame.pts = int(round(delay * rate)) + i
                frame.time_base = Fraction(1, rate)
                for packet in stream.encode(frame):
                    out.mux(packet)
            for packet in stream.encode(None):
                out.mux(packet)
        if vs is not None:
            for k in range(int(seconds * 8)):
                frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 128, np.uint8), format="rgb24")
                frame.pts = k
                for packet in vs.encode(frame):
                    out.mux(packet)
            for packet in vs.encode(None):
                out.mux(packet)
    return path


def peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate / len(samples))


@pytest.mark.parametrize(("codec", "layout", "rate", "suffix"), [
    ("aac", "stereo", 44100, "mp4"),
    ("pcm_s16le", "7.1", 48000, "mkv"),  # 8 channels
    ("libopus", "mono", 48000, "webm"),
    ("aac", "mono", 11025, "mp4"),  # an odd low rate
])
def test_any_track_becomes_mono_float_at_the_rate_asked(tmp_path, codec, layout, rate, suffix):
    clip = write_clip(tmp_path / f"tone.{suffix}", 2.0, audio={"codec": codec, "layout": layout, "rate": rate})
    audio = decode_audio(clip, 16000)
    assert audio.samples.dtype == np.float32 and audio.samples.ndim == 1 and audio.rate == 16000
    assert audio.track.channels == (8 if layout == "7.1" else 2 if layout == "stereo" else 1)
    assert audio.duration == pytest.approx(2.0, abs=0.1)
    assert peak_hz(audio.samples[4000:28000], 16000) == pytest.approx(440, abs=5)
    assert 0.3 < float(np.max(np.abs(audio.samples))) <= 1.0


def test_a_track_that_starts_late_keeps_the_videos_timeline(tmp_path):
    clip = write_clip(tmp_path / "late.mkv", 3.0, audio={"codec": "pcm_s16le", "layout": "mono", "rate": 16000,
                                                         "delay": 1.0})
    audio = decode_audio(clip, 16000)
    loud = np.flatnonzero(np.abs(audio.samples) > 0.1)
    assert loud[0] / 16000 == pytest.approx(1.0, abs=0.05)  # the tone starts 1 s into the video, as it was muxed
    assert float(np.max(np.abs(audio.samples[:14000]))) < 1e-3


def test_long_audio_streams_in_chunks_and_stops_at_the_limit(tmp_path):
    clip = write_clip(tmp_path / "long.mkv", 5.0, audio={"codec": "pcm_s16le", "layout": "mono", "rate": 22050})
    chunks = [c for _, c in iter_audio(clip, 16000, chunk_seconds=2.0)]
    assert [len(c) for c in chunks[:2]] == [32000, 32000] and sum(map(len, chunks)) == pytest.approx(80000, abs=800)
    limited = [c for _, c in iter_audio(clip, 16000, chunk_seconds=2.0, max_seconds=3.0)]
    assert sum(map(len, limited)) == 48000


def test_pcm16_is_what_recognisers_read():
    data = pcm16(np.array([0.0, 0.5, -1.0, 2.0], np.float32))
    assert np.frombuffer(data, "<i2").tolist() == [0, 16383, -32767, 32767]


@pytest.mark.parametrize(("make", "reason"), [
    (lambda p: write_clip(p / "mute.mp4", 1.0), "no audio track"),
    (lambda p: write_clip(p / "silent.mkv", 1.0, audio={"codec": "pcm_s16le", "layout": "mono", "rate": 16000,
                                                        "level": 0.0}), "silent"),
])
def test_no_track_or_a_silent_one_is_unavailable_with_a_reason(tmp_path, make, reason):
    with pytest.raises(AudioUnavailable, match=reason):
        decode_audio(make(tmp_path), 16000)


def test_a_corrupt_audio_stream_is_unavailable_or_partial_never_a_crash(tmp_path):
    clip = write_clip(tmp_path / "tone.mp4", 3.0, audio={"codec": "aac", "layout": "stereo", "rate": 44100})
    data = bytearray(clip.read_bytes())
    rng = np.random.default_rng(7)
    for i in rng.integers(len(data) // 4, len(data), 400):  # flip bytes all over the media data
        data[i] ^= 0xFF
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(bytes(data))
    try:
        audio = decode_audio(broken, 16000)
    except AudioUnavailable as exc:
        assert str(exc)  # a reason
    else:
        assert audio.samples.dtype == np.float32 and np.isfinite(audio.samples).all()
        assert audio.duration < 4.0


def test_a_file_that_is_not_media_is_unavailable_with_a_reason(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    with pytest.raises(AudioUnavailable, match="could not be read"):
        decode_audio(text, 16000)
