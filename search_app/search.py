"""Query -> vector -> Milvus -> join catalog metadata -> ranked results. Pure of any UI."""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Protocol

import numpy as np

from ingest.encoder import ClipEncoder
from schema.catalog import Catalog, ExpertState, VideoStatus
from schema.filters import QueryError, SearchFilters, epoch_seconds
from schema.vectors import VectorStore
from search_app import fusion
from search_app.moments import DEFAULT_MOMENT_SECONDS, MAX_MOMENTS, Moment, best_moments, fetch_segments, frame_at

# Query images: bounded before anything is decoded (a small PNG can claim gigapixels: a decompression bomb).
MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_IMAGE_PIXELS = 64_000_000


class ImageQueryError(QueryError):
    """The query image cannot be read (not an image, truncated, bad base64)."""


class ImageTooLargeError(ImageQueryError):
    """The query image is over MAX_IMAGE_BYTES or MAX_IMAGE_PIXELS."""


@dataclass(frozen=True)
class SearchResult:
    rank: int
    score: float
    video_id: int
    title: str
    path: str
    duration: float | None
    sha256: str = ""
    moments: tuple[Moment, ...] = ()  # where in the video the query matches best, best first
    # Why it matched: each expert's calibrated score (0..1), None for an expert the video lacks. Empty when only
    # appearance took part (image queries, a query no expert found in words): `score` is the cosine then.
    experts: dict[str, float | None] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


MAX_K = 1000
# Candidates each expert proposes before fusion: appearance videos, lexical segments.
FUSION_POOL = 100
LEXICAL_SEGMENTS = 400
DENSE_WINDOWS = 400  # audio windows asked for per query (several per video)
# A window calibrating below this (z-score under ~2 with the default calibration) is no evidence: it gives no moment
# and no weight, so a sound nobody recorded leaves the ranking to the other experts, as a word nobody said does.
DENSE_MIN = 0.05


class LexicalHitLike(Protocol):
    video_id: int
    start: float
    end: float
    text: str
    score: float


class LexicalSource(Protocol):
    """One lexical expert's collection (schema/lexical.py): BM25 over its segments' text."""

    def search(self, query: str, k: int, video_ids: Sequence[int] | None = None) -> Sequence[LexicalHitLike]: ...


class DenseHitLike(Protocol):
    video_id: int
    start: float
    end: float
    score: float


class DenseSource(Protocol):
    """A dense expert at query time (search_app/audio_query.py AudioSource): `kind` is "dense"."""

    kind: str

    def embed_query(self, text: str) -> np.ndarray | None: ...
    def search(self, vector: np.ndarray, k: int, video_ids: Sequence[int] | None = None
               ) -> Sequence[DenseHitLike]: ...
    def background(self, vector: np.ndarray) -> np.ndarray: ...


def is_dense(source: object) -> bool:
    return getattr(source, "kind", None) == "dense"


def search_vector(catalog: Catalog, store: VectorStore, vector: np.ndarray, k: int,
                  filters: SearchFilters | None = None, *,
                  moment_seconds: float | None = DEFAULT_MOMENT_SECONDS) -> list[SearchResult]:
    """Top-k ready videos for a query vector, each with its best moments (moment_seconds=None: without).

    Videos are ranked by their whole-video vector; then the segment vectors of those k videos are fetched in one
    query and scored exactly, so every video appears once with its own moments (grouping by construction)."""
    results = _rank(catalog, store, vector, k, filters)
    if moment_seconds is None or not results:
        return results
    segments = fetch_segments(store, [r.video_id for r in results])
    return [replace(r, moments=tuple(best_moments(segments[r.video_id], vector, moment_seconds)))
            if r.video_id in segments else r for r in results]


