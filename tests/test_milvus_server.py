"""The server path against a real Milvus server (PyPI's embedded Milvus standalone 2.3.5, tests/milvus_server.py),
not Milvus Lite: what a user of VIDSEARCH_MILVUS_URI gets, through the real `vidsearch` commands."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

from tests.conftest import CLIPS
from tests.test_cli import Cli

pytestmark = pytest.mark.slow  # a Milvus server per session (~10 s to start, ~500 MB)


@pytest.fixture
def server_cli(tmp_path, tiny_model, zygote, milvus_server):
    runner = Cli(tmp_path / "home", tiny_model, zygote)
    runner.env = {"VIDSEARCH_MILVUS_URI": milvus_server.uri, "VIDSEARCH_COLLECTION": f"s_{uuid.uuid4().hex[:10]}"}
    return runner


def test_the_server_is_a_real_milvus_2_3_and_taken_for_a_server(milvus_server, tmp_path, tiny_model):
    from schema.settings import Settings
    from schema.vectors import connect, is_milvus_lite

    assert milvus_server.version.startswith("v2.3.")
    client = connect(Settings(home=tmp_path, model=str(tiny_model), milvus_uri=milvus_server.uri))
    assert not is_milvus_lite(client)
    client.close()


def test_ingest_search_filters_status_delete_doctor_on_a_server(server_cli, mixed_folder):
    cli = server_cli
    first = cli("ingest", str(mixed_folder), "--recursive", "--wait", "--tag", "trip", expect=1)
    assert f"Ingested: {len(CLIPS)}" in first.stdout and "failed: 1" in first.stdout

    # Counted right after the writes: a server's collection statistics count only flushed segments.
    status = json.loads(cli("status", "--json").stdout)
    assert status["vector_store"]["reachable"] is True and status["vector_store"]["vectors"] == len(CLIPS)

    results = json.loads(cli("search", "a red circle", "-k", "3", "--json").stdout)
    assert results[0]["title"] == "red_circle.mp4" and len(results) == 3
    assert results[0]["score"] >= results[1]["score"] >= results[2]["score"]
    assert results[0]["moments"] and results[0]["moments"][0]["start"] == 0.0  # segments read from the server

    # Filters run inside Milvus's search, on the server's fields.
    assert json.loads(cli("search", "a red circle", "--tag", "other", "--json").stdout) == []
    tagged = json.loads(cli("search", "a red circle", "--tag", "trip", "-k", "10", "--json").stdout)
    assert len(tagged) == len(CLIPS)
    assert json.loads(cli("search", "a red circle", "--min-duration", "5", "--json").stdout) == []
    assert len(json.loads(cli("search", "a red circle", "--max-duration", "5", "-k", "10", "--json").stdout)) == \
        len(CLIPS)

    victim = results[0]["video_id"]
    assert "deleted" in cli("delete", str(victim)).stdout
    after = json.loads(cli("search", "a red circle", "-k", "10", "--json").stdout)
    assert victim not in {r["video_id"] for r in after} and len(after) == len(CLIPS) - 1
    assert json.loads(cli("status", "--json").stdout)["vector_store"]["vectors"] == len(CLIPS) - 1

    assert json.loads(cli("doctor", "--json").stdout)["findings"] == []
    # A vector lost behind the app's back (deleted on the server directly): doctor finds the ready video without it.
    from pymilvus import MilvusClient

    lost = after[0]["video_id"]
    client = MilvusClient(uri=cli.env["VIDSEARCH_MILVUS_URI"])
    client.delete(cli.env["VIDSEARCH_COLLECTION"], filter=f"video_id in [{lost}]")
    client.close()
    found = json.loads(cli("doctor", "--json", expect=1).stdout)["findings"]
    assert [f["video_ids"] for f in found] == [[lost]], found


def test_compact_mode_with_a_quantized_index_reranks_exactly_on_a_server(server_cli, mixed_folder):
    cli = server_cli
    cli.env.update({"VIDSEARCH_INDEX_TYPE": "IVF_SQ8", "VIDSEARCH_INDEX_PARAMS": '{"nlist": 4}',
                    "VIDSEARCH_SEARCH_PARAMS": '{"nprobe": 4}', "VIDSEARCH_RERANK": "100"})
    cli("ingest", str(mixed_folder / "clips"), "--wait", expect=1)  # its broken.mp4 fails alone
    results = json.loads(cli("search", "a blue triangle", "-k", "3", "--json").stdout)
    assert results[0]["title"] == "blue_triangle.mkv"
    assert results[0]["score"] >= results[1]["score"] >= results[2]["score"]


def test_the_lexical_experts_are_refused_clearly_on_a_server_without_bm25(server_cli, mixed_folder):
    cli = server_cli
    cli.env["VIDSEARCH_EXPERTS"] = "speech"
    cli("ingest", str(mixed_folder / "clips"), "--wait", expect=None)
    status = json.loads(cli("status", "--json").stdout)
    assert status["jobs"]["done"] == len(CLIPS), status  # appearance is unaffected
    assert status["experts"]["speech"]["failed"] == len(CLIPS), status
    from schema.catalog import Catalog
    from schema.settings import Settings

    catalog = Catalog(Settings(home=cli.home).catalog_url)
    try:
        runs = catalog.expert_runs([v.id for v in catalog.list_videos()])
    finally:
        catalog.close()
    reasons = {run["speech"].reason for run in runs.values()}
    [reason] = reasons  # refused before any work, with the one message that says why and what to do
    assert "does not support full-text search (BM25, Milvus 2.5 or newer) (this one is 2.3)" in reason, reason
    assert "VIDSEARCH_EXPERTS=" in reason
    results = json.loads(cli("search", "a red circle", "-k", "1", "--json").stdout)
    assert results[0]["title"] == "red_circle.mp4"


# --- binary compact mode: sign bits searched by Hamming distance, candidates re-scored from the floats -----------

BITS_DIM = 60  # not a multiple of 8: the last byte of bits is padded
BITS_N = 600


@pytest.fixture
def binary(milvus_server, tmp_path):
    from schema.settings import Settings
    from schema.vectors import MilvusVectorStore
    from search_app.bench import clustered_unit_vectors

    settings = Settings(home=tmp_path / "data", milvus_uri=milvus_server.uri, collection=f"b_{uuid.uuid4().hex[:10]}",
                        index_type="BIN_FLAT", rerank=50)
    rng = np.random.default_rng(3)
    data = clustered_unit_vectors(BITS_N, BITS_DIM, rng, clusters=12)
    store = MilvusVectorStore.open(settings, BITS_DIM, "test-model")
    from schema.vectors import VideoFields

    store.add(list(range(1, BITS_N + 1)), data,
              [VideoFields(duration=float(i % 7), tag="even" if i % 2 == 0 else "") for i in range(1, BITS_N + 1)])
    qs = data[rng.integers(0, BITS_N, 10)] + 0.2 * rng.normal(size=(10, BITS_DIM)).astype(np.float32)
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    yield settings, store, data, qs
    store.drop()
    store.close()


def _hamming(data: np.ndarray, q: np.ndarray) -> np.ndarray:
    return ((data > 0) != (q > 0)).sum(axis=1)


def test_binary_compact_mode_reranks_hamming_candidates_exactly(binary):
    from schema.vectors import MilvusVectorStore

    settings, store, data, qs = binary
    assert store.client.has_collection(store.bits_collection)
    assert store.client.describe_index(store.bits_collection, "bits")["index_type"] == "BIN_FLAT"
    for q in qs:
        exact = data @ q
        hits = store.search(q, 10)
        ids = np.array([h.video_id for h in hits])
        assert len(hits) == 10
        # Scores are the exact inner products, in order; not Hamming distances.
        np.testing.assert_allclose([h.score for h in hits], exact[ids - 1], rtol=0, atol=1e-5)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        # Every hit is among the 50 nearest by sign bits (ties at the 50th distance allowed).
        distances = _hamming(data, q)
        assert distances[ids - 1].max() <= np.sort(distances)[store.rerank - 1]
    # Every row a candidate: the exact top 10.
    everything = MilvusVectorStore.open(settings.model_copy(update={"rerank": BITS_N}), BITS_DIM, "test-model")
    for q in qs:
        top = np.argsort(-(data @ q))[:10] + 1
        assert [h.video_id for h in everything.search(q, 10)] == top.tolist()


def test_binary_compact_mode_filters_in_the_hamming_search_and_deletes_bits(binary):
    from pymilvus import MilvusClient

    from schema.filters import SearchFilters
    from schema.vectors import row_count

    settings, store, data, qs = binary
    tagged = store.search(qs[0], 10, SearchFilters(tags=("even",)))
    assert len(tagged) == 10 and all(h.video_id % 2 == 0 for h in tagged)  # k matches, not k candidates filtered
    assert all(h.video_id % 7 <= 2 for h in store.search(qs[0], 10, SearchFilters(max_duration=2.0)))

    store.delete([tagged[0].video_id])
    store.delete_rows(store.add([9999], data[:1]))
    client = MilvusClient(uri=settings.milvus_uri)
    try:
        assert row_count(client, store.bits_collection) == row_count(client, store.collection) == BITS_N - 1
    finally:
        client.close()
    assert tagged[0].video_id not in {h.video_id for h in store.search(qs[0], 50)}


def test_binary_compact_mode_switched_on_for_a_library_fills_its_bits(milvus_server, tmp_path):
    from schema.filters import SearchFilters
    from schema.settings import Settings
    from schema.vectors import MilvusVectorStore, VideoFields, row_count

    settings = Settings(home=tmp_path / "data", milvus_uri=milvus_server.uri, collection=f"s_{uuid.uuid4().hex[:10]}")
    rng = np.random.default_rng(5)
    data = rng.normal(size=(40, 16)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    flat = MilvusVectorStore.open(settings, 16, "test-model")
    flat.add(list(range(1, 41)), data, [VideoFields(tag="t")] * 40)
    try:
        binary = MilvusVectorStore.open(settings.model_copy(update={"index_type": "BIN_FLAT"}), 16, "test-model")
        assert binary.rerank == 100  # VIDSEARCH_RERANK=0: the model card's rerank100
        assert row_count(binary.client, binary.bits_collection) == 40
        assert [h.video_id for h in binary.search(data[4], 1)] == [5]
        assert binary.search(data[4], 3, SearchFilters(tags=("t",)))[0].video_id == 5
        # Written while binary mode was off: the next binary open brings the bits level again.
        flat.has_bits = False  # a process still configured without it
        flat.add([41], data[:1])
        again = MilvusVectorStore.open(settings.model_copy(update={"index_type": "BIN_FLAT"}), 16, "test-model")
        assert row_count(again.client, again.bits_collection) == 41
        assert {h.video_id for h in again.search(data[0], 2)} == {1, 41}
    finally:
        flat.drop()
        flat.close()


def test_binary_compact_mode_is_refused_clearly_on_milvus_lite(tmp_path, milvus_uri):
    from schema.settings import Settings
    from schema.vectors import MilvusVectorStore, VectorStoreError

    settings = Settings(home=tmp_path / "data", milvus_uri=milvus_uri, collection=f"l_{uuid.uuid4().hex[:10]}",
                        index_type="BIN_FLAT")
    with pytest.raises(VectorStoreError, match="Milvus Lite does not have.*VIDSEARCH_MILVUS_URI.*IVF_SQ8"):
        MilvusVectorStore.open(settings, 16, "test-model")


def test_binary_compact_mode_through_the_commands_on_a_server(server_cli, mixed_folder):
    cli = server_cli
    cli.env["VIDSEARCH_INDEX_TYPE"] = "BIN_FLAT"
    cli("ingest", str(mixed_folder / "clips"), "--wait", "--tag", "trip", expect=1)  # its broken.mp4 fails alone
    results = json.loads(cli("search", "a blue triangle", "-k", "3", "--json").stdout)
    assert results[0]["title"] == "blue_triangle.mkv"
    assert 0 < results[0]["score"] <= 1.0001 and results[0]["score"] >= results[1]["score"] >= results[2]["score"]
    assert json.loads(cli("search", "a blue triangle", "--tag", "other", "--json").stdout) == []
    victim = results[0]["video_id"]
    cli("delete", str(victim))
    assert victim not in {r["video_id"] for r in json.loads(cli("search", "a blue triangle", "-k", "10",
                                                                 "--json").stdout)}
    assert json.loads(cli("doctor", "--json").stdout)["findings"] == []
