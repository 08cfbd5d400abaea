"""Query -> vector -> Milvus -> join catalog metadata -> ranked results. Pure of any UI."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ingest.encoder import ClipEncoder
from schema.catalog import Catalog, VideoStatus
from schema.vectors import VectorStore


class QueryError(ValueError):
    """The query cannot be run as given (empty text, bad k)."""


@dataclass(frozen=True)
class SearchResult:
    rank: int
    score: float
    video_id: int
    title: str
    path: str
    duration: float | None

    def as_dict(self) -> dict:
        return asdict(self)


MAX_K = 1000


def search_vector(catalog: Catalog, store: VectorStore, vector: np.ndarray, k: int) -> list[SearchResult]:
    """Top-k ready videos for a query vector. Vectors whose video is not (or no longer) ready are skipped."""
    if not 1 <= k <= MAX_K:
        raise QueryError(f"k must be between 1 and {MAX_K}")
    fetch = k
    while True:
        hits = store.search(vector, fetch)
        videos = catalog.videos_by_ids([h.video_id for h in hits])
        results: list[SearchResult] = []
        seen: set[int] = set()
        for hit in hits:
            video = videos.get(hit.video_id)
            if video is None or video.status != VideoStatus.READY or hit.video_id in seen:
                continue
            seen.add(hit.video_id)
            results.append(SearchResult(len(results) + 1, round(hit.score, 6), video.id, video.title,
                                        video.stored_path, video.duration))
            if len(results) == k:
                return results
        if len(hits) < fetch or fetch >= 8 * MAX_K:
            return results  # the store has nothing more to give
        fetch *= 4


def search_text(catalog: Catalog, store: VectorStore, encoder: ClipEncoder, query: str, k: int = 10
                ) -> list[SearchResult]:
    query = query.strip()
    if not query:
        raise QueryError("type something to search for, e.g. 'a dog catching a frisbee'")
    return search_vector(catalog, store, encoder.embed_text(query), k)