def _rank(catalog: Catalog, store: VectorStore, vector: np.ndarray, k: int,
          filters: SearchFilters | None = None) -> list[SearchResult]:
    """Top-k ready videos for a query vector. Milvus applies the filters while it searches; the catalog (the source
    of truth) is checked again, and vectors whose video is not (or no longer) ready are skipped."""
    if not 1 <= k <= MAX_K:
        raise QueryError(f"k must be between 1 and {MAX_K}")
    fetch = k
    while True:
        hits = store.search(vector, fetch, filters)
        videos = catalog.videos_by_ids([h.video_id for h in hits])
        results: list[SearchResult] = []
        seen: set[int] = set()
        for hit in hits:
            video = videos.get(hit.video_id)
            if video is None or video.status != VideoStatus.READY or hit.video_id in seen:
                continue
            if filters is not None and not filters.accepts(video.duration, epoch_seconds(video.created_at), video.tag):
                continue
            seen.add(hit.video_id)
            results.append(SearchResult(len(results) + 1, round(hit.score, 6), video.id, video.title,
                                        video.stored_path, video.duration, video.sha256))
            if len(results) == k:
                return results
        if len(hits) < fetch or fetch >= 8 * MAX_K:
            return results  # the store has nothing more to give
        fetch *= 4


def search_text(catalog: Catalog, store: VectorStore, encoder: ClipEncoder, query: str, k: int = 10,
                filters: SearchFilters | None = None, *, moment_seconds: float | None = DEFAULT_MOMENT_SECONDS,
                experts: Mapping[str, LexicalSource | DenseSource] | None = None,
                weights: Mapping[str, float] | None = None,
                calibration: fusion.Calibration | None = None) -> list[SearchResult]:
    """Top-k ready videos for a sentence: by appearance, and with `experts` (name -> collection) also by what is
    said and shown, fused (search_app/fusion.py). `weights` override fusion.DEFAULT_WEIGHTS per expert (0: off);
    `calibration` overrides how appearance's cosines are calibrated for fusion (`vidsearch evaluate` tunes it).
    A dense expert (audio) is matched by its own model's embedding of the query."""
    query = check_query(query)
    check_k(k)
    w = check_weights(weights, experts or {})
    vector = encoder.embed_text(query)
    lexical = {name: src for name, src in (experts or {}).items() if w.get(name, 0) > 0}
    if not lexical:
        if w.get(fusion.APPEARANCE, 1.0) <= 0:
            raise QueryError("every expert's weight is 0: nothing would rank the videos")
        return search_vector(catalog, store, vector, k, filters, moment_seconds=moment_seconds)
    return _fused(catalog, store, vector, query, k, filters, lexical, w, moment_seconds, calibration)


def check_weights(weights: Mapping[str, float] | None, experts: Mapping[str, object]) -> dict[str, float]:
    """The fusion weights of a query: the defaults, overridden by `weights` (names checked, values >= 0)."""
    out = {name: value for name, value in fusion.DEFAULT_WEIGHTS.items()
           if name == fusion.APPEARANCE or name in experts}
    for name, value in (weights or {}).items():
        if name != fusion.APPEARANCE and name not in fusion.DEFAULT_WEIGHTS:
            raise QueryError(f"unknown expert {name!r} in weights; known: {', '.join(fusion.DEFAULT_WEIGHTS)}")
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise QueryError(f"the weight of {name} must be a number") from None
        if not 0 <= value <= 100:
            raise QueryError(f"the weight of {name} must be between 0 and 100")
        out[name] = value
    return out


def _lexical_matches(catalog: Catalog, source: LexicalSource, query: str, query_words: list[str],
                     filters: SearchFilters | None) -> dict[int, list[tuple[float, LexicalHitLike]]]:
    """video id -> its matching segments as (coverage, hit), best first; ready videos passing the filters only."""
    by_video: dict[int, list[tuple[float, LexicalHitLike]]] = {}
    for hit in source.search(query, LEXICAL_SEGMENTS):
        cov = fusion.coverage(query_words, hit.text)
        if cov > 0:
            by_video.setdefault(int(hit.video_id), []).append((cov, hit))
    return _kept(catalog, by_video, filters)


def _dense_matches(catalog: Catalog, source: DenseSource, query: str, filters: SearchFilters | None,
                   calibration: fusion.Calibration | None) -> dict[int, list[tuple[float, DenseHitLike]]]:
    """video id -> its best windows as (calibrated score, hit), best first; {} when the expert cannot embed the
    query (its model does not load, or is not the one its collection was built with)."""
    vector = source.embed_query(query)
    if vector is None:
        return {}
    hits = list(source.search(vector, DENSE_WINDOWS))
    background = [float(x) for x in source.background(vector)] or [float(h.score) for h in hits]
    scores = fusion.calibrate_dense({i: float(h.score) for i, h in enumerate(hits)}, background, calibration)
    by_video: dict[int, list[tuple[float, DenseHitLike]]] = {}
    for i, hit in enumerate(hits):
        if scores[i] >= DENSE_MIN:
            by_video.setdefault(int(hit.video_id), []).append((scores[i], hit))
    return _kept(catalog, by_video, filters)


