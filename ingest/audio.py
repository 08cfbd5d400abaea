"""The audio track of a video, decoded and resampled with PyAV for the experts that listen (speech, later sounds).

Whatever the source (any codec, 1 to 8+ channels, any sample rate), what comes out is mono float32 at the rate the
expert asks for (16 kHz for speech recognisers, 48 kHz for CLAP), with sample 0 at the video's time 0: an audio
track that starts late is padded with silence, so times an expert reports are times in the video. Long tracks are
streamed in chunks (6 h of 16 kHz float audio would be 1.4 GB). A video without usable audio raises AudioUnavailable
with a reason a person understands; the experts record it and the video stays searchable by the others.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import av
import av.error
import numpy as np

from ingest.decode import DecodeError, _open

log = logging.getLogger(__name__)

# Below this peak level (about -60 dBFS) a track is treated as silent: nothing for a listening expert to hear.
SILENCE_PEAK = 1e-3
# Most packets in a row that may fail to decode before the track is given up as corrupt (a damaged stretch in the
# middle of a good track is skipped, with its time kept as silence).
MAX_BAD_PACKETS = 50
_AV_ERRORS = (av.error.FFmpegError, OSError, ValueError, EOFError)


class AudioUnavailable(Exception):
    """This video has no audio a listening expert can use; str(e) says why, for a person."""


@dataclass(frozen=True)
class AudioTrack:
    """What the source track is, before resampling."""

    codec: str
    channels: int
    rate: int


@dataclass(frozen=True)
class Audio:
    """A whole decoded track: mono float32 samples in [-1, 1] at `rate`, sample 0 at the video's time 0."""

    samples: np.ndarray
    rate: int
    track: AudioTrack

    @property
    def duration(self) -> float:
        return len(self.samples) / self.rate


def audio_track(container: av.container.InputContainer) -> av.audio.stream.AudioStream:
    """The first audio stream, or AudioUnavailable."""
    if not container.streams.audio:
        raise AudioUnavailable("the video has no audio track")
    return container.streams.audio[0]


def iter_audio(path: str | os.PathLike, rate: int, chunk_seconds: float = 30.0,
               max_seconds: float | None = None) -> Iterator[tuple[AudioTrack, np.ndarray]]:
    """Stream the first audio track as mono float32 at `rate`, in chunks of `chunk_seconds` (the last one shorter).

    The first chunk starts at the video's time 0 (leading silence added for a track that starts late); decoding
    stops after `max_seconds`. Raises AudioUnavailable for no track or one that cannot be decoded at all."""
    chunk = max(1, int(round(chunk_seconds * rate)))
    limit = None if max_seconds is None else int(round(max_seconds * rate))
    try:
        with _open(path) as container:
            stream = audio_track(container)
            ctx = stream.codec_context
            track = AudioTrack(ctx.name, ctx.channels or 0, ctx.sample_rate or 0)
            # Channels are kept through resampling and averaged here: FFmpeg's downmix of 5.1 or 7.1 to mono sums
            # weighted channels and goes past full scale (2.2x measured on an 8-channel tone); a mean never clips.
            # Packed, not planar: PyAV 18.1's to_ndarray of an 8-plane frame segfaults (seen here on 7.1 PCM).
            resampler = av.AudioResampler(format="flt", rate=rate)
            pending: list[np.ndarray] = []
            buffered = emitted = decoded = bad = 0
            origin = _origin(container)
            for samples in _decoded(container, stream, resampler, origin, rate):
                if samples is None:  # a packet that did not decode
                    bad += 1
                    if bad > MAX_BAD_PACKETS:
                        raise AudioUnavailable(f"the audio track is corrupt ({bad} packets in a row could not be "
                                               "decoded)")
                    continue
                bad = 0
                decoded += len(samples)
                pending.append(samples)
                buffered += len(samples)
                while buffered >= chunk and (limit is None or emitted < limit):
                    out, pending, buffered = _take(pending, chunk)
                    out = out if limit is None else out[: limit - emitted]
                    emitted += len(out)
                    yield track, out
                if limit is not None and emitted + buffered >= limit:
                    break
            if pending and (limit is None or emitted < limit):
                out = np.concatenate(pending)
                yield track, out if limit is None else out[: limit - emitted]
            if decoded == 0:
                raise AudioUnavailable("the audio track holds no decodable sound")
    except DecodeError as exc:
        raise AudioUnavailable(f"the audio could not be read: {exc}") from exc
    except _AV_ERRORS as exc:
        raise AudioUnavailable(f"the audio could not be read: {exc.__class__.__name__}: {exc}") from exc


