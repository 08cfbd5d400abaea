"""The timeline service in the real web app (create_app under uvicorn on loopback): on-demand timelines decode in a
killable process with ingestion's limits and timeout, and every model call of the process shares one ModelSlots.
Real Milvus Lite, SQLite, PyAV files, the tiny trained CLIP; decoding in processes, as configured by default."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from ingest.library import enqueue_file
from ingest.runtime import Runtime
from ingest.worker import Worker
from schema.settings import Settings
from search_app.slots import ModelSlots
from search_app.timeline import TimelineService
from search_app.web import create_app
from tests.conftest import drop_stored_segments
from tests.hostile import _encode, write_slow_to_sample
from tests.procs import serve_in_thread
from tests.videos import write_video

TEXTS = ("a red circle", "a blue square")
COMPUTED = ("red_circle.mp4", "green_square.webm", "blue_triangle.mkv", "yellow_square.avi")  # segments removed
STORED = ("green_circle.mov", "blue_square.gif")


class SlowEncoder:
    """The real encoder with each model call held a little (test side), so that concurrent requests overlap; it
    counts the calls and how many ever ran at once, independently of the slots."""

    def __init__(self, real, hold: float = 0.05) -> None:
        self.real, self.hold = real, hold
        self.lock = threading.Lock()
        self.running = self.peak = self.calls = 0

    def __getattr__(self, name: str):
        return getattr(self.real, name)

    def _held(self, fn, *args):
        with self.lock:
            self.running += 1
            self.calls += 1
            self.peak = max(self.peak, self.running)
        try:
            time.sleep(self.hold)
            return fn(*args)
        finally:
            with self.lock:
                self.running -= 1

    def embed_text(self, text):
        return self._held(self.real.embed_text, text)

    def embed_pixels(self, pixels):
        return self._held(self.real.embed_pixels, pixels)

    def embed_image(self, image):
        return self._held(self.real.embed_image, image)


@dataclass
class App:
    url: str
    app: FastAPI
    runtime: Runtime

    @property
    def slots(self) -> ModelSlots:
        return self.app.state.model_slots

    @property
    def timelines(self) -> TimelineService:
        return self.app.state.timelines


@contextlib.contextmanager
def serve(settings: Settings, encoder=None) -> Iterator[App]:
    """create_app under uvicorn in a thread, without an ingestion worker; `encoder` replaces the runtime's."""
    runtime = Runtime(settings)
    if encoder is not None:
        runtime.__dict__["encoder"] = encoder(runtime.encoder)
    app = create_app(runtime)
    try:
        with serve_in_thread(app) as url:
            yield App(url, app, runtime)
    finally:
        runtime.close()


def make_settings(home: Path, model: Path, milvus_uri: str, collection: str, **extra) -> Settings:
    return Settings(home=home, model=str(model), milvus_uri=milvus_uri, collection=collection, frames=4,
                    batch_size=16, worker_poll_seconds=0.2, **extra)


def ingest(settings: Settings, paths: list[Path], *, link: bool = False) -> dict[str, int]:
    """Ingest with thread decoding (quick); file name -> video id."""
    rt = Runtime(settings.model_copy(update={"decode_mode": "thread"}))
    try:
        ids = {p.name: enqueue_file(rt.catalog, rt.settings, p, link=link).video_id for p in paths}
        with Worker.from_settings(rt.catalog, rt.store, rt.encoder, rt.settings) as worker:
            results = worker.run_until_empty()
        assert results and all(r.ok for r in results), [r.error for r in results]
        return ids
    finally:
        rt.close()


def drop_segments(settings: Settings, video_ids: list[int]) -> None:
    """As for a video indexed before segment vectors were stored."""
    rt = Runtime(settings)
    try:
        drop_stored_segments(rt, video_ids)
        assert not rt.store.segments(video_ids)
    finally:
        rt.close()


def spawned_children() -> set[int]:
    """Decode processes (spawned by multiprocessing) of this test process."""
    found = set()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:  # the thread ended after it was listed
            continue
        for child in children:
            with contextlib.suppress(OSError):
                if "spawn_main" in Path(f"/proc/{child}/cmdline").read_text():
                    found.add(int(child))
    return found


@pytest.fixture(scope="module")
def library(tmp_path_factory, tiny_model, milvus_uri, clips_dir) -> tuple[Settings, dict[str, int], dict]:
    """The session clips ingested with their segments; the timelines they give; then the segments of COMPUTED
    removed. Returns the settings, file name -> video id, and (name, text) -> the stored timeline."""
    settings = make_settings(tmp_path_factory.mktemp("timeline") / "data", tiny_model, milvus_uri,
                             f"tl_{uuid.uuid4().hex[:10]}")
    ids = ingest(settings, sorted(clips_dir.iterdir()))
    with serve(settings) as served, httpx.Client(base_url=served.url, timeout=120) as client:
        expected = {}
        for name in COMPUTED + STORED:
            for text in TEXTS:
                response = client.get(f"/api/videos/{ids[name]}/timeline", params={"text": text})
                assert response.status_code == 200 and response.json()["source"] == "stored", response.text
                expected[name, text] = response.json()
    drop_segments(settings, [ids[n] for n in COMPUTED])
    return settings, ids, expected


