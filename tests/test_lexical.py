"""The BM25 full-text collection (schema/lexical.py) on a real Milvus Lite server."""

from __future__ import annotations

import subprocess
import sys
import uuid
from dataclasses import dataclass

import pytest

from schema.lexical import FullTextUnsupported, LexicalHit, LexicalStore, collection_name, grams
from schema.settings import Settings
from schema.vectors import VectorStoreError, connect


@dataclass(frozen=True)
class Seg:
    start: float
    end: float
    text: str


# What OCR stored (with its misreads) for video i+1, and searches people type for them.
OCR = ["RE16 TGK", "HARVEST MOC", "PLATFORM NlNE", "PLATF0RM TEN", "RE17 TGX", "HARVEST FESTIVAL TODAY",
       "MOON LANDING 1969", "THE QUICK BROWN FOX", "NINE LIVES", "CITY CENTRE 5 MIN", "KINGS CROSS RE16TGK"]


@pytest.fixture(scope="session")
def client(milvus_uri):
    c = connect(Settings(milvus_uri=milvus_uri))
    yield c
    c.close()


@pytest.fixture
def store(client):
    s = LexicalStore.open(client, f"lex_{uuid.uuid4().hex[:8]}_text")
    yield s
    s.drop()


@pytest.fixture(scope="module")
def ocr_store(client):
    s = LexicalStore.open(client, f"lex_{uuid.uuid4().hex[:8]}_text")
    for i, text in enumerate(OCR, start=1):
        s.add(i, [Seg(2.0, 5.0, text)])
    s.flush()
    yield s
    s.drop()


def _found(store, query, k=10):
    return [OCR[h.video_id - 1] for h in store.search(query, k)]


@pytest.mark.parametrize(("query", "stored"), [
    ("RE16", "RE16 TGK"),  # a word of the text
    ("re16 tgk", "RE16 TGK"),  # case
    ("harvest moon", "HARVEST MOC"),  # one word misread: found by the other
    ("platform nine", "PLATFORM NlNE"),  # found by "platform"
    ("platform", "PLATF0RM TEN"),  # every word misread a little: found by its trigrams
    ("platf", "PLATFORM NlNE"),  # part of a word
    ("tgk", "KINGS CROSS RE16TGK"),  # words OCR ran together
])
def test_finds_ocr_text_despite_misreads_and_partial_queries(ocr_store, query, stored):
    assert stored in _found(ocr_store, query)


def test_exact_words_rank_first(ocr_store):
    assert _found(ocr_store, "RE16 TGK")[0] == "RE16 TGK"
    assert "HARVEST MOC" in _found(ocr_store, "harvest moon")[:2]  # beside MOON LANDING, above HARVEST FESTIVAL
    assert _found(ocr_store, "platform nine")[0] == "PLATFORM NlNE"
    assert _found(ocr_store, "quick brown fox")[0] == "THE QUICK BROWN FOX"
    assert _found(ocr_store, "nine")[0] == "NINE LIVES"


