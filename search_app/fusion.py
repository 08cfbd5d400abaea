"""Fusing the experts' scores into one ranking, in the spirit of Collaborative Experts and MDMMT.

Each expert scores the candidate videos its own way: appearance by the cosine of the CLIP4Clip vectors, speech and
on-screen text by BM25 over their segments. To be added up, scores are first *calibrated* to [0, 1]:

- a lexical expert (speech, text) by how much of the query its best segment in the video holds: the share of the
  query's words found there, a word counting when it matches exactly, as a prefix ("RE16" in "RE16TGK"), or nearly
  (an OCR misread: "MOC" for "MOON", by edit similarity). Unlike a BM25 score this means the same in every query.
- appearance by where the video's cosine stands among the candidates' (a z-score, squashed by a logistic): a clear
  outlier of the query's distribution is near 1, the bulk near 0, so a video does not score high on appearance just
  because it is the least bad of unrelated ones.
- a dense expert (audio: CLAP windows) the same way, its best window's cosine against the query's cosines with a
  sample of the library's windows.

Weights depend on the query (the papers predict them from the query; here the query's own evidence decides):
a lexical or dense expert weighs `weights[e]` x the best calibrated score it reached on any candidate, so a query
that nobody said, nothing shows and nothing sounds like weighs those experts at 0, and ranks exactly as appearance
alone. Each video's score is the weighted
mean over the experts it *has* (its run is done with segments): a silent video is not penalised for having no
speech, a video whose speech does not match is.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

APPEARANCE = "appearance"
# Defaults chosen on the tuning half of `vidsearch evaluate` (README, Experts): see there for the figures.
DEFAULT_WEIGHTS: dict[str, float] = {APPEARANCE: 1.0, "speech": 2.0, "text": 2.0, "audio": 1.0}
# z-score at which an appearance score calibrates to 0.5 (a clear outlier). 3.5, not 2.5: on the tuning half of
# `vidsearch evaluate` 2.5 let a speech clip's unrelated picture outrank it (mixed recall@1 0.813 -> 0.867).
APPEARANCE_Z0 = 3.5
APPEARANCE_TAU = 0.5  # how sharply it rises around there
NEAR_MATCH = 0.75  # edit similarity at which a stored word counts as a misread of a query word
MIN_PREFIX = 3  # a query word this long or longer also matches as the start of a stored word

WORD = re.compile(r"[^\W_]+", re.UNICODE)  # a word, as coverage counts them (the page highlights these)
# Words that carry no meaning of their own; a query made only of them matches nothing lexically.
STOPWORDS = frozenset(
    "a an the and or of to in on at by for with from is are was were be been it its this that these those as".split()
)


def words(text: str) -> list[str]:
    """Lower-case words of a text, without stopwords (for coverage; BM25 tokenises on the server)."""
    return [w for w in WORD.findall(text.lower()) if w not in STOPWORDS]


def word_matches(query_word: str, word: str) -> bool:
    """Whether a stored word (lower-case, as `words` gives) holds a query word: exactly, as a prefix, or nearly."""
    if word == query_word:
        return True
    if len(query_word) >= MIN_PREFIX and word.startswith(query_word):
        return True
    return len(query_word) >= 3 and difflib.SequenceMatcher(None, query_word, word).ratio() >= NEAR_MATCH


def _word_matches(query_word: str, stored: Iterable[str]) -> bool:
    return any(word_matches(query_word, word) for word in stored)


def coverage(query_words: Sequence[str], text: str) -> float:
    """The share of the query's words that `text` holds (exactly, as a prefix, or nearly): 0..1."""
    if not query_words:
        return 0.0
    stored = set(words(text))
    return sum(_word_matches(q, stored) for q in query_words) / len(query_words)


@dataclass(frozen=True)
class Calibration:
    """How appearance's cosines become 0..1 (see calibrate_appearance): `z0`, the z-score that calibrates to 0.5,
    and `tau`, how sharply it rises around there. None in either: the module's APPEARANCE_Z0 / APPEARANCE_TAU."""

    z0: float | None = None
    tau: float | None = None


def calibrate_appearance(scores: Mapping[int, float], pool: Sequence[float],
                         calibration: Calibration | None = None) -> dict[int, float]:
    """Cosines -> 0..1 by their z-score among `pool` (the cosines of the appearance candidates)."""
    if len(pool) < 2:
        return {v: 0.5 for v in scores}
    z0 = APPEARANCE_Z0 if calibration is None or calibration.z0 is None else calibration.z0
    tau = APPEARANCE_TAU if calibration is None or calibration.tau is None else calibration.tau
    mean = sum(pool) / len(pool)
    std = math.sqrt(sum((x - mean) ** 2 for x in pool) / len(pool)) or 1e-6
    return {v: 1.0 / (1.0 + math.exp(-((s - mean) / std - z0) / tau)) for v, s in scores.items()}


def calibrate_dense(scores: Mapping[int, float], background: Sequence[float],
                    calibration: Calibration | None = None) -> dict[int, float]:
    """A dense expert's cosines (audio: a video's best window) -> 0..1 by their z-score among `background`, the
    query's cosines with a sample of the library's stored windows: as for appearance, a window calibrates high only
    when it stands out from what the library holds, so the query-dependent weight of a sound nobody recorded is ~0."""
    return calibrate_appearance(scores, background, calibration)


@dataclass(frozen=True)
class Fused:
    video_id: int
    score: float
    experts: dict[str, float | None]  # each expert's calibrated score; None: the video lacks that expert


def fuse(calibrated: Mapping[str, Mapping[int, float]], available: Mapping[int, set[str]],
         weights: Mapping[str, float], candidates: Iterable[int]) -> list[Fused]:
    """Rank `candidates`: score = sum over the video's available experts of weight x calibrated score, divided by
    the sum of those weights. `calibrated[e][v]` is missing when e did not find v (0 if v has e). Experts of weight
    0 are left out entirely; a video with none of the weighted experts scores 0."""
    out: list[Fused] = []
    for video in candidates:
        has = available.get(video, set()) | {APPEARANCE}
        total = norm = 0.0
        detail: dict[str, float | None] = {}
        for expert, table in calibrated.items():
            if expert not in has:
                detail[expert] = None
                continue
            score = float(table.get(video, 0.0))
            detail[expert] = round(score, 4)
            w = float(weights.get(expert, 0.0))
            if w > 0:
                total += w * score
                norm += w
        out.append(Fused(video, total / norm if norm else 0.0, detail))
    out.sort(key=lambda f: (-f.score, f.video_id))
    return out