def decode_audio(path: str | os.PathLike, rate: int, max_seconds: float | None = None) -> Audio:
    """The whole first audio track (mono float32 at `rate`); AudioUnavailable if there is none or it is silent."""
    # Written chunk by chunk into one array sized from the container's duration: the peak is the track plus a
    # chunk. (Keeping the chunks and joining them at the end held the track twice: the chunks' memory, freed only
    # inside the heap, plus the joined copy; measured +75 MB instead of +37 MB on 10 minutes at 16 kHz.)
    samples = np.empty(_expected_samples(path, rate, max_seconds), np.float32)
    track, at, peak = None, 0, 0.0
    for found, part in iter_audio(path, rate, max_seconds=max_seconds):
        track = found
        if not len(part):
            continue
        peak = max(peak, float(np.max(np.abs(part))))
        if at + len(part) > len(samples):  # the container understated its duration: grow (rare)
            samples = np.concatenate([samples[:at], np.empty(max(len(part), len(samples) // 4), np.float32)])
        samples[at : at + len(part)] = part
        at += len(part)
    samples = samples[:at]  # pages never written were never resident
    if track is None or not at:
        raise AudioUnavailable("the audio track holds no decodable sound")
    if peak < SILENCE_PEAK:
        raise AudioUnavailable("the audio track is silent")
    return Audio(samples, rate, track)


def _expected_samples(path: str | os.PathLike, rate: int, max_seconds: float | None) -> int:
    """Samples the decoded track should hold, from the container's duration (0 when it does not say)."""
    try:
        with _open(path) as container:
            seconds = (container.duration or 0) / av.time_base
    except DecodeError:
        return 0
    if max_seconds is not None:
        seconds = min(seconds, max_seconds)
    return max(0, int(seconds * rate) + rate)


def pcm16(samples: np.ndarray) -> bytes:
    """Float samples in [-1, 1] as 16-bit little-endian PCM (what pocketsphinx and most recognisers read)."""
    return (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def _origin(container: av.container.InputContainer) -> float:
    """The container's time 0 (seconds): the earliest stream start, as the video side counts its frames from."""
    starts = [float(s.start_time * s.time_base) for s in container.streams
              if s.start_time is not None and s.time_base is not None and s.type in ("video", "audio")]
    return min(starts) if starts else 0.0


def _decoded(container: av.container.InputContainer, stream: av.audio.stream.AudioStream,
             resampler: av.AudioResampler, origin: float, rate: int) -> Iterator[np.ndarray | None]:
    """Resampled mono chunks in order, with silence for a late start and for gaps; None for a packet that failed."""
    position = 0  # samples emitted so far, at `rate`, counted from `origin`
    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except _AV_ERRORS:
            yield None
            continue
        if packet.size == 0:  # the flush packet at the end: drain the resampler too
            frames = [*frames, None]
        for frame in frames:
            if frame is not None and frame.pts is not None and frame.time_base is not None:
                start = int(round((float(frame.pts * frame.time_base) - origin) * rate))
                if start > position + rate // 10:  # a late start or a hole of over 0.1 s: keep the timeline
                    gap = start - position
                    position += gap
                    yield np.zeros(gap, np.float32)
            for out in resampler.resample(frame):
                channels = len(out.layout.channels)
                samples = out.to_ndarray().reshape(-1, channels).astype(np.float32, copy=False).mean(axis=1)
                position += len(samples)
                yield samples


def _take(parts: list[np.ndarray], n: int) -> tuple[np.ndarray, list[np.ndarray], int]:
    """The first n samples of the buffered parts, and what remains."""
    joined = np.concatenate(parts)
    rest = joined[n:]
    return joined[:n], ([rest] if len(rest) else []), len(rest)
