"""Moments: segment vectors with times and thumbnails are stored at ingest, found by search, and removed with the
video. Real PyAV clips, the tiny trained CLIP, real Milvus Lite and SQLite."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ingest import thumbnails
from ingest.decode import Sampling
from ingest.doctor import examine
from ingest.library import delete_video, enqueue_file
from ingest.runtime import Runtime
from ingest.worker import LEASE_SECONDS, Worker
from schema.vectors import Segments
from search_app.moments import best_moments
from search_app.search import search_image, search_text
from tests.conftest import drop_stored_segments
from tests.videos import render_frame, write_video

FPS = 4
# 2 s of black (a fade-in: never the poster), then three distinct parts of 4 s each.
PARTS = [(None, None, 2), ("red", "circle", 4), ("blue", "square", 4), ("green", "triangle", 4)]
SPANS = {"red": (2.0, 6.0), "blue": (6.0, 10.0), "green": (10.0, 14.0)}


def write_parts_clip(path: Path) -> Path:
    frames = []
    for colour, shape, seconds in PARTS:
        for i in range(seconds * FPS):
            frames.append(np.zeros((64, 64, 3), np.uint8) if colour is None else
                          render_frame(colour, shape, 64, jitter=len(frames) + i))
    return write_video(path, frames, fps=FPS)


@pytest.fixture
def moments_runtime(settings):
    # Moments of 2 s: the 14 s clip is sampled every second (14 frames instead of the 4 short clips get).
    rt = Runtime(settings.model_copy(update={"moment_seconds": 2.0}))
    yield rt
    rt.close()


def _ingest(rt: Runtime, *paths: Path) -> list[int]:
    ids = [enqueue_file(rt.catalog, rt.settings, p).video_id for p in paths]
    with Worker.from_settings(rt.catalog, rt.store, rt.encoder, rt.settings) as worker:
        results = worker.run_until_empty()
    assert all(r.ok for r in results), [r.error for r in results]
    return ids


def test_sampling_grows_with_duration_only_for_long_videos():
    sampling = Sampling(12, 2.5, 120)  # the defaults: 12 frames, moments of 5 s, at most 120 frames
    assert [sampling.count(d) for d in (None, 0.5, 10, 30)] == [12, 12, 12, 12]  # short clips: as before
    assert sampling.count(31) == 13 and sampling.count(60) == 24
    assert sampling.count(6 * 3600) == 120
    assert Sampling(12).count(3600) == 12


def test_best_moments_pick_separate_windows_and_merge_touching_ones():
    dim = 4
    basis = np.eye(dim, dtype=np.float32)
    # 10 one-second samples: axis 0 at 2-4 s and 7-9 s, axis 1 elsewhere.
    rows = [basis[0] if i in (2, 3, 7, 8) else basis[1] for i in range(10)]
    seg = Segments(np.arange(10, dtype=np.float32), np.arange(1, 11, dtype=np.float32), np.stack(rows))
    moments = best_moments(seg, basis[0], moment_seconds=2.0)
    assert sorted((m.start, m.end) for m in moments) == [(2.0, 4.0), (7.0, 9.0)]
    assert all(m.score == pytest.approx(1.0) for m in moments)
    assert moments[0].frame in (2, 3, 7, 8)
    # A window longer than the video: one moment, the whole video.
    [whole] = best_moments(seg, basis[0], moment_seconds=60)
    assert (whole.start, whole.end) == (0.0, 10.0)


def test_segments_and_thumbnails_are_stored_and_removed_with_the_video(moments_runtime, tmp_path):
    rt = moments_runtime
    clip = write_parts_clip(tmp_path / "parts.mp4")
    [video_id] = _ingest(rt, clip)
    video = rt.catalog.get_video(video_id)
    assert video.duration == pytest.approx(14.0, abs=0.3)

    segments = rt.store.segments([video_id])[video_id]
    assert len(segments) == 14  # one per sampled frame: a frame every half moment
    np.testing.assert_allclose(segments.starts, np.arange(14) * video.duration / 14, atol=1e-3)
    np.testing.assert_allclose(segments.ends, (np.arange(14) + 1) * video.duration / 14, atol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(segments.vectors, axis=1), 1.0, atol=1e-5)
    # The video vector is still the normalised mean of all its sampled frames' vectors.
    whole = rt.store.fetch([video_id])[video_id]
    mean = segments.vectors.mean(axis=0)
    np.testing.assert_allclose(whole, mean / np.linalg.norm(mean), atol=1e-5)

    folder = thumbnails.folder(rt.settings.thumbnails_dir, video.sha256)
    assert sorted(p.name for p in folder.iterdir()) == sorted([f"{i}.jpg" for i in range(14)] + ["poster.jpg"])
    poster = np.asarray(Image.open(folder / "poster.jpg").convert("L"), np.float32)
    assert poster.mean() > 20 and poster.std() > 20  # not the black lead-in
    first = np.asarray(Image.open(folder / "0.jpg").convert("L"), np.float32)
    assert first.mean() < 10  # the lead-in really is black, so the poster was chosen
    assert Image.open(folder / "5.jpg").format == "JPEG"

    # Ingesting again (a retried job) replaces the segments rather than adding to them.
    rt.catalog.requeue_video(video_id)
    with Worker.from_settings(rt.catalog, rt.store, rt.encoder, rt.settings) as worker:
        assert all(r.ok for r in worker.run_until_empty())
    assert rt.store.segment_counts() == {video_id: 14}

    delete_video(rt.catalog, rt.store, video_id, rt.settings.thumbnails_dir)
    assert rt.store.segment_counts() == {} and rt.store.vector_counts() == {}
    assert not folder.exists()


def test_search_returns_the_matching_moment_of_each_video(moments_runtime, tmp_path, clips_dir):
    rt = moments_runtime
    parts_id, red_id = _ingest(rt, write_parts_clip(tmp_path / "parts.mp4"), clips_dir / "red_circle.mp4")
    for colour, shape in (("blue", "square"), ("green", "triangle"), ("red", "circle")):
        results = search_text(rt.catalog, rt.store, rt.encoder, f"a {colour} {shape}", k=2,
                              moment_seconds=rt.settings.moment_seconds)
        assert {r.video_id for r in results} == {parts_id, red_id}  # each video once, with its own moments
        parts = next(r for r in results if r.video_id == parts_id)
        assert 1 <= len(parts.moments) <= 3
        best = parts.moments[0]
        lo, hi = SPANS[colour]
        assert lo - 0.5 <= best.start and best.end <= hi + 0.5, (colour, parts.moments)
        assert 1.8 <= best.end - best.start <= 4.2  # one 2 s window, or two touching ones merged
        assert lo - 0.5 <= best.frame * 1.0 <= hi + 0.5
    # A still of the target part, as an image query, finds the moment in that part too.
    [hit] = [r for r in search_image(rt.catalog, rt.store, rt.encoder, render_frame("green", "triangle", 96), k=2,
                                     moment_seconds=2.0) if r.video_id == parts_id]
    assert SPANS["green"][0] - 0.5 <= hit.moments[0].start and hit.moments[0].end <= SPANS["green"][1] + 0.5
    # A 1 s clip has one moment: all of it.
    red = next(r for r in results if r.video_id == red_id)
    assert [(m.start, round(m.end)) for m in red.moments] == [(0.0, 1)]


def test_doctor_finds_orphan_segments_and_thumbnails(runtime, clips_dir):
    rt = runtime
    [video_id] = _ingest(rt, clips_dir / "green_square.webm")
    assert examine(rt.catalog, rt.store, rt.settings, lease_seconds=LEASE_SECONDS) == []
    dim = rt.store.dim
    rt.store.add_segments([777777], [Segments(np.array([0.0], np.float32), np.array([1.0], np.float32),
                                              np.ones((1, dim), np.float32) / np.sqrt(dim))])
    stray = uuid.uuid4().hex * 2
    thumbnails.write(rt.settings.thumbnails_dir, stray, [_jpeg()], 0)
    rt.store.flush()
    found = {f.kind: f.video_ids for f in examine(rt.catalog, rt.store, rt.settings, lease_seconds=LEASE_SECONDS)}
    assert found == {"orphan_segments": [777777], "orphan_thumbnails": []}
    examine(rt.catalog, rt.store, rt.settings, lease_seconds=LEASE_SECONDS, repair=True)
    assert examine(rt.catalog, rt.store, rt.settings, lease_seconds=LEASE_SECONDS) == []
    assert rt.store.segment_counts() == {video_id: 4}
    assert thumbnails.stored_hashes(rt.settings.thumbnails_dir) == {rt.catalog.get_video(video_id).sha256}


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(out, "JPEG")
    return out.getvalue()


def test_timeline_from_stored_segments_or_computed_on_demand(moments_runtime, tmp_path):
    import os
    from functools import partial

    import anyio

    from search_app.slots import ModelSlots
    from search_app.timeline import TimelineProgress, TimelineService

    rt = moments_runtime
    [video_id] = _ingest(rt, write_parts_clip(tmp_path / "parts.mp4"))
    video = rt.catalog.get_video(video_id)
    query = rt.encoder.embed_text("a red circle")
    slots = ModelSlots(1)
    # Threads here (the process pool, its limits and its timeout are tests/test_timeline.py's).
    service = TimelineService(rt.settings.model_copy(update={"decode_mode": "thread"}), rt.catalog, rt.store,
                              lambda: rt.encoder, slots)
    try:
        stored = anyio.run(service.timeline, video, query)
        assert stored.source == "stored" and len(stored.times) == 14
        peak = stored.times[int(np.argmax(stored.scores))]
        assert SPANS["red"][0] <= peak <= SPANS["red"][1]
        assert SPANS["red"][0] - 0.5 <= stored.moments[0].start and stored.moments[0].end <= SPANS["red"][1] + 0.5

        # A video ingested before segments were stored: its frames are embedded on demand, with progress reports.
        drop_stored_segments(rt, [video_id])
        reports: list[TimelineProgress] = []
        computed = anyio.run(partial(service.timeline, video, query, progress=reports.append))
        assert computed.source == "computed"
        assert reports[0].stage == "decoding" and reports[-1] == TimelineProgress("embedding", 14, 14)
        assert computed.times == stored.times
        np.testing.assert_allclose(computed.scores, stored.scores, atol=1e-4)  # same sampling, same vectors
        assert computed.moments == stored.moments

        # Kept: a text query (by video id) reuses the computed segments; a changed file or content does not.
        by_text = anyio.run(service.timeline, video_id, "a red circle")
        assert service.decodes == 1
        np.testing.assert_allclose(by_text.scores, computed.scores, atol=1e-5)
        os.utime(video.stored_path, ns=(1, 1))
        anyio.run(service.timeline, video, query)
        assert service.decodes == 2
        video.sha256 = "0" * 64  # as if another file had taken this id
        anyio.run(service.timeline, video, query)
        assert service.decodes == 3
        assert slots.stats().total == 1 + 3  # every model call took a slot: the text query, 3 times 1 batch of frames
    finally:
        service.close()
