"""Decode what an expert asks for (ingest/experts/base.py): the audio track at its rate, or frames at its own rate
and resolution. The same Limits as the appearance decode apply; a video with nothing usable for the expert raises
ExpertUnavailable with the reason."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ingest.audio import Audio, AudioUnavailable, decode_audio
from ingest.decode import DecodeError, Limits, iter_sampled_frames, probe
from ingest.experts.base import AudioInput, ExpertUnavailable, Frames, FramesInput


def frames_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(height, width) with the longer side at most `max_side`, aspect kept, even sizes (swscale likes them)."""
    scale = min(1.0, max_side / max(height, width))
    return max(2, int(round(height * scale / 2)) * 2), max(2, int(round(width * scale / 2)) * 2)


def read_frames(path: Path, need: FramesInput, limits: Limits = Limits()) -> Frames:  # noqa: B008 (frozen)
    """One frame every `need.interval` seconds (each the frame shown at the middle of its interval)."""
    try:
        info = probe(path, limits)
    except DecodeError as exc:
        raise ExpertUnavailable(f"the video could not be read: {exc}") from exc
    duration = info.duration or 0.0
    n = max(1, min(need.max_frames, math.ceil(duration / need.interval - 1e-9)))
    step = duration / n if duration > 0 else need.interval
    size = frames_size(info.height, info.width, need.max_side)
    return Frames(_frames(path, n, info, size), [i * step for i in range(n)], step, duration)


def _frames(path: Path, n: int, info, size: tuple[int, int]) -> Iterator[np.ndarray]:
    try:
        yield from iter_sampled_frames(path, n, info, size=size)
    except DecodeError as exc:
        raise ExpertUnavailable(f"the video's frames could not be read: {exc}") from exc


def read_audio(path: Path, need: AudioInput, limits: Limits = Limits()) -> Audio:  # noqa: B008 (frozen)
    """The whole first audio track, mono at `need.rate`."""
    try:
        return decode_audio(path, need.rate, max_seconds=limits.max_duration)
    except AudioUnavailable as exc:
        raise ExpertUnavailable(str(exc)) from exc


def read_input(path: Path, need: AudioInput | FramesInput, limits: Limits = Limits()) -> Audio | Frames:  # noqa: B008
    """What `need` asks of the file at `path`."""
    if isinstance(need, AudioInput):
        return read_audio(path, need, limits)
    return read_frames(path, need, limits)
