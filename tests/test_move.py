"""`vidsearch move-library`: a real library (clips ingested by the real worker, speech/text-like BM25 segments)
moved from SQLite and a Milvus Lite server to a real PostgreSQL server, another Milvus Lite server and a folder;
interrupted and resumed; refused where it must be."""

from __future__ import annotations

import json
import os
import socket
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.pool import NullPool

from ingest.library import enqueue_file, sha256_file
from ingest.move import MoveError, Plan, destination_settings, move_library
from ingest.move.catalog import TABLES
from ingest.move.vectors import library_collections
from ingest.runtime import Runtime
from ingest.worker import Worker
from schema.catalog import ExpertState
from schema.vectors import connect, video_counts
from search_app.search import search_text

OWNED = ("red_circle.mp4", "green_square.webm", "blue_triangle.mkv")
LINKED = "yellow_square.avi"
WORDS = {"red_circle.mp4": ["platform nine departs", "mind the gap"],
         "green_square.webm": ["harvest moon festival"],
         "blue_triangle.mkv": ["platform closed", "harvest report", "weather at noon"]}
QUERIES = ("a red circle", "a blue triangle", "a yellow square")


@pytest.fixture
def other_milvus(tmp_path):
    """A second Milvus Lite server (its own data folder and port): the destination endpoint."""
    from schema.lite_server import ensure_server, stop_server

    data = tmp_path / "other-milvus" / "milvus"
    yield ensure_server(data)
    stop_server(data)


@pytest.fixture
def library(runtime, clips_dir):
    """Four clips ingested by the real worker (one in place, with --link) and text segments for three of them in
    the text expert's BM25 collection, recorded in the catalog as the expert stage records them."""
    catalog, settings = runtime.catalog, runtime.settings
    for name in OWNED:
        enqueue_file(catalog, settings, clips_dir / name)
    enqueue_file(catalog, settings, clips_dir / LINKED, link=True)
    with Worker.from_settings(catalog, runtime.store, runtime.encoder, settings) as worker:
        assert all(r.ok for r in worker.run_until_empty())
    ids = {v.title: v.id for v in catalog.list_videos()}
    text = runtime.store.lexical("text")
    catalog.queue_experts_for(list(ids.values()), "text")
    for run in catalog.claim_expert_runs(16):
        title = next(t for t, i in ids.items() if i == run.video_id)
        segments = [SimpleNamespace(start=float(i), end=i + 1.0, text=t) for i, t in enumerate(WORDS.get(title, []))]
        stored = len(text.add(run.video_id, segments))  # (the primary keys of the rows written)
        catalog.finish_expert_run(run.id, ExpertState.DONE if stored else ExpertState.UNAVAILABLE, segments=stored,
                                  reason=None if stored else "no text")
    text.flush()
    return runtime


def _rows(url: str) -> dict[str, list[dict]]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return {t.name: [dict(r) for r in conn.execute(select(t).order_by(*t.primary_key.columns)).mappings()]
                    for t in TABLES}
    finally:
        engine.dispose()


def _ranking(runtime: Runtime) -> dict[str, list[tuple[int, float]]]:
    lexical = runtime.store.lexical("text")
    out = {q: [(r.video_id, round(r.score, 5)) for r in search_text(runtime.catalog, runtime.store, runtime.encoder,
                                                                     q, k=4)] for q in QUERIES}
    out["text:platform harvest"] = [(h.video_id, round(h.score, 4)) for h in lexical.search("platform harvest", 5)]
    fused = search_text(runtime.catalog, runtime.store, runtime.encoder, "harvest festival", k=4,
                        experts={"text": lexical})
    out["fused"] = [(r.video_id, round(r.score, 4)) for r in fused]
    return out


def _collection_counts(settings) -> dict[str, Counter]:
    client = connect(settings)
    try:
        return {n: video_counts(client, n) for n in library_collections(settings) if client.has_collection(n)}
    finally:
        client.close()


