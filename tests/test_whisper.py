"""Whisper as the speech expert's recogniser: a tiny random Whisper built from its transformers config (no Whisper
weights can be had here) loaded through the real loader; the voice-activity chunks of long audio with festival's
speech at known offsets, batched decoding, segment times mapped back onto the video's timeline, the language stored
per segment, and `VIDSEARCH_ASR=auto` falling back to pocketsphinx when no Whisper checkpoint loads. What Whisper
*hears* is not tested (random weights); transcription quality stays tested by the pocketsphinx tests."""

from __future__ import annotations

import json
import logging
import subprocess

import pytest

from ingest.expert_input import read_input
from ingest.experts import expert_class
from ingest.experts.base import ExpertUnavailable, TextSegment
from ingest.experts.speech import RATE, SpeechExpert, describe_asr, speech_spans
from ingest.experts.whisper import Piece, _words, load_whisper, place, place_words
from schema.settings import Settings
from tests.conftest import cli_env
from tests.procs import vidsearch_cmd
from tests.speech_clips import have_festival, write_speech_video
from tests.tiny_whisper import LANGUAGES, build_whisper

needs_festival = pytest.mark.skipif(not have_festival(), reason="needs festival's text2wave (scripts/test.sh "
                                    "installs it)")
SNOW = "the snow fell softly on the quiet village"
ORCHESTRA = "the orchestra played a beautiful symphony"


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory):
    return build_whisper(tmp_path_factory.mktemp("tiny-whisper"))


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory):
    """70 s: speech at 10 s and at 50 s, silence between."""
    folder = tmp_path_factory.mktemp("whisper-clip")
    return write_speech_video(folder / "long.mkv", [(10.0, SNOW), (50.0, ORCHESTRA)], 70.0, folder=folder)


def test_chunk_relative_times_are_shifted_by_the_chunk_offset_and_clipped_to_it():
    found = [(0.5, 2.5, "one", "en"), (28.0, 31.0, "two", "de"), (30.5, 31.0, "padding", "en")]
    assert place(found, 40.0, 30.0) == [TextSegment(40.5, 42.5, "one", "en"), TextSegment(68.0, 70.0, "two", "de")]
    # a chunk of 4 s at 12.3 s: an end Whisper put at 6 s (in the padding) is the chunk's end, 16.3 s
    assert place([(1.0, 6.0, "x", None)], 12.3, 4.0) == [TextSegment(13.3, 16.3, "x", None)]


def test_words_are_shifted_clipped_and_grouped_into_segments_of_at_most_max_seconds():
    words = ((0.2, 0.6, "the"), (0.6, 1.4, "snow"), (1.4, 2.1, "fell"), (4.0, 4.5, "softly"), (9.5, 10.4, "now"),
             (10.5, 11.0, "late"))
    piece = Piece(0.0, 11.0, "the snow fell softly now late", "de", words)
    # A 10 s chunk at 20 s: a pause over 0.7 s or a segment past 1.5 s starts another; "now" runs past
    # the chunk's end and is clipped to it, "late" starts past it and is dropped.
    assert place_words(piece, 20.0, 10.0, 1.5) == [TextSegment(20.2, 21.4, "the snow", "de"),
                                                   TextSegment(21.4, 22.1, "fell", "de"),
                                                   TextSegment(24.0, 24.5, "softly", "de"),
                                                   TextSegment(29.5, 30.0, "now", "de")]  # clipped to the chunk


def test_a_word_is_its_tokens_from_a_space_to_the_next_with_the_next_tokens_time(tiny_whisper):
    from transformers import WhisperTokenizer

    tokenizer = WhisperTokenizer.from_pretrained(tiny_whisper)
    space = tokenizer.convert_ids_to_tokens(tokenizer.encode(" ", add_special_tokens=False))[0]
    stamp = tokenizer.convert_tokens_to_ids("<|1.00|>")
    tokens = [stamp, *tokenizer.convert_tokens_to_ids([space, "a", "b", space, "c", "d"]), stamp]
    times = [0.0, 0.1, 0.2, 0.3, 0.5, 0.6, 0.7, 0.9]
    assert _words(tokenizer, tokens, times, 1.0, tokenizer.eos_token_id) == ((0.1, 0.5, "ab"), (0.5, 0.9, "cd"))
    assert _words(tokenizer, tokens[:-1], times[:-1], 1.0, tokenizer.eos_token_id)[-1] == (0.5, 1.0, "cd")


@needs_festival
@pytest.mark.parametrize("aligned", [True, False], ids=["word-times", "segment-times"])
def test_every_segment_lies_in_the_speech_it_came_from_with_its_language(tiny_whisper, long_clip, aligned):
    expert = SpeechExpert(asr="whisper", asr_model=str(tiny_whisper), asr_batch_size=2, segment_seconds=1.0,
                          asr_word_times=aligned)
    expert.load()
    assert expert.whisper.can_align  # the tiny checkpoint names alignment heads, as OpenAI's do
    audio = read_input(long_clip, expert.needs)
    spans = [(a / RATE, b / RATE) for a, b in speech_spans(audio.samples, RATE)]
    # The voice detector finds the two phrases and nothing in the silence between them.
    assert len(spans) == 2 and 9 < spans[0][0] < 10.5 and 49 < spans[1][0] < 50.5, spans
    segments = expert.run(audio)
    assert expert.backend == "whisper"
    assert segments and all(s.language in LANGUAGES for s in segments)
    # Times are on the video's timeline: each segment inside its chunk (a chunk-relative time, or the wrong chunk's
    # offset, would put it near 0 s or in the silence), and both phrases gave some.
    assert all(any(a - 0.01 <= s.start <= s.end <= b + 0.01 for a, b in spans) for s in segments), (spans, segments)
    assert {next(i for i, (a, b) in enumerate(spans) if a - 0.01 <= s.start <= b) for s in segments} == {0, 1}
    # Segments run in time order within each chunk; with word times none is longer than segment_seconds.
    assert [s.start for s in segments] == sorted(s.start for s in segments)
    if aligned:
        assert all(s.end - s.start <= 1.0 + 0.01 for s in segments), segments


