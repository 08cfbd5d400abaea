"""The audio expert (CLAP windows) through the real path: a tiny random CLAP saved to disk and loaded by the real
loader, real encoded files with a tone at a known time, the worker's expert stage in its own process, the dense
collection on Milvus Lite, fused search with audio moments, and the per-expert timeline."""

from __future__ import annotations

import uuid
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from ingest.audio import decode_audio
from ingest.experts.sound import RATE, AudioExpert, AudioModelUnavailable, audible, load_clap, windows
from ingest.library import delete_video, enqueue_file
from ingest.worker import Worker
from schema.catalog import ExpertState
from schema.settings import Settings
from search_app.audio_query import expert_sources
from search_app.fusion import Calibration
from search_app.search import search_text
from tests.tiny_clap import PROJECTION_DIM, build_clap

TONE = (8.0, 12.0)  # seconds: the only sound in the 20 s clip
SECONDS = 20.0


def write_av(path: Path, seconds: float, tone: tuple[float, float] | None, *, audio: bool = True,
             freq: float = 660.0) -> Path:
    """A clip with moving grey frames and, if `audio`, an AAC track silent except for a tone between tone[0] and
    tone[1] seconds."""
    rate = 44_100
    with av.open(str(path), "w") as out:
        vs = out.add_stream("mpeg4", rate=8)
        vs.width = vs.height = 32
        vs.pix_fmt = "yuv420p"
        if audio:
            stream = out.add_stream("aac", rate=rate, layout="mono")
            fmt = stream.codec_context.format.name
            t = np.arange(int(seconds * rate)) / rate
            signal = np.zeros_like(t, dtype=np.float32)
            if tone is not None:
                on = (t >= tone[0]) & (t < tone[1])
                signal[on] = 0.4 * np.sin(2 * np.pi * freq * t[on])
            for i in range(0, len(signal), 1024):
                piece = signal[i : i + 1024][None, :].astype(np.float32)
                frame = av.AudioFrame.from_ndarray(piece if fmt == "fltp" else piece.T.reshape(1, -1), format=fmt,
                                                   layout="mono")
                frame.sample_rate, frame.pts, frame.time_base = rate, i, Fraction(1, rate)
                for packet in stream.encode(frame):
                    out.mux(packet)
            for packet in stream.encode(None):
                out.mux(packet)
        for k in range(int(seconds * 8)):
            level = 40 + (k * 5) % 180
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), level, np.uint8), format="rgb24")
            frame.pts = k
            for packet in vs.encode(frame):
                out.mux(packet)
        for packet in vs.encode(None):
            out.mux(packet)
    return path


@pytest.fixture(scope="module")
def clap(tmp_path_factory) -> Path:
    return build_clap(tmp_path_factory.mktemp("clap") / "tiny-clap")


def test_windows_half_overlap_and_end_at_the_track_end():
    rate = 10
    assert windows(np.zeros(0), rate, 5) == []
    assert windows(np.zeros(30), rate, 5) == [(0, 30)]  # shorter than a window: one window
    assert windows(np.zeros(120), rate, 5) == [(0, 50), (25, 75), (50, 100), (70, 120)]
    assert windows(np.zeros(100), rate, 5) == [(0, 50), (25, 75), (50, 100)]
    assert not audible(np.zeros(100, np.float32))
    assert not audible(np.full(100, 1e-4, np.float32))  # -80 dBFS
    assert audible(np.full(100, 0.01, np.float32))


def test_a_missing_checkpoint_says_how_to_provide_one(tmp_path):
    with pytest.raises(AudioModelUnavailable, match="VIDSEARCH_AUDIO_MODEL"):
        load_clap(str(tmp_path / "nowhere"), device="cpu")
    with pytest.raises(AudioModelUnavailable, match="laion/clap-htsat-unfused"):
        load_clap("laion/clap-htsat-unfused", device="cpu")  # HF_HUB_OFFLINE and not cached


def test_the_expert_embeds_only_the_windows_that_hold_sound_at_their_times(tmp_path, clap):
    path = write_av(tmp_path / "tone.mp4", SECONDS, TONE)
    audio = decode_audio(path, RATE)
    expert = AudioExpert(str(clap), device="cpu", window_seconds=5.0)
    segments = expert.run(audio)
    # 5 s windows every 2.5 s; the tone (8-12 s) is heard in exactly these three.
    assert [(s.start, s.end) for s in segments] == [(5.0, 10.0), (7.5, 12.5), (10.0, 15.0)]
    direct = load_clap(str(clap), device="cpu").embed_audio(
        [audio.samples[int(s.start * RATE) : int(s.end * RATE)] for s in segments])
    for seg, vec in zip(segments, direct, strict=True):
        assert seg.vector.shape == (PROJECTION_DIM,)
        assert abs(float(np.linalg.norm(seg.vector)) - 1) < 1e-5
        assert float(seg.vector @ vec) > 0.9999
    assert expert.model_key.startswith("clap:sha256:") and expert.model_key.endswith(f":{PROJECTION_DIM}")


