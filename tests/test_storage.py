"""Shared video storage (schema/storage.py): S3-compatible object storage against a real S3 server on 127.0.0.1
(moto's standalone server, tests/s3.py), and a shared folder outside the data folder. Real files, real PyAV
decoding, the real tiny CLIP model, a real Milvus Lite server."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ingest.doctor import examine
from ingest.experts import AudioInput, Expert, TextSegment
from ingest.library import LinkRefused, Outcome, delete_video, enqueue_file
from ingest.runtime import Runtime
from ingest.worker import LEASE_SECONDS, Worker
from schema.catalog import VideoStatus
from schema.settings import Settings
from schema.storage import FolderStorage, S3Storage, VideoCache, is_remote, key_for, open_storage
from search_app.media import MalformedRange, Unsatisfiable, parse_range
from search_app.present import media_url, thumbnail_url
from tests.conftest import drop_stored_segments
from tests.procs import serve_in_thread
from tests.s3 import Bucket, free_port

CLIPS = ("red_circle.mp4", "blue_triangle.mkv", "yellow_square.avi")


def with_storage(settings: Settings, storage: str, **extra) -> Settings:
    return Settings(**{**settings.model_dump(), "storage": storage, **extra})


def s3_settings(settings: Settings, bucket: Bucket, **extra) -> Settings:
    return with_storage(settings, f"s3://{bucket.name}/library", s3_endpoint_url=bucket.endpoint, **extra)


@contextlib.contextmanager
def serve(runtime: Runtime, *, worker: bool) -> Iterator[str]:
    from search_app.web import create_app, start_worker_thread

    stop = threading.Event()
    thread = start_worker_thread(runtime, stop) if worker else None
    try:
        with serve_in_thread(create_app(runtime), join_timeout=30) as url:
            yield url
    finally:
        stop.set()
        if thread is not None:
            thread.join(timeout=60)


# --- units --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("header, span", [
    ("bytes=0-99", (0, 100)),
    ("bytes=100-", (100, 1000)),
    ("bytes=-10", (990, 1000)),
    ("bytes=0-", None),  # the whole file: a 200
    ("bytes=990-5000", (990, 1000)),
    ("bytes=0-1, 10-19", (0, 20)),  # several ranges: the one span covering them
])
def test_range_headers(header, span):
    assert parse_range(header, 1000) == span


@pytest.mark.parametrize("header, error", [
    ("bytes=1000-", Unsatisfiable), ("bytes=5000-6000", Unsatisfiable), ("bytes=-0", Unsatisfiable),
    ("items=0-1", MalformedRange), ("bytes=abc", MalformedRange), ("bytes=9-2", MalformedRange),
    ("bytes=-", MalformedRange),
])
def test_bad_range_headers(header, error):
    with pytest.raises(error):
        parse_range(header, 1000)


def test_storage_setting(tmp_path):
    assert Settings(home=tmp_path).storage is None
    assert Settings(home=tmp_path, storage="").storage is None
    assert open_storage(Settings(home=tmp_path)).url == str(tmp_path.resolve() / "videos")
    shared = Settings(home=tmp_path / "home", storage=str(tmp_path / "shared"))
    assert not shared.storage_is_remote and shared.videos_dir == (tmp_path / "shared").resolve()
    s3 = Settings(home=tmp_path, storage="s3://bucket/some/prefix/")
    assert s3.storage_is_remote and s3.storage == "s3://bucket/some/prefix"
    assert open_storage(s3).location("ab/x.mp4") == "s3://bucket/some/prefix/ab/x.mp4"
    for bad in ("s3://", "http://example.com/videos", "gs://bucket"):
        with pytest.raises(ValueError):
            Settings(home=tmp_path, storage=bad)
    assert is_remote("s3://b/k") and not is_remote("/data/videos/ab/x.mp4")


def test_cache_is_bounded_and_never_evicts_a_copy_in_use(tmp_path):
    sources = {}
    for i in range(4):
        path = tmp_path / f"src{i}"
        path.write_bytes(bytes([i]) * 1000)
        sources[f"s3://b/p/{i:02x}/{str(i) * 64}.mp4"] = path
    cache = VideoCache(tmp_path / "cache", max_bytes=2500)
    fetched = []

    def fetcher(location):
        def download(dest: Path) -> None:
            fetched.append(location)
            shutil.copyfile(sources[location], dest)
        return download

    locations = list(sources)
    with contextlib.ExitStack() as held:
        paths = [held.enter_context(cache.use(loc, fetcher(loc))) for loc in locations]
        assert all(p.exists() for p in paths)  # all four in use: kept, over the bound
        assert cache.total_bytes() == 4000
    assert cache.total_bytes() <= 2500  # released (last first): the least recently used evicted
    assert {p.name for p in cache.entries()} == {paths[0].name, paths[1].name}
    with cache.use(locations[0], fetcher(locations[0])) as again:
        assert again.read_bytes() == sources[locations[0]].read_bytes()
    assert fetched == locations  # the cached copy was used, not fetched again
    with cache.use(locations[3], fetcher(locations[3])):
        pass
    assert fetched == [*locations, locations[3]] and cache.total_bytes() <= 2500
    assert {p.name for p in cache.entries()} == {paths[0].name, paths[3].name}
    assert not list((tmp_path / "cache").glob(".part-*"))


def _fetch_in_a_process(folder: str, location: str, source: str, log: str) -> None:
    """One process of the test below: use the cached copy of `location`, fetching it (slowly) if absent."""
    def download(dest: Path) -> None:
        with open(log, "a") as handle:
            handle.write("x")
        time.sleep(0.5)  # the others arrive while this download is under way
        shutil.copyfile(source, dest)

    with VideoCache(Path(folder), 1 << 30).use(location, download) as path:
        if path.read_bytes() != Path(source).read_bytes():
            raise SystemExit(3)


def test_processes_on_one_host_share_the_cache_and_fetch_a_video_once(tmp_path):
    import multiprocessing

    source = tmp_path / "video"
    source.write_bytes(os.urandom(300_000))
    log = tmp_path / "downloads"
    location = f"s3://b/p/ab/{'ab' * 32}.mp4"
    context = multiprocessing.get_context("fork")  # plain file work in the children: fork is enough
    procs = [context.Process(target=_fetch_in_a_process, args=(str(tmp_path / "cache"), location, str(source),
                                                               str(log))) for _ in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=60)
    assert [proc.exitcode for proc in procs] == [0, 0, 0, 0]
    assert log.read_text() == "x"  # one download; the others waited for it and used it
    assert [p.name for p in VideoCache(tmp_path / "cache", 0).entries()] == [f"{'ab' * 32}.mp4"]
    assert not list((tmp_path / "cache").glob(".part-*"))


# --- S3 -----------------------------------------------------------------------------------------------------------


def test_s3_library_decodes_through_the_bounded_cache_and_doctor_checks_the_store(settings, s3_bucket, clips_dir):
    sizes = [os.path.getsize(clips_dir / name) for name in CLIPS]
    bound = max(sizes) + min(sizes) // 2  # room for one video and a bit, less than all three
    s = s3_settings(settings, s3_bucket, storage_cache_gb=bound / 2**30)
    rt = Runtime(s)
    try:
        ids = {}
        for name in CLIPS:
            r = enqueue_file(rt.catalog, s, clips_dir / name, storage=rt.storage)
            assert r.outcome is Outcome.QUEUED
            video = rt.catalog.get_video(r.video_id)
            assert video.stored_path == f"s3://{s3_bucket.name}/library/{key_for(video.sha256, Path(name).suffix)}"
            assert video.size_bytes == os.path.getsize(clips_dir / name)
            ids[name] = r.video_id
        assert s3_bucket.keys() == sorted(f"library/{rt.storage.key_of(rt.catalog.get_video(v).stored_path)}"
                                          for v in ids.values())
        assert not list(s.videos_dir.rglob("*.*"))  # nothing stored locally
        shutil.rmtree(s.storage_cache_dir)  # as on another host: the worker must download them

        with Worker.from_settings(rt.catalog, rt.store, rt.encoder, s) as worker:
            results = worker.run_until_empty()
        assert sorted(r.video_id for r in results if r.ok) == sorted(ids.values()), results
        assert VideoCache(s.storage_cache_dir, 0).total_bytes() <= bound  # the cache kept its bound
        hits = rt.store.search(rt.encoder.embed_text("a blue triangle"), 3)
        assert hits[0].video_id == ids["blue_triangle.mkv"]

        assert examine(rt.catalog, rt.store, s, lease_seconds=LEASE_SECONDS, storage=rt.storage) == []

        # Deleting a video deletes its object (and its cached copy).
        red = rt.catalog.get_video(ids["red_circle.mp4"])
        delete_video(rt.catalog, rt.store, red.id, s.thumbnails_dir, storage=rt.storage)
        assert f"library/{rt.storage.key_of(red.stored_path)}" not in s3_bucket.keys()
        assert not rt.storage.cache.path_for(red.stored_path).exists()

        # An object removed behind vidsearch's back: doctor finds it, --repair fails the video.
        yellow = rt.catalog.get_video(ids["yellow_square.avi"])
        s3_bucket.client().delete_object(Bucket=s3_bucket.name, Key=f"library/{rt.storage.key_of(yellow.stored_path)}")
        [finding] = examine(rt.catalog, rt.store, s, lease_seconds=LEASE_SECONDS, storage=rt.storage)
        assert (finding.kind, finding.video_ids) == ("missing_files", [yellow.id])
        examine(rt.catalog, rt.store, s, lease_seconds=LEASE_SECONDS, storage=rt.storage, repair=True)
        assert rt.catalog.get_video(yellow.id).status is VideoStatus.FAILED

        # A store that cannot be reached is reported as such; its videos are not taken for missing.
        down = with_storage(s, s.storage, s3_endpoint_url=f"http://127.0.0.1:{free_port()}")
        started = time.monotonic()
        findings = examine(rt.catalog, rt.store, down, lease_seconds=LEASE_SECONDS, repair=True)
        assert [f.kind for f in findings] == ["storage_unreachable"] and not findings[0].repaired
        assert "cannot be reached" in findings[0].detail
        assert time.monotonic() - started < 60
        assert rt.catalog.get_video(ids["blue_triangle.mkv"]).status is VideoStatus.READY

        # Deleting while the store is down: the video goes all the same, its object is left behind (logged).
        blue = rt.catalog.get_video(ids["blue_triangle.mkv"])
        assert delete_video(rt.catalog, rt.store, blue.id, s.thumbnails_dir, storage=open_storage(down)) is not None
        assert rt.catalog.get_video(blue.id) is None
        assert f"library/{rt.storage.key_of(blue.stored_path)}" in s3_bucket.keys()
    finally:
        rt.close()


def test_a_missing_object_fails_its_job_alone(settings, s3_bucket, clips_dir):
    s = s3_settings(settings, s3_bucket)
    rt = Runtime(s)
    try:
        gone = enqueue_file(rt.catalog, s, clips_dir / "red_circle.mp4", storage=rt.storage)
        kept = enqueue_file(rt.catalog, s, clips_dir / "green_circle.mov", storage=rt.storage)
        video = rt.catalog.get_video(gone.video_id)
        s3_bucket.client().delete_object(Bucket=s3_bucket.name, Key=f"library/{rt.storage.key_of(video.stored_path)}")
        shutil.rmtree(s.storage_cache_dir)
        with Worker.from_settings(rt.catalog, rt.store, rt.encoder, s) as worker:
            results = {r.video_id: r for r in worker.run_until_empty()}
        assert results[kept.video_id].ok
        assert "missing from the object store" in results[gone.video_id].error
    finally:
        rt.close()


def test_an_unreachable_store_keeps_jobs_waiting_without_counting_attempts(settings, s3_bucket, clips_dir):
    from schema.catalog import JobState
    from schema.storage import StorageError

    s = s3_settings(settings, s3_bucket)
    rt = Runtime(s)
    try:
        r = enqueue_file(rt.catalog, s, clips_dir / "red_circle.mp4", storage=rt.storage)
        shutil.rmtree(s.storage_cache_dir)
        down = with_storage(s, s.storage, s3_endpoint_url=f"http://127.0.0.1:{free_port()}")
        with Worker.from_settings(rt.catalog, rt.store, rt.encoder, down) as worker, pytest.raises(StorageError):
            worker.run_once()
        job = rt.catalog.get_job(r.job_id)
        assert (job.state, job.attempts) == (JobState.QUEUED, 0)
        assert "waiting for the video store" in rt.catalog.get_video(r.video_id).error
        with Worker.from_settings(rt.catalog, rt.store, rt.encoder, s) as worker:  # the store is back
            [result] = worker.run_until_empty()
        assert result.ok and rt.catalog.get_video(r.video_id).status is VideoStatus.READY
    finally:
        rt.close()


def test_s3_over_http_upload_search_media_ranges_and_delete(settings, s3_bucket, clips_dir):
    s = s3_settings(settings, s3_bucket)
    rt = Runtime(s)
    try:
        with serve(rt, worker=True) as url, httpx.Client(base_url=url, timeout=120) as client:
            uploads = {}
            for name in ("red_circle.mp4", "blue_triangle.mkv"):
                with open(clips_dir / name, "rb") as handle:
                    response = client.post("/api/videos", files={"file": (name, handle, "application/octet-stream")})
                assert response.status_code == 201, response.text
                uploads[name] = response.json()
            deadline = time.monotonic() + 180
            for upload in uploads.values():
                while (job := client.get(f"/api/jobs/{upload['job_id']}").json())["state"] not in ("done", "failed"):
                    assert time.monotonic() < deadline, job
                    time.sleep(0.2)
                assert job["state"] == "done", job
            [top] = client.post("/api/search", json={"text": "a red circle", "k": 1}).json()["results"]
            assert top["title"] == "red_circle.mp4" and top["media_url"].startswith("/media/")
            assert top["thumbnail_url"] and client.get(top["thumbnail_url"]).status_code == 200  # made at decode

            # A video indexed before segment vectors were stored: its timeline decodes it again, from the store.
            drop_stored_segments(rt, [top["video_id"]])
            shutil.rmtree(s.storage_cache_dir)
            timeline = client.get(f"/api/videos/{top['video_id']}/timeline", params={"text": "a red circle"})
            assert timeline.status_code == 200 and timeline.json()["source"] == "computed", timeline.text
            data = (clips_dir / "red_circle.mp4").read_bytes()
            size = len(data)
            media = top["media_url"]

            whole = client.get(media)
            assert whole.status_code == 200 and whole.content == data
            assert whole.headers["accept-ranges"] == "bytes" and whole.headers["content-type"] == "video/mp4"
            assert whole.headers["x-content-type-options"] == "nosniff"
            part = client.get(media, headers={"Range": "bytes=100-1099"})
            assert part.status_code == 206 and part.content == data[100:1100]
            assert part.headers["content-range"] == f"bytes 100-1099/{size}"
            assert part.headers["content-length"] == "1000"
            tail = client.get(media, headers={"Range": "bytes=-64"})
            assert tail.status_code == 206 and tail.content == data[-64:]
            assert tail.headers["content-range"] == f"bytes {size - 64}-{size - 1}/{size}"
            bad = client.get(media, headers={"Range": f"bytes={size}-"})
            assert bad.status_code == 416 and bad.headers["content-range"] == f"bytes */{size}"
            head = client.head(media, headers={"Range": "bytes=0-9"})
            assert head.status_code == 206 and head.headers["content-length"] == "10" and not head.content
            assert client.get("/media/../catalog.db").status_code == 404
            assert client.get(f"/media/{'ab' * 33}.mp4").status_code == 404
            assert client.get(f"/media/ab/{'ab' * 32}.mp4").status_code == 404  # a key of no stored object

            video_id = uploads["red_circle.mp4"]["video_id"]
            stored = rt.catalog.get_video(video_id).stored_path
            assert client.delete(f"/api/videos/{video_id}").status_code == 200
            assert f"library/{rt.storage.key_of(stored)}" not in s3_bucket.keys()
            assert client.get(media).status_code == 404
    finally:
        rt.close()


class Listening(Expert):
    """A speech expert that reports the length of the audio it was given (the real decoding, no engine). At module
    level: the stage's spawned processes unpickle it from here."""

    name = "speech"

    @property
    def needs(self) -> AudioInput:
        return AudioInput(16000)

    def load(self) -> None:
        pass

    def transcribe(self, data) -> list[TextSegment]:
        return [TextSegment(0.0, data.duration, f"heard {data.duration:.1f} seconds")]