async def _flood(url: str, requests: list[tuple[str, str, dict]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=180) as client:
        return await asyncio.gather(*(client.request(method, path, **kwargs) for method, path, kwargs in requests))


@pytest.mark.parametrize("limit", [1, 2])
def test_a_flood_of_on_demand_timelines_and_searches_shares_the_model_slots(library, limit):
    settings, ids, expected = library
    timelines = [(name, text) for name in COMPUTED for text in TEXTS] + [(STORED[0], TEXTS[0])]
    searches = [f"a {c} {s}" for c, s in [("red", "circle"), ("green", "square"), ("blue", "triangle"),
                                          ("yellow", "square")] * 2]
    requests = []
    for i in range(max(len(timelines), len(searches))):  # interleaved, all sent at once
        if i < len(timelines):
            name, text = timelines[i]
            requests.append(("GET", f"/api/videos/{ids[name]}/timeline", {"params": {"text": text}}))
        if i < len(searches):
            requests.append(("POST", "/api/search", {"json": {"text": searches[i], "k": 3}}))

    with serve(settings.model_copy(update={"search_concurrency": limit}), encoder=SlowEncoder) as served:
        responses = asyncio.run(_flood(served.url, requests))
        assert [r.status_code for r in responses] == [200] * len(requests), [r.text for r in responses]
        answers = iter(responses)
        for i in range(max(len(timelines), len(searches))):
            if i < len(timelines):
                name, text = timelines[i]
                got, want = next(answers).json(), expected[name, text]
                assert got["source"] == ("stored" if name in STORED else "computed")
                # Decoded and embedded now, they equal what ingestion stored.
                assert [p["time"] for p in got["points"]] == pytest.approx([p["time"] for p in want["points"]])
                np.testing.assert_allclose([p["score"] for p in got["points"]],
                                           [p["score"] for p in want["points"]], atol=1e-4)
                assert [(m["start"], m["end"]) for m in got["moments"]] == [(m["start"], m["end"])
                                                                            for m in want["moments"]]
            if i < len(searches):
                top = next(answers).json()["results"][0]["title"]
                assert Path(top).stem == searches[i].removeprefix("a ").replace(" ", "_"), (searches[i], top)

        stats, encoder = served.slots.stats(), served.runtime.encoder
        assert stats.peak == limit and encoder.peak <= limit  # filled, never exceeded
        assert stats.in_use == 0 and stats.total == encoder.calls  # every model call of the process took a slot
        assert served.timelines.decodes == len(COMPUTED)  # two requests for one video: decoded once


def test_a_file_that_stalls_the_decoder_times_out_clearly_and_the_next_timeline_works(tmp_path, tiny_model,
                                                                                      milvus_uri, clips_dir):
    settings = make_settings(tmp_path / "data", tiny_model, milvus_uri, f"tlh_{uuid.uuid4().hex[:10]}",
                             decode_timeout_seconds=2, max_duration_seconds=120)
    # Good clips, indexed in place; once "ready", three of them are replaced by files the limits refuse.
    files = tmp_path / "files"
    files.mkdir()
    names = ["good.mp4", "stalls.mp4", "huge.mp4", "long.mp4", "other.avi"]
    sources = ["red_circle.mp4", "green_circle.mov", "blue_triangle.mkv", "green_square.webm", "yellow_square.avi"]
    for name, source in zip(names, sources, strict=True):
        shutil.copyfile(clips_dir / source, files / name)
    ids = ingest(settings, [files / n for n in names], link=True)
    drop_segments(settings, list(ids.values()))
    write_slow_to_sample(files / "stalls.mp4")  # 80 s, one keyframe: 32 samples take many seconds to seek to
    _encode(files / "huge.mp4", 10_000, 16, 2)  # over VIDSEARCH_MAX_VIDEO_SIDE (8192)
    write_video(files / "long.mp4", seconds=150, fps=1, size=16)  # over VIDSEARCH_MAX_DURATION_SECONDS (120)

    def timeline(client: httpx.Client, name: str) -> httpx.Response:
        return client.get(f"/api/videos/{ids[name]}/timeline", params={"text": "a red circle"})

    with serve(settings) as served, httpx.Client(base_url=served.url, timeout=120) as client:
        before = spawned_children()
        good = timeline(client, "good.mp4")
        assert good.status_code == 200 and good.json()["source"] == "computed", good.text
        decoder = spawned_children() - before
        assert len(decoder) == 1  # the service's one decode process

        stalled = timeline(client, "stalls.mp4")
        assert stalled.status_code == 422, stalled.text
        assert stalled.json()["detail"].startswith("the video could not be read: decoding took longer than 2 s "
                                                   "and was stopped")
        assert timeline(client, "stalls.mp4").json() == stalled.json()  # known: answered without decoding again
        assert served.timelines.decodes == 2

        other = timeline(client, "other.avi")  # a fresh decode process took over
        assert other.status_code == 200 and other.json()["source"] == "computed", other.text
        replacement = spawned_children() - before
        assert len(replacement) == 1 and replacement != decoder  # the stalled one was killed and replaced

        huge, long = timeline(client, "huge.mp4"), timeline(client, "long.mp4")
        assert huge.status_code == 422 and "10000×16 pixels; the limit is 8192" in huge.json()["detail"]
        assert long.status_code == 422 and "lasts 2:30; the limit is 2:00" in long.json()["detail"]

        # The page's Timeline tab says the same, in words, and reports progress while it embeds on demand.
        messages = timeline_page_event(client, ids["long.mp4"], "a red circle")
        html = messages[-1]["output"]["data"][1]
        assert "the limit is 2:00" in html and "vs-empty" in html
        assert served.slots.stats().in_use == 0
    assert spawned_children() - before == set()  # closed with the app


def test_the_page_timeline_reports_progress_and_shares_the_slots(tmp_path, tiny_model, milvus_uri, clips_dir):
    settings = make_settings(tmp_path / "data", tiny_model, milvus_uri, f"tlp_{uuid.uuid4().hex[:10]}",
                             search_concurrency=1)
    ids = ingest(settings, [clips_dir / "red_circle.mp4"])
    drop_segments(settings, list(ids.values()))
    with serve(settings, encoder=SlowEncoder) as served, httpx.Client(base_url=served.url, timeout=120) as client:
        messages = timeline_page_event(client, ids["red_circle.mp4"], "a red circle")
        assert messages[-1]["success"], messages[-1]
        descriptions = [unit["desc"] for m in messages if m["msg"] == "progress" for unit in m["progress_data"]]
        assert "Decoding this video's frames" in descriptions, messages
        assert any(d.startswith("Embedding frames of this video: ") for d in descriptions), messages
        html = messages[-1]["output"]["data"][1]
        assert 'class="vs-timeline"' in html and "red_circle.mp4" in html
        stats = served.slots.stats()
        assert stats.total == served.runtime.encoder.calls == 2  # the query, one batch of frames
        assert served.timelines.decodes == 1


def timeline_page_event(client: httpx.Client, video_id: int, text: str) -> list[dict]:
    """The Timeline tab as a browser uses it: open the tab (which fills the video list), then run the timeline;
    returns the event's messages, the last one being process_completed."""
    config = client.get("/config").json()
    video_box = next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == "timeline-video")
    # The tab's select event offers the newest ready videos (a title search box feeds it; empty here).
    fill = next(d["id"] for d in config["dependencies"]
                if d["outputs"] == [video_box] and d.get("api_name") == "picker")
    show = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "do_timeline")
    session = uuid.uuid4().hex
    page_event(client, session, fill, ["", None])
    return page_event(client, session, show, [video_id, text])


