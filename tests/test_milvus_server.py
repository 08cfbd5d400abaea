"""The server path against a real Milvus server (PyPI's embedded Milvus standalone 2.3.5, tests/milvus_server.py),
not Milvus Lite: what a user of VIDSEARCH_MILVUS_URI gets, through the real `vidsearch` commands."""

from __future__ import annotations

import json
import uuid

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