def test_experts_read_videos_in_object_storage_from_the_cache(settings, s3_bucket, tmp_path):
    from ingest.expert_stage import ExpertStage
    from schema.catalog import ExpertState
    from tests.test_audio import write_clip

    s = s3_settings(settings, s3_bucket)
    rt = Runtime(s)
    clip = write_clip(tmp_path / "tone.mkv", 2.0, audio={"codec": "pcm_s16le", "layout": "mono", "rate": 16000})
    rows: dict[int, list] = {}

    class Collection:
        def add(self, video_id, segments) -> list[int]:
            rows[video_id] = list(segments)
            return list(range(len(segments)))

        def delete(self, video_ids) -> None:
            for v in video_ids:
                rows.pop(v, None)

        def delete_rows(self, pks) -> None:
            pass

        def delete_other_rows(self, video_id, keep) -> None:
            pass

        def flush(self) -> None:
            pass

    try:
        r = enqueue_file(rt.catalog, s, clip, storage=rt.storage)
        assert is_remote(rt.catalog.get_video(r.video_id).stored_path)
        rt.catalog.claim_jobs(1)
        rt.catalog.finish_jobs([(r.job_id, {})], experts=["speech"])
        shutil.rmtree(s.storage_cache_dir)  # another host's worker: nothing cached
        stage = ExpertStage(rt.catalog, lambda _name: Collection(), lambda _name: Listening(), storage=rt.storage)
        try:
            [result] = stage.run_once()
        finally:
            stage.close()
        assert result.state == ExpertState.DONE, result.reason
        [segment] = rows[r.video_id]
        assert segment.text == "heard 2.0 seconds"
    finally:
        rt.close()


