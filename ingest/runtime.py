"""Wiring: settings -> catalog, encoder, vector store. Used by the CLI and the web app alike."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from schema.catalog import Catalog
from schema.settings import Settings
from schema.storage import Storage, open_storage
from schema.store import Identity, Store

if TYPE_CHECKING:
    from ingest.encoder import ClipEncoder

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Opens each component on first use, so `vidsearch list` never loads a model."""

    settings: Settings

    def __post_init__(self) -> None:
        self.settings.ensure_dirs()
        self.audio_source = None  # the audio expert's query side (search_app/audio_query.py), kept across searches

    @cached_property
    def catalog(self) -> Catalog:
        return Catalog(self.settings.catalog_url)

    @cached_property
    def storage(self) -> Storage:
        """Where the stored videos live (VIDSEARCH_STORAGE: <home>/videos, a shared folder or s3://)."""
        return open_storage(self.settings)

    @cached_property
    def encoder(self) -> ClipEncoder:
        return load_settings_encoder(self.settings)

    @cached_property
    def store(self) -> Store:
        """Every vector read and write of this process (schema/store.py). The model loads only when vectors are
        written or searched. The collections record the checkpoint's snapshot, precision and dimension; another one
        is refused, and a collection from before snapshots were recorded is upgraded once."""
        return Store(self.settings, self.catalog, lambda: Identity(self.encoder.dim, self.encoder.model_key,
                                                                    self.encoder.legacy_snapshot))

    @cached_property
    def clap(self):  # -> ingest.experts.sound.ClapEmbedder
        """CLAP for the audio expert's queries (loaded on the first query that weighs audio)."""
        from ingest.experts.sound import load_clap

        s = self.settings
        return load_clap(s.audio_model, s.audio_model_revision, s.device, hash_cache=s.checkpoint_hashes_file)

    def close(self) -> None:
        if "store" in self.__dict__:
            self.store.close()
        if "catalog" in self.__dict__:
            self.catalog.close()


def load_settings_encoder(s: Settings) -> ClipEncoder:
    """The installation's model (VIDSEARCH_MODEL, revision, device, backend...): what every process that embeds
    loads, a Ray actor included."""
    from ingest.encoder import load_encoder  # torch is slow to import: only commands that embed pay for it

    return load_encoder(s.model, s.model_revision, s.device, s.batch_size, hash_cache=s.checkpoint_hashes_file,
                        inference=s.inference, precision=s.precision, models_dir=s.models_dir,
                        threads=s.inference_threads, query_cache_size=s.query_cache_size)
