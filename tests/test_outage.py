"""Milvus goes down during ingest: nothing is marked done that is not searchable, errors say what is wrong, and
everything completes once it is back."""

from __future__ import annotations

import threading
import time

import pytest

from ingest.library import enqueue_file
from ingest.runtime import Runtime
from ingest.worker import Worker
from schema.catalog import JobState, VideoStatus
from schema.lite_server import ensure_server, stop_server
from schema.settings import Settings
from schema.vectors import VectorStoreError
from search_app.page import search_html
from search_app.search import search_text
from tests.procs import free_port


def _wait(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_vector_store_outage_keeps_jobs_waiting_and_recovers(tmp_path, tiny_model, clips_dir):
    milvus_dir, port = tmp_path / "milvus-server", free_port()
    uri = ensure_server(milvus_dir, port=port)  # stands in for a Milvus server: the app only knows its URI
    settings = Settings(home=tmp_path / "data", model=str(tiny_model), milvus_uri=uri, frames=4,
                        worker_poll_seconds=0.2)
    runtime = Runtime(settings)
    catalog = runtime.catalog
    stop = threading.Event()
    worker = Worker.from_settings(catalog, runtime.store, runtime.encoder, settings)
    thread = threading.Thread(target=worker.run_forever, args=(stop,), daemon=True)
    try:
        first = enqueue_file(catalog, settings, clips_dir / "red_circle.mp4")
        thread.start()
        _wait(lambda: catalog.get_video(first.video_id).status is VideoStatus.READY)

        stop_server(milvus_dir)  # the server goes away
        late = enqueue_file(catalog, settings, clips_dir / "blue_triangle.mkv")
        _wait(lambda: "waiting for the vector store" in (catalog.get_video(late.video_id).error or ""))
        time.sleep(2)  # several retries while it is down
        video, job = catalog.get_video(late.video_id), catalog.jobs_for([late.video_id])[late.video_id]
        assert video.status in (VideoStatus.QUEUED, VideoStatus.PROCESSING)  # never ready while unsearchable
        assert job.state in (JobState.QUEUED, JobState.RUNNING) and job.attempts <= 1  # outages do not count
        # Through the in-memory copy (on for Lite): the search, or the copy's fetch of a newly ready vector, is what
        # finds the server gone, depending on whether the copy is current.
        with pytest.raises(VectorStoreError, match=r"Milvus (search|query) failed: .*[Ff]ail connecting"):
            search_text(catalog, runtime.store, runtime.encoder, "a red circle", 3)
        message = search_html(runtime, "a red circle", 3)
        assert "vector store is not reachable" in message and "Traceback" not in message

        assert ensure_server(milvus_dir, port=port) == uri  # back, same address, same data
        _wait(lambda: catalog.get_video(late.video_id).status is VideoStatus.READY, timeout=180)
        assert catalog.get_video(late.video_id).error is None
        ranked = search_text(catalog, runtime.store, runtime.encoder, "a blue triangle", 2)
        assert ranked[0].video_id == late.video_id
        assert {r.video_id for r in ranked} == {first.video_id, late.video_id}
        assert runtime.store.vector_counts() == {first.video_id: 1, late.video_id: 1}
    finally:
        stop.set()
        thread.join(timeout=60)
        runtime.close()
        stop_server(milvus_dir)
