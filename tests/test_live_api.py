"""Streams through the HTTP API of a real `vidsearch serve`: its watcher process watches a real UDP stream on
127.0.0.1 and the event reaches GET /api/events and the Server-Sent Events stream; only network URLs are accepted,
and a password in a URL never appears in an answer or a log line. Plus retention on the real catalog."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from datetime import timedelta

import httpx
import pytest

from ingest.live import LiveError, check_network_url
from ingest.live_service import LiveService
from schema.catalog import Catalog, utcnow
from schema.settings import Settings
from tests.procs import running_server
from tests.streams import start_publisher
from tests.test_live import PROMPT, _port, thresholds  # noqa: F401  (the fixture)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "concat:/a.mp4|/b.mp4", "subfile,,start,0,end,0,,:/x",
                                 "/etc/passwd", "pipe:0", "udp://", "rtsp:///nohost", "http://a b/", ""])
def test_only_network_urls_can_be_added(url):
    with pytest.raises(LiveError):
        check_network_url(url)


def test_network_urls_are_accepted_as_given():
    for url in ("rtsp://admin:pw@10.0.0.2:554/s1", "udp://127.0.0.1:5000?timeout=1", "https://cam.local/live.m3u8",
                "srt://[::1]:9000", "rtmp://host/app/key"):
        assert check_network_url(url) == url


def _sse(url: str, into: list[dict], stop: threading.Event) -> None:
    with contextlib.suppress(httpx.HTTPError), httpx.Client(timeout=None) as client, \
            client.stream("GET", url) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in response.iter_lines():
            if stop.is_set():
                return
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                into.append({"event": kind, **json.loads(line[6:])})


@pytest.mark.slow
def test_a_stream_added_through_the_api_gives_its_event_over_get_and_sse(tiny_model, thresholds, tmp_path):  # noqa: F811
    enter, leave = thresholds
    port = _port()
    secret_url = f"udp://viewer:s3cret@127.0.0.1:{port}?timeout=5000000"
    log_path = tmp_path / "serve.log"
    with running_server(tmp_path / "home", tiny_model, log_path) as base, httpx.Client(base_url=base,
                                                                                     timeout=60) as client:
        for bad in ("file:///etc/passwd", "concat:/a.mp4|/b.mp4", "/dev/video0"):
            refused = client.post("/api/streams", json={"url": bad, "prompts": [PROMPT]})
            assert refused.status_code == 422 and "network" in refused.json()["detail"], refused.text
        assert client.get("/api/streams").json() == {"streams": []}

        messages: list[dict] = []
        stop = threading.Event()
        listener = threading.Thread(target=_sse, args=(base + "/api/events/stream", messages, stop), daemon=True)
        listener.start()
        added = client.post("/api/streams", json={"url": secret_url, "prompts": [PROMPT], "threshold": enter,
                                                  "exit_threshold": leave, "min_seconds": 0.5, "fps": 5,
                                                  "record": True})
        assert added.status_code == 201, added.text
        stream = added.json()
        assert stream["url"] == f"udp://***@127.0.0.1:{port}?timeout=5000000"
        assert stream["name"] == f"127.0.0.1:{port}" and stream["prompts"] == [PROMPT]

        # The watcher process starts (the model loads there), then reports the stream: its socket is being opened.
        deadline = time.monotonic() + 120
        while True:
            row = client.get("/api/streams").json()["streams"][0]
            if row["state"] != "waiting":  # the watcher process has it
                break
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.5)
        time.sleep(1.0)
        start_publisher(port, 11.0, [("red", "circle", 4.0, 8.0)]).wait(timeout=60)

        deadline = time.monotonic() + 60
        while not (events := [e for e in client.get("/api/events").json()["events"] if e["end"] is not None]):
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.5)
        assert len(events) == 1, events
        # the event's clip (written 3 s after its end) enters the library, tagged with the stream's name
        while (event := client.get("/api/events").json()["events"][0])["clip_video_id"] is None:
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.5)
        clip = client.get(f"/api/videos/{event['clip_video_id']}").json()
        assert clip["tag"] == stream["name"].replace(":", "_"), clip
        assert event["stream_id"] == stream["id"] and event["prompt"] == PROMPT
        assert abs(event["start"] - 4.0) <= 1.0 and abs(event["end"] - 8.0) <= 1.0, event
        assert event["source"] == stream["url"]
        thumb = client.get(event["thumbnail"])
        assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"
        # filters: by stream, and by start time
        assert client.get("/api/events", params={"stream": stream["id"]}).json()["events"] == [event]
        assert stream["record"] is True
        later = event["started_at"].replace("Z", "+00:00")
        assert client.get("/api/events", params={"since": later}).json()["events"] == [event]
        assert client.get("/api/events", params={"since": "2999-01-01"}).json()["events"] == []
        assert client.get("/api/events", params={"since": "yesterday"}).status_code == 422

        deadline = time.monotonic() + 10
        while len(messages) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        kinds = [(m["event"], m["type"], m["id"]) for m in messages]
        # start, end, and the end again once its clip is linked (every write is pushed)
        assert kinds[:2] == [("start", "start", event["id"]), ("end", "end", event["id"])], messages
        assert set(kinds[2:]) <= {("end", "end", event["id"])}, messages
        assert messages[0]["end"] is None and messages[1]["end"] == event["end"]

        state = client.get("/api/streams").json()["streams"][0]
        assert state["frames"] > 0 and state["state"] in ("live", "retrying"), state
        answers = [client.get("/api/streams").text, client.get("/api/events").text, json.dumps(messages)]
        gone = client.delete(f"/api/streams/{stream['id']}")
        assert gone.status_code == 200 and client.get("/api/streams").json() == {"streams": []}
        assert client.delete(f"/api/streams/{stream['id']}").status_code == 404
        assert client.get("/api/events").json()["events"][0]["stream_id"] is None  # the event stays
        stop.set()
    text = log_path.read_text()
    for answer in [*answers, text]:
        assert "s3cret" not in answer and "viewer" not in answer
    assert "live: watcher process" in text


def test_events_past_their_retention_are_removed_with_their_thumbnails(tmp_path, catalog_url):
    settings = Settings(home=tmp_path / "home", live_retention_days=7, database_url=catalog_url)
    settings.ensure_dirs()
    catalog = Catalog(settings.catalog_url)
    try:
        stream = catalog.add_stream(url="udp://127.0.0.1:1", name="cam", prompts='["a dog"]', threshold=0.3,
                                    exit_threshold=0.2, min_seconds=1, fps=2)
        settings.live_dir.mkdir(parents=True, exist_ok=True)
        now = utcnow()
        ids = []
        for age_days, name in ((10, "old.jpg"), (3, "new.jpg")):
            (settings.live_dir / name).write_bytes(b"\xff\xd8")
            row = catalog.start_event(stream_id=stream.id, source="udp://127.0.0.1:1", name="cam", prompt="a dog",
                                      start=0.0, peak_score=0.4, peak_softmax=1.0,
                                      started_at=now - timedelta(days=age_days))
            catalog.end_event(row, end=2.0, ended_at=now - timedelta(days=age_days), thumbnail=name)
            ids.append(row)
        open_row = catalog.start_event(stream_id=stream.id, source="udp://127.0.0.1:1", name="cam", prompt="a dog",
                                       start=5.0, peak_score=0.4, peak_softmax=1.0,
                                       started_at=now - timedelta(days=30))  # still open: never removed
        service = LiveService(settings, catalog, encoder=None)
        assert service.remove_expired(now) == 1
        assert {e.id for e in catalog.live_events()} == {ids[1], open_row}
        assert not (settings.live_dir / "old.jpg").exists() and (settings.live_dir / "new.jpg").exists()
        seqs = [e.seq for e in catalog.live_events(after_seq=0)]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # every write has its own place in order
    finally:
        catalog.close()


@pytest.mark.slow
def test_serve_resumes_its_streams_after_a_restart(tiny_model, tmp_path):
    home, log_path = tmp_path / "home", tmp_path / "serve.log"

    def picked_up(client: httpx.Client, after: str = "") -> dict:
        deadline = time.monotonic() + 120
        while True:
            row = client.get("/api/streams").json()["streams"][0]
            if row["state"] in ("connecting", "retrying", "live") and row["updated_at"] > after:
                return row
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.5)

    with running_server(home, tiny_model, log_path) as base, httpx.Client(base_url=base, timeout=60) as client:
        added = client.post("/api/streams", json={"url": f"udp://127.0.0.1:{_port()}?timeout=1000000",
                                                  "prompts": [PROMPT]})
        assert added.status_code == 201, added.text
        before = picked_up(client)
    with running_server(home, tiny_model, log_path) as base, httpx.Client(base_url=base, timeout=60) as client:
        (row,) = client.get("/api/streams").json()["streams"]
        assert row["id"] == before["id"] and row["prompts"] == [PROMPT]
        assert row["state"] == "waiting" and row["reason"] == "serve stopped", row  # as the first serve left it
        picked_up(client, after=row["updated_at"])  # the new watcher process watches it again
    assert log_path.read_text().count("live: watcher process") >= 1


def test_recorded_clips_past_their_size_cap_are_deleted_oldest_first(tmp_path, catalog_url):
    settings = Settings(home=tmp_path / "home", live_clips_max_gb=2500 / 2**30,  # 2500 bytes of clips at most
                        database_url=catalog_url)
    settings.ensure_dirs()
    catalog = Catalog(settings.catalog_url)
    try:
        videos = []
        for i in range(3):  # three 1000-byte clips: the oldest must go
            path = settings.videos_dir / f"clip{i}.mkv"
            path.write_bytes(b"x" * 1000)
            video, _job = catalog.add_video(sha256=f"{i:064x}", title=f"clip {i}", stored_path=str(path),
                                            size_bytes=1000)
            row = catalog.start_event(stream_id=None, source="udp://127.0.0.1:1", name="cam", prompt="a dog",
                                      start=float(i), peak_score=0.4, peak_softmax=1.0, started_at=utcnow())
            catalog.set_event_clip([row], video.id)
            videos.append(video.id)
        deleted = []
        service = LiveService(settings, catalog, encoder=None, delete_video=deleted.append)
        assert service.cap_clips() == 1 and deleted == [videos[0]]
        assert [v.id for v in catalog.clip_videos()] == videos  # (the callback deletes; the fake one did not)
    finally:
        catalog.close()
