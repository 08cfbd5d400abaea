"""An exact in-memory copy of the ready videos' vectors, for the process that answers searches.

Milvus Lite searches in pure Python and copies its whole matrix on every query: 259 ms at 100k x 512 against
14 ms for numpy on the same data (measured; `vidsearch bench` reports it). So a search process keeps one float32
matrix of the ready videos and answers with a matrix-vector product, which is exact (recall 1.0).

Milvus stays the source of truth. The copy follows the catalog, where a video becomes ready only after its vectors
are in Milvus; each row is keyed by the job that produced it, so a re-ingested video is fetched again. A counter in
the catalog tells with one read whether anything changed. The copy is saved in the data folder so a restart loads it
from disk instead of pulling every vector out of Milvus again (about 20 s per 100k vectors from Milvus Lite).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from schema.catalog import Catalog
from schema.filters import SearchFilters
from schema.vectors import Hit, Segments, VectorStore, VideoFields

log = logging.getLogger(__name__)

# Up to this many missing vectors are fetched inside a query; more are loaded in the background while queries are
# answered by Milvus itself (slower, equally exact).
INLINE_FETCH_LIMIT = 4096
# Segment vectors of recently returned videos, kept so that a search's moments do not cost a Milvus Lite query
# (~30 ms for 10 videos, more as the segments collection grows). Bounded by rows: 65,536 x 512 float32 = 128 MB.
SEGMENT_CACHE_ROWS = 65_536


@dataclass(frozen=True)
class Snapshot:
    ids: np.ndarray  # int64 video ids
    jobs: np.ndarray  # int64: the job that produced each row
    matrix: np.ndarray  # float32 (n, dim), L2-normalised rows

    @classmethod
    def empty(cls, dim: int) -> Snapshot:
        return cls(np.empty(0, np.int64), np.empty(0, np.int64), np.empty((0, dim), np.float32))

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def top_k(self, vector: np.ndarray, k: int) -> list[Hit]:
        if len(self) == 0 or k <= 0:
            return []
        scores = self.matrix @ np.asarray(vector, dtype=np.float32)
        k = min(k, len(self))
        top = np.argpartition(-scores, k - 1)[:k] if k < len(self) else np.arange(len(self))
        top = top[np.argsort(-scores[top], kind="stable")]
        return [Hit(video_id=int(self.ids[i]), score=float(scores[i])) for i in top]


def plan_refresh(base: Snapshot, wanted: dict[int, int]) -> tuple[np.ndarray, dict[int, int]]:
    """Which rows of `base` are still current (same video, same job) and which videos must be fetched."""
    keep = np.fromiter((wanted.get(int(v)) == int(j) for v, j in zip(base.ids, base.jobs, strict=True)),
                       dtype=bool, count=len(base))
    kept = set(base.ids[keep].tolist())
    missing = {v: j for v, j in wanted.items() if v not in kept}
    return keep, missing


def apply_refresh(base: Snapshot, keep: np.ndarray, fetched: dict[int, np.ndarray], jobs: dict[int, int]
                  ) -> Snapshot:
    new_ids = np.fromiter(fetched, dtype=np.int64, count=len(fetched))
    new_jobs = np.fromiter((jobs[v] for v in fetched), dtype=np.int64, count=len(fetched))
    new_rows = (np.stack(list(fetched.values())).astype(np.float32) if fetched
                else np.empty((0, base.matrix.shape[1]), np.float32))
    return Snapshot(np.concatenate([base.ids[keep], new_ids]), np.concatenate([base.jobs[keep], new_jobs]),
                    np.concatenate([base.matrix[keep], new_rows]))


class MemoryIndex:
    """A VectorStore whose searches run on the in-memory copy; everything else goes to the wrapped store."""

    def __init__(self, store: VectorStore, catalog: Catalog, cache_file: Path | None = None, *,
                 inline_limit: int = INLINE_FETCH_LIMIT, segment_rows: int = SEGMENT_CACHE_ROWS) -> None:
        self.store = store
        self.catalog = catalog
        self.cache_file = cache_file
        self.inline_limit = inline_limit
        self.dim = store.dim
        self.model = store.model
        self._snapshot: Snapshot | None = None
        self._generation: int | None = None
        self._lock = threading.Lock()
        self._loader: threading.Thread | None = None
        self.segment_rows = segment_rows
        self._segments: OrderedDict[int, Segments] = OrderedDict()  # least recently used first
        self._segment_lock = threading.Lock()
        self._segment_epoch = 0  # moves on every eviction: a fetch that raced one is not cached
        self._segment_cached_rows = 0

    # --- writes and maintenance: the wrapped store's ---------------------------------------------------------
    def add(self, video_ids: Sequence[int], vectors: np.ndarray, fields: Sequence[VideoFields] | None = None
            ) -> list[int]:
        return self.store.add(video_ids, vectors, fields)

    def add_segments(self, video_ids: Sequence[int], segments: Sequence[Segments]) -> list[int]:
        return self.store.add_segments(video_ids, segments)

    def delete_rows(self, pks: Sequence[int], segment_pks: Sequence[int] = ()) -> None:
        self.store.delete_rows(pks, segment_pks)  # rows of videos never marked ready: not in the copy

    def delete_other_rows(self, keep, keep_segments) -> None:
        self.store.delete_other_rows(keep, keep_segments)
        self._forget_segments(keep)

    def delete(self, video_ids: Sequence[int], *, segments: bool = True) -> None:
        self.store.delete(video_ids, segments=segments)
        self._forget_segments(video_ids)

    def segments(self, video_ids: Sequence[int]) -> dict[int, Segments]:
        """From the cache of recently returned videos; the others in one Milvus query, then cached.

        An entry is dropped when its video leaves the ready set or gets a new job (see `current`), so a
        re-ingested video's new segments are fetched again."""
        with self._segment_lock:
            found = {v: self._segments[v] for v in video_ids if v in self._segments}
            for v in found:
                self._segments.move_to_end(v)
            epoch = self._segment_epoch
        missing = [v for v in video_ids if v not in found]
        if not missing:
            return found
        fetched = self.store.segments(missing)
        with self._segment_lock:
            if epoch == self._segment_epoch:
                for v, seg in fetched.items():
                    self._segment_cached_rows += len(seg) - len(self._segments.pop(v, ()))
                    self._segments[v] = seg
                while self._segment_cached_rows > self.segment_rows and self._segments:
                    self._segment_cached_rows -= len(self._segments.popitem(last=False)[1])
        return {**found, **fetched}

    def clear_segment_cache(self) -> None:
        self._forget_segments(list(self._segments))

    def _forget_segments(self, video_ids: Iterable[int]) -> None:
        ids = [int(v) for v in video_ids]
        if not ids:
            return
        with self._segment_lock:
            self._segment_epoch += 1
            for v in ids:
                self._segment_cached_rows -= len(self._segments.pop(v, ()))

    def segment_counts(self) -> Counter[int]:
        return self.store.segment_counts()

    def flush(self) -> None:
        self.store.flush()

    def video_ids(self) -> set[int]:
        return self.store.video_ids()

    def vector_counts(self) -> Counter[int]:
        return self.store.vector_counts()

    def fetch(self, video_ids: Sequence[int]) -> dict[int, np.ndarray]:
        return self.store.fetch(video_ids)

    def count(self) -> int:
        return self.store.count()

    def close(self) -> None:
        self.store.close()

    # --- search -------------------------------------------------------------------------------------------------
    def search(self, vector: np.ndarray, k: int, filters: SearchFilters | None = None) -> list[Hit]:
        snapshot = self.current()  # also when Milvus answers: it drops the segment cache's stale entries
        if filters is not None and filters.active:
            return self.store.search(vector, k, filters)  # Milvus evaluates the filter on its scalar fields
        if snapshot is None:  # a large load is under way
            return self.store.search(vector, k)
        return snapshot.top_k(vector, k)

    def current(self) -> Snapshot | None:
        """The up-to-date copy, refreshing it first if the catalog changed; None while a large load runs."""
        generation = self.catalog.ready_generation()
        if generation == self._generation and self._snapshot is not None:
            return self._snapshot
        with self._lock:
            if generation == self._generation and self._snapshot is not None:
                return self._snapshot
            if self._loader is not None and self._loader.is_alive():
                return None
            base = self._snapshot if self._snapshot is not None else self._read_cache_file()
            wanted = self.catalog.ready_jobs()  # read after the counter: a change in between just refreshes again
            keep, missing = plan_refresh(base, wanted)
            self._forget_segments([*base.ids[~keep].tolist(), *missing])  # gone, or a new job: new segments
            if len(missing) <= self.inline_limit:
                self._install(apply_refresh(base, keep, self.store.fetch(list(missing)), missing), generation)
                return self._snapshot
            log.info("loading %d vectors from the vector store into memory; searches use it meanwhile", len(missing))
            self._loader = threading.Thread(target=self._load, args=(base, keep, missing, generation),
                                            name="vidsearch-memory-index", daemon=True)
            self._loader.start()
            return None

    def wait_loaded(self, timeout: float | None = None) -> None:
        """Block until a background load (if any) has finished."""
        loader = self._loader
        if loader is not None:
            loader.join(timeout)

    def _load(self, base: Snapshot, keep: np.ndarray, missing: dict[int, int], generation: int) -> None:
        try:
            snapshot = apply_refresh(base, keep, self.store.fetch(list(missing)), missing)
        except Exception:  # the next query retries; until then Milvus answers
            log.exception("loading vectors into memory failed")
            return
        with self._lock:
            self._install(snapshot, generation)
        self.save()

    def _install(self, snapshot: Snapshot, generation: int) -> None:
        self._snapshot, self._generation = snapshot, generation

    # --- the copy on disk ---------------------------------------------------------------------------------------
    def save(self) -> None:
        """Write the copy next to the catalog (atomically: other search processes may read it meanwhile)."""
        snapshot = self._snapshot
        if self.cache_file is None or snapshot is None:
            return
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_file.with_name(f".{self.cache_file.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                np.savez(f, ids=snapshot.ids, jobs=snapshot.jobs, matrix=snapshot.matrix,
                         model=np.array(self.model))
            os.replace(tmp, self.cache_file)
        except OSError as exc:
            log.warning("could not save the in-memory index to %s: %s", self.cache_file, exc)
            tmp.unlink(missing_ok=True)

    def _read_cache_file(self) -> Snapshot:
        empty = Snapshot.empty(self.dim)
        if self.cache_file is None or not self.cache_file.exists():
            return empty
        try:
            with np.load(self.cache_file, allow_pickle=False) as data:
                if str(data["model"]) != self.model or data["matrix"].shape[1:] != (self.dim,):
                    return empty  # another model's vectors: useless here
                return Snapshot(data["ids"].astype(np.int64), data["jobs"].astype(np.int64),
                                data["matrix"].astype(np.float32, copy=False))
        except (OSError, ValueError, KeyError) as exc:
            log.warning("ignoring unreadable in-memory index file %s: %s", self.cache_file, exc)
            return empty
