"""`vidsearch doctor`: each kind of disagreement between catalog, Milvus and files is found, then repaired."""

from __future__ import annotations

import logging
import os
import socket
import time

import numpy as np

from ingest.doctor import examine
from ingest.library import enqueue_file
from ingest.worker import LEASE_SECONDS, Worker
from schema.catalog import VideoStatus
from schema.filters import SearchFilters


def test_doctor_finds_and_repairs_every_kind_of_damage(runtime, clips_dir):
    catalog, store, settings = runtime.catalog, runtime.store, runtime.settings
    names = ["red_circle.mp4", "green_square.webm", "blue_triangle.mkv", "yellow_square.avi"]
    ids = {n: enqueue_file(catalog, settings, clips_dir / n).video_id for n in names}
    with Worker.from_settings(catalog, store, runtime.encoder, settings) as worker:
        assert all(r.ok for r in worker.run_until_empty())
    assert examine(catalog, store, settings, lease_seconds=LEASE_SECONDS) == []

    dim = store.dim
    store.add([424242], np.ones((1, dim), np.float32) / np.sqrt(dim))  # orphan: no such video
    store.delete([ids["red_circle.mp4"]])  # ready without a vector
    store.add([ids["green_square.webm"]], store.fetch([ids["green_square.webm"]])[ids["green_square.webm"]][None])
    os.unlink(catalog.get_video(ids["blue_triangle.mkv"]).stored_path)  # file removed behind our back
    late = enqueue_file(catalog, settings, clips_dir / "green_circle.mov").video_id
    catalog.claim_jobs(1, worker=f"{socket.gethostname()}:999999999")  # its worker died
    temp = settings.videos_dir / "ab" / ".incoming-dead"
    temp.parent.mkdir(parents=True, exist_ok=True)
    temp.write_bytes(b"half an upload")
    os.utime(temp, (time.time() - 7200, time.time() - 7200))
    store.flush()

    found = {f.kind: f.video_ids for f in examine(catalog, store, settings, lease_seconds=LEASE_SECONDS)}
    assert found == {
        "dead_worker_jobs": [late],
        "missing_files": [ids["blue_triangle.mkv"]],
        "orphan_vectors": [424242],
        "ready_without_vectors": [ids["red_circle.mp4"]],
        "duplicate_vectors": [ids["green_square.webm"]],
        "stale_temp_files": [],
    }
    repaired = examine(catalog, store, settings, lease_seconds=LEASE_SECONDS, repair=True)
    assert all(f.repaired for f in repaired) and not temp.exists()
    assert examine(catalog, store, settings, lease_seconds=LEASE_SECONDS) == []

    with Worker.from_settings(catalog, store, runtime.encoder, settings) as worker:
        assert all(r.ok for r in worker.run_until_empty())  # the requeued videos are embedded again
    counts = store.vector_counts()
    ready = {v.id for v in catalog.list_videos(VideoStatus.READY)}
    assert ready == {ids["red_circle.mp4"], ids["green_square.webm"], ids["yellow_square.avi"], late}
    assert counts == {v: 1 for v in ready}
    # The de-duplicated vector kept its filterable fields: a duration filter still finds it.
    green = catalog.get_video(ids["green_square.webm"])
    hits = store.search(store.fetch([green.id])[green.id], 10,
                        SearchFilters(min_duration=green.duration, max_duration=green.duration))
    assert green.id in {h.video_id for h in hits}
    blue = catalog.get_video(ids["blue_triangle.mkv"])
    assert blue.status is VideoStatus.FAILED and "stored file is missing" in blue.error


def _ingest_two(runtime, clips_dir) -> list[int]:
    for name in ("red_circle.mp4", "green_square.webm"):
        enqueue_file(runtime.catalog, runtime.settings, clips_dir / name)
    with Worker.from_settings(runtime.catalog, runtime.store, runtime.encoder, runtime.settings) as worker:
        worker.run_until_empty()
    return [v.id for v in runtime.catalog.list_videos()]


def test_a_retried_milvus_scan_counts_each_vector_once(runtime, clips_dir):
    from pymilvus.exceptions import MilvusException

    ids = _ingest_two(runtime, clips_dir)
    store = runtime.store.milvus()
    real = store.client.query_iterator

    class LosesTheConnection:  # the first batch arrives, then the server goes away (a real reconnect follows)
        def __init__(self, *args, **kwargs):
            self.inner, self.calls = real(*args, **kwargs), 0

        def next(self):
            self.calls += 1
            if self.calls == 2:
                raise MilvusException(message="fail connecting to server 127.0.0.1")
            return self.inner.next()

        def close(self):
            self.inner.close()

    store.client.query_iterator = LosesTheConnection
    assert store.vector_counts() == {v: 1 for v in ids}
    assert store.segment_counts() == {v: 4 for v in ids}
    assert examine(runtime.catalog, store, runtime.settings, lease_seconds=600) == []  # no "duplicate vectors"


def test_doctor_says_nothing_of_pymilvus_internals(runtime, clips_dir, caplog):
    _ingest_two(runtime, clips_dir)
    with caplog.at_level(logging.WARNING):
        assert examine(runtime.catalog, runtime.store.existing(), runtime.settings, lease_seconds=600) == []
    assert [r.getMessage() for r in caplog.records if r.name.startswith("pymilvus")] == []