def test_hits_carry_segments_with_positive_scores(store):
    store.add(7, [Seg(0.0, 2.5, "the orchestra rehearsed"), Seg(2.5, 5.0, "the final movement twice"),
                  Seg(5.0, 6.0, "  ")])  # no words: left out
    store.add(8, [Seg(1.0, 3.0, "a movement of the orchestra")])
    store.flush()
    hits = store.search("orchestra movement", 10)
    assert all(isinstance(h, LexicalHit) and h.score > 0 for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert hits[0] == LexicalHit(8, 1.0, 3.0, "a movement of the orchestra", hits[0].score)  # both words
    assert {(h.video_id, h.start, h.end) for h in hits} == {(7, 0.0, 2.5), (7, 2.5, 5.0), (8, 1.0, 3.0)}
    assert len(store.search("orchestra movement", 1)) == 1
    assert store.search("xylophone", 10) == [] and store.search("  ...  ", 10) == [] and store.search("the", 0) == []
    assert store.counts() == {7: 2, 8: 1} and store.video_ids() == {7, 8}


def test_search_within_videos_and_delete(store):
    for video_id in (1, 2, 3):
        store.add(video_id, [Seg(0.0, 1.0, f"platform nine video {video_id}")])
    store.flush()
    assert {h.video_id for h in store.search("platform", 10, video_ids=[2, 3])} == {2, 3}
    assert store.search("platform", 10, video_ids=[]) == []
    store.delete([1, 2])
    store.delete([])
    assert {h.video_id for h in store.search("platform", 10)} == {3}
    assert store.counts() == {3: 1}


def test_a_run_done_again_replaces_the_last_ones_rows_by_primary_key(store):
    """What the expert stage does (ingest/expert_stage.py): insert, record the run, then remove the video's other
    rows; a worker that lost its run removes exactly its own."""
    first = store.add(7, [Seg(0.0, 1.0, "harvest festival"), Seg(1.0, 2.0, "platform nine")])
    store.add(8, [Seg(0.0, 1.0, "harvest moon")])
    second = store.add(7, [Seg(0.0, 2.0, "harvest festival today")])
    assert len(first) == 2 and len(second) == 1 and not set(first) & set(second)
    store.flush()
    assert store.counts() == {7: 3, 8: 1}
    store.delete_other_rows(7, second)
    store.flush()
    assert store.counts() == {7: 1, 8: 1}
    assert [h.text for h in store.search("harvest festival", 5, video_ids=[7])] == ["harvest festival today"]
    store.delete_rows(second)  # (lost its run: its own rows only)
    store.flush()
    assert store.counts() == {8: 1}


def test_open_is_idempotent_and_drop_removes(client):
    name = collection_name(f"lex_{uuid.uuid4().hex[:8]}", "speech")
    assert name.endswith("_speech")
    first = LexicalStore.open(client, name, lite=True)
    first.add(1, [Seg(0.0, 1.0, "hello world")])
    second = LexicalStore.open(client, name)  # already there: opened, not created again
    assert second.lite and second.counts() == {1: 1}
    second.drop()
    assert not client.has_collection(name)


def test_a_foreign_collection_is_refused(client):
    from pymilvus import DataType, MilvusClient

    name = f"lex_{uuid.uuid4().hex[:8]}_text"
    schema = MilvusClient.create_schema(auto_id=True)
    schema.add_field("pk", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=2)
    index = client.prepare_index_params()
    index.add_index(field_name="vector", index_type="FLAT", metric_type="IP")
    client.create_collection(name, schema=schema, index_params=index)
    try:
        with pytest.raises(VectorStoreError, match="not a vidsearch full-text collection"):
            LexicalStore.open(client, name)
    finally:
        client.drop_collection(name)


class _NoBm25:
    """A client whose server turns BM25 collections away, as Milvus before 2.5 does."""

    def __init__(self, client, version="v2.4.15"):
        self._client, self.version = client, version

    def get_server_version(self):
        return self.version

    def create_collection(self, *args, **kwargs):
        from pymilvus.exceptions import MilvusException

        raise MilvusException(message="function type BM25 not supported")

    def __getattr__(self, name):
        return getattr(self._client, name)


@pytest.mark.parametrize("version", ["v2.4.15", "v2.6.0"])
def test_a_server_without_bm25_is_named(client, version):
    name = f"lex_{uuid.uuid4().hex[:8]}_text"
    with pytest.raises(FullTextUnsupported, match=r"does not support full-text search \(BM25, Milvus 2.5 or newer\)"
                       r".*speech and text experts need it"):
        LexicalStore.open(_NoBm25(client, version), name, lite=False)
    assert not client.has_collection(name)


def test_grams_and_no_ingest_import():
    assert grams("RE16 TGK, HARVEST!") == ["re1", "e16", "tgk", "har", "arv", "rve", "ves", "est"]
    code = "import sys, schema.lexical; sys.exit(any(m == 'ingest' or m.startswith('ingest.') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
