"""The speech expert on real speech: festival says phrases at known times in real video files (AAC in MP4, Opus in
WebM), the decode path reads the track, pocketsphinx transcribes it; what comes back must be the phrases' words at
the phrases' times, however long the track."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from ingest.expert_input import read_input
from ingest.experts import ExpertUnavailable, TextSegment, expert_class
from ingest.experts.speech import RATE, SpeechExpert, Word, decode_words, group_words, speech_spans
from schema.settings import Settings
from tests.speech_clips import have_festival, speak, speech_track, write_audio_video, write_speech_video
from tests.test_audio import write_clip

pytestmark = pytest.mark.skipif(not have_festival(), reason="needs festival's text2wave (scripts/test.sh installs it)")

ORCHESTRA = "the orchestra rehearsed the final movement twice on sunday"
DOCTOR = "the doctor asked the patient to breathe slowly and deeply"
FARMER = "the farmer planted potatoes and carrots in the northern field"
SNOW = "our train to the coast was delayed by heavy snow"


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def recall(phrase: str, segments: list[TextSegment]) -> float:
    """The fraction of the phrase's words found in the segments' text (each heard word counted once)."""
    heard = words(" ".join(s.text for s in segments))
    found = 0
    for word in words(phrase):
        if word in heard:
            heard.remove(word)
            found += 1
    return found / len(words(phrase))


def near(segments: list[TextSegment], start: float, end: float) -> list[TextSegment]:
    return [s for s in segments if s.end > start and s.start < end]


@pytest.fixture(scope="session")
def voice(tmp_path_factory):
    """Where festival's speech is cached for the session."""
    return tmp_path_factory.mktemp("voice")


@pytest.fixture(scope="session")
def expert() -> SpeechExpert:
    expert = SpeechExpert(segment_seconds=5.0)
    expert.load()
    return expert


@pytest.fixture(scope="session")
def one_phrase(tmp_path_factory, voice) -> Path:
    return write_speech_video(tmp_path_factory.mktemp("speech") / "orchestra.mp4", [(2.0, ORCHESTRA)], 7.0,
                              folder=voice)


@pytest.fixture(scope="session")
def two_phrases(tmp_path_factory, voice) -> tuple[Path, float]:
    """A clip saying DOCTOR from 1 s, then FARMER after 2 s of silence (well past the 0.7 s pause that starts a new
    segment); and when FARMER starts."""
    second = 1.0 + len(speak(DOCTOR, voice)) / RATE + 2.0
    clip = write_speech_video(tmp_path_factory.mktemp("speech") / "two.webm", [(1.0, DOCTOR), (second, FARMER)],
                              second + 4.5, folder=voice)
    return clip, second


def test_the_registry_builds_the_expert_from_settings():
    expert = expert_class("speech").from_settings(Settings(speech_segment_seconds=3.0))
    assert isinstance(expert, SpeechExpert) and expert.segment_seconds == 3.0
    assert expert.name == "speech" and expert.needs.rate == 16000 and expert.depends_on == ("pocketsphinx",)


def test_a_phrase_comes_back_with_its_words_at_its_time(one_phrase, expert):
    segments = expert.run(read_input(one_phrase, expert.needs))
    assert recall(ORCHESTRA, segments) >= 0.8, segments
    first = segments[0]
    assert first.start == pytest.approx(2.0, abs=1.0) and "orchestra" in first.text
    assert segments[-1].end == pytest.approx(2.0 + 3.1, abs=1.0)  # festival says it in about 3.1 s
    assert all(s.end - s.start <= 5.0 + 1e-6 for s in segments)
    assert all(a.end <= b.start for a, b in zip(segments, segments[1:], strict=False))


def test_two_phrases_apart_are_two_segments_with_their_own_times(two_phrases, expert):
    clip, second = two_phrases
    segments = expert.run(read_input(clip, expert.needs))
    assert len(segments) == 2, segments
    doctor, farmer = segments
    assert doctor.start == pytest.approx(1.0, abs=0.5) and farmer.start == pytest.approx(second, abs=0.5)
    assert farmer.start - doctor.end > 1.5  # the pause stays between them
    assert recall(DOCTOR, [doctor]) >= 0.7 and recall(FARMER, [farmer]) >= 0.7, segments


