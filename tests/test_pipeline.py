"""End to end in one process: real PyAV decoding, tiny trained CLIP, real Milvus Lite, real SQLite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ingest.library import Outcome, delete_video, enqueue_file
from ingest.worker import Worker
from schema.catalog import JobState, VideoStatus
from schema.vectors import MilvusVectorStore, ModelMismatchError
from search_app.search import QueryError, search_text
from tests.conftest import CLIPS


def _ingest_all(runtime, folder: Path) -> dict[str, int]:
    ids = {}
    for path in sorted(folder.iterdir()):
        r = enqueue_file(runtime.catalog, runtime.settings, path)
        assert r.outcome is Outcome.QUEUED, (path, r)
        ids[path.name] = r.video_id
    with Worker.from_settings(runtime.catalog, runtime.store, runtime.encoder, runtime.settings) as worker:
        results = worker.run_until_empty()
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    return ids


def test_each_caption_finds_its_clip_first(runtime, clips_dir):
    ids = _ingest_all(runtime, clips_dir)
    for colour, shape, name, _ in CLIPS:
        results = search_text(runtime.catalog, runtime.store, runtime.encoder, f"a {colour} {shape}", k=3)
        assert results[0].video_id == ids[name], (colour, shape, [r.title for r in results])
        assert results[0].title == name
        assert [r.rank for r in results] == [1, 2, 3]
        assert results[0].score > results[1].score


def test_catalog_records_metadata_and_content_addressed_copy(runtime, clips_dir):
    ids = _ingest_all(runtime, clips_dir)
    video = runtime.catalog.get_video(ids["red_circle.mp4"])
    assert video.status is VideoStatus.READY and video.error is None
    assert (video.width, video.height, video.codec) == (64, 64, "h264")
    assert video.duration == pytest.approx(1.0, abs=0.2)
    assert video.fps == pytest.approx(8, abs=0.5)
    stored = Path(video.stored_path)
    assert stored.is_file() and stored.parent.parent == runtime.settings.videos_dir
    assert stored.name == f"{video.sha256}.mp4"
    assert stored.read_bytes() == (clips_dir / "red_circle.mp4").read_bytes()
    assert runtime.store.count() == len(CLIPS)


def test_same_content_twice_is_not_embedded_again(runtime, clips_dir, tmp_path):
    _ingest_all(runtime, clips_dir)
    copy = tmp_path / "renamed copy.mp4"
    copy.write_bytes((clips_dir / "red_circle.mp4").read_bytes())
    again = enqueue_file(runtime.catalog, runtime.settings, copy)
    assert again.outcome is Outcome.ALREADY_PRESENT
    assert runtime.catalog.job_counts()[JobState.QUEUED.value] == 0
    assert runtime.store.count() == len(CLIPS)


def test_broken_file_fails_alone_with_a_reason(runtime, clips_dir, tmp_path):
    good = enqueue_file(runtime.catalog, runtime.settings, clips_dir / "red_circle.mp4")
    broken = tmp_path / "broken.mp4"
    data = (clips_dir / "green_circle.mov").read_bytes()
    broken.write_bytes(data[:200])  # truncated: header only
    bad = enqueue_file(runtime.catalog, runtime.settings, broken, check_video=False)
    worker = Worker.from_settings(runtime.catalog, runtime.store, runtime.encoder, runtime.settings)
    results = {r.video_id: r for r in worker.run_until_empty()}
    assert results[good.video_id].ok
    assert not results[bad.video_id].ok and results[bad.video_id].error
    failed = runtime.catalog.get_video(bad.video_id)
    assert failed.status is VideoStatus.FAILED and failed.error == results[bad.video_id].error
    assert runtime.store.video_ids() == {good.video_id}


def test_only_ready_videos_are_returned(runtime, clips_dir):
    ids = _ingest_all(runtime, clips_dir)
    # A vector without a ready catalog row (e.g. a crash between the two writes) must stay invisible.
    runtime.store.add([999_999], runtime.encoder.embed_texts(["a red circle"]))
    results = search_text(runtime.catalog, runtime.store, runtime.encoder, "a red circle", k=len(CLIPS) + 1)
    assert 999_999 not in {r.video_id for r in results}
    assert {r.video_id for r in results} == set(ids.values())


def test_delete_removes_vectors_row_and_file(runtime, clips_dir):
    ids = _ingest_all(runtime, clips_dir)
    victim = runtime.catalog.get_video(ids["red_circle.mp4"])
    delete_video(runtime.catalog, runtime.store, victim.id)
    assert runtime.catalog.get_video(victim.id) is None
    assert not Path(victim.stored_path).exists()
    assert victim.id not in runtime.store.video_ids()
    results = search_text(runtime.catalog, runtime.store, runtime.encoder, "a red circle", k=10)
    assert victim.id not in {r.video_id for r in results}


def test_another_model_is_refused_on_the_same_collection(runtime, clips_dir, random_model):
    _ingest_all(runtime, clips_dir)
    with pytest.raises(ModelMismatchError, match="reindex"):
        MilvusVectorStore.open(runtime.settings, runtime.encoder.dim, f"{random_model}@other")


def test_empty_query_is_refused(runtime):
    with pytest.raises(QueryError):
        search_text(runtime.catalog, runtime.store, runtime.encoder, "   ", k=5)


def test_vectors_are_unit_length_in_milvus(runtime, clips_dir):
    _ingest_all(runtime, clips_dir)
    hits = runtime.store.search(runtime.encoder.embed_text("a blue triangle"), 10)
    scores = np.array([h.score for h in hits])
    assert np.all(scores <= 1.0 + 1e-5) and np.all(scores >= -1.0 - 1e-5)


def test_interrupted_batch_is_requeued_and_leaves_nothing_visible(runtime, clips_dir, monkeypatch):
    r = enqueue_file(runtime.catalog, runtime.settings, clips_dir / "red_circle.mp4")
    worker = Worker.from_settings(runtime.catalog, runtime.store, runtime.encoder, runtime.settings)

    def interrupted(_videos):
        raise KeyboardInterrupt  # Ctrl-C while the model runs

    monkeypatch.setattr(runtime.encoder, "embed_pixels", interrupted)
    with pytest.raises(KeyboardInterrupt):
        worker.run_once()
    job = runtime.catalog.jobs_for([r.video_id])[r.video_id]
    assert job.state is JobState.QUEUED and job.attempts == 0
    assert runtime.catalog.get_video(r.video_id).status is VideoStatus.QUEUED
    assert runtime.store.count() == 0

    monkeypatch.undo()
    [result] = worker.run_until_empty()
    assert result.ok and runtime.store.video_ids() == {r.video_id}


def test_streamed_batches_across_videos_equal_per_video_embedding(random_model, clips_dir, tmp_path):
    """Frames of several videos share model batches (batch 5, 4 frames each): same vectors as one at a time."""
    from ingest.encoder import load_encoder
    from ingest.pipeline import decode_video, embed_videos

    encoder = load_encoder(str(random_model), device="cpu", batch_size=5)
    broken = tmp_path / "broken.mkv"
    broken.write_bytes(b"\x1aE\xdf\xa3" + bytes(500))
    paths = sorted(clips_dir.iterdir())
    items = [(p.name, p) for p in paths] + [("broken", broken)]
    out = {e.key: e for e in embed_videos(encoder, items, 4, decode_workers=2, prefetch=2)}
    assert set(out) == {p.name for p in paths} | {"broken"}
    assert out["broken"].vector is None and out["broken"].error
    for path in paths:
        _, pixels = decode_video(encoder, path, 4)
        expected = encoder.embed_videos([pixels])[0]
        np.testing.assert_allclose(out[path.name].vector, expected, atol=1e-5)
        assert out[path.name].info.width == 64


def test_any_decoder_exception_fails_only_its_file(random_model, clips_dir, monkeypatch):
    from ingest import decode_pool, pipeline
    from ingest.encoder import load_encoder

    encoder = load_encoder(str(random_model), device="cpu")
    real = decode_pool.decode_pixels

    def flaky(prep, path, frames, *rest, **options):
        if path.name == "red_circle.mp4":
            raise TypeError("a bug deep in a decoder")
        return real(prep, path, frames, *rest, **options)

    monkeypatch.setattr(decode_pool, "decode_pixels", flaky)  # the thread pool looks it up at each call
    items = [(p.name, p) for p in sorted(clips_dir.iterdir())]
    out = {e.key: e for e in pipeline.embed_videos(encoder, items, 4)}
    assert "TypeError: a bug deep in a decoder" in out["red_circle.mp4"].error
    assert all(e.vector is not None for k, e in out.items() if k != "red_circle.mp4")


def test_a_collection_dropped_under_a_running_process_is_recreated(runtime, clips_dir):
    from schema.vectors import drop_collection

    ids = _ingest_all(runtime, clips_dir)
    assert drop_collection(runtime.settings)  # what `vidsearch reindex` does from another process
    assert search_text(runtime.catalog, runtime.store, runtime.encoder, "a red circle", k=3) == []
    video = runtime.catalog.get_video(ids["red_circle.mp4"])
    runtime.catalog.requeue_video(video.id)
    with Worker.from_settings(runtime.catalog, runtime.store, runtime.encoder, runtime.settings) as worker:
        assert all(r.ok for r in worker.run_until_empty())
    assert search_text(runtime.catalog, runtime.store, runtime.encoder, "a red circle", k=3)[0].video_id == video.id