@pytest.fixture(scope="module")
def library(tmp_path_factory, tiny_model, milvus_uri, clap):
    from ingest.runtime import Runtime

    folder = tmp_path_factory.mktemp("sound_clips")
    clips = {"tone.mp4": write_av(folder / "tone.mp4", SECONDS, TONE),
             "hum.mp4": write_av(folder / "hum.mp4", 11.0, (0.0, 11.0), freq=110.0),
             "quiet.mp4": write_av(folder / "quiet.mp4", 6.0, None),
             "mute.mp4": write_av(folder / "mute.mp4", 6.0, None, audio=False)}
    s = Settings(home=tmp_path_factory.mktemp("sound") / "data", model=str(tiny_model), milvus_uri=milvus_uri,
                 collection=f"sound_{uuid.uuid4().hex[:8]}", frames=4, batch_size=16, experts="audio",
                 audio_model=str(clap), device="cpu")
    rt = Runtime(s)
    ids = {name: enqueue_file(rt.catalog, s, path).video_id for name, path in clips.items()}
    with Worker.from_settings(rt.catalog, rt.store, rt.encoder, s) as worker:
        worker.run_until_empty()
    yield rt, ids, clips
    rt.close()


def test_each_video_gets_its_windows_or_a_reason(library):
    rt, ids, _ = library
    runs = rt.catalog.expert_runs(list(ids.values()))
    state = {name: runs[i]["audio"] for name, i in ids.items()}
    assert state["tone.mp4"].state == ExpertState.DONE and state["tone.mp4"].segments == 3
    # 0-5, 2.5-7.5, 5-10 and the last one ending where the track ends (AAC adds a few ms: 6.0x-11.0x)
    assert state["hum.mp4"].state == ExpertState.DONE and state["hum.mp4"].segments == 4
    assert state["quiet.mp4"].state == ExpertState.UNAVAILABLE and "silent" in state["quiet.mp4"].reason
    assert state["mute.mp4"].state == ExpertState.UNAVAILABLE
    store = rt.store.lexical("audio")
    assert store.name == f"{rt.settings.collection}_audio"
    assert store.counts() == {ids["tone.mp4"]: 3, ids["hum.mp4"]: 4}
    assert store.model == load_clap(str(rt.settings.audio_model), device="cpu").model_key
    from ingest.doctor import examine

    # The audio collection agrees with the catalog's record of the runs.
    assert examine(rt.catalog, rt.store, rt.settings, lease_seconds=600, lexical=rt.store.lexical_existing()) == []


def test_an_audio_moment_is_the_window_that_produced_it(library):
    rt, ids, clips = library
    query = "a high beep"
    clap = load_clap(rt.settings.audio_model, device="cpu")
    qv = clap.embed_text([query])[0]
    stored = rt.store.lexical("audio").windows([ids["tone.mp4"]])[ids["tone.mp4"]]
    best = int(np.argmax(stored.vectors @ qv))
    # The tiny library holds six windows: no z-score can reach the default's 3.5, so the test calibrates low
    # enough that every window counts (the calibration itself is tested below).
    found = search_text(rt.catalog, rt.store, rt.encoder, query, 4, experts=expert_sources(rt),
                        weights={"audio": 5.0}, calibration=Calibration(z0=-10.0, tau=1.0))
    tone = next(r for r in found if r.video_id == ids["tone.mp4"])
    heard = [m for m in tone.moments if m.expert == "audio"]
    assert heard, tone.moments
    assert (heard[0].start, heard[0].end) == (pytest.approx(float(stored.starts[best]), abs=1e-3),
                                              pytest.approx(float(stored.ends[best]), abs=1e-3))
    assert tone.experts["audio"] is not None
    quiet = next(r for r in found if r.video_id == ids["quiet.mp4"])
    assert quiet.experts["audio"] is None  # silent: not penalised, not scored
    # Audio weighed 0: the ranking is appearance's alone, with no audio moments.
    plain = search_text(rt.catalog, rt.store, rt.encoder, query, 4, experts=expert_sources(rt),
                        weights={"audio": 0.0})
    assert all(m.expert != "audio" for r in plain for m in r.moments)


def test_another_clap_is_refused_for_the_collection_and_delete_removes_the_windows(library, tmp_path):
    rt, ids, _ = library
    store = rt.store.lexical("audio")
    from schema.dense import DenseModelMismatch

    with pytest.raises(DenseModelMismatch, match="reindex --experts audio --again"):
        store.bind("clap:sha256:other:20", PROJECTION_DIM)
    delete_video(rt.catalog, rt.store, ids["hum.mp4"])
    assert ids["hum.mp4"] not in store.counts()
    assert store.counts()[ids["tone.mp4"]] == 3


