"""Wiring: settings -> catalog, encoder, vector store. Used by the CLI and the web app alike."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from schema.catalog import Catalog
from schema.settings import Settings
from schema.vectors import MilvusVectorStore, VectorStore

if TYPE_CHECKING:
    from ingest.encoder import ClipEncoder

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Opens each component on first use, so `vidsearch list` never loads a model."""

    settings: Settings

    def __post_init__(self) -> None:
        self.settings.ensure_dirs()

    @cached_property
    def catalog(self) -> Catalog:
        return Catalog(self.settings.catalog_url)

    @cached_property
    def encoder(self) -> ClipEncoder:
        from ingest.encoder import load_encoder  # torch is slow to import: only commands that embed pay for it

        s = self.settings
        return load_encoder(s.model, s.model_revision, s.device, s.batch_size, hash_cache=s.checkpoint_hashes_file)

    @cached_property
    def store(self) -> MilvusVectorStore:
        # The collections record the checkpoint's snapshot, precision and dimension; another one is refused here,
        # and a collection from before snapshots were recorded is upgraded once.
        encoder = self.encoder
        return MilvusVectorStore.open(self.settings, encoder.dim, encoder.model_key,
                                      legacy_snapshot=encoder.legacy_snapshot)

    @cached_property
    def search_store(self) -> VectorStore:
        """The store searches go to: the exact in-memory copy where enabled, else Milvus itself."""
        if not self.settings.use_memory_index:
            return self.store
        from schema.memory_index import MemoryIndex

        return MemoryIndex(self.store, self.catalog, self.settings.memory_index_file)

    def existing_store(self) -> MilvusVectorStore | None:
        """The collection as it is, without loading a model (for delete and maintenance); None if absent."""
        if "store" in self.__dict__:
            return self.store
        return MilvusVectorStore.attach(self.settings)

    def close(self) -> None:
        index = self.__dict__.get("search_store")
        if index is not None and index is not self.__dict__.get("store"):
            index.save()  # the next start loads it from disk instead of from Milvus
        if "store" in self.__dict__:
            self.store.close()
        if "catalog" in self.__dict__:
            self.catalog.close()
