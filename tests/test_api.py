"""The HTTP API through real HTTP: uvicorn serving the real app (Gradio mounted too) on a free port, the real worker
thread, Milvus Lite, SQLite and the tiny trained CLIP; plus a schemathesis run against /openapi.json."""

from __future__ import annotations

import base64
import contextlib
import io
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from ingest.library import enqueue_file
from ingest.runtime import Runtime
from schema.settings import Settings
from search_app.web import create_app, start_worker_thread
from tests.conftest import CLIPS
from tests.procs import serve_in_thread
from tests.videos import render_frame, write_video

FUZZ_EXAMPLES = 30
RESULT_KEYS = {"rank", "video_id", "title", "score", "duration", "media_url", "thumbnail_url", "moments", "experts"}
MOMENT_KEYS = {"start", "end", "score", "thumbnail_url", "media_url", "expert", "text"}


@dataclass
class Served:
    url: str
    runtime: Runtime


@contextlib.contextmanager
def serve(settings: Settings, *, worker: bool = True) -> Iterator[Served]:
    """create_app(runtime) under uvicorn in a background thread, with the app's own worker thread."""
    runtime = Runtime(settings)
    stop = threading.Event()
    worker_thread = start_worker_thread(runtime, stop) if worker else None
    try:
        with serve_in_thread(create_app(runtime), join_timeout=30) as url:
            yield Served(url, runtime)
    finally:
        stop.set()
        if worker_thread is not None:
            worker_thread.join(timeout=60)
        runtime.close()


def api_settings(home: Path, model: Path, milvus_uri: str, **extra) -> Settings:
    fields = {"collection": f"api_{uuid.uuid4().hex[:10]}", "frames": 4, "batch_size": 16,
              "worker_poll_seconds": 0.2, **extra}
    return Settings(home=home, model=str(model), milvus_uri=milvus_uri, **fields)


def wait_job(client: httpx.Client, job_id: int, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["state"] in ("done", "failed"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.2)


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model, milvus_uri) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("api") / "data"
    with serve(api_settings(home, tiny_model, milvus_uri, max_upload_mb=1)) as served:
        yield served