@needs_festival
def test_batched_chunks_decode_as_one_at_a_time(tiny_whisper, long_clip):
    recognizer = load_whisper(str(tiny_whisper))
    audio = read_input(long_clip, SpeechExpert().needs)
    spans = speech_spans(audio.samples, RATE, max_seconds=3.0)  # several chunks per phrase
    assert len(spans) >= 4
    one = recognizer.transcribe(audio.samples, spans, batch_size=1)
    batched = recognizer.transcribe(audio.samples, spans, batch_size=3)
    assert [(s.text, s.language) for s in batched] == [(s.text, s.language) for s in one]
    assert [t for s in batched for t in (s.start, s.end)] == pytest.approx([t for s in one for t in (s.start, s.end)],
                                                                        abs=0.02)


def test_auto_falls_back_to_pocketsphinx_and_says_so(tmp_path, caplog):
    expert = SpeechExpert(asr="auto", asr_model="openai/whisper-base")  # never downloaded here, offline
    with caplog.at_level(logging.INFO, logger="ingest.experts.speech"):
        expert.load()
    assert expert.backend == "pocketsphinx"
    assert any("pocketsphinx" in r.message and "Whisper not loaded" in r.message for r in caplog.records)


def test_whisper_asked_for_by_name_without_a_checkpoint_is_unavailable_with_the_way_to_provide_one(tmp_path):
    expert = SpeechExpert(asr="whisper", asr_model=str(tmp_path / "no-such-folder"))
    for _ in range(2):  # tried once, then the same answer
        with pytest.raises(ExpertUnavailable, match="VIDSEARCH_ASR_MODEL"):
            expert.load()
    assert expert.backend is None


def test_settings_pick_the_recognizer_and_status_tells_which(tiny_whisper, tmp_path):
    settings = Settings(home=tmp_path, asr="whisper", asr_model=str(tiny_whisper), asr_batch_size=3)
    expert = expert_class("speech").from_settings(settings)
    assert (expert.asr, expert.asr_model, expert.asr_batch_size) == ("whisper", str(tiny_whisper), 3)
    assert describe_asr(settings) == f"Whisper {tiny_whisper}"
    assert expert.asr_word_times is False  # opt-in: the alignment about doubles Whisper's cost
    worded = Settings(home=tmp_path, asr="whisper", asr_model=str(tiny_whisper), asr_word_times=True)
    assert expert_class("speech").from_settings(worded).asr_word_times is True
    assert describe_asr(worded) == f"Whisper {tiny_whisper}, word times"
    auto = Settings(home=tmp_path, asr_model=str(tiny_whisper))
    assert describe_asr(auto) == f"Whisper {tiny_whisper} (else pocketsphinx, English)"
    assert describe_asr(Settings(home=tmp_path)) == \
        "pocketsphinx (English; Whisper openai/whisper-base is not available here)"
    assert describe_asr(Settings(home=tmp_path, asr="pocketsphinx")) == "pocketsphinx (English)"
    from search_app.present import experts_summary  # what serve and worker log at start-up

    assert experts_summary(Settings(home=tmp_path, experts="text,speech", asr_model=str(tiny_whisper))) == \
        f"text, speech (Whisper {tiny_whisper} (else pocketsphinx, English))"
    assert experts_summary(Settings(home=tmp_path, experts="")) == "none"


@needs_festival
def test_the_cli_ingests_with_whisper_stores_languages_and_status_shows_it(tmp_path, random_model, tiny_whisper,
                                                                          long_clip):
    env = cli_env(tmp_path / "home", random_model, VIDSEARCH_EXPERTS="speech", VIDSEARCH_ASR_MODEL=str(tiny_whisper))
    run = subprocess.run([*vidsearch_cmd(), "ingest", str(long_clip), "--wait"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    status = subprocess.run([*vidsearch_cmd(), "status", "--json"], env=env, capture_output=True, text=True,
                            timeout=120)
    document = json.loads(status.stdout)
    assert document["speech_recognizer"] == f"Whisper {tiny_whisper} (else pocketsphinx, English)"
    assert document["experts"]["speech"].get("done") == 1, document
    plain = subprocess.run([*vidsearch_cmd(), "status"], env=env, capture_output=True, text=True, timeout=120)
    assert f"speech recognizer: Whisper {tiny_whisper}" in plain.stdout

    from ingest.runtime import Runtime

    runtime = Runtime(Settings(home=tmp_path / "home", model=str(random_model), experts="speech"))
    try:
        stored = runtime.store.lexical("speech").video_segments(1)
    finally:
        runtime.close()
    assert stored and all(s.language in LANGUAGES for s in stored)
    assert all(9 < s.start <= s.end < 56 for s in stored)  # the phrases' chunks, never the silence
