"""Moments: where in a video the query matches. Exact numpy scoring of a few videos' segment vectors.

Each stored segment is one sampled frame's vector with the span of the video it stands for. A moment is a window
of consecutive segments about `moment_seconds` long: the mean of their vectors, normalised again (the CLIP4Clip
pooling of the whole video, applied to a part of it), scored by cosine similarity with the query. The best windows
that do not overlap become a video's moments; a timeline is the score of every segment over time.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from schema.vectors import Segments, VectorStoreError

log = logging.getLogger(__name__)

DEFAULT_MOMENT_SECONDS = 5.0
MAX_MOMENTS = 3
# A second or third moment is shown only when it is this close to the best one, relative to the spread of the
# video's window scores: a video that matches in one place shows one moment, not three.
RUNNER_UP = 0.1


@dataclass(frozen=True)
class Moment:
    start: float  # seconds
    end: float
    score: float  # cosine similarity of the window's vector with the query (a lexical expert's: its coverage)
    frame: int  # index of the best-matching sample inside the window (its thumbnail)
    expert: str = "appearance"  # which expert found it: appearance, speech (said), text (on screen), audio (heard)
    text: str | None = None  # for speech and text: what was said or shown there


@dataclass(frozen=True)
class Timeline:
    times: list[float]  # centre of each sample, seconds
    scores: list[float]  # cosine similarity of each sample with the query
    moments: list[Moment]
    source: str  # "stored" (segment vectors from the index) or "computed" (embedded on demand)
    lines: tuple = ()  # one search_app.expert_lines.ExpertLine per expert (appearance first), when asked for


class SegmentSource(Protocol):
    """Where segment vectors are read from: any VectorStore (schema/vectors.py)."""

    def segments(self, video_ids: Sequence[int]) -> dict[int, Segments]: ...


def window_size(segments: Segments, moment_seconds: float) -> int:
    """Samples per moment window: about `moment_seconds` of video, at least one, at most all."""
    n = len(segments)
    slot = float(np.median(segments.ends - segments.starts)) if n else 0.0
    if slot <= 0:
        return n
    return max(1, min(n, round(moment_seconds / slot)))


def window_scores(segments: Segments, query: np.ndarray, moment_seconds: float) -> tuple[int, np.ndarray]:
    """(window size w, score of each window of w consecutive samples: n - w + 1 of them)."""
    w = window_size(segments, moment_seconds)
    vectors = np.asarray(segments.vectors, np.float32)
    sums = np.concatenate([np.zeros((1, vectors.shape[1]), np.float64), np.cumsum(vectors, axis=0, dtype=np.float64)])
    means = sums[w:] - sums[:-w]
    means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
    return w, (means @ np.asarray(query, np.float64)).astype(np.float32)


def best_moments(segments: Segments, query: np.ndarray, moment_seconds: float = DEFAULT_MOMENT_SECONDS,
                 limit: int = MAX_MOMENTS) -> list[Moment]:
    """The best non-overlapping windows, best first; runners-up only when close to the best."""
    if len(segments) == 0:
        return []
    w, scores = window_scores(segments, query, moment_seconds)
    frame_scores = np.asarray(segments.vectors, np.float32) @ np.asarray(query, np.float32)
    floor = float(scores.max()) - RUNNER_UP * float(scores.max() - scores.min())
    taken = np.zeros(len(segments), bool)
    picked: list[tuple[int, float]] = []
    for a in np.argsort(-scores, kind="stable"):
        a = int(a)
        if len(picked) == limit or scores[a] < floor:
            break
        if taken[a : a + w].any():
            continue
        taken[a : a + w] = True
        picked.append((a, float(scores[a])))
    # Windows that touch are one longer moment.
    picked.sort()
    merged: list[list] = []
    for a, score in picked:
        if merged and a == merged[-1][1]:
            merged[-1][1] = a + w
            merged[-1][2] = max(merged[-1][2], score)
        else:
            merged.append([a, a + w, score])
    moments = [Moment(round(float(segments.starts[a]), 3), round(float(segments.ends[b - 1]), 3), round(score, 6),
                      a + int(np.argmax(frame_scores[a:b])))
               for a, b, score in merged]
    return sorted(moments, key=lambda m: -m.score)


def frame_at(segments: Segments | None, t: float) -> int:
    """The index of the sample whose span holds time `t` (its thumbnail shows that moment); 0 without segments."""
    if segments is None or len(segments) == 0:
        return 0
    return int(min(len(segments) - 1, max(0, np.searchsorted(segments.ends, t, side="right"))))


def fetch_segments(store: SegmentSource, video_ids: Sequence[int]) -> dict[int, Segments]:
    """Segments of these videos; none (logged) when the store cannot give them: moments are an extra, never the
    reason a search fails."""
    if not video_ids:
        return {}
    try:
        return store.segments(list(video_ids))
    except VectorStoreError as exc:
        log.warning("no moments: the segment vectors could not be read: %s", exc)
        return {}


def stored_timeline(segments: Segments, query: np.ndarray, moment_seconds: float) -> Timeline:
    scores = np.asarray(segments.vectors, np.float32) @ np.asarray(query, np.float32)
    times = ((segments.starts + segments.ends) / 2).tolist()
    return Timeline([round(t, 3) for t in times], [round(float(s), 6) for s in scores],
                    best_moments(segments, query, moment_seconds), "stored")