@pytest.fixture(scope="module")
def client(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def library(client, clips_dir) -> dict[str, dict]:
    """The session clips uploaded through POST /api/videos and ingested by the app's worker: title -> upload."""
    uploads = {}
    for _, _, name, _ in CLIPS:
        with open(clips_dir / name, "rb") as handle:
            response = client.post("/api/videos", files={"file": (name, handle, "application/octet-stream")})
        assert response.status_code == 201, response.text
        uploads[name] = response.json()
    for upload in uploads.values():
        upload["job"] = wait_job(client, upload["job_id"])
    return uploads


def test_uploads_become_ready_videos_with_jobs(client, library, clips_dir):
    for name, upload in library.items():
        assert upload["outcome"] == "queued" and upload["title"] == name
        job = upload["job"]
        assert (job["state"], job["attempts"], job["error"], job["video_id"]) == ("done", 1, None, upload["video_id"])
        assert job["finished_at"] >= job["started_at"] >= job["created_at"]

    listed = client.get("/api/videos").json()["videos"]
    assert sorted(v["title"] for v in listed) == sorted(library)
    assert len(client.get("/api/videos", params={"status": "ready"}).json()["videos"]) == len(CLIPS)
    assert client.get("/api/videos", params={"status": "failed"}).json() == {"videos": [], "total": 0, "next": None}

    video = client.get(f"/api/videos/{library['red_circle.mp4']['video_id']}").json()
    assert (video["title"], video["status"], video["width"], video["height"]) == ("red_circle.mp4", "ready", 64, 64)
    assert video["duration"] == pytest.approx(1.0, abs=0.2) and video["error"] is None
    media = client.get(video["media_url"])  # the stored copy is served, byte for byte
    assert media.status_code == 200 and media.content == (clips_dir / "red_circle.mp4").read_bytes()


def test_the_library_is_listed_a_page_at_a_time(client, library, tmp_path):
    def walk(limit: int, **params) -> tuple[list[dict], list[int]]:
        """Every page from the first, following `next`: the videos and each page's total."""
        videos, totals, cursor = [], [], None
        while True:
            page = client.get("/api/videos", params={"limit": limit, **params} | ({"cursor": cursor} if cursor else {}))
            assert page.status_code == 200, page.text
            body = page.json()
            assert 1 <= len(body["videos"]) <= limit or body["total"] == 0
            videos, totals, cursor = videos + body["videos"], totals + [body["total"]], body["next"]
            if cursor is None:
                return videos, totals

    uploaded = {u["video_id"] for u in library.values()}
    videos, totals = walk(2)
    assert [v["video_id"] for v in videos] == sorted(uploaded) and totals == [len(CLIPS)] * 3  # 2 + 2 + 2, no 4th
    assert walk(4, status="ready")[1] == [len(CLIPS)] * 2 and walk(3, status="failed") == ([], [0])
    assert len(client.get("/api/videos", params={"limit": 1000}).json()["videos"]) == len(CLIPS)

    # A video added during the walk comes once, on a later page; the pages already read do not shift.
    first = client.get("/api/videos", params={"limit": 2}).json()
    clip = write_video(tmp_path / "late.mp4", colour="green", shape="triangle")
    with open(clip, "rb") as handle:
        late = client.post("/api/videos", files={"file": ("late.mp4", handle)}).json()
    try:
        rest, totals = [], []
        cursor = first["next"]
        while cursor:
            page = client.get("/api/videos", params={"limit": 2, "cursor": cursor}).json()
            rest, totals, cursor = rest + page["videos"], totals + [page["total"]], page["next"]
        ids = [v["video_id"] for v in first["videos"] + rest]
        assert ids == sorted(uploaded | {late["video_id"]}) and totals[-1] == len(CLIPS) + 1
    finally:
        wait_job(client, late["job_id"])
        assert client.delete(f"/api/videos/{late['video_id']}").status_code == 200

    # Cursors are opaque: anything but a `next` is refused, as are page sizes out of range.
    forged = base64.urlsafe_b64encode(b"after:0").decode()
    for bad in ("nonsense!", "bm9wZQ", forged, "x" * 65, first["next"] + "="):
        assert "cursor" in _detail(client.get("/api/videos", params={"cursor": bad}), 422), bad
    for limit in (0, 1001, -5):
        assert "limit" in _detail(client.get("/api/videos", params={"limit": limit}), 422)


def test_text_search(client, library):
    response = client.post("/api/search", json={"text": "a red circle", "k": 3})
    assert response.status_code == 200
    results = response.json()["results"]
    assert [set(r) for r in results] == [RESULT_KEYS] * 3
    assert results[0]["title"] == "red_circle.mp4" and results[0]["video_id"] == library["red_circle.mp4"]["video_id"]
    assert [r["rank"] for r in results] == [1, 2, 3]
    assert results[0]["score"] >= results[1]["score"] >= results[2]["score"]
    assert all(r["media_url"].startswith("/media/") for r in results)
    for r in results:  # a 1 s clip has one moment: all of it, with the thumbnail of its best frame
        [moment] = r["moments"]
        assert set(moment) == MOMENT_KEYS and moment["start"] == 0.0 and moment["end"] == pytest.approx(1.0, abs=0.2)
        assert moment["media_url"] == f"{r['media_url']}#t={moment['start']:.2f},{moment['end']:.2f}"
        assert r["thumbnail_url"].startswith("/thumbnails/") and r["thumbnail_url"].endswith("/poster.jpg")
    thumb = client.get(results[0]["moments"][0]["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    image = np.asarray(Image.open(io.BytesIO(thumb.content)).convert("RGB"), np.float32)
    assert image.shape == (64, 64, 3) and image[..., 0].max() > 150  # the red circle, not a black frame
    blue = client.post("/api/search", json={"text": "a blue triangle"}).json()["results"]
    assert blue[0]["title"] == "blue_triangle.mkv" and len(blue) == len(CLIPS)


def test_timeline(client, library):
    video_id = library["red_circle.mp4"]["video_id"]
    response = client.get(f"/api/videos/{video_id}/timeline", params={"text": "a red circle"})
    assert response.status_code == 200, response.text
    timeline = response.json()
    assert timeline["video_id"] == video_id and timeline["source"] == "stored"
    assert [p["time"] for p in timeline["points"]] == pytest.approx([0.125, 0.375, 0.625, 0.875], abs=0.05)
    assert len(timeline["moments"]) == 1 and set(timeline["moments"][0]) == MOMENT_KEYS
    red = [p["score"] for p in timeline["points"]]
    blue = [p["score"] for p in client.get(f"/api/videos/{video_id}/timeline",
                                           params={"text": "a blue square"}).json()["points"]]
    assert min(red) > max(blue)  # the whole clip is a red circle
    assert client.get("/api/videos/999999/timeline", params={"text": "x"}).status_code == 404
    assert client.get(f"/api/videos/{video_id}/timeline").status_code == 422


def test_image_search(client, library):
    still = png(render_frame("red", "circle", 96))
    results = client.post("/api/search", json={"image": b64(still), "k": 2}).json()["results"]
    assert [r["title"] for r in results][:1] == ["red_circle.mp4"] and len(results) == 2
    as_data_url = client.post("/api/search", json={"image": "data:image/png;base64," + b64(still), "k": 2}).json()
    assert as_data_url["results"] == results
    yellow = client.post("/api/search", json={"image": b64(png(render_frame("yellow", "square", 64)))}).json()
    assert yellow["results"][0]["title"] == "yellow_square.avi"


def test_embeddings_match_the_encoder(client, server):
    encoder = server.runtime.encoder
    text = client.post("/api/embed/text", json={"text": "a red circle"}).json()
    assert (text["dim"], text["model"], len(text["embedding"])) == (encoder.dim, encoder.key, encoder.dim)
    np.testing.assert_allclose(text["embedding"], encoder.embed_text("a red circle"), atol=1e-6)
    assert np.linalg.norm(text["embedding"]) == pytest.approx(1.0, abs=1e-5)

    frame = render_frame("green", "square", 64)
    as_json = client.post("/api/embed/image", json={"image": b64(png(frame))})
    as_file = client.post("/api/embed/image", files={"file": ("still.png", png(frame), "image/png")})
    assert as_json.status_code == as_file.status_code == 200
    assert as_json.json() == as_file.json()
    np.testing.assert_allclose(as_file.json()["embedding"], encoder.embed_image(frame), atol=1e-6)
    assert as_file.json()["dim"] == encoder.dim and as_file.json()["model"] == encoder.key
    # The image and text embeddings share one space: the green square's still is closer to its caption.
    near = np.dot(as_file.json()["embedding"], encoder.embed_text("a green square"))
    far = np.dot(as_file.json()["embedding"], encoder.embed_text("a red circle"))
    assert near > far


TAG = "clip\" or tag != \"x' {tag}\\"  # quotes, braces and a trailing backslash: all literal


def test_upload_job_search_filter_delete_round_trip(client, library, tmp_path, server):
    clip = write_video(tmp_path / "long yellow circle.mp4", colour="yellow", shape="circle", seconds=3.0, fps=8)
    with open(clip, "rb") as handle:
        first = client.post("/api/videos", files={"file": ("../../etc/long yellow circle.mp4", handle)},
                            params={"tag": TAG})
    assert first.status_code == 201, first.text
    created = first.json()
    assert created["outcome"] == "queued" and created["title"] == "long yellow circle.mp4"  # a title, never a path
    assert first.headers["location"] == f"/api/videos/{created['video_id']}"
    again = client.post("/api/videos", files={"file": ("copy.mp4", clip.read_bytes())})
    assert again.status_code == 200 and again.json()["video_id"] == created["video_id"]
    assert again.json()["outcome"] in ("already queued", "already present")

    job = wait_job(client, created["job_id"])
    assert job["state"] == "done" and job["error"] is None
    video = client.get(f"/api/videos/{created['video_id']}").json()
    assert video["status"] == "ready" and video["duration"] == pytest.approx(3.0, abs=0.3) and video["tag"] == TAG
    stored = server.runtime.settings.videos_dir / video["media_url"].removeprefix("/media/")
    assert stored.is_file() and not list((server.runtime.settings.home_dir / "incoming").iterdir())

    # Filters apply to the catalog rows: only the 3-second clip is longer than 2 s, and it is the only one dropped
    # when at most 2 s are wanted.
    longer = client.post("/api/search", json={"text": "a red circle", "filters": {"min_duration": 2}}).json()
    assert [r["video_id"] for r in longer["results"]] == [created["video_id"]]
    shorter = client.post("/api/search", json={"text": "a yellow circle", "k": 50,
                                               "filters": {"max_duration": 2.0}}).json()["results"]
    assert len(shorter) == len(CLIPS) and created["video_id"] not in {r["video_id"] for r in shorter}
    found = client.post("/api/search", json={"text": "a yellow circle", "k": 1}).json()["results"]
    assert found[0]["video_id"] == created["video_id"]
    # Tag and ingest date, evaluated by Milvus: the tag (an injection string) matches itself literally, only.
    assert TAG in client.get("/api/tags").json()["tags"]

    def ids(**filters) -> list[int]:
        body = {"text": "a red circle", "k": 50, "filters": filters}
        response = client.post("/api/search", json=body)
        assert response.status_code == 200, response.text
        return [r["video_id"] for r in response.json()["results"]]

    assert ids(tags=[TAG]) == [created["video_id"]]
    assert ids(tags=['long" or tag != "']) == [] and ids(tags=["nothing"]) == []
    added = video["created_at"][:10]
    assert created["video_id"] in ids(ingested_after=added, ingested_before=added)
    assert ids(ingested_before="2000-01-01") == [] and ids(ingested_after="2999-01-01T00:00:00Z") == []
    assert ids(tags=[TAG], min_duration=5) == []

    deleted = client.delete(f"/api/videos/{created['video_id']}")
    assert deleted.status_code == 200 and deleted.json()["title"] == "long yellow circle.mp4"
    assert not stored.exists()
    assert client.get(f"/api/videos/{created['video_id']}").status_code == 404
    assert client.delete(f"/api/videos/{created['video_id']}").status_code == 404
    assert client.get(f"/api/jobs/{created['job_id']}").status_code == 404  # the job went with its video
    after = client.post("/api/search", json={"text": "a yellow circle", "k": 50}).json()["results"]
    assert created["video_id"] not in {r["video_id"] for r in after} and len(after) == len(CLIPS)


def _detail(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"detail"} and isinstance(body["detail"], str) and "Traceback" not in body["detail"]
    return body["detail"]


def test_bad_input_gets_a_clear_4xx(client, server):
    still = b64(png(render_frame("red", "circle", 32)))
    # 422: validation
    assert "exactly one" in _detail(client.post("/api/search", json={"text": "a", "image": still}), 422)
    assert "exactly one" in _detail(client.post("/api/search", json={"k": 3}), 422)
    assert "k:" in _detail(client.post("/api/search", json={"text": "a", "k": 0}), 422)
    assert "k:" in _detail(client.post("/api/search", json={"text": "a", "k": 100000}), 422)
    assert "type something" in _detail(client.post("/api/search", json={"text": "   "}), 422)
    assert "filters.colour" in _detail(client.post("/api/search", json={"text": "a", "filters": {"colour": 1}}), 422)
    assert "weights.smell" in _detail(client.post("/api/search", json={"text": "a", "weights": {"smell": 1}}), 422)
    assert "between 0 and 100" in _detail(client.post("/api/search", json={"text": "a", "weights": {"speech": -1}}),
                                          422)
    ok = client.post("/api/search", json={"text": "a red circle", "weights": {"speech": 0, "appearance": 1}})
    assert ok.status_code == 200 and ok.json()["results"][0]["experts"] == {}  # no expert collection: appearance
    assert "min_duration" in _detail(client.post("/api/search", json={"text": "a", "filters": {
        "min_duration": 5, "max_duration": 1}}), 422)
    assert "min_duration" in _detail(client.post("/api/search", json={"text": "a", "filters": {
        "min_duration": -1}}), 422)
    assert "is not a date" in _detail(client.post("/api/search", json={"text": "a", "filters": {
        "ingested_after": "last week"}}), 422)
    assert "control" in _detail(client.post("/api/search", json={"text": "a", "filters": {"tags": ["a\nb"]}}), 422)
    assert "tags" in _detail(client.post("/api/search", json={"text": "a", "filters": {"tags": "drone"}}), 422)
    assert "not valid JSON" in _detail(client.post("/api/search", content=b"{nope",
                                                   headers={"content-type": "application/json"}), 422)
    assert "text" in _detail(client.post("/api/embed/text", json={}), 422)
    assert "text" in _detail(client.post("/api/embed/text", json={"text": ""}), 422)
    assert "image" in _detail(client.post("/api/embed/image", json={"picture": still}), 422)
    assert "field named 'file'" in _detail(client.post("/api/embed/image", files={"other": ("a.png", b"x")}), 422)
    assert "status" in _detail(client.get("/api/videos", params={"status": "lost"}), 422)
    assert "video_id" in _detail(client.get("/api/videos/abc"), 422)
    assert "video_id" in _detail(client.delete("/api/videos/0"), 422)
    assert "job_id" in _detail(client.get("/api/jobs/-3"), 422)
    assert "job_id" in _detail(client.get(f"/api/jobs/{2**70}"), 422)
    # 400: not an image
    assert "not an image" in _detail(client.post("/api/embed/image", files={"file": ("a.png", b"shopping list")}), 400)
    assert "not an image" in _detail(client.post("/api/search", json={"image": b64(b"shopping list")}), 400)
    assert "base64" in _detail(client.post("/api/embed/image", json={"image": "%%% not base64"}), 400)
    # 404: unknown ids
    assert "no video with id 987654" == _detail(client.get("/api/videos/987654"), 404)
    assert "no video with id 987654" == _detail(client.delete("/api/videos/987654"), 404)
    assert "no job with id 987654" == _detail(client.get("/api/jobs/987654"), 404)
    # 413: a decompression bomb (81 megapixels in ~80 KB) is refused before its pixels are decoded
    bomb = png(np.zeros((9000, 9000, 3), np.uint8))
    assert "pixels" in _detail(client.post("/api/embed/image", files={"file": ("bomb.png", bomb)}), 413)
    assert "pixels" in _detail(client.post("/api/search", json={"image": b64(bomb)}), 413)
    # 415: the wrong kind of body
    assert "multipart" in _detail(client.post("/api/embed/image", content=b"x",
                                              headers={"content-type": "text/plain"}), 415)
    assert "multipart" in _detail(client.post("/api/videos", json={"file": "x"}), 415)


def chunked_multipart(name: str, data: bytes, chunk: int, boundary: str = "vidsearch-test-boundary"):
    """A multipart body sent with chunked transfer encoding (no Content-Length), in chunks of `chunk` bytes."""
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    return (body[i : i + chunk] for i in range(0, len(body), chunk)), headers


def test_upload_limits_and_refusals(client, server, library, clips_dir):
    incoming = server.runtime.settings.home_dir / "incoming"
    before = client.get("/api/videos").json()["total"]
    # VIDSEARCH_MAX_UPLOAD_MB is 1 here: 1.5 MB is refused, from its Content-Length before it is read ...
    big = client.post("/api/videos", files={"file": ("big.mp4", bytes(1536 * 1024))})
    assert "larger than the upload limit of 1 MB" in _detail(big, 413)
    # ... and, sent without a length, while it is streamed to disk; nothing of it is kept.
    chunks, headers = chunked_multipart("big.mp4", bytes(1536 * 1024), 64 * 1024)
    assert "larger than the upload limit of 1 MB" in _detail(client.post("/api/videos", content=chunks,
                                                                         headers=headers), 413)
    # A stream cut into 7-byte pieces (headers split mid-word) is put together right: same content, same video.
    gif = (clips_dir / "blue_square.gif").read_bytes()
    chunks, headers = chunked_multipart("again.gif", gif, 7)
    same = client.post("/api/videos", content=chunks, headers=headers)
    assert same.status_code == 200 and same.json()["outcome"] == "already present"
    assert same.json()["video_id"] == library["blue_square.gif"]["video_id"]
    fake = client.post("/api/videos", files={"file": ("holiday.mp4", b"this is a shopping list, not a video")})
    assert "not a video" in _detail(fake, 415)
    missing = client.post("/api/videos", files={"other": ("x.mp4", b"data")})
    assert "field named 'file'" in _detail(missing, 422)
    assert incoming.is_dir() and not list(incoming.iterdir())
    assert client.get("/api/videos").json()["total"] == before


def test_unavailable_model_and_mismatched_store_are_503(tmp_path, tiny_model, random_model, milvus_uri, server):
    # A vector store built with another model: searching it would compare different vector spaces.
    other = api_settings(tmp_path / "other", random_model, milvus_uri, collection=server.runtime.settings.collection)
    with serve(other, worker=False) as served, httpx.Client(base_url=served.url, timeout=120) as c:
        assert "reindex" in _detail(c.post("/api/search", json={"text": "a red circle"}), 503)
        assert c.post("/api/embed/text", json={"text": "a red circle"}).status_code == 200  # the model itself works
    missing = api_settings(tmp_path / "missing", tmp_path / "no-such-model", milvus_uri)
    with serve(missing, worker=False) as served, httpx.Client(base_url=served.url, timeout=120) as c:
        assert "could not load the CLIP model" in _detail(c.post("/api/embed/text", json={"text": "a"}), 503)
        assert "could not load the CLIP model" in _detail(c.post("/api/search", json={"text": "a"}), 503)
        assert c.get("/api/videos").json() == {"videos": [], "total": 0, "next": None}  # the catalog needs no model


def test_openapi_describes_every_route(client):
    spec = client.get("/openapi.json").json()
    routes = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    assert routes == {("/api/embed/text", "post"), ("/api/embed/image", "post"), ("/api/search", "post"),
                      ("/api/videos", "get"), ("/api/videos", "post"), ("/api/videos/{video_id}", "get"),
                      ("/api/videos/{video_id}", "delete"), ("/api/jobs/{job_id}", "get"),
                      ("/api/videos/{video_id}/timeline", "get"), ("/api/tags", "get"),
                      ("/api/streams", "get"), ("/api/streams", "post"), ("/api/streams/{stream_id}", "delete"),
                      ("/api/events", "get"), ("/api/events/stream", "get")}
    assert "text/event-stream" in spec["paths"]["/api/events/stream"]["get"]["description"] or \
        "Server-Sent Events" in spec["paths"]["/api/events/stream"]["get"]["summary"]
    image_body = spec["paths"]["/api/embed/image"]["post"]["requestBody"]["content"]
    assert set(image_body) == {"application/json", "multipart/form-data"}
    hit = spec["components"]["schemas"]["SearchHit"]
    assert RESULT_KEYS <= set(hit["properties"])


# --- schemathesis ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fuzz_schema(tmp_path_factory, tiny_model, milvus_uri, clips_dir):
    """Its own data folder and collection (DELETE and POST /api/videos are fuzzed too), with two ready videos."""
    home = tmp_path_factory.mktemp("fuzz") / "data"
    with serve(api_settings(home, tiny_model, milvus_uri, decode_mode="thread")) as served:
        rt = served.runtime
        jobs = [enqueue_file(rt.catalog, rt.settings, clips_dir / name).job_id
                for name in ("red_circle.mp4", "blue_triangle.mkv")]
        with httpx.Client(base_url=served.url, timeout=120) as c:
            assert all(wait_job(c, job)["state"] == "done" for job in jobs)
        yield schemathesis.openapi.from_url(served.url + "/openapi.json")


OPERATIONS = [("POST", "/api/embed/text"), ("POST", "/api/embed/image"), ("POST", "/api/search"),
              ("GET", "/api/videos"), ("POST", "/api/videos"), ("GET", "/api/videos/{video_id}"),
              ("DELETE", "/api/videos/{video_id}"), ("GET", "/api/jobs/{job_id}"),
              ("GET", "/api/videos/{video_id}/timeline"), ("GET", "/api/tags"), ("POST", "/api/streams"),
              ("GET", "/api/streams"), ("DELETE", "/api/streams/{stream_id}"), ("GET", "/api/events")]
NO_INPUTS = {("GET", "/api/tags"), ("GET", "/api/streams")}
# Server-Sent Events never end: fuzzing would wait forever on it; tests/test_live_api.py reads it instead.
ENDLESS = {("GET", "/api/events/stream")}
FUZZ_CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
               negative_data_rejection]


def test_fuzzing_covers_every_operation(fuzz_schema):
    found = {(op.method.upper(), op.path) for op in (r.ok() for r in fuzz_schema.get_all_operations())}
    assert found == set(OPERATIONS) | ENDLESS


# schemathesis' own pytest loader for fixtures (schemathesis.pytest.from_fixture) sets `Function._nodeid`, which
# pytest 9.2 no longer has; its documented Hypothesis strategies (APIOperation.as_strategy) are used instead.
@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_fuzz_api_against_its_schema(fuzz_schema, method, path):
    """Valid and invalid requests generated from the served schema: never a 5xx, every status documented, every
    body as the schema says, and invalid data always refused with a 4xx."""
    operation = fuzz_schema[path][method]
    strategy = st.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                         operation.as_strategy(GenerationMode.NEGATIVE))
    statuses: list[int] = []

    @given(case=strategy)
    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    def run(case):
        statuses.append(case.call_and_validate(checks=FUZZ_CHECKS).status_code)

    run()
    # The requests were really made (an operation without inputs has only one request to make).
    assert len(statuses) >= (1 if (method, path) in NO_INPUTS else FUZZ_EXAMPLES // 2)
    print(f"fuzzed {method} {path}: {len(statuses)} requests, statuses {dict(sorted(Counter(statuses).items()))}")
