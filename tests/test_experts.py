"""Speech and on-screen text beside appearance, through the real path with the default experts on: real speech
(festival) and burned-in words in real encoded files, the worker's expert stage (pocketsphinx, RapidOCR in their own
processes), BM25 collections on Milvus Lite, the catalog's expert states, and fused search."""

from __future__ import annotations

import uuid

import pytest

from ingest.library import delete_video, enqueue_file
from ingest.worker import Worker
from schema.catalog import ExpertState
from schema.settings import Settings
from search_app.search import search_text
from tests.speech_clips import have_festival, write_speech_video
from tests.text_clips import write_text_video
from tests.videos import write_video

pytestmark = pytest.mark.skipif(not have_festival(), reason="needs festival's text2wave (scripts/test.sh installs it)")

SAID = {
    "orchestra.mp4": (2.0, "the orchestra rehearsed the final movement twice on sunday"),
    "doctor.webm": (4.0, "the doctor asked the patient to breathe slowly"),
    "farmer.mp4": (1.0, "the farmer planted corn in the north field"),
}
SHOWN = ("PLATFORM NINE", 2.0, 5.0)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("expert_clips")
    paths = {}
    for name, (at, phrase) in SAID.items():  # identical pictures: only what is said tells them apart
        paths[name] = write_speech_video(folder / name, [(at, phrase)], seconds=9.0, folder=folder / "voice")
    paths["platform.mp4"] = write_text_video(folder / "platform.mp4", [SHOWN], seconds=7.0)  # no audio
    paths["red.mp4"] = write_video(folder / "red.mp4", colour="red", shape="circle")  # no audio, no text
    return paths


@pytest.fixture(scope="module")
def library(tmp_path_factory, tiny_model, milvus_uri, clips):
    """One library for the module (the expert stage's start-up is paid once); the delete test runs last."""
    from ingest.runtime import Runtime

    s = Settings(home=tmp_path_factory.mktemp("experts") / "data", model=str(tiny_model), milvus_uri=milvus_uri,
                 collection=f"experts_{uuid.uuid4().hex[:8]}", frames=4, batch_size=16)  # the default experts
    assert s.expert_names == ("speech", "text", "audio")
    rt = Runtime(s)
    ids = {}
    for name, path in clips.items():
        ids[name] = enqueue_file(rt.catalog, s, path).video_id  # copied: served under /media
    with Worker.from_settings(rt.catalog, rt.store, rt.encoder, s) as worker:
        worker.run_until_empty()
    yield rt, ids
    rt.close()


def search(rt, query: str, **kw):
    return search_text(rt.catalog, rt.store, rt.encoder, query, 5, experts=rt.store.lexical_existing(), **kw)


def test_each_expert_records_what_it_found_or_why_not(library):
    rt, ids = library
    runs = rt.catalog.expert_runs(list(ids.values()))
    for name in SAID:
        assert runs[ids[name]]["speech"].state == ExpertState.DONE and runs[ids[name]]["speech"].segments >= 1
    assert runs[ids["platform.mp4"]]["text"].state == ExpertState.DONE
    red = runs[ids["red.mp4"]]
    assert red["speech"].state == ExpertState.UNAVAILABLE and "no audio track" in red["speech"].reason
    assert red["text"].state == ExpertState.UNAVAILABLE and "no text" in red["text"].reason
    assert all(v.status.value == "ready" for v in rt.catalog.videos_by_ids(list(ids.values())).values())
    # The default audio expert with no CLAP checkpoint to be had (offline, never downloaded): unavailable for every
    # video, saying how to provide one, and nothing else is disturbed.
    for name in SAID:
        audio = runs[ids[name]]["audio"]
        assert audio.state == ExpertState.UNAVAILABLE and "VIDSEARCH_AUDIO_MODEL" in audio.reason, audio.reason
    assert "audio" not in rt.store.lexical_existing()  # no collection made for vectors nobody wrote


def test_a_spoken_phrase_finds_its_clip_with_a_said_moment(library):
    rt, ids = library
    for name, (at, phrase) in SAID.items():
        results = search(rt, phrase)
        assert results[0].video_id == ids[name], (phrase, [r.title for r in results])
        best = results[0]
        assert best.experts["speech"] >= 0.5 and best.experts["text"] is None  # it has no text on screen
        speech = [m for m in best.moments if m.expert == "speech"]
        assert speech and abs(speech[0].start - at) <= 1.0 and speech[0].text
        assert best.moments[0].expert == "speech"


