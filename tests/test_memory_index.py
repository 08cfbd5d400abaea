"""The exact in-memory copy of the vectors: same answers as Milvus, follows every change of the catalog."""

from __future__ import annotations

import numpy as np
import pytest

from ingest.library import delete_video
from schema.catalog import Catalog
from schema.memory_index import MemoryIndex, Snapshot, apply_refresh, plan_refresh
from schema.vectors import MilvusVectorStore, Segments

DIM = 16


class CountingStore(MilvusVectorStore):
    """The real store, counting how many vectors are pulled out of Milvus."""

    fetched = 0
    segment_reads = 0

    def fetch(self, video_ids):
        self.fetched += len(video_ids)
        return super().fetch(video_ids)

    def segments(self, video_ids):
        self.segment_reads += len(video_ids)
        return super().segments(video_ids)


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.normal(size=(n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def ingest_fake(catalog: Catalog, store, vectors: np.ndarray, tag: str) -> list[int]:
    """Catalog rows and vectors written in the worker's order: vectors first, then the videos marked ready."""
    ids = []
    for i in range(len(vectors)):
        video, _ = catalog.add_video(sha256=f"{tag}{i:060d}"[:64], title=f"{tag}{i}", stored_path=f"/nowhere/{tag}{i}",
                                     owned=False, size_bytes=1)
        ids.append(video.id)
    jobs = catalog.claim_jobs(len(ids))
    store.add([j.video_id for j in jobs], vectors[[ids.index(j.video_id) for j in jobs]])
    store.flush()
    catalog.finish_jobs([(j.id, {}) for j in jobs])
    return ids


@pytest.fixture
def parts(settings):
    settings = settings.model_copy(update={"memory_index": "on"})
    settings.ensure_dirs()
    catalog = Catalog(settings.catalog_url)
    store = CountingStore.open(settings, DIM, "test-model")
    yield settings, catalog, store
    store.drop()
    store.close()
    catalog.close()


def test_snapshot_top_k_is_exact_and_ordered():
    rng = np.random.default_rng(0)
    m = unit(rng, 50)
    snap = Snapshot(np.arange(100, 150), np.zeros(50, np.int64), m)
    q = unit(rng, 1)[0]
    hits = snap.top_k(q, 5)
    expected = np.argsort(-(m @ q))[:5] + 100
    assert [h.video_id for h in hits] == expected.tolist()
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert len(snap.top_k(q, 500)) == 50 and Snapshot.empty(DIM).top_k(q, 3) == []


def test_plan_refresh_keeps_current_rows_and_refetches_changed_jobs():
    base = Snapshot(np.array([1, 2, 3]), np.array([10, 20, 30]), np.eye(3, DIM, dtype=np.float32))
    keep, missing = plan_refresh(base, {1: 10, 2: 21, 4: 40})  # 2 re-ingested, 3 deleted, 4 new
    assert keep.tolist() == [True, False, False]
    assert missing == {2: 21, 4: 40}
    fresh = apply_refresh(base, keep, {2: np.full(DIM, 0.25, np.float32), 4: np.ones(DIM, np.float32)}, missing)
    assert fresh.ids.tolist() == [1, 2, 4] and fresh.jobs.tolist() == [10, 21, 40]
    assert np.allclose(fresh.matrix[1], 0.25)


def test_same_answers_as_milvus_and_follows_deletes_and_reingests(parts):
    settings, catalog, store = parts
    rng = np.random.default_rng(1)
    ids = ingest_fake(catalog, store, unit(rng, 40), "a")
    index = MemoryIndex(store, catalog, settings.memory_index_file)
    for q in unit(rng, 10):
        mem, milvus = index.search(q, 7), store.search(q, 7)
        assert [h.video_id for h in mem] == [h.video_id for h in milvus]
        assert np.allclose([h.score for h in mem], [h.score for h in milvus], atol=1e-5)
    assert store.fetched == 40

    # Deleted through the library: gone from the next answer without any call to the index.
    gone = index.search(unit(rng, 1)[0], 1)[0].video_id
    delete_video(catalog, store, gone)
    assert gone not in {h.video_id for h in index.search(unit(rng, 1)[0], 40)}

    # Re-ingested with a new vector (a new job): the new vector is fetched, the others are not.
    target, before = ids[0] if ids[0] != gone else ids[1], store.fetched
    catalog.requeue_video(target)
    new_vector = unit(rng, 1)
    [job] = catalog.claim_jobs(1)
    store.delete([target])
    store.add([target], new_vector)
    catalog.finish_jobs([(job.id, {})])
    top = index.search(new_vector[0], 1)[0]
    assert top.video_id == target and top.score == pytest.approx(1.0, abs=1e-5)
    assert store.fetched == before + 1


def test_saved_copy_is_reused_after_restart_and_ignored_for_another_model(parts):
    settings, catalog, store = parts
    rng = np.random.default_rng(2)
    ingest_fake(catalog, store, unit(rng, 30), "b")
    first = MemoryIndex(store, catalog, settings.memory_index_file)
    q = unit(rng, 1)[0]
    expected = first.search(q, 5)
    first.save()
    assert settings.memory_index_file.exists()

    before = store.fetched
    second = MemoryIndex(store, catalog, settings.memory_index_file)
    assert second.search(q, 5) == expected
    assert store.fetched == before  # loaded from disk, nothing pulled from Milvus

    store.model = "another-model"
    third = MemoryIndex(store, catalog, settings.memory_index_file)
    assert [h.video_id for h in third.search(q, 5)] == [h.video_id for h in expected]
    assert store.fetched == before + 30


def test_large_load_runs_in_background_while_milvus_answers(parts):
    settings, catalog, store = parts
    rng = np.random.default_rng(3)
    ingest_fake(catalog, store, unit(rng, 25), "c")
    index = MemoryIndex(store, catalog, settings.memory_index_file, inline_limit=5)
    q = unit(rng, 1)[0]
    during = index.search(q, 5)  # answered by Milvus while the copy loads
    index.wait_loaded(60)
    assert index.current() is not None and len(index.current()) == 25
    assert [h.video_id for h in index.search(q, 5)] == [h.video_id for h in during]
    assert settings.memory_index_file.exists()  # a background load saves the copy


def test_catalog_counter_moves_on_every_change_of_the_ready_set(parts):
    _, catalog, store = parts
    g0 = catalog.ready_generation()
    [vid] = ingest_fake(catalog, store, unit(np.random.default_rng(4), 1), "d")
    g1 = catalog.ready_generation()
    catalog.requeue_video(vid)
    g2 = catalog.ready_generation()
    catalog.delete_video(vid)
    g3 = catalog.ready_generation()
    assert g0 < g1 < g2 < g3
    assert Catalog(catalog.engine.url.render_as_string(hide_password=False)).ready_generation() == g3


def _segments(rng: np.random.Generator, n: int) -> Segments:
    return Segments(np.arange(n, dtype=np.float32), np.arange(1, n + 1, dtype=np.float32), unit(rng, n))


def _same(a: dict[int, Segments], b: dict[int, Segments]) -> bool:
    return a.keys() == b.keys() and all(
        np.array_equal(a[v].starts, b[v].starts) and np.array_equal(a[v].ends, b[v].ends)
        and np.array_equal(a[v].vectors, b[v].vectors) for v in a)


def test_segments_are_cached_exactly_and_follow_reingests_and_deletes(parts):
    settings, catalog, store = parts
    rng = np.random.default_rng(5)
    ids = ingest_fake(catalog, store, unit(rng, 6), "e")
    store.add_segments(ids, [_segments(rng, 3 + i) for i in range(len(ids))])
    store.flush()
    index = MemoryIndex(store, catalog, settings.memory_index_file, segment_rows=12)
    index.search(unit(rng, 1)[0], 3)

    first = index.segments(ids[:3])
    assert _same(first, store.segments(ids[:3]))  # the same arrays Milvus holds
    reads = store.segment_reads
    assert _same(index.segments(ids[:3]), first) and store.segment_reads == reads  # from the cache

    # Re-ingested with new segments (a new job): the next search refreshes and the new ones are read.
    target = ids[0]
    catalog.requeue_video(target)
    [job] = catalog.claim_jobs(1)
    store.delete([target])
    new = _segments(rng, 5)
    store.add_segments([target], [new])
    store.add([target], unit(rng, 1))
    store.flush()
    catalog.finish_jobs([(job.id, {})])
    index.search(unit(rng, 1)[0], 3)
    assert np.array_equal(index.segments([target])[target].vectors, new.vectors)

    # Deleted through the index: forgotten, Milvus says there are none.
    index.delete([ids[1]])
    assert ids[1] not in index.segments([ids[1]])

    # Bounded by rows: the least recently used videos go first.
    index.segments(ids[2:])  # 5 + 6 + 7 + 8 rows, with the 5 of the target: over 12
    assert sum(len(seg) for seg in index._segments.values()) <= 12
    assert _same(index.segments(ids[2:]), store.segments(ids[2:]))