def _kept(catalog: Catalog, by_video: dict[int, list], filters: SearchFilters | None) -> dict[int, list]:
    """`by_video` without videos that are not ready or fail the filters, each video's matches best first."""
    videos = catalog.videos_by_ids(list(by_video))
    kept = {}
    for video_id, matches in by_video.items():
        video = videos.get(video_id)
        if video is None or video.status != VideoStatus.READY:
            continue
        if filters is not None and not filters.accepts(video.duration, epoch_seconds(video.created_at), video.tag):
            continue
        kept[video_id] = sorted(matches, key=lambda m: (-m[0], -m[1].score, m[1].start))
    return kept


def _fused(catalog: Catalog, store: VectorStore, vector: np.ndarray, query: str, k: int,
           filters: SearchFilters | None, lexical: Mapping[str, LexicalSource], weights: dict[str, float],
           moment_seconds: float | None, calibration: fusion.Calibration | None = None) -> list[SearchResult]:
    query_words = fusion.words(query)
    appearance = _rank(catalog, store, vector, min(MAX_K, max(FUSION_POOL, 4 * k)), filters)
    matches = {name: _dense_matches(catalog, src, query, filters, calibration) if is_dense(src)
               else _lexical_matches(catalog, src, query, query_words, filters) for name, src in lexical.items()}
    # Query-dependent weights: an expert counts as much as the query was found in its best video.
    effective = dict(weights)
    for name, found in matches.items():
        effective[name] = weights[name] * max((m[0][0] for m in found.values()), default=0.0)
    if not any(effective[name] > 0 for name in lexical):  # nobody said or showed it: appearance alone decides
        return search_vector(catalog, store, vector, k, filters, moment_seconds=moment_seconds)
    cosines = {r.video_id: r.score for r in appearance}
    extra = sorted({v for found in matches.values() for v in found} - set(cosines))
    for video_id, vec in store.fetch(extra).items():
        cosines[video_id] = float(np.dot(vec, vector))
    calibrated: dict[str, dict[int, float]] = {
        fusion.APPEARANCE: fusion.calibrate_appearance(cosines, [r.score for r in appearance] or list(cosines.values()),
                                                       calibration)
    }
    for name, found in matches.items():
        calibrated[name] = {v: m[0][0] for v, m in found.items()}
    candidates = list(cosines)
    runs = catalog.expert_runs(candidates)
    available = {v: {e for e, run in runs.get(v, {}).items() if run.state == ExpertState.DONE and run.segments > 0}
                 for v in candidates}
    ranked = fusion.fuse(calibrated, available, effective, candidates)[:k]
    videos = catalog.videos_by_ids([f.video_id for f in ranked])
    segments = fetch_segments(store, [f.video_id for f in ranked]) if moment_seconds is not None else {}
    results = []
    for f in ranked:
        video = videos.get(f.video_id)
        if video is None:
            continue
        moments: list[Moment] = []
        for name in lexical:
            if effective[name] > 0 and f.experts.get(name):
                for cov, hit in matches[name].get(f.video_id, [])[:2]:
                    moments.append(Moment(round(float(hit.start), 3), round(float(hit.end), 3), round(cov, 4),
                                          frame_at(segments.get(f.video_id), float(hit.start)), name,
                                          getattr(hit, "text", None)))
        if f.video_id in segments and moment_seconds is not None:
            moments += best_moments(segments[f.video_id], vector, moment_seconds)
        moments.sort(key=lambda m: (m.expert == fusion.APPEARANCE, -m.score))
        results.append(SearchResult(len(results) + 1, round(f.score, 6), video.id, video.title, video.stored_path,
                                    video.duration, video.sha256, tuple(moments[:MAX_MOMENTS]),
                                    {**f.experts, fusion.APPEARANCE: round(cosines.get(f.video_id, 0.0), 4)}))
    return results