def test_link_is_refused_with_object_storage(settings, s3_bucket, clips_dir, monkeypatch):
    from typer.testing import CliRunner

    from search_app.cli import app

    s = s3_settings(settings, s3_bucket)
    rt = Runtime(s)
    try:
        with pytest.raises(LinkRefused, match="--link cannot be used with object storage"):
            enqueue_file(rt.catalog, s, clips_dir / "red_circle.mp4", link=True, storage=rt.storage)
        assert rt.catalog.list_videos() == [] and s3_bucket.keys() == []
    finally:
        rt.close()
    for name, value in {"VIDSEARCH_HOME": str(s.home), "VIDSEARCH_STORAGE": s.storage,
                        "VIDSEARCH_S3_ENDPOINT_URL": s3_bucket.endpoint}.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(app, ["ingest", "--link", str(clips_dir / "red_circle.mp4")])
    assert result.exit_code == 2, result.output
    assert "--link cannot be used with object storage" in result.output
    assert s3_bucket.keys() == []


def test_the_s3_storage_module_reads_ranges_and_sizes(tmp_path, s3_bucket):
    storage = S3Storage(f"s3://{s3_bucket.name}/p", endpoint_url=s3_bucket.endpoint,
                        cache=VideoCache(tmp_path / "cache", 1 << 20))
    src = tmp_path / "blob"
    src.write_bytes(os.urandom(5000))
    location = storage.put(src, "cd/" + "cd" * 32 + ".webm")
    assert storage.exists(location) and storage.size(location) == 5000
    assert storage.read_range(location, 4990, 5000) == src.read_bytes()[-10:]
    with storage.open(location) as handle:
        handle.seek(100)
        assert handle.read(10) == src.read_bytes()[100:110]
    assert storage.sizes() == {location: 5000}
    storage.delete(location)
    storage.delete(location)  # already gone: fine
    assert not storage.exists(location) and storage.sizes() == {}


