"""The interface every expert implements (after immich's InferenceModel and faster-whisper's segments).

An expert declares the input it needs (audio at a rate, or frames at a rate and a resolution), which the decode path
(ingest/expert_input.py) produces from the file; it loads its engine on first use and turns that input into
timestamped text segments. It runs as its own pipeline stage with its own timeout, in a process of its own, so an
engine that hangs or crashes fails only that expert on that video.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

if TYPE_CHECKING:
    from schema.settings import Settings


class ExpertUnavailable(Exception):
    """This video has nothing for this expert (no audio track, a silent track, no text on screen, a corrupt audio
    stream); str(e) says why, for a person. The video stays searchable by the other experts."""


@dataclass(frozen=True)
class TextSegment:
    """What a lexical expert found in one stretch of the video: `text` between `start` and `end` seconds, in
    `language` (an ISO 639-1 code) when the engine tells it."""

    start: float
    end: float
    text: str
    language: str | None = None


PAUSE_SECONDS = 0.7  # a gap between spoken words longer than this starts a new segment


@dataclass(frozen=True)
class Word:
    """One recognised word, `start` to `end` seconds on the video's timeline."""

    start: float
    end: float
    text: str


def group_words(words: list[Word], max_seconds: float, pause: float = PAUSE_SECONDS) -> list[TextSegment]:
    """Consecutive words as segments of at most `max_seconds`, a new one after any pause longer than `pause`."""
    segments: list[TextSegment] = []
    current: list[Word] = []
    for word in words:
        if current and (word.start - current[-1].end > pause or word.end - current[0].start > max_seconds):
            segments.append(_segment(current))
            current = []
        current.append(word)
    if current:
        segments.append(_segment(current))
    return segments


def _segment(words: list[Word]) -> TextSegment:
    return TextSegment(words[0].start, words[-1].end, " ".join(w.text for w in words))


@dataclass(frozen=True)
class VectorSegment:
    """What a dense expert (audio) found in one stretch of the video: an L2-normalised embedding of `start` to
    `end` seconds, in the space of its model's text embeddings."""

    start: float
    end: float
    vector: np.ndarray


@dataclass(frozen=True)
class AudioInput:
    """Ask for the first audio track as mono float32 at `rate` Hz, sample 0 at the video's time 0."""

    rate: int


@dataclass(frozen=True)
class FramesInput:
    """Ask for one upright RGB frame every `interval` seconds (at most `max_frames`), scaled so that the longer side
    is at most `max_side` pixels (never enlarged)."""

    interval: float
    max_side: int
    max_frames: int = 7200


@dataclass(frozen=True)
class Frames:
    """Frames as decoded for a FramesInput: `images` yields frame i (H,W,3 uint8), shown from `times[i]` for
    `interval` s. It is decoded while it is read, once: an hour at 1280 px would be 10 GB as a list."""

    images: Iterable[np.ndarray]
    times: list[float]
    interval: float
    duration: float


class Expert(ABC):
    """One expert. Subclasses set `name`, `needs` and `depends_on`, and implement `load` and `run`."""

    name: ClassVar[str]
    depends_on: ClassVar[tuple[str, ...]] = ()  # Python distributions its engine needs (for doctor and errors)

    def __init__(self) -> None:
        self._loaded = False

    @classmethod
    def from_settings(cls, settings: Settings) -> Expert:
        """This installation's expert (subclasses read their own settings here, and only here)."""
        return cls()

    @property
    @abstractmethod
    def needs(self) -> AudioInput | FramesInput:
        """The input this expert reads."""

    @abstractmethod
    def load(self) -> None:
        """Load the engine (models from inside their wheels: nothing is downloaded)."""

    @abstractmethod
    def transcribe(self, data) -> list[TextSegment] | list[VectorSegment]:
        """Segments found in `data` (an `Audio` for AudioInput, a `Frames` for FramesInput), in time order.
        Raises ExpertUnavailable when the input holds nothing for this expert."""

    def ensure_loaded(self) -> None:
        """Load the engine if it is not yet (before decoding: an engine that cannot load costs no decode)."""
        if not self._loaded:
            self.load()
            self._loaded = True

    def run(self, data) -> list[TextSegment] | list[VectorSegment]:
        """Load on first use, then transcribe."""
        self.ensure_loaded()
        return self.transcribe(data)