def test_a_window_calibrates_by_how_far_it_stands_out_from_the_librarys_windows():
    from search_app.fusion import calibrate_dense

    rng = np.random.default_rng(0)
    background = list(rng.normal(0.1, 0.02, 500))
    out = calibrate_dense({1: 0.3, 2: 0.11, 3: 0.05}, background)
    assert out[1] > 0.9  # ten standard deviations out
    assert out[2] < 0.01 and out[3] < out[2]  # the bulk


def test_windows_that_do_not_stand_out_are_no_evidence():
    from dataclasses import dataclass

    from search_app import search as search_mod

    @dataclass
    class Hit:
        video_id: int
        start: float
        end: float
        score: float

    class Source:  # a fake dense source for this one function; the real path is tested above
        kind = "dense"

        def __init__(self, hits):
            self.hits = hits

        def embed_query(self, text):
            return np.ones(2, np.float32)

        def search(self, vector, k, video_ids=None):
            return self.hits

        def background(self, vector):
            return np.random.default_rng(1).normal(0.1, 0.02, 500)

    class Catalog:
        def videos_by_ids(self, ids):
            from types import SimpleNamespace

            from schema.catalog import VideoStatus

            return {i: SimpleNamespace(status=VideoStatus.READY) for i in ids}

    found = search_mod._dense_matches(Catalog(), Source([Hit(1, 0, 5, 0.3), Hit(1, 2.5, 7.5, 0.12),
                                                         Hit(2, 0, 5, 0.11)]), "q", None, None)
    assert list(found) == [1] and [(h.start, h.end) for _, h in found[1]] == [(0, 5)]
    assert search_mod._dense_matches(Catalog(), Source([Hit(2, 0, 5, 0.11)]), "q", None, None) == {}


def test_the_timeline_has_an_audio_line_whose_top_moment_is_the_best_window(library):
    import anyio

    from search_app.slots import ModelSlots
    from search_app.timeline import TimelineService

    rt, ids, _ = library
    query = "a high beep"
    service = TimelineService(rt.settings, rt.catalog, rt.store, lambda: rt.encoder, ModelSlots(1),
                              experts=lambda: expert_sources(rt))
    try:
        timeline = anyio.run(service.timeline, ids["tone.mp4"], query)
    finally:
        service.close()
    assert [line.expert for line in timeline.lines] == ["appearance", "audio"]
    audio = timeline.lines[1]
    stored = rt.store.lexical("audio").windows([ids["tone.mp4"]])[ids["tone.mp4"]]
    assert audio.starts == pytest.approx(stored.starts.tolist()) and audio.ends == pytest.approx(stored.ends.tolist())
    qv = load_clap(rt.settings.audio_model, device="cpu").embed_text([query])[0]
    cosines = stored.vectors @ qv
    assert audio.scores == pytest.approx(cosines.tolist(), abs=1e-5)
    assert min(audio.normalized) == 0 and max(audio.normalized) == 1
    best = int(np.argmax(cosines))
    assert (audio.moments[0].start, audio.moments[0].end) == pytest.approx((stored.starts[best], stored.ends[best]))
    assert audio.moments[0].expert == "audio"
    # A video whose audio was silent has no audio line.
    quiet = anyio.run(service.timeline, ids["quiet.mp4"], query)
    assert [line.expert for line in quiet.lines] == ["appearance"]


def test_the_cli_ingests_with_the_audio_expert_reports_it_and_rebuilds_it(tmp_path, tiny_model, zygote, clap):
    import json

    from tests.test_cli import Cli

    cli = Cli(tmp_path / "home", tiny_model, zygote)
    env = {"VIDSEARCH_EXPERTS": "audio", "VIDSEARCH_AUDIO_MODEL": str(clap), "VIDSEARCH_DEVICE": "cpu"}
    try:
        clip = write_av(tmp_path / "tone.mp4", SECONDS, TONE)
        cli("ingest", str(clip), "--wait", **env)
        status = json.loads(cli("status", "--json", **env).stdout)
        assert status["experts"]["audio"]["done"] == 1 and sum(status["experts"]["audio"].values()) == 1, status
        found = json.loads(cli("search", "a high beep", "--json", "--weight", "audio=2", **env).stdout)
        assert [r["title"] for r in found] == ["tone.mp4"]
        cli("reindex", "--experts", "audio", "--again", **env)  # the collection is rebuilt from the videos
        status = json.loads(cli("status", "--json", **env).stdout)
        assert status["experts"]["audio"]["done"] == 1 and sum(status["experts"]["audio"].values()) == 1, status
        assert cli("doctor", **env).returncode == 0
        bad = cli("search", "a beep", "--weight", "sound=1", expect=None, **env)
        assert bad.returncode != 0 and "audio" in bad.stderr  # the known names are listed
    finally:
        cli.stop()