# --- a shared folder ----------------------------------------------------------------------------------------------


def test_a_shared_folder_serves_several_hosts(settings, tmp_path, clips_dir):
    shared = tmp_path / "mnt" / "shared-videos"  # outside both data folders, like an NFS mount
    catalog_url = f"sqlite:///{tmp_path / 'shared-catalog.db'}"  # the hosts share one catalog (PostgreSQL, usually)
    host_a = with_storage(settings, str(shared), home=tmp_path / "host-a", database_url=catalog_url)
    host_b = with_storage(settings, str(shared), home=tmp_path / "host-b", database_url=catalog_url)
    a, b = Runtime(host_a), Runtime(host_b)
    try:
        assert isinstance(a.storage, FolderStorage) and a.storage.root == shared.resolve()
        r = enqueue_file(a.catalog, host_a, clips_dir / "green_square.webm", storage=a.storage)
        video = a.catalog.get_video(r.video_id)
        assert Path(video.stored_path).parent.parent == shared.resolve()
        assert not (tmp_path / "host-a" / "videos").exists() or not any((tmp_path / "host-a" / "videos").iterdir())
        with Worker.from_settings(b.catalog, b.store, b.encoder, host_b) as worker:  # another host decodes it
            [result] = worker.run_until_empty()
        assert result.ok, result
        assert examine(b.catalog, b.store, host_b, lease_seconds=LEASE_SECONDS, storage=b.storage) == []
        # The thumbnails host b made are in the shared folder: host a shows them.
        assert host_a.thumbnails_dir == host_b.thumbnails_dir == shared.resolve() / "thumbnails"
        assert thumbnail_url(a, video.sha256) is not None
        url = media_url(b, video.stored_path)
        assert url == f"/media/{a.storage.key_of(video.stored_path)}"
        data = (clips_dir / "green_square.webm").read_bytes()
        with serve(b, worker=False) as base, httpx.Client(base_url=base, timeout=60) as client:
            part = client.get(url, headers={"Range": "bytes=10-19"})
            assert part.status_code == 206 and part.content == data[10:20]
            assert client.get(url, headers={"Range": f"bytes={len(data)}-"}).status_code == 416

        # The mount gone: doctor says the folder cannot be read and fails no video.
        shared.rename(tmp_path / "unmounted")
        findings = examine(b.catalog, b.store, host_b, lease_seconds=LEASE_SECONDS, storage=b.storage, repair=True)
        assert [f.kind for f in findings] == ["storage_unreachable"]
        assert b.catalog.get_video(video.id).status is VideoStatus.READY
    finally:
        a.close()
        b.close()


