"""Catalog, queue and library functions on real SQLite and a real PostgreSQL server (and a real Milvus Lite server
where vectors are involved)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import event

from ingest.library import Outcome, enqueue_file, safe_title, stored_path_for
from schema.catalog import Catalog, JobState, VideoStatus
from schema.lite_server import ensure_server, read_state, stop_server
from schema.settings import Settings


@pytest.fixture
def plain_settings(tmp_path) -> Settings:
    s = Settings(home=tmp_path / "data")
    s.ensure_dirs()
    return s


@pytest.mark.parametrize("name, expected", [
    ("../../etc/passwd", "passwd"),
    ("/absolute/path/clip.mp4", "clip.mp4"),
    ("C:\\Users\\me\\holiday.mov", "holiday.mov"),
    ("nul\x00byte.mp4", "nulbyte.mp4"),
    ("", "untitled"),
    ("ünïcødé 動画.mp4", "ünïcødé 動画.mp4"),
])
def test_titles_never_carry_paths(name, expected):
    assert safe_title(name) == expected


def test_client_name_is_a_title_never_a_path(catalog, plain_settings, clips_dir):
    r = enqueue_file(catalog, plain_settings, clips_dir / "red_circle.mp4", title="../../../evil<script>.mp4")
    video = catalog.get_video(r.video_id)
    assert video.title == "evil<script>.mp4"
    stored = Path(video.stored_path)
    assert stored == stored_path_for(plain_settings, video.sha256, "x.mp4")
    assert stored.is_relative_to(plain_settings.videos_dir)
    long = enqueue_file(catalog, plain_settings, clips_dir / "green_square.webm", title="a" * 5000 + ".webm")
    assert len(catalog.get_video(long.video_id).title) == 255


def test_non_video_is_not_queued(catalog, plain_settings, tmp_path):
    note = tmp_path / "notes.mp4"
    note.write_text("not a video at all")
    assert enqueue_file(catalog, plain_settings, note).outcome is Outcome.NOT_VIDEO
    assert catalog.list_videos() == []


def test_failed_content_is_requeued_when_added_again(catalog, plain_settings, clips_dir):
    first = enqueue_file(catalog, plain_settings, clips_dir / "red_circle.mp4")
    [job] = catalog.claim_jobs(5)
    catalog.finish_job(job.id, "decoder exploded")
    assert catalog.get_video(first.video_id).status is VideoStatus.FAILED
    again = enqueue_file(catalog, plain_settings, clips_dir / "red_circle.mp4")
    assert again.outcome is Outcome.REQUEUED and again.video_id == first.video_id
    assert catalog.get_video(first.video_id).status is VideoStatus.QUEUED


def test_claims_are_exclusive_across_concurrent_workers(catalog_url, plain_settings, clips_dir):
    url = catalog_url
    setup = Catalog(url)
    for i in range(40):
        setup.add_video(sha256=f"{i:064d}", title=f"v{i}", stored_path="/nowhere", size_bytes=1)
    claimed: list[list[int]] = [[] for _ in range(4)]

    def claim(slot: int) -> None:
        cat = Catalog(url)  # one engine each, like separate processes
        while jobs := cat.claim_jobs(3, worker=f"w{slot}"):
            claimed[slot].extend(j.id for j in jobs)
        cat.close()

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [j for c in claimed for j in c]
    assert sorted(everything) == sorted(set(everything)) and len(everything) == 40
    assert setup.job_counts()[JobState.RUNNING.value] == 40
    setup.close()


def test_requeue_gives_running_jobs_back(catalog, plain_settings, clips_dir):
    r = enqueue_file(catalog, plain_settings, clips_dir / "red_circle.mp4")
    jobs = catalog.claim_jobs(1)
    assert catalog.get_video(r.video_id).status is VideoStatus.PROCESSING
    catalog.requeue_jobs([j.id for j in jobs], count_attempt=False)  # an interruption is not an attempt
    job = catalog.get_job(jobs[0].id)
    assert job.state is JobState.QUEUED and job.attempts == 0
    assert catalog.get_video(r.video_id).status is VideoStatus.QUEUED


def test_lite_server_is_started_once_and_reused(tmp_path):
    data_dir = tmp_path / "milvus"
    first = ensure_server(data_dir)
    try:
        assert first.startswith("http://127.0.0.1:")
        assert ensure_server(data_dir) == first  # reused, not a second process on the locked folder
        assert read_state(data_dir) is not None
    finally:
        assert stop_server(data_dir)
    assert read_state(data_dir) is None
    assert stop_server(data_dir) is False


def test_delete_before_anything_was_indexed(catalog, plain_settings, clips_dir):
    from ingest.library import delete_video

    r = enqueue_file(catalog, plain_settings, clips_dir / "red_circle.mp4")
    stored = Path(catalog.get_video(r.video_id).stored_path)
    assert delete_video(catalog, None, r.video_id).id == r.video_id
    assert not stored.exists() and catalog.get_video(r.video_id) is None
    assert catalog.job_counts()[JobState.QUEUED.value] == 0  # its job went with it
    assert delete_video(catalog, None, r.video_id) is None


def test_linked_files_are_never_deleted(catalog, plain_settings, clips_dir, tmp_path):
    from ingest.library import delete_video

    original = tmp_path / "mine.mp4"
    original.write_bytes((clips_dir / "red_circle.mp4").read_bytes())
    r = enqueue_file(catalog, plain_settings, original, link=True)
    assert catalog.get_video(r.video_id).stored_path == str(original.resolve())
    delete_video(catalog, None, r.video_id)
    assert original.exists()


def test_jobs_of_a_dead_worker_are_recovered_and_endless_failures_given_up(catalog, plain_settings, clips_dir):
    import socket

    r = enqueue_file(catalog, plain_settings, clips_dir / "red_circle.mp4")
    dead = f"{socket.gethostname()}:999999999"  # a pid that cannot exist
    for _ in range(5):  # the worker keeps dying (killed, OOM): not the file's fault, the job stays available
        [job] = catalog.claim_jobs(1, worker=dead)
        assert catalog.recover(lease_seconds=600, max_attempts=3) == [job.id]
        assert catalog.get_job(job.id).state is JobState.QUEUED and catalog.get_job(job.id).attempts == 0
    for _ in range(3):  # three attempts that fail (e.g. storage errors): then it is given up
        [job] = catalog.claim_jobs(1)
        catalog.requeue_jobs([job.id])
        catalog.recover(lease_seconds=600, max_attempts=3)
    job = catalog.get_job(job.id)
    assert job.state is JobState.FAILED and "gave up after 3 attempts" in job.error
    assert catalog.get_video(r.video_id).status is VideoStatus.FAILED


def test_a_dead_workers_jobs_are_retried_alone_and_outside_kills_fail_nothing(catalog, plain_settings, clips_dir,
                                                                              tmp_path):
    import socket

    files = [clips_dir / "red_circle.mp4", clips_dir / "green_square.webm", clips_dir / "blue_triangle.mkv"]
    ids = [enqueue_file(catalog, plain_settings, f).job_id for f in files]
    dead = f"{socket.gethostname()}:999999999"  # a pid that cannot exist
    assert [j.id for j in catalog.claim_jobs(16, worker=dead)] == ids  # one worker took the batch, then died
    assert sorted(catalog.recover(lease_seconds=600, max_attempts=3)) == ids
    assert all(catalog.get_job(i).suspect for i in ids)
    later = enqueue_file(catalog, plain_settings, _distinct_clip(tmp_path)).job_id
    for expected in ids:  # each suspect alone, oldest first, before the fresh job
        assert [j.id for j in catalog.claim_jobs(16)] == [expected]
        catalog.finish_jobs([(expected, {})])
    assert [j.id for j in catalog.claim_jobs(16)] == [later]


def test_a_good_file_survives_any_number_of_outside_kills(catalog, plain_settings, clips_dir):
    import socket

    job_id = enqueue_file(catalog, plain_settings, clips_dir / "red_circle.mp4").job_id
    dead = f"{socket.gethostname()}:999999999"
    for _ in range(10):  # SIGKILL, reboots: every time while this file was running alone
        assert [j.id for j in catalog.claim_jobs(16, worker=dead)] == [job_id]
        catalog.recover(lease_seconds=600, max_attempts=3)
    job = catalog.get_job(job_id)
    assert (job.state, job.attempts, job.crashes, job.suspect) == (JobState.QUEUED, 0, 0, True)


def test_a_decoder_crash_is_retried_alone_then_fails_the_file(catalog, plain_settings, clips_dir):
    r = enqueue_file(catalog, plain_settings, clips_dir / "red_circle.mp4")
    [job] = catalog.claim_jobs(16)
    assert not catalog.crashed(job.id, "the decoder crashed on this file (exit code -11)", max_crashes=2)
    job = catalog.get_job(job.id)
    assert (job.state, job.suspect, job.crashes, job.attempts) == (JobState.QUEUED, True, 1, 0)
    assert "retrying it alone (1 of 2)" in catalog.get_video(r.video_id).error
    [job] = catalog.claim_jobs(16)
    assert catalog.crashed(job.id, "the decoder crashed on this file (exit code -11)", max_crashes=2)
    job, video = catalog.get_job(job.id), catalog.get_video(r.video_id)
    assert job.state is JobState.FAILED and video.status is VideoStatus.FAILED
    assert video.error == job.error == "the decoder crashed on this file (exit code -11) (2 times)"


def _distinct_clip(tmp_path):
    from tests.videos import render_frame, write_video

    return write_video(tmp_path / "distinct.mp4", [render_frame("red", "circle", 64, jitter=k + 7) for k in range(4)],
                       fps=4)


def test_live_workers_keep_their_jobs(catalog, plain_settings, clips_dir):
    enqueue_file(catalog, plain_settings, clips_dir / "red_circle.mp4")
    [job] = catalog.claim_jobs(1)  # this process: alive
    catalog.heartbeat([job.id])
    catalog.recover(lease_seconds=600, max_attempts=3)
    assert catalog.get_job(job.id).state is JobState.RUNNING


def test_a_busy_fixed_port_is_refused(tmp_path):
    import socket

    from schema.lite_server import LiteServerError

    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        with pytest.raises(LiteServerError, match="already in use"):
            ensure_server(tmp_path / "milvus", port=other.getsockname()[1])


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_a_file_that_changes_while_it_is_added_is_stored_under_the_hash_of_what_was_stored(
        catalog, plain_settings, clips_dir, tmp_path, monkeypatch):
    import ingest.library as library

    src = tmp_path / "growing.mp4"
    src.write_bytes((clips_dir / "red_circle.mp4").read_bytes())
    real = library.sha256_file

    def hash_then_change(path, *args):  # the file is still being written by someone else (a camera, a copy)
        digest = real(path, *args)
        if Path(path) == src:
            with open(src, "ab") as more:
                more.write(b"\x00" * 4096)
        return digest

    monkeypatch.setattr(library, "sha256_file", hash_then_change)
    result = enqueue_file(catalog, plain_settings, src)
    video = catalog.get_video(result.video_id)
    stored = Path(video.stored_path)
    assert _sha(stored) == video.sha256 and stored.name.startswith(video.sha256)  # the row names what is stored
    assert video.size_bytes == stored.stat().st_size


def test_a_damaged_file_under_the_content_name_is_replaced_not_trusted(catalog, plain_settings, clips_dir):
    src = clips_dir / "red_circle.mp4"
    dest = stored_path_for(plain_settings, _sha(src), src.name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(b"left over from a crash or a bad disk")
    result = enqueue_file(catalog, plain_settings, src)
    assert Path(catalog.get_video(result.video_id).stored_path) == dest
    assert dest.read_bytes() == src.read_bytes()


def test_an_upload_is_renamed_into_the_library_not_copied(catalog, plain_settings, clips_dir, tmp_path, monkeypatch):
    import ingest.library as library

    upload = plain_settings.home_dir / "incoming" / "tmp-upload"
    upload.parent.mkdir(parents=True)
    upload.write_bytes((clips_dir / "green_square.webm").read_bytes())
    inode = upload.stat().st_ino

    def no_copy(*_args):
        raise AssertionError("an upload on the same file system must not be written a second time")

    monkeypatch.setattr(library, "copy_hashing", no_copy)
    result = enqueue_file(catalog, plain_settings, upload, title="green.webm", move=True)
    stored = Path(catalog.get_video(result.video_id).stored_path)
    assert stored.stat().st_ino == inode and not upload.exists()
    assert _sha(stored) == catalog.get_video(result.video_id).sha256
    assert not list(plain_settings.videos_dir.glob(".incoming-*"))


def test_pages_are_keyset_pages_in_sql_and_counts_are_counts(catalog):
    cat = catalog
    titles = [f"{'Red' if i % 3 == 0 else 'blue'}_{i}.mp4" for i in range(23)] + ["100%_sure.mp4", "a_b.mp4"]
    ids = [cat.add_video(sha256=f"{i:064d}", title=t, stored_path="/nowhere", size_bytes=1)[0].id
           for i, t in enumerate(titles)]

    def walk(**kw) -> list[list[int]]:
        pages, after = [], None
        while page := cat.page_videos(10, after=after, **kw):
            pages.append([v.id for v in page])
            after = page[-1].id
        return pages

    assert [len(p) for p in walk()] == [10, 10, 5] and sum(walk(), []) == ids
    assert sum(walk(newest_first=True), []) == ids[::-1]
    red = [i for i, t in zip(ids, titles, strict=True) if t.startswith("Red")]
    assert sum(walk(title="rED"), []) == red  # case-insensitive, on both databases
    assert cat.count_videos() == 25 and cat.count_videos(title="red") == len(red) == 8
    # A keyset page does not shift when videos before it are deleted or added after it.
    second = [v.id for v in cat.page_videos(10, after=ids[9])]
    cat.delete_video(ids[3])
    cat.add_video(sha256="f" * 64, title="new.mp4", stored_path="/nowhere", size_bytes=1)
    assert [v.id for v in cat.page_videos(10, after=ids[9])] == second == ids[10:20]
    # Wildcards in the search are literal characters.
    assert [v.title for v in cat.page_videos(10, title="%")] == ["100%_sure.mp4"]
    assert [v.title for v in cat.page_videos(10, title="a_b")] == ["a_b.mp4"]
    # newer_than: how many come before a video in a newest-first list; status narrows everything.
    assert cat.count_videos(newer_than=ids[20]) == 5  # ids[21..24] and new.mp4
    assert cat.count_videos(VideoStatus.READY) == 0 and cat.page_videos(5, status=VideoStatus.READY) == []
    assert cat.count_videos(VideoStatus.QUEUED, title="blue") == 15
    # The database does the paging and the counting: one statement each, with LIMIT / COUNT, nothing sliced here.
    statements: list[str] = []
    listen = lambda *a: statements.append(a[2])  # noqa: E731  (before_cursor_execute's statement argument)
    event.listen(cat.engine, "before_cursor_execute", listen)
    cat.page_videos(3, after=ids[5], title="blue")
    cat.count_videos(title="blue")
    event.remove(cat.engine, "before_cursor_execute", listen)
    assert len(statements) == 2 and "LIMIT" in statements[0].upper() and "count(" in statements[1].lower()


def test_a_video_over_2_gib_is_catalogued(catalog):
    """PostgreSQL's INTEGER ends at 2 GiB: size_bytes is 64-bit there (migration 0007)."""
    video, _job = catalog.add_video(sha256="f" * 64, title="long.mkv", stored_path="/nowhere", size_bytes=5 * 2**30)
    assert catalog.get_video(video.id).size_bytes == 5 * 2**30
