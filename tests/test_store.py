"""The vector-store facade (schema/store.py) on the real Milvus Lite server the tests share by URI."""

from __future__ import annotations

import numpy as np
import pytest

import schema.store
from ingest.library import enqueue_file
from ingest.worker import Worker
from schema.memory_index import MemoryIndex
from schema.store import Store
from schema.vectors import is_milvus_lite
from search_app.search import search_text
from tests.conftest import CLIPS


def test_a_lite_server_reached_by_uri_is_run_as_lite(runtime):
    # The tests reach one shared Milvus Lite server through VIDSEARCH_MILVUS_URI; what the endpoint *is* decides
    # sealing and the in-memory copy, so they run the configuration users get by default.
    assert runtime.settings.milvus_uri
    assert runtime.store.is_lite and runtime.store.uses_memory_index
    assert isinstance(runtime.store.searcher(), MemoryIndex)
    assert runtime.store.milvus().lite  # writes are sealed on flush


class _Client:
    def __init__(self, answer):
        self.answer = answer

    def get_server_version(self):
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_is_milvus_lite_reads_the_server_version():
    from pymilvus.exceptions import MilvusException

    assert is_milvus_lite(_Client("milvus_lite-3.2.2"))
    assert not is_milvus_lite(_Client("v2.5.16"))  # a Milvus server
    assert not is_milvus_lite(_Client(MilvusException(message="unimplemented")))


def test_one_connection_for_reads_writes_searches_and_maintenance(runtime, clips_dir, monkeypatch):
    made = []
    real = schema.store.connect
    monkeypatch.setattr(schema.store, "connect", lambda settings: made.append(1) or real(settings))
    store = runtime.store
    assert store.count() == 0 and store.vector_counts() == {}  # no collection yet: nothing, and none created
    store.delete([1, 2])
    for _, _, name, _ in CLIPS[:3]:
        enqueue_file(runtime.catalog, runtime.settings, clips_dir / name)
    with Worker.from_settings(runtime.catalog, store, runtime.encoder, runtime.settings) as worker:
        assert len(worker.run_until_empty()) == 3
    ready = [v.id for v in runtime.catalog.list_videos()]
    assert store.count() == 3 and store.video_ids() == set(ready)
    assert search_text(runtime.catalog, store, runtime.encoder, "a red circle", k=3)[0].title == "red_circle.mp4"
    assert set(store.segments(ready)) == set(ready)
    store.delete([ready[0]])
    assert store.video_ids() == set(ready[1:])
    assert store.existing() is store.milvus()
    assert len(made) == 1, "every operation of one process goes through one Milvus client"


def test_maintenance_needs_no_model(runtime, clips_dir):
    enqueue_file(runtime.catalog, runtime.settings, clips_dir / CLIPS[0][2])
    with Worker.from_settings(runtime.catalog, runtime.store, runtime.encoder, runtime.settings) as worker:
        worker.run_until_empty()
    video_id = runtime.catalog.list_videos()[0].id
    plain = Store(runtime.settings, runtime.catalog)  # as `vidsearch delete` / `doctor` / `status` open it
    try:
        assert plain.count() == 1 and plain.segment_counts() == {video_id: 4}
        assert plain.existing() is not None and plain.existing().model == runtime.store.model
        np.testing.assert_allclose(plain.fetch([video_id])[video_id], runtime.store.fetch([video_id])[video_id])
        with pytest.raises(RuntimeError, match="without a model"):
            plain.add([5], np.zeros((1, runtime.store.dim), np.float32))
        plain.delete([video_id])
        assert plain.count() == 0 and plain.segment_counts() == {}
        assert plain.drop() and not plain.drop()  # `vidsearch reindex`: gone, then nothing to drop
        assert plain.existing() is None
    finally:
        plain.close()