def test_a_library_moves_to_postgres_another_milvus_and_a_folder_and_searches_the_same(
        library, postgres_url, other_milvus, tmp_path):
    settings = library.settings
    before = _ranking(library)
    assert all(before.values()) and len(before["text:platform harvest"]) == 4, before
    source_rows = _rows(settings.catalog_url)
    source_vectors = _collection_counts(settings)
    assert set(source_vectors) == {settings.collection, settings.collection + "_segments",
                                   settings.collection + "_text"}
    shared = tmp_path / "shared"
    plan = Plan(database_url=postgres_url, milvus_uri=other_milvus, storage=shared, batch=2)
    bars: list[str] = []

    def progress(desc, total):
        bars.append(desc)
        return SimpleNamespace(update=lambda n=1: None, close=lambda: None)

    report = move_library(settings, plan, progress=progress)
    assert report.findings == []  # doctor, at the destination
    assert not report.nothing_to_do
    assert {"catalog", "videos", settings.collection, settings.collection + "_text"} <= set(bars)
    assert report.settings == {"VIDSEARCH_DATABASE_URL": postgres_url, "VIDSEARCH_STORAGE": str(shared.resolve()),
                               "VIDSEARCH_MILVUS_URI": other_milvus}

    # The catalog: every row of every table, primary keys included; only owned files' paths changed.
    moved_rows = _rows(postgres_url)
    for table, rows in source_rows.items():
        if table == "videos":
            continue
        assert moved_rows[table] == rows, table
    by_id = {v["id"]: v for v in moved_rows["videos"]}
    assert sorted(by_id) == [v["id"] for v in source_rows["videos"]]
    for video in source_rows["videos"]:
        moved = by_id[video["id"]]
        assert {k: v for k, v in moved.items() if k != "stored_path"} == {k: v for k, v in video.items()
                                                                         if k != "stored_path"}
        if video["owned"]:
            assert Path(moved["stored_path"]) == shared / video["sha256"][:2] / Path(video["stored_path"]).name
            assert sha256_file(Path(moved["stored_path"])) == video["sha256"]
            assert Path(video["stored_path"]).is_file()  # the original is left in place
        else:  # ingested in place: stays where it is
            assert moved["stored_path"] == video["stored_path"]
    assert report.storage.copied == len(OWNED) and len(report.storage.linked) == 1

    # The vectors: the same collections, schema, index and properties (the model key), the same rows per video.
    moved_settings = destination_settings(settings, plan)
    assert _collection_counts(moved_settings) == source_vectors
    src, dst = connect(settings), connect(moved_settings)
    try:
        for name in source_vectors:
            a, b = src.describe_collection(name), dst.describe_collection(name)
            assert a["properties"] == b["properties"] and a["fields"] == b["fields"] and \
                a.get("functions") == b.get("functions"), name
            for index in src.list_indexes(name):
                keep = ("field_name", "index_type", "metric_type")
                assert {k: src.describe_index(name, index)[k] for k in keep} == \
                       {k: dst.describe_index(name, index)[k] for k in keep}
    finally:
        src.close()
        dst.close()

    # Searching the moved library ranks as the source did (appearance, BM25 text, and the two fused).
    moved = Runtime(moved_settings)
    try:
        assert _ranking(moved) == before
        # PostgreSQL's sequences continue past the copied ids.
        video, job = moved.catalog.add_video(sha256="f" * 64, title="new.mp4", stored_path="/x/new.mp4", owned=False,
                                             size_bytes=1)
        assert video.id == max(by_id) + 1 and job.id == max(j["id"] for j in source_rows["jobs"]) + 1
        moved.catalog.delete_video(video.id)
    finally:
        moved.close()

    again = move_library(settings, plan)
    assert again.nothing_to_do and again.findings == []


class Stop(Exception):
    pass


def _stop_after(stage: str, batches: int):
    seen = Counter()

    def hook(at: str, _name: str, _rows: int) -> None:
        seen[at] += 1
        if at == stage and seen[at] >= batches:
            raise Stop(f"interrupted in {stage}")

    return hook