def test_segments_are_at_most_segment_seconds_long(one_phrase):
    short = SpeechExpert(segment_seconds=1.5)
    segments = short.run(read_input(one_phrase, short.needs))
    assert len(segments) >= 2 and all(s.end - s.start <= 1.5 + 1e-6 for s in segments), segments
    assert recall(ORCHESTRA, segments) >= 0.8


def test_a_long_track_keeps_its_times_and_skips_the_silence(tmp_path, voice, expert):
    """70 s, speech at 3 s and near the end: only the speech is decoded, and the late phrase is where it was said."""
    clip = write_speech_video(tmp_path / "long.mkv", [(3.0, SNOW), (62.0, ORCHESTRA)], 70.0, folder=voice)
    audio = read_input(clip, expert.needs)
    spans = speech_spans(audio.samples)
    assert sum(b - a for a, b in spans) / RATE < 12  # about 6.5 s of speech, not 70 s of decoding
    segments = expert.run(audio)
    assert recall(SNOW, near(segments, 2, 7)) >= 0.7 and recall(ORCHESTRA, near(segments, 61, 66)) >= 0.8, segments
    late = near(segments, 61, 66)
    assert late[0].start == pytest.approx(62.0, abs=1.0) and "orchestra" in late[0].text


def test_continuous_speech_is_cut_into_chunks_at_pauses_with_times_mapped_back(voice, expert):
    """Four sentences with short gaps make one stretch of speech; chunks of at most 6 s are cut in the gaps between
    sentences, and every word comes back at its place on the original timeline."""
    phrases, at = [], 0.5
    for text in (ORCHESTRA, SNOW, FARMER, DOCTOR):
        phrases.append((at, text))
        at += len(speak(text, voice)) / RATE + 0.25
    track = speech_track([(start, speak(text, voice)) for start, text in phrases], at + 0.5)
    spans = speech_spans(track, max_seconds=6.0)
    assert len(spans) >= 3 and all(b - a <= 6.0 * RATE for a, b in spans)
    for _, b in spans[:-1]:  # each cut falls in the silence between two sentences, not inside a word
        assert float(np.max(np.abs(track[b - 80 : b + 80]))) < 1e-3
    heard = decode_words(expert.decoder, track, spans)
    for (start, text), next_start in zip(phrases, [p[0] for p in phrases[1:]] + [at], strict=True):
        mine = [w for w in heard if start - 0.3 <= w.start < next_start - 0.2]
        found = recall(text, [TextSegment(0, 0, " ".join(w.text for w in mine))])
        assert found >= 0.7, (text, mine)
        assert mine[0].start == pytest.approx(start, abs=0.5)


def test_a_track_with_sound_but_no_speech_is_unavailable(tmp_path, expert):
    t = np.arange(6 * RATE) / RATE
    clip = write_audio_video(tmp_path / "tone.mp4", (0.4 * np.sin(2 * np.pi * 440 * t)).astype(np.float32))
    with pytest.raises(ExpertUnavailable, match="no speech was recognised"):
        expert.run(read_input(clip, expert.needs))


@pytest.mark.parametrize(("make", "reason"), [
    (lambda p: write_clip(p / "mute.mp4", 1.0), "no audio track"),
    (lambda p: write_clip(p / "silent.mkv", 1.0, audio={"codec": "pcm_s16le", "layout": "mono", "rate": 16000,
                                                        "level": 0.0}), "silent"),
])
def test_no_track_or_a_silent_one_is_unavailable_before_the_expert_runs(tmp_path, make, reason):
    with pytest.raises(ExpertUnavailable, match=reason):
        read_input(make(tmp_path), SpeechExpert().needs)


def test_words_group_at_pauses_and_at_the_longest_segment():
    heard = [Word(0.0, 0.4, "one"), Word(0.5, 0.9, "two"), Word(1.0, 1.4, "three"),  # steady speech
             Word(2.5, 2.9, "four"),  # after a 1.1 s pause
             Word(3.0, 3.4, "five"), Word(3.5, 3.9, "six")]
    assert group_words(heard, 5.0) == [TextSegment(0.0, 1.4, "one two three"), TextSegment(2.5, 3.9, "four five six")]
    assert group_words(heard, 1.0) == [TextSegment(0.0, 0.9, "one two"), TextSegment(1.0, 1.4, "three"),
                                       TextSegment(2.5, 3.4, "four five"), TextSegment(3.5, 3.9, "six")]
    assert group_words([], 5.0) == []