def test_thumbnails_made_on_one_host_are_shown_by_another_through_object_storage(settings, s3_bucket, clips_dir,
                                                                                 tmp_path):
    catalog_url = f"sqlite:///{tmp_path / 'shared-catalog.db'}"  # the hosts share one catalog (PostgreSQL, usually)
    worker_host = s3_settings(settings, s3_bucket, home=tmp_path / "worker-host", database_url=catalog_url)
    web_host = s3_settings(settings, s3_bucket, home=tmp_path / "web-host", database_url=catalog_url)
    w, web = Runtime(worker_host), Runtime(web_host)
    try:
        r = enqueue_file(w.catalog, worker_host, clips_dir / "red_circle.mp4", storage=w.storage)
        with Worker.from_settings(w.catalog, w.store, w.encoder, worker_host) as worker:
            assert [x.ok for x in worker.run_until_empty()] == [True]
        sha = w.catalog.get_video(r.video_id).sha256
        remote = [k for k in s3_bucket.keys() if k.startswith("library/thumbnails/")]
        assert f"library/thumbnails/{sha[:2]}/{sha}/poster.jpg" in remote and len(remote) >= 2
        assert not (web_host.thumbnails_dir / sha[:2] / sha).exists()
        poster = thumbnail_url(web, sha)  # fetched from the store on first view, into the web host's folder
        assert poster == f"/thumbnails/{sha[:2]}/{sha}/poster.jpg"
        with serve(web, worker=False) as base, httpx.Client(base_url=base, timeout=60) as client:
            got = client.get(poster)
            assert got.status_code == 200 and got.content[:2] == b"\xff\xd8"  # a JPEG
            assert client.get(thumbnail_url(web, sha, 0)).status_code == 200  # a sample's, for the timeline
        delete_video(web.catalog, web.store, r.video_id, web_host.thumbnails_dir, storage=web.storage)
        assert s3_bucket.keys() == []  # the video's object and its thumbnails
    finally:
        w.close()
        web.close()