def test_an_interrupted_move_resumes_without_duplicates_and_then_has_nothing_to_do(
        library, postgres_url, other_milvus, tmp_path):
    settings = library.settings
    source_rows, source_vectors = _rows(settings.catalog_url), _collection_counts(settings)
    postgres_url = postgres_url.replace("test@", "test:s3cret@")  # the test server trusts any password
    plan = Plan(database_url=postgres_url, milvus_uri=other_milvus, storage=tmp_path / "shared", batch=1)
    moved_settings = destination_settings(settings, plan)

    with pytest.raises(Stop):
        move_library(settings, plan, on_batch=_stop_after("catalog", 2))
    assert 0 < len(_rows(postgres_url)["videos"]) < len(source_rows["videos"])
    with pytest.raises(Stop):
        move_library(settings, plan, on_batch=_stop_after("storage", 1))
    with pytest.raises(Stop):
        move_library(settings, plan, on_batch=_stop_after("vectors", 2))
    partial = _collection_counts(moved_settings)
    assert sum(partial[settings.collection].values()) < sum(source_vectors[settings.collection].values())

    # Damage behind the move's back, as a run killed between a write and its record would leave it: a doubled
    # row in a collection already copied. The resumed run finds it by comparing counts per video.
    dst = connect(moved_settings)
    try:
        first = min(source_vectors[settings.collection])
        [row] = dst.query(settings.collection, filter=f"video_id == {first}",
                          output_fields=["video_id", "vector", "duration_s", "ingested_at", "tag"])
        dst.insert(settings.collection, [{k: v for k, v in row.items() if k != "pk"}])
    finally:
        dst.close()

    report = move_library(settings, plan)
    assert report.findings == [] and not report.nothing_to_do
    main = next(c for c in report.vectors.collections if c.name == settings.collection)
    assert main.copied == main.rows - 2 + 1  # went on after the 2 rows copied before; the doubled video again
    assert report.storage.copied == 0 and report.storage.already == len(OWNED)  # finished by the run before
    assert _collection_counts(moved_settings) == source_vectors  # each video once, its segments once
    moved_rows = _rows(postgres_url)
    assert {t: len(r) for t, r in moved_rows.items()} == {t: len(r) for t, r in source_rows.items()}
    assert [v["id"] for v in moved_rows["videos"]] == [v["id"] for v in source_rows["videos"]]
    owned = [v for v in moved_rows["videos"] if v["owned"]]
    assert all(Path(v["stored_path"]).is_relative_to((tmp_path / "shared").resolve()) for v in owned)
    assert not list((tmp_path / "shared").rglob(".incoming-*"))

    done = move_library(settings, plan)
    assert done.nothing_to_do and done.findings == []
    assert done.settings["VIDSEARCH_DATABASE_URL"] == postgres_url.replace("s3cret", "***")
    assert "s3cret" not in (settings.home_dir / "move-library.json").read_text()  # the state keeps no password


def test_refusals_say_what_to_fix(runtime, clips_dir, postgres_url, other_milvus, tmp_path):
    settings = runtime.settings
    with pytest.raises(MoveError, match="nothing to move"):
        move_library(settings, Plan())
    with pytest.raises(MoveError, match="not a database URL"):
        move_library(settings, Plan(database_url="not a url"))
    with pytest.raises(MoveError, match="cannot reach the destination database"):
        move_library(settings, Plan(database_url="postgresql+psycopg://test@127.0.0.1:1/none"))
    with pytest.raises(MoveError, match="the catalog in use now"):
        move_library(settings, Plan(database_url=settings.catalog_url))
    with pytest.raises(MoveError, match="not a Milvus endpoint"):
        move_library(settings, Plan(milvus_uri="milvus-host:19530"))
    with sock_closed_port() as port:
        with pytest.raises(MoveError, match="cannot reach the destination Milvus"):
            move_library(settings, Plan(milvus_uri=f"http://127.0.0.1:{port}"))
    with pytest.raises(MoveError, match="a folder or an s3://bucket/prefix URL"):
        move_library(settings, Plan(storage="ftp://host/videos"))
    with sock_closed_port() as port:  # an S3 endpoint nothing answers on
        with pytest.raises(MoveError, match="cannot be reached"):
            move_library(settings.model_copy(update={"s3_endpoint_url": f"http://127.0.0.1:{port}"}),
                         Plan(storage="s3://bucket/videos"))
    with pytest.raises(MoveError, match="endpoint in use now"):
        move_library(settings, Plan(milvus_uri=settings.milvus_uri))

    # A destination that holds something else is never written to.
    from schema.catalog import Catalog

    other = Catalog(postgres_url)
    other.add_video(sha256="e" * 64, title="theirs.mp4", stored_path="/x/theirs.mp4", owned=False, size_bytes=1)
    other.close()
    with pytest.raises(MoveError, match="is not empty"):
        move_library(settings, Plan(database_url=postgres_url))
    client = connect(destination_settings(settings, Plan(milvus_uri=other_milvus)))
    try:
        client.create_collection(settings.collection, dimension=8)
    finally:
        client.close()
    enqueue_file(runtime.catalog, settings, clips_dir / "red_circle.mp4")
    runtime.store.lexical("text")  # any collection of the library at the source
    runtime.store.milvus()
    with pytest.raises(MoveError, match=f"already has collection.*{settings.collection}"):
        move_library(settings, Plan(milvus_uri=other_milvus))

    # Running jobs: a live worker's are refused (stop it), a dead one's too (doctor --repair queues them again).
    [job] = runtime.catalog.claim_jobs(1, worker=f"{socket.gethostname()}:{os.getpid()}")
    with pytest.raises(MoveError, match="stop them first"):
        move_library(settings, Plan(storage=tmp_path / "shared"))
    runtime.catalog.requeue_jobs([job.id], count_attempt=False)
    runtime.catalog.claim_jobs(1, worker=f"{socket.gethostname()}:999999999")
    with pytest.raises(MoveError, match="doctor --repair"):
        move_library(settings, Plan(storage=tmp_path / "shared"))
    assert not (tmp_path / "shared").exists()