def check_query(query: str) -> str:
    """The query text, stripped; an empty one is refused (before any model is loaded or run)."""
    query = query.strip()
    if not query:
        raise QueryError("type something to search for, e.g. 'a dog catching a frisbee'")
    return query


def check_k(k: int) -> None:
    if not 1 <= k <= MAX_K:  # checked before the model runs (or loads), too
        raise QueryError(f"k must be between 1 and {MAX_K}")


_DATA_URL = re.compile(r"^data:image/[\w.+-]+;base64,", re.I)


def decode_base64_image(data: str) -> bytes:
    """Base64 (standard or URL-safe alphabet, or a data: URL) -> bytes, bounded by MAX_IMAGE_BYTES."""
    text = _DATA_URL.sub("", data.strip(), count=1)
    text = "".join(text.split())  # line-wrapped base64 is common
    if len(text) > (MAX_IMAGE_BYTES + 2) // 3 * 4:
        raise ImageTooLargeError(f"the image is larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MB")
    try:
        raw = base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise ImageQueryError("the image is not valid base64") from None
    if not raw:
        raise ImageQueryError("the image is empty")
    return raw


def decode_image(data: bytes):
    """Encoded image bytes (PNG, JPEG, WebP, GIF: first frame, ...) -> an upright RGB PIL image.

    The size in the header is checked against MAX_IMAGE_PIXELS before any pixel is decoded."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if len(data) > MAX_IMAGE_BYTES:
        raise ImageTooLargeError(f"the image is larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MB")
    if not data:
        raise ImageQueryError("the image is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ImageTooLargeError(f"the image is {width}x{height} pixels; at most {MAX_IMAGE_PIXELS:,} "
                                         "pixels are accepted")
            image.load()
            image = ImageOps.exif_transpose(image).convert("RGB")  # phone photos: upright, as a viewer shows them
    except QueryError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLargeError(f"the image has more than {MAX_IMAGE_PIXELS:,} pixels") from None
    except UnidentifiedImageError:
        raise ImageQueryError("the file is not an image in a known format (PNG, JPEG, WebP, GIF, ...)") from None
    except Exception as exc:  # truncated or corrupt data: Pillow's plugins raise many kinds of error
        raise ImageQueryError(f"the image could not be decoded ({type(exc).__name__}: {exc})") from None
    if image.width == 0 or image.height == 0:
        raise ImageQueryError("the image has no pixels")
    return image


def query_image_array(encoder: ClipEncoder, image) -> np.ndarray:
    """Bytes, a PIL image or an array -> HxWx3 uint8, downscaled (as video frames are at decode time) when it is
    more than twice the model's input, so a large photo never becomes a huge float tensor."""
    from PIL import Image

    from ingest.encoder import as_rgb_array

    if isinstance(image, (bytes, bytearray, memoryview)):
        image = decode_image(bytes(image))
    if isinstance(image, Image.Image):
        if image.width * image.height > MAX_IMAGE_PIXELS:
            raise ImageTooLargeError(f"the image has more than {MAX_IMAGE_PIXELS:,} pixels")
        height, width = encoder.decode_size(image.height, image.width)
        if (height, width) != (image.height, image.width):
            image = image.convert("RGB").resize((width, height), Image.Resampling.BICUBIC, reducing_gap=3.0)
    try:
        array = as_rgb_array(image)
    except (TypeError, ValueError) as exc:
        raise ImageQueryError(str(exc)) from None
    if array.shape[0] * array.shape[1] > MAX_IMAGE_PIXELS:
        raise ImageTooLargeError(f"the image has more than {MAX_IMAGE_PIXELS:,} pixels")
    return array


def embed_query_image(encoder: ClipEncoder, image) -> np.ndarray:
    return encoder.embed_image(query_image_array(encoder, image))


def search_image(catalog: Catalog, store: VectorStore, encoder: ClipEncoder, image, k: int = 10,
                 filters: SearchFilters | None = None, *,
                 moment_seconds: float | None = DEFAULT_MOMENT_SECONDS) -> list[SearchResult]:
    """Videos that look like a still image: encoded bytes, a PIL image, or an HxWx3 uint8 array."""
    check_k(k)
    return search_vector(catalog, store, embed_query_image(encoder, image), k, filters,
                         moment_seconds=moment_seconds)
