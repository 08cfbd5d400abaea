"""The audio expert at query time: its dense collection (schema/dense.py) and CLAP's text tower, which puts the
query in the same space as the stored windows. CLAP loads on the first query that weighs audio, not at start-up."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np

from ingest.experts.sound import AudioModelUnavailable, ClapEmbedder
from ingest.runtime import Runtime
from schema.dense import DenseHit, DenseSegmentStore, Windows
from schema.settings import DENSE_EXPERTS

log = logging.getLogger(__name__)

CACHE = 256  # query embeddings kept (as the CLIP text tower's LRU)


class AudioSource:
    """What search, fusion and the timeline need of the audio expert."""

    kind = "dense"

    def __init__(self, store: DenseSegmentStore, embedder: Callable[[], ClapEmbedder]) -> None:
        self.store = store
        self.embedder = embedder
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._warned: str | None = None

    def embed_query(self, text: str) -> np.ndarray | None:
        """CLAP's embedding of `text`; None (logged once) when CLAP cannot load or is not the model the collection
        was built with: the query is then searched without audio rather than refused."""
        with self._lock:
            if text in self._cache:
                self._cache.move_to_end(text)
                return self._cache[text]
        try:
            clap = self.embedder()
        except AudioModelUnavailable as exc:
            return self._skip(f"audio left out of searches: {exc}")
        if self.store.model is not None and clap.model_key != self.store.model:
            return self._skip(f"audio left out of searches: its collection holds vectors of {self.store.model}, the "
                              f"configured CLAP is {clap.model_key} (run `vidsearch reindex --experts audio --again`)")
        vector = clap.embed_text([text])[0]
        with self._lock:
            self._cache[text] = vector
            while len(self._cache) > CACHE:
                self._cache.popitem(last=False)
        return vector

    def _skip(self, why: str) -> None:
        if self._warned != why:
            log.warning("%s", why)
            self._warned = why
        return None

    def search(self, vector: np.ndarray, k: int, video_ids: Sequence[int] | None = None) -> list[DenseHit]:
        return self.store.search(vector, k, video_ids)

    def background(self, vector: np.ndarray) -> np.ndarray:
        """The query's cosines with a sample of the stored windows (for calibration)."""
        sample = self.store.sample()
        return sample @ np.asarray(vector, np.float32) if len(sample) else np.zeros(0, np.float32)

    def windows(self, video_ids: Sequence[int]) -> dict[int, Windows]:
        return self.store.windows(video_ids)

    def delete(self, video_ids: Sequence[int]) -> None:
        self.store.delete(video_ids)

    def counts(self):
        return self.store.counts()


def expert_sources(runtime: Runtime) -> dict[str, object]:
    """The experts' collections that exist, as search and the timeline read them: lexical stores as they are, the
    audio one with CLAP's text tower beside it (one AudioSource per runtime, so its query cache lasts)."""
    sources: dict[str, object] = {}
    for name, store in runtime.store.lexical_existing().items():
        if name in DENSE_EXPERTS:
            if runtime.audio_source is None or runtime.audio_source.store is not store:
                runtime.audio_source = AudioSource(store, lambda: runtime.clap)
            sources[name] = runtime.audio_source
        else:
            sources[name] = store
    return sources