def page_event(client: httpx.Client, session: str, fn_index: int, data: list) -> list[dict]:
    """Run one of the page's events as the browser does: join Gradio's queue, read its event stream."""
    joined = client.post("/gradio_api/queue/join", json={"data": data, "fn_index": fn_index, "session_hash": session,
                                                         "event_data": None, "trigger_id": None})
    assert joined.status_code == 200, joined.text
    messages = []
    with client.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                messages.append(json.loads(line[5:]))
                if messages[-1].get("msg") == "process_completed":
                    return messages
    raise AssertionError(f"the event stream ended without a result: {messages}")


def test_slots_count_and_bound_concurrent_calls():
    slots = ModelSlots(2)
    seen: list[int] = []
    gate = threading.Event()

    def work() -> int:
        seen.append(slots.stats().in_use)
        gate.wait(5)
        return 1

    async def main() -> list[int]:
        async with anyio.create_task_group() as tg:
            results: list[int] = []

            async def one() -> None:
                results.append(await slots.run(work))

            for _ in range(5):
                tg.start_soon(one)
            while len(seen) < 2:  # two run, three wait (without a thread)
                await anyio.sleep(0.01)
            assert slots.stats().in_use == 2
            gate.set()
        return results

    assert anyio.run(main) == [1] * 5
    stats = slots.stats()
    assert (stats.limit, stats.in_use, stats.peak, stats.total) == (2, 0, 2, 5)
    with pytest.raises(ValueError):
        ModelSlots(0)
