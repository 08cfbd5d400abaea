"""One line per expert on a video's timeline, for one query: appearance per sampled frame, speech and on-screen text
per stored segment, audio per window, each with its own top moments.

Each line keeps its raw scores (appearance and audio: cosines in their model's space; speech and text: the share of
the query's words the segment holds, as fusion counts them) and a `normalized` copy in 0..1 so that all share one
plot: coverage is already a share and stays as it is (a line at 0 means nothing said or shown matched); a cosine
line is scaled to its video's range (min 0, max 1), since cosines of two models have no common scale.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from schema.vectors import Segments
from search_app import fusion
from search_app.moments import MAX_MOMENTS, Moment, Timeline, frame_at

DENSE_KINDS = ("dense",)


def is_dense(source: object) -> bool:
    """Whether an expert's source holds vectors (audio) rather than text."""
    return getattr(source, "kind", None) in DENSE_KINDS


def fusion_order(expert: str) -> int:
    names = list(fusion.DEFAULT_WEIGHTS)
    return names.index(expert) if expert in names else len(names)


@dataclass(frozen=True)
class ExpertLine:
    expert: str
    starts: list[float]
    ends: list[float]
    scores: list[float]  # raw: cosine (appearance, audio) or coverage 0..1 (speech, text)
    normalized: list[float]  # 0..1, to share one plot
    moments: list[Moment]  # this expert's best moments, best first
    texts: list[str] | None = None  # speech, text: what each segment says or shows

    @property
    def times(self) -> list[float]:
        return [round((a + b) / 2, 3) for a, b in zip(self.starts, self.ends, strict=True)]


def scaled(scores: Sequence[float]) -> list[float]:
    """`scores` mapped onto 0..1 by their own range (all 0.5 when flat)."""
    if not len(scores):
        return []
    low, high = float(min(scores)), float(max(scores))
    if high - low < 1e-9:
        return [0.5] * len(scores)
    return [round((float(s) - low) / (high - low), 4) for s in scores]


def appearance_line(timeline: Timeline, segments: Segments | None) -> ExpertLine:
    """The appearance line from the existing timeline (frames' spans when stored, else the sample times)."""
    if segments is not None and len(segments) == len(timeline.times):
        starts, ends = [round(float(x), 3) for x in segments.starts], [round(float(x), 3) for x in segments.ends]
    else:
        starts = ends = list(timeline.times)
    return ExpertLine(fusion.APPEARANCE, starts, ends, list(timeline.scores), scaled(timeline.scores),
                      list(timeline.moments))


def lexical_line(expert: str, hits: Sequence, query: str, segments: Segments | None) -> ExpertLine:
    """A speech or text line: every stored segment of the video with the share of the query's words it holds; its
    moments are the segments holding the most (none when no segment holds any)."""
    words = fusion.words(query)
    scores = [round(fusion.coverage(words, h.text), 4) for h in hits]
    order = sorted((i for i, s in enumerate(scores) if s > 0), key=lambda i: (-scores[i], hits[i].start))
    moments = [Moment(round(hits[i].start, 3), round(hits[i].end, 3), scores[i], frame_at(segments, hits[i].start),
                      expert, hits[i].text) for i in order[:MAX_MOMENTS]]
    return ExpertLine(expert, [round(h.start, 3) for h in hits], [round(h.end, 3) for h in hits], scores,
                      list(scores), moments, [h.text for h in hits])


def dense_line(expert: str, starts: np.ndarray, ends: np.ndarray, vectors: np.ndarray, query: np.ndarray,
               segments: Segments | None) -> ExpertLine:
    """An audio line: the cosine of each window with the query; its moments are the best windows that do not
    overlap a better one."""
    scores = [round(float(s), 6) for s in np.asarray(vectors, np.float32) @ np.asarray(query, np.float32)]
    picked: list[int] = []
    for i in sorted(range(len(scores)), key=lambda i: (-scores[i], float(starts[i]))):
        if len(picked) == MAX_MOMENTS:
            break
        if all(float(ends[j]) <= float(starts[i]) or float(ends[i]) <= float(starts[j]) for j in picked):
            picked.append(i)
    moments = [Moment(round(float(starts[i]), 3), round(float(ends[i]), 3), scores[i],
                      frame_at(segments, float(starts[i])), expert) for i in picked]
    return ExpertLine(expert, [round(float(x), 3) for x in starts], [round(float(x), 3) for x in ends], scores,
                      scaled(scores), moments)


def expert_lines(video_id: int, query: str, sources: Mapping[str, object], segments: Segments | None
                 ) -> list[ExpertLine]:
    """The lines of the experts in `sources` (search_app/audio_query.py expert_sources) that hold anything for this
    video, in fusion's order. Blocking: the audio expert embeds the query with its own model."""
    lines = []
    for name in sorted(sources, key=fusion_order):
        source = sources[name]
        if is_dense(source):
            vector = source.embed_query(query)
            found = source.windows([video_id]).get(video_id) if vector is not None else None
            if found is not None and len(found.starts):
                lines.append(dense_line(name, found.starts, found.ends, found.vectors, vector, segments))
        else:
            hits = source.video_segments(video_id)
            if hits:
                lines.append(lexical_line(name, hits, query, segments))
    return lines
