"""The expert stage on bad input and bad luck: odd audio tracks through the real worker (each expert records what it
found or why not, the video stays ready, the worker goes on), an expert that hangs (its own timeout), one whose
process dies (retried, then failed), a server without full-text search (a clear refusal), and a stop."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid

import pytest

from ingest.expert_stage import ExpertStage
from ingest.experts import AudioInput, Expert, TextSegment
from ingest.library import enqueue_file
from ingest.pipeline import Stopped
from ingest.worker import Worker
from schema.catalog import ExpertState
from schema.lexical import FullTextUnsupported
from schema.settings import Settings
from tests.speech_clips import have_festival, write_speech_video
from tests.test_audio import write_clip

BAD_AUDIO = {
    "eight_channels.mkv": {"codec": "pcm_s16le", "layout": "7.1", "rate": 48000},
    "odd_rate.mkv": {"codec": "pcm_s16le", "layout": "mono", "rate": 11025},
    "opus_48k.webm": {"codec": "libopus", "layout": "stereo", "rate": 48000},
    "silent.mkv": {"codec": "pcm_s16le", "layout": "mono", "rate": 16000, "level": 0.0},
    "no_audio.mp4": None,
}


@pytest.fixture(scope="module")
def stage_settings(tmp_path_factory, tiny_model, milvus_uri) -> Settings:
    return Settings(home=tmp_path_factory.mktemp("stage") / "data", model=str(tiny_model), milvus_uri=milvus_uri,
                    collection=f"stage_{uuid.uuid4().hex[:8]}", frames=4, batch_size=16)


def corrupt_audio_copy(clip, target):
    """The clip with its audio packets overwritten by garbage (the video packets and the header intact)."""
    import av

    data = bytearray(clip.read_bytes())
    with av.open(str(clip)) as container:
        spans = [(p.pos, p.size) for p in container.demux(container.streams.audio[0]) if p.pos is not None and p.size]
    for pos, size in spans[len(spans) // 4:]:
        data[pos : pos + size] = bytes((i * 37 + 11) % 256 for i in range(size))
    target.write_bytes(bytes(data))
    return target


@pytest.mark.skipif(not have_festival(), reason="needs festival's text2wave (scripts/test.sh installs it)")
def test_odd_and_broken_audio_tracks_fail_alone_and_the_video_stays_searchable(stage_settings, tmp_path):
    from ingest.runtime import Runtime

    clips = {name: write_clip(tmp_path / name, 2.0, audio=audio) for name, audio in BAD_AUDIO.items()}
    tone = write_clip(tmp_path / "tone.mp4", 3.0, audio={"codec": "aac", "layout": "stereo", "rate": 44100})
    clips["corrupt.mp4"] = corrupt_audio_copy(tone, tmp_path / "corrupt.mp4")
    # Queued last: a good clip after the bad ones is still transcribed by the same worker.
    clips["spoken.mp4"] = write_speech_video(tmp_path / "spoken.mp4", [(0.5, "the farmer planted corn in the north "
                                                                              "field")], 5.0, folder=tmp_path / "v")
    rt = Runtime(stage_settings)
    try:
        ids = {name: enqueue_file(rt.catalog, stage_settings, path, link=True).video_id for name, path in clips.items()}
        with Worker.from_settings(rt.catalog, rt.store, rt.encoder, stage_settings) as worker:
            worker.run_until_empty()
        videos = rt.catalog.videos_by_ids([v for v in ids.values() if v is not None])
        runs = rt.catalog.expert_runs(list(videos))
        for name, video_id in ids.items():
            assert videos[video_id].status.value == "ready", (name, videos[video_id].error)
            speech = runs[video_id]["speech"]
            assert speech.state in (ExpertState.DONE, ExpertState.UNAVAILABLE), (name, speech.state, speech.reason)
            if speech.state == ExpertState.UNAVAILABLE:
                assert speech.reason and len(speech.reason) > 10, name  # a reason a person can read
        assert runs[ids["no_audio.mp4"]]["speech"].reason == "the video has no audio track"
        assert "silent" in runs[ids["silent.mkv"]]["speech"].reason
        assert runs[ids["spoken.mp4"]]["speech"].state == ExpertState.DONE
        assert videos[ids["spoken.mp4"]].status.value == "ready" and videos[ids["eight_channels.mkv"]].status.value \
            == "ready"
        assert rt.catalog.expert_counts()["speech"]["queued"] == 0
    finally:
        rt.close()


class SleepyExpert(Expert):
    """Never finishes in time."""

    name = "speech"

    @property
    def needs(self) -> AudioInput:
        return AudioInput(16000)

    def load(self) -> None:
        pass

    def transcribe(self, data) -> list[TextSegment]:
        time.sleep(60)
        return []


class CrashingExpert(SleepyExpert):
    """Kills its own process, as an engine that segfaults on a file would."""

    def transcribe(self, data) -> list[TextSegment]:
        os.kill(os.getpid(), signal.SIGSEGV)
        return []


class Collection:
    """An expert collection that records what it is given (the stage's writes are checked, not Milvus here)."""

    def __init__(self) -> None:
        self.rows: dict[int, list] = {}

    def add(self, video_id, segments) -> list[int]:
        self.rows[video_id] = list(segments)  # (replaces: what the real one does once delete_other_rows ran)
        return list(range(len(segments)))

    def delete(self, video_ids) -> None:
        for v in video_ids:
            self.rows.pop(v, None)

    def delete_rows(self, pks) -> None:
        pass

    def delete_other_rows(self, video_id, keep) -> None:
        pass

    def flush(self) -> None:
        pass


def ready_video(catalog, path):
    video, job = catalog.add_video(sha256=uuid.uuid4().hex * 2, title=path.name, stored_path=str(path),
                                   size_bytes=path.stat().st_size)
    catalog.claim_jobs(1)
    catalog.finish_jobs([(job.id, {})], experts=["speech"])
    return video.id


@pytest.mark.parametrize(("expert", "max_attempts", "reason"), [
    (SleepyExpert, 2, "took longer than 1 s"),
    (CrashingExpert, 2, "process died on this video (exit code -11) (2 times)"),
])
def test_an_expert_that_hangs_or_crashes_fails_alone_with_a_reason(runtime, tmp_path, expert, max_attempts, reason):
    clip = write_clip(tmp_path / "tone.mkv", 1.0, audio={"codec": "pcm_s16le", "layout": "mono", "rate": 16000})
    video_id = ready_video(runtime.catalog, clip)
    collection = Collection()
    stage = ExpertStage(runtime.catalog, lambda _name: collection, lambda _name: expert(), timeout=1.0,
                        max_attempts=max_attempts)
    try:
        outcomes = []
        while results := stage.run_once():
            outcomes += results
    finally:
        stage.close()
    [run] = runtime.catalog.expert_runs([video_id])[video_id].values()
    assert run.state == ExpertState.FAILED and reason in run.reason, run.reason
    assert outcomes[-1].state == ExpertState.FAILED and collection.rows == {}
    assert runtime.catalog.get_video(video_id).status.value == "ready"  # searchable by appearance all along


def test_a_server_without_full_text_search_is_refused_clearly(runtime, tmp_path):
    clip = write_clip(tmp_path / "tone.mkv", 1.0, audio={"codec": "pcm_s16le", "layout": "mono", "rate": 16000})
    video_id = ready_video(runtime.catalog, clip)

    def old_server(_name):
        raise FullTextUnsupported("this Milvus server does not support full-text search (BM25, Milvus 2.5 or newer)")

    stage = ExpertStage(runtime.catalog, old_server, lambda _name: SleepyExpert())
    try:
        [result] = stage.run_once()
    finally:
        stage.close()
    assert result.state == ExpertState.FAILED and "BM25, Milvus 2.5 or newer" in result.reason
    assert runtime.catalog.expert_runs([video_id])[video_id]["speech"].state == ExpertState.FAILED


def test_a_stop_puts_the_runs_in_progress_back(runtime, tmp_path):
    clip = write_clip(tmp_path / "tone.mkv", 1.0, audio={"codec": "pcm_s16le", "layout": "mono", "rate": 16000})
    video_id = ready_video(runtime.catalog, clip)
    stop = threading.Event()
    stage = ExpertStage(runtime.catalog, lambda _name: Collection(), lambda _name: SleepyExpert(), timeout=60)
    threading.Timer(2.0, stop.set).start()
    try:
        with pytest.raises(Stopped):
            stage.run_once(stop=stop)
    finally:
        stage.close()
    run = runtime.catalog.expert_runs([video_id])[video_id]["speech"]
    assert run.state == ExpertState.QUEUED and run.attempts == 0