def test_words_on_screen_find_their_clip_even_partly_or_misread(library):
    rt, ids = library
    for query in ("platform nine", "PLATFORM", "platf", "platform mine"):
        results = search(rt, query)
        assert results[0].video_id == ids["platform.mp4"], (query, [r.title for r in results])
        [shown] = [m for m in results[0].moments if m.expert == "text"][:1]
        assert abs(shown.start - SHOWN[1]) <= 1.0 and abs(shown.end - SHOWN[2]) <= 1.5
        assert "PLATFORM" in shown.text.upper()


def test_a_query_nobody_said_ranks_by_appearance_alone(library):
    rt, ids = library
    fused = search(rt, "a red circle")
    alone = search_text(rt.catalog, rt.store, rt.encoder, "a red circle", 5)
    assert [r.video_id for r in fused] == [r.video_id for r in alone]
    assert fused[0].video_id == ids["red.mp4"] and fused[0].experts == {}


def test_weights_turn_an_expert_off_and_are_checked(library):
    rt, ids = library
    _at, phrase = SAID["doctor.webm"]
    on = search(rt, phrase)
    off = search(rt, phrase, weights={"speech": 0})
    assert on[0].video_id == ids["doctor.webm"]
    assert all(m.expert != "speech" for r in off for m in r.moments) and off[0].experts.get("speech") is None
    from schema.filters import QueryError

    with pytest.raises(QueryError, match="unknown expert"):
        search(rt, phrase, weights={"smell": 1})
    with pytest.raises(QueryError, match="between 0 and 100"):
        search(rt, phrase, weights={"speech": -1})


def test_the_http_api_says_why_a_result_matched_and_what_each_expert_found(library):
    import httpx

    from search_app.web import create_app
    from tests.procs import serve_in_thread

    rt, ids = library
    at, phrase = SAID["orchestra.mp4"]
    with serve_in_thread(create_app(rt), join_timeout=30) as url, httpx.Client(base_url=url, timeout=120) as client:
        found = client.post("/api/search", json={"text": phrase, "k": 3}).json()["results"]
        assert found[0]["video_id"] == ids["orchestra.mp4"]
        assert set(found[0]["experts"]) == {"appearance", "speech", "text"} and found[0]["experts"]["text"] is None
        said = found[0]["moments"][0]
        assert said["expert"] == "speech" and abs(said["start"] - at) <= 1.0 and "orchestra" in said["text"]
        assert said["media_url"].endswith(f"#t={said['start']:.2f},{said['end']:.2f}")
        off = client.post("/api/search", json={"text": phrase, "k": 3, "weights": {"speech": 0}}).json()["results"]
        assert all(m["expert"] != "speech" for r in off for m in r["moments"])
        red = client.get(f"/api/videos/{ids['red.mp4']}").json()["experts"]
        assert red["speech"] == {"state": "unavailable", "reason": "the video has no audio track", "segments": 0}
        listed = {v["video_id"]: v for v in client.get("/api/videos").json()["videos"]}
        assert listed[ids["platform.mp4"]]["experts"]["text"]["state"] == "done"
        # The timeline: one line per expert with anything for the video, appearance first, each with its moments.
        line = client.get(f"/api/videos/{ids['orchestra.mp4']}/timeline", params={"text": phrase}).json()
        assert [e["expert"] for e in line["experts"]] == ["appearance", "speech"]
        look, speech = line["experts"]
        assert [(p["start"] + p["end"]) / 2 for p in look["points"]] == pytest.approx([p["time"] for p in
                                                                                       line["points"]], abs=2e-3)
        assert all(0 <= p["normalized"] <= 1 for p in look["points"])  # a still picture: flat at 0.5
        best = max(speech["points"], key=lambda p: p["score"])
        assert "orchestra" in best["text"] and best["score"] >= 0.5 and best["normalized"] == best["score"]
        assert speech["moments"][0]["start"] == pytest.approx(best["start"], abs=1e-3)
        assert abs(speech["moments"][0]["start"] - at) <= 1.0 and speech["moments"][0]["media_url"]
        shown = client.get(f"/api/videos/{ids['platform.mp4']}/timeline", params={"text": "platform nine"}).json()
        assert [e["expert"] for e in shown["experts"]] == ["appearance", "text"]
        assert shown["experts"][1]["moments"][0]["expert"] == "text"


def test_delete_removes_what_the_experts_stored(library):
    rt, ids = library
    speech = rt.store.lexical("speech")
    assert speech.counts()[ids["farmer.mp4"]] >= 1
    delete_video(rt.catalog, rt.store, ids["farmer.mp4"], rt.settings.thumbnails_dir)
    assert speech.counts()[ids["farmer.mp4"]] == 0
    results = search(rt, SAID["farmer.mp4"][1])
    assert ids["farmer.mp4"] not in [r.video_id for r in results]
