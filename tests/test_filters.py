"""Filters: duration, ingest date and tag, evaluated by Milvus (real Milvus Lite) together with the vector search.

User text reaches a Milvus expression only as an escaped string literal: injection strings stored as tags match
themselves and nothing else, and strings that cannot be tags are refused."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np
import pytest

from schema.filters import FilterError, SearchFilters, check_tag, milvus_string, parse_date
from schema.vectors import MilvusVectorStore, VectorStoreError, VideoFields
from tests.conftest import CLIPS
from tests.test_cli import Cli

DIM = 16
# Each is stored as a tag; a naive f-string expression would let it match more (or fail to parse).
INJECTIONS = [
    'x" or video_id >= 0 or tag == "',
    "x' or video_id >= 0 or tag == '",
    'x\\" or 1 == 1 or tag == \\"',
    'back\\slash\\',
    '" || true || "',
    "tag in [] or true",
    "{tag}",
    "ünïcødé 🎬",
    '"); drop collection --',
]
DAY = 86_400
T0 = int(datetime(2026, 11, 1, tzinfo=timezone.utc).timestamp())


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.normal(size=(n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# --- the pure parts ---------------------------------------------------------------------------------------------
def test_milvus_string_escapes_every_special_character():
    assert milvus_string('a"b') == r'"a\"b"'
    assert milvus_string("a'b") == r'"a\'b"'
    assert milvus_string("a\\b") == r'"a\\b"'
    assert milvus_string("ünï {x}") == '"ünï {x}"'
    with pytest.raises(FilterError):
        milvus_string("a\nb")


@pytest.mark.parametrize("bad", ["", "   ", "a\nb", "a\x00b", "x" * 65, "zero\u200bwidth", 5])
def test_invalid_tags_are_refused(bad):
    with pytest.raises(FilterError):
        check_tag(bad)
    with pytest.raises(FilterError):
        SearchFilters(tags=(bad,))


def test_tags_are_normalised_not_rewritten():
    assert check_tag("  drone  ") == "drone"
    assert check_tag("e\u0301") == "\u00e9"  # NFC: the same text typed two ways is one tag


def test_dates_and_ranges():
    assert parse_date("2026-11-01") == T0
    assert parse_date("2026-11-01", end_of_day=True) == T0 + DAY - 1
    assert parse_date("2026-11-01T02:00:00Z") == T0 + 7200
    assert parse_date("2026-11-01T02:00:00+02:00") == T0
    for bad in ("yesterday", "2026-13-01", "1 or 1=1", ""):
        with pytest.raises(FilterError):
            parse_date(bad)
    with pytest.raises(FilterError):
        SearchFilters(min_duration=5, max_duration=1)
    with pytest.raises(FilterError):
        SearchFilters(ingested_after=T0 + 1, ingested_before=T0)
    with pytest.raises(FilterError):
        SearchFilters(min_duration=float("nan"))
    with pytest.raises(FilterError):
        SearchFilters(tags="drone")  # a string is not a list of tags (it would be read letter by letter)
    assert not SearchFilters().active and SearchFilters().expression() == ""
    assert SearchFilters(max_duration=10).expression() == "duration_s >= 0.000000000 and duration_s <= 10.000000000"


# --- the real path: Milvus Lite evaluates the expression ----------------------------------------------------------
@pytest.fixture
def store(settings):
    s = MilvusVectorStore.open(settings, DIM, "test-model")
    yield s
    s.drop()
    s.close()


@pytest.fixture
def filled(store):
    """One video per tag (plain tags and every injection string), with spread durations and ingest days."""
    rng = np.random.default_rng(0)
    tags = ["drone", "interviews", "", *INJECTIONS]
    rows = []
    for i, tag in enumerate(tags * 3):
        duration = None if i == 5 else float(i * 2.5)  # one video whose duration is unknown
        rows.append((i + 1, VideoFields(duration, T0 + (i % 10) * DAY, tag)))
    store.add([r[0] for r in rows], unit(rng, len(rows)), [r[1] for r in rows])
    store.flush()
    return store, dict(rows)


def _search(store, filters: SearchFilters, k: int = 100) -> set[int]:
    rng = np.random.default_rng(1)
    return {h.video_id for h in store.search(unit(rng, 1)[0], k, filters)}


def test_each_injection_string_matches_itself_and_nothing_else(filled):
    store, fields = filled
    for tag in INJECTIONS + ["drone"]:
        expected = {v for v, f in fields.items() if f.tag == tag}
        assert len(expected) == 3
        assert _search(store, SearchFilters(tags=(tag,))) == expected, tag
    # Not stored as tags: they must match nothing (not everything, not an error).
    for probe in ['" or "" == "', "' or '' == '", 'drone" or tag != "', "drone' or tag != 'x", "*", "%"]:
        assert _search(store, SearchFilters(tags=(probe,))) == set(), probe
    both = _search(store, SearchFilters(tags=(INJECTIONS[0], "drone")))
    assert both == {v for v, f in fields.items() if f.tag in (INJECTIONS[0], "drone")}


def test_duration_and_date_ranges_match_exactly(filled):
    store, fields = filled
    cases = [
        SearchFilters(min_duration=10),
        SearchFilters(max_duration=10),  # the unknown duration never satisfies a duration condition
        SearchFilters(min_duration=7.5, max_duration=20),  # inclusive bounds, given as stored (DOUBLE)
        SearchFilters(ingested_after=T0 + 3 * DAY),
        SearchFilters(ingested_before=parse_date("2026-11-04", end_of_day=True)),
        SearchFilters(min_duration=5, ingested_after=T0 + 2 * DAY, ingested_before=T0 + 8 * DAY,
                      tags=("drone", "interviews", INJECTIONS[3])),
    ]
    for filters in cases:
        expected = {v for v, f in fields.items() if filters.accepts(f.duration, f.ingested_at, f.tag)}
        assert 0 < len(expected) < len(fields), filters
        assert _search(store, filters) == expected, filters


def test_filtered_search_returns_k_matches_when_that_many_exist(filled):
    # Filtering happens inside the search, not on the top k afterwards: asking for 3 drone videos among 36 gives 3.
    store, fields = filled
    rng = np.random.default_rng(2)
    for _ in range(5):
        hits = store.search(unit(rng, 1)[0], 3, SearchFilters(tags=("drone",)))
        assert len(hits) == 3 and all(fields[h.video_id].tag == "drone" for h in hits)
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True)


def test_collection_without_filter_fields_says_to_reindex(settings):
    # A collection made by a version before filters: unfiltered search and inserts still work, a filter is refused
    # with the way out.
    from pymilvus import DataType, MilvusClient

    from schema.vectors import PROP_DIM, PROP_MODEL, connect

    client = connect(settings)
    schema = MilvusClient.create_schema(auto_id=True, enable_dynamic_field=False)
    schema.add_field("pk", DataType.INT64, is_primary=True)
    schema.add_field("video_id", DataType.INT64)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
    index = client.prepare_index_params()
    index.add_index(field_name="vector", index_type="FLAT", metric_type="IP")
    client.create_collection(settings.collection, schema=schema, index_params=index,
                             properties={PROP_MODEL: "test-model", PROP_DIM: str(DIM)})
    client.close()
    store = MilvusVectorStore.open(settings, DIM, "test-model")
    try:
        assert not store.has_filter_fields
        rng = np.random.default_rng(3)
        store.add([1, 2], unit(rng, 2), [VideoFields(3.0, T0, "drone")] * 2)
        store.flush()
        assert {h.video_id for h in store.search(unit(rng, 1)[0], 5)} == {1, 2}
        with pytest.raises(VectorStoreError, match="vidsearch reindex"):
            store.search(unit(rng, 1)[0], 5, SearchFilters(tags=("drone",)))
    finally:
        store.drop()
        store.close()


# --- through the product: `vidsearch ingest --tag`, `vidsearch search` with filters ------------------------------
@pytest.fixture
def cli(tmp_path, tiny_model, zygote):
    runner = Cli(tmp_path / "home", tiny_model, zygote)
    yield runner
    runner.stop()


def test_cli_ingest_tag_and_filtered_search(cli, clips_dir, tmp_path):
    red, blue = clips_dir / "red_circle.mp4", clips_dir / "blue_triangle.mkv"
    assert "Ingested: 1" in cli("ingest", str(red), "--wait", "--tag", INJECTIONS[0]).stdout
    assert "Ingested: 1" in cli("ingest", str(blue), "--wait", "--tag", "shapes").stdout
    assert "Ingested: 1" in cli("ingest", str(clips_dir / CLIPS[1][2]), "--wait").stdout  # no tag

    def titles(*args: str) -> list[str]:
        return [r["title"] for r in json.loads(cli("search", "a red circle", "-k", "10", "--json", *args).stdout)]

    assert titles("--tag", INJECTIONS[0]) == ["red_circle.mp4"]
    assert titles("--tag", "shapes") == ["blue_triangle.mkv"]
    assert sorted(titles("--tag", "shapes", "--tag", INJECTIONS[0])) == ["blue_triangle.mkv", "red_circle.mp4"]
    assert titles("--tag", 'shapes" or tag != "') == []
    assert len(titles()) == 3
    today = datetime.now(timezone.utc).date()
    assert len(titles("--since", today.isoformat())) == 3
    assert titles("--until", "2000-01-01") == []
    assert titles("--min-duration", "100") == []
    listed = {v["title"]: v["tag"] for v in json.loads(cli("list", "--json").stdout)}
    assert listed == {"red_circle.mp4": INJECTIONS[0], "blue_triangle.mkv": "shapes", CLIPS[1][2]: None}
    assert "[shapes]" in cli("list").stdout

    refused = cli("search", "x", "--since", "last week", expect=1)
    assert "is not a date" in refused.stderr and "Traceback" not in refused.stderr
    bad_tag = cli("ingest", str(red), "--tag", "two\nlines", expect=1)
    assert "control" in bad_tag.stderr and "Traceback" not in bad_tag.stderr
