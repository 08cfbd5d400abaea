"""Compact mode on real Milvus Lite: a scalar-quantized index (IVF_SQ8) answers approximately; with `rerank` the
candidates are re-scored from the stored float vectors, giving numpy's exact top 10 and exact scores."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from schema.settings import Settings
from schema.vectors import MilvusVectorStore
from search_app.bench import clustered_unit_vectors, settle_index

DIM = 64
N = 4000
NLIST = 16


@pytest.fixture
def lite_settings(tmp_path, milvus_uri) -> Settings:
    """A collection of its own on the session's Milvus Lite server; no model needed."""
    return Settings(home=tmp_path / "data", milvus_uri=milvus_uri, collection=f"q_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def compact(lite_settings):
    """One IVF_SQ8 collection of clustered unit vectors, searched with every cell probed: what remains is the
    quantization error alone, which the exact rerank removes."""
    settings = lite_settings.model_copy(update={"index_type": "IVF_SQ8", "index_params": {"nlist": NLIST},
                                           "search_params": {"nprobe": NLIST}, "rerank": 100})
    rng = np.random.default_rng(7)
    data = clustered_unit_vectors(N, DIM, rng, clusters=32)
    store = MilvusVectorStore.open(settings, DIM, "test-model")
    store.add(list(range(1, N + 1)), data)
    store.flush()
    settle_index(store.client, store.collection)  # Milvus Lite builds a new segment's index in the background
    qs = data[rng.integers(0, N, 20)] + 0.1 * rng.normal(size=(20, DIM)).astype(np.float32)
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    yield settings, store, data, qs
    store.drop()
    store.close()


def test_rerank_gives_the_exact_top_10_and_exact_scores(compact):
    settings, store, data, qs = compact
    plain = MilvusVectorStore(store.client, store.collection, DIM, "test-model", index_type="IVF_SQ8",
                              search_params=settings.search_params)  # same collection, no rerank
    approximate = 0.0
    for q in qs:
        exact = data @ q
        top = np.argsort(-exact)[:10] + 1
        hits = store.search(q, 10)
        assert [h.video_id for h in hits] == top.tolist()
        np.testing.assert_allclose([h.score for h in hits], exact[top - 1], rtol=0, atol=1e-6)
        raw = plain.search(q, 10)
        assert len(raw) == 10
        approximate = max(approximate, max(abs(h.score - exact[h.video_id - 1]) for h in raw))
    # Without rerank the scores are the 8-bit quantized ones: off by far more than float rounding.
    assert approximate > 1e-4


def test_rerank_asks_for_more_candidates_and_returns_k(compact):
    _, store, data, qs = compact
    assert len(store.search(qs[0], 3)) == 3
    assert store.search(qs[0], 0) == []
    store.rerank = 5  # fewer candidates than k: k are asked for, all re-scored
    hits = store.search(qs[0], 10)
    assert len(hits) == 10 and [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_compact_mode_turns_the_in_memory_copy_off_under_auto(lite_settings):
    assert lite_settings.memory_index_for(lite=True)
    assert not lite_settings.memory_index_for(lite=False)  # a Milvus server searches itself
    assert not lite_settings.model_copy(update={"rerank": 100}).memory_index_for(lite=True)
    assert lite_settings.model_copy(update={"rerank": 100, "memory_index": "on"}).memory_index_for(lite=True)

