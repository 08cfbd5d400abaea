"""The vector-store facade: the one object the rest of the app reads and writes vectors through.

It owns the process's Milvus connection (opened once, on first use), the model's collections for writes and
searches, the exact in-memory copy where it pays (the endpoint is Milvus Lite), and maintenance that needs no model
(delete, counts, doctor, reindex), so no caller has to choose between stores, or open a client per call.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from schema.catalog import Catalog
from schema.filters import SearchFilters
from schema.model_key import ModelKey
from schema.settings import DENSE_EXPERTS, EXPERT_NAMES, Settings
from schema.vectors import (
    Hit,
    LegacySnapshot,
    MilvusVectorStore,
    Segments,
    VectorStore,
    VectorStoreError,
    VideoFields,
    connect,
    drop_collection,
    is_milvus_lite,
)

if TYPE_CHECKING:
    from schema.dense import DenseSegmentStore
    from schema.lexical import LexicalStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Identity:
    """What the collections must record for the configured model (see MilvusVectorStore.open)."""

    dim: int
    key: ModelKey | str  # a str labels vectors from no checkpoint (bench, tests)
    legacy_snapshot: LegacySnapshot | None = None  # upgrades a collection from before snapshots were recorded


# Loads the model, so it is only called when vectors must be written or searched.
ModelIdentity = Callable[[], Identity]


class Store:
    """A VectorStore over the configured endpoint. Writes and searches open the model's collection (creating it, and
    refusing one built by another model); everything else works on whatever collection exists, without a model."""

    def __init__(self, settings: Settings, catalog: Catalog, model: ModelIdentity | None = None) -> None:
        self.settings = settings
        self.catalog = catalog
        self._model = model
        self._client = None
        self._lite: bool | None = None
        self._bound: MilvusVectorStore | None = None  # the model's collection
        self._index: VectorStore | None = None  # the in-memory copy over it, when used
        self._lexical: dict[str, LexicalStore | DenseSegmentStore] = {}  # the experts' collections, opened on first use
        self._lock = threading.RLock()

    # --- what the endpoint is ----------------------------------------------------------------------------------
    def client(self):
        """The one Milvus client of this facade (a store that reconnected after an outage holds the new one)."""
        with self._lock:
            if self._bound is not None:
                return self._bound.client
            if self._client is None:
                self._client = connect(self.settings)
            return self._client

    @property
    def is_lite(self) -> bool:
        if self._lite is None:
            self._lite = is_milvus_lite(self.client())
        return self._lite

    @property
    def uses_memory_index(self) -> bool:
        return self.settings.memory_index_for(self.is_lite)

    # --- the stores behind it ----------------------------------------------------------------------------------
    def milvus(self) -> MilvusVectorStore:
        """The model's collections (created if missing; another model's refused with ModelMismatchError)."""
        with self._lock:
            if self._bound is None:
                if self._model is None:
                    raise RuntimeError("this Store was opened without a model: it can only read and delete")
                model = self._model()
                self._bound = MilvusVectorStore.open(self.settings, model.dim, model.key, client=self.client(),
                                                     lite=self.is_lite, legacy_snapshot=model.legacy_snapshot)
                self._client = None  # the bound store owns it now (and replaces it on reconnect)
            return self._bound

    def searcher(self) -> VectorStore:
        """Where searches and moments go: the in-memory copy when it is used, else Milvus."""
        with self._lock:
            if self._index is None:
                store = self.milvus()
                if self.uses_memory_index:
                    from schema.memory_index import MemoryIndex

                    self._index = MemoryIndex(store, self.catalog, self.settings.memory_index_file)
                else:
                    self._index = store
            return self._index

    def existing(self) -> MilvusVectorStore | None:
        """The collection as it is, whatever model built it, without loading one; None while there is none."""
        with self._lock:
            if self._bound is not None:
                return self._bound
            return MilvusVectorStore.attach(self.settings, client=self.client(), lite=self.is_lite)

    def warm(self) -> None:
        """Open the collection and start building the in-memory copy, so that the first searches are fast."""
        index = self.searcher()
        current = getattr(index, "current", None)
        if current is not None:
            current()

    # --- the experts' collections ------------------------------------------------------------------------------
    def lexical_name(self, expert: str) -> str:
        return f"{self.settings.collection}_{expert}"

    def lexical(self, expert: str) -> LexicalStore | DenseSegmentStore:
        """The collection of one expert (`<collection>_speech`, ...), opened on first use: a full-text one for the
        lexical experts (created if missing; a server without BM25 raises VectorStoreError saying so), a dense one
        for the audio expert (created on its first write, when its model's dimension is known). Neither depends on
        the appearance model, so they outlive `vidsearch reindex` of the appearance vectors."""
        with self._lock:
            client = self.client()
            store = self._lexical.get(expert)
            if store is None or store.client is not client:  # first use, or the facade reconnected
                if expert in DENSE_EXPERTS:
                    from schema.dense import DenseSegmentStore

                    store = DenseSegmentStore.open(client, self.lexical_name(expert), lite=self.is_lite)
                else:
                    from schema.lexical import LexicalStore

                    store = LexicalStore.open(client, self.lexical_name(expert), lite=self.is_lite)
                self._lexical[expert] = store
            return store

    def lexical_existing(self) -> dict[str, LexicalStore | DenseSegmentStore]:
        """The experts' collections that exist (for search, delete and doctor), without creating any. An unreachable
        server is a VectorStoreError, as for every other call of the store (a search says so, never a traceback)."""
        from pymilvus.exceptions import MilvusException

        with self._lock:
            client = self.client()
            try:
                found = {e: self.lexical(e) for e in EXPERT_NAMES
                         if e in self._lexical or client.has_collection(self.lexical_name(e))}
            except MilvusException as exc:
                raise VectorStoreError(f"Milvus has_collection failed: {exc}") from exc
            return {e: s for e, s in found.items() if getattr(s, "exists", True)}

    # --- VectorStore -------------------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.milvus().dim

    @property
    def model(self) -> str:
        return self.milvus().model

    def add(self, video_ids: Sequence[int], vectors: np.ndarray, fields: Sequence[VideoFields] | None = None
            ) -> list[int]:
        return self.milvus().add(video_ids, vectors, fields)

    def add_segments(self, video_ids: Sequence[int], segments: Sequence[Segments]) -> list[int]:
        return self.milvus().add_segments(video_ids, segments)

    def delete_rows(self, pks: Sequence[int], segment_pks: Sequence[int] = ()) -> None:
        self.milvus().delete_rows(pks, segment_pks)

    def delete_other_rows(self, keep, keep_segments) -> None:
        target = self._index if self._index is not None else self.milvus()
        target.delete_other_rows(keep, keep_segments)

    def flush(self) -> None:
        self.milvus().flush()

    def search(self, vector: np.ndarray, k: int, filters: SearchFilters | None = None) -> list[Hit]:
        return self.searcher().search(vector, k, filters)

    def segments(self, video_ids: Sequence[int]) -> dict[int, Segments]:
        if self._index is not None or self._model is not None:
            return self.searcher().segments(video_ids)
        store = self.existing()
        return store.segments(video_ids) if store is not None else {}

    def delete(self, video_ids: Sequence[int], *, segments: bool = True) -> None:
        target = self._index if self._index is not None else self.existing()
        if target is not None:  # no collection yet: nothing to delete
            target.delete(video_ids, segments=segments)

    def delete_experts(self, video_ids: Sequence[int]) -> None:
        """Remove these videos' segments from every expert's collection (a video deleted from the library)."""
        for store in self.lexical_existing().values():
            store.delete(video_ids)

    def fetch(self, video_ids: Sequence[int]) -> dict[int, np.ndarray]:
        store = self.existing()
        return store.fetch(video_ids) if store is not None else {}

    def video_ids(self) -> set[int]:
        return set(self.vector_counts())

    def vector_counts(self) -> Counter[int]:
        store = self.existing()
        return store.vector_counts() if store is not None else Counter()

    def segment_counts(self) -> Counter[int]:
        store = self.existing()
        return store.segment_counts() if store is not None else Counter()

    def count(self) -> int:
        store = self.existing()
        return store.count() if store is not None else 0

    # --- maintenance -------------------------------------------------------------------------------------------
    def drop(self) -> bool:
        """Drop the collections (`vidsearch reindex`). True if there was one. A store of this process that had them
        open creates them again on its next write."""
        with self._lock:
            return drop_collection(self.settings, self.client())

    def close(self) -> None:
        with self._lock:
            index = self._index
            if index is not None and index is not self._bound:
                index.save()  # type: ignore[attr-defined]  # the next start loads it from disk, not from Milvus
            if self._bound is not None:
                self._bound.close()
            elif self._client is not None:
                self._client.close()
            self._bound = self._index = self._client = None
            self._lexical = {}