def test_a_row_the_destination_cannot_hold_is_reported_not_a_traceback(runtime, postgres_server):
    # videos.tag is a VARCHAR(256): SQLite keeps a longer one (it never checks lengths), PostgreSQL refuses it.
    runtime.catalog.add_video(sha256="d" * 64, title="long-tag.mp4", stored_path="/x/long-tag.mp4", owned=False,
                              size_bytes=3 << 30, tag="t" * 300)
    with pytest.raises(MoveError, match=r"refused videos rows 1\.\.1: .*too long"):
        move_library(runtime.settings, Plan(database_url=postgres_server.create_database()))


class sock_closed_port:  # noqa: N801  (a context manager used like a function)
    """A loopback port nothing listens on."""

    def __enter__(self) -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])

    def __exit__(self, *exc) -> None:
        pass


def test_move_library_command(tmp_path, tiny_model, zygote, clips_dir, postgres_url):
    """The command as a user runs it: embedded Milvus Lite and SQLite at the source."""
    from schema.lite_server import ensure_server, stop_server
    from tests.test_cli import Cli

    cli = Cli(tmp_path / "home", tiny_model, zygote)
    data = tmp_path / "other-milvus" / "milvus"
    uri = ensure_server(data)
    try:
        for name in ("red_circle.mp4", "blue_triangle.mkv", "green_square.webm"):
            cli("ingest", str(clips_dir / name), "--wait")
        before = json.loads(cli("search", "a red circle", "--json").stdout)

        bad = cli("move-library", "--to-database", "postgresql+psycopg://test@127.0.0.1:1/none", expect=1)
        assert bad.stderr.startswith("Error: cannot reach the destination database") and len(
            bad.stderr.strip().splitlines()) == 1
        moved = cli("move-library", "--to-database", postgres_url, "--to-milvus", uri, "--to-storage",
                    str(tmp_path / "shared"))
        assert f"VIDSEARCH_DATABASE_URL={postgres_url}" in moved.stdout
        assert f"VIDSEARCH_MILVUS_URI={uri}" in moved.stdout
        assert "3 files copied now" in moved.stdout
        assert "doctor at the destination: all consistent" in moved.stdout
        assert "Nothing to move: already moved" in cli("move-library", "--to-database", postgres_url,
                                                       "--to-milvus", uri, "--to-storage",
                                                       str(tmp_path / "shared")).stdout

        there = {"VIDSEARCH_DATABASE_URL": postgres_url, "VIDSEARCH_MILVUS_URI": uri}
        after = json.loads(cli("search", "a red circle", "--json", **there).stdout)
        assert [(r["video_id"], round(r["score"], 5)) for r in after] == \
               [(r["video_id"], round(r["score"], 5)) for r in before]
        assert all(Path(r["path"]).is_relative_to((tmp_path / "shared").resolve()) for r in after)
        assert "All consistent" in cli("doctor", **there).stdout
    finally:
        cli.stop()
        stop_server(data)


def test_a_library_moves_its_files_into_s3_and_a_worker_on_that_store_reads_them(library, postgres_url, s3_bucket,
                                                                                 clips_dir, monkeypatch):
    """SQLite + local files -> PostgreSQL + a real S3 server (moto's, on 127.0.0.1): the videos are uploaded under
    the keys ingest gives them, the catalog points at the objects, doctor (with the store) is clean, and the moved
    library decodes from S3: a video queued again is processed from its object."""
    from schema.storage import is_remote, key_for

    settings = library.settings.model_copy(update={"s3_endpoint_url": s3_bucket.endpoint})
    where = f"s3://{s3_bucket.name}/library"
    report = move_library(settings, Plan(database_url=postgres_url, storage=where))
    assert report.storage.copied == len(OWNED) and len(report.storage.linked) == 1
    assert report.findings == [] and report.settings["VIDSEARCH_STORAGE"] == where
    moved = Runtime(settings.model_copy(update={"database_url": postgres_url, "storage": where}))
    try:
        videos = moved.catalog.list_videos()
        owned = [v for v in videos if v.owned]
        assert all(is_remote(v.stored_path) for v in owned)
        assert s3_bucket.keys() == sorted(f"library/{key_for(v.sha256, Path(v.stored_path).suffix)}" for v in owned)
        again = move_library(settings, Plan(database_url=postgres_url, storage=where))
        assert again.nothing_to_do
        # The moved library works from the store: one video processed again, its file read from S3.
        victim = owned[0]
        moved.catalog.requeue_video(victim.id)
        with Worker.from_settings(moved.catalog, moved.store, moved.encoder, moved.settings) as worker:
            assert [r.ok for r in worker.run_until_empty()] == [True]
        assert moved.store.vector_counts()[victim.id] == 1
    finally:
        moved.close()
