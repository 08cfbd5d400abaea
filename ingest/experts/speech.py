"""The speech expert: what is said in a video, as timestamped text. Two recognisers, picked by `VIDSEARCH_ASR`:
Whisper (whisper.py: multilingual, a checkpoint from the hub or a folder) and pocketsphinx with the US English model
that ships inside its wheel (nothing is downloaded). `auto` takes Whisper when its checkpoint loads, else pocketsphinx.

A long track is never decoded as one utterance. pocketsphinx's endpointer (a WebRTC-style voice activity detector) finds
the stretches of speech; each is decoded on its own, with a little padding, cut to at most MAX_CHUNK_SECONDS at its
quietest point, and its word times are shifted back onto the video's timeline (as faster-whisper does with its VAD
chunks); Whisper decodes the same spans. Skipping what is not speech matters for more than speed: pocketsphinx 5.1.1
"hears" words in digital silence ("dog" in 30 s of zeros) and spends about 1 s of CPU per second on faint noise.
pocketsphinx's words are then grouped into segments of at most `segment_seconds`, a new segment starting at each pause.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ingest.audio import Audio, pcm16
from ingest.experts.base import AudioInput, Expert, ExpertUnavailable, TextSegment, Word, group_words

if TYPE_CHECKING:
    from pocketsphinx import Decoder

    from ingest.experts.whisper import WhisperRecognizer
    from schema.settings import Settings

log = logging.getLogger(__name__)

RATE = 16000  # the rate the wheel's acoustic model was trained at
FRAMES_PER_SECOND = 100  # pocketsphinx's default -frate: seg() times are in 10 ms frames
PAD_SECONDS = 0.3  # decoded either side of a speech stretch: the endpointer's edges can clip a word's onset or tail
MAX_CHUNK_SECONDS = 30.0  # the longest stretch decoded as one utterance (search cost and memory grow with it)
VAD_BLOCK_SECONDS = 60.0  # audio converted to PCM for the endpointer a block at a time, not the whole track at once
_NOT_WORDS = re.compile(r"^(<.*>|\[.*\]|\+\+.*\+\+)$")  # <s>, </s>, <sil>, [NOISE], ++NOISE++: fillers, not speech
_ALTERNATE = re.compile(r"\(\d+\)$")  # "on(2)": the dictionary's second pronunciation of "on"



def speech_spans(samples: np.ndarray, rate: int = RATE, *, pad: float = PAD_SECONDS,
                 max_seconds: float = MAX_CHUNK_SECONDS) -> list[tuple[int, int]]:
    """Sample ranges [start, end) to decode: the endpointer's speech stretches, padded by `pad` seconds, merged where
    they touch, and cut at their quietest point so that none is longer than `max_seconds`."""
    from pocketsphinx import Endpointer

    endpointer = Endpointer(sample_rate=rate)
    frame = endpointer.frame_bytes // 2  # samples per VAD frame (30 ms)
    block = max(1, int(VAD_BLOCK_SECONDS * rate) // frame) * frame
    stretches: list[tuple[float, float]] = []
    was_speech = False
    for at in range(0, len(samples), block):
        data = pcm16(samples[at : at + block])
        for i in range(0, len(data), frame * 2):
            piece = data[i : i + frame * 2]
            # A short last piece must go to end_stream (process() insists on whole frames; end_stream(b"") raises).
            last = len(piece) < frame * 2
            speech = endpointer.end_stream(piece) if last else endpointer.process(piece)
            if speech is not None:
                was_speech = True
            if was_speech and not endpointer.in_speech:
                stretches.append((endpointer.speech_start, endpointer.speech_end))
                was_speech = False
    if was_speech:  # still talking when the track ended
        stretches.append((endpointer.speech_start, len(samples) / rate))

    spans: list[tuple[int, int]] = []
    for start, end in stretches:
        a, b = max(0, int((start - pad) * rate)), min(len(samples), int((end + pad) * rate))
        if spans and a <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(b, spans[-1][1]))
        elif b > a:
            spans.append((a, b))
    return [piece for span in spans for piece in _cut(samples, span, int(max_seconds * rate), rate)]


def _cut(samples: np.ndarray, span: tuple[int, int], longest: int, rate: int) -> list[tuple[int, int]]:
    """`span` in pieces of at most `longest` samples, each cut at the quietest 10 ms in its second half, which in
    speech is usually a pause between words."""
    start, end = span
    pieces = []
    hop = rate // FRAMES_PER_SECOND
    while end - start > longest:
        lo = start + longest // 2
        window = samples[lo : start + longest]
        energy = np.square(window[: len(window) // hop * hop].reshape(-1, hop)).mean(axis=1)
        cut = lo + int(np.argmin(energy)) * hop + hop // 2
        pieces.append((start, cut))
        start = cut
    pieces.append((start, end))
    return pieces


def decode_words(decoder: Decoder, samples: np.ndarray, spans: list[tuple[int, int]], rate: int = RATE) -> list[Word]:
    """The words pocketsphinx recognises in each span, each span its own utterance, with times in the video."""
    words: list[Word] = []
    for a, b in spans:
        decoder.start_utt()
        decoder.process_raw(pcm16(samples[a:b]), full_utt=True)
        decoder.end_utt()
        offset = a / rate
        for seg in decoder.seg():
            if _NOT_WORDS.match(seg.word):
                continue
            start, end = offset + seg.start_frame / FRAMES_PER_SECOND, offset + (seg.end_frame + 1) / FRAMES_PER_SECOND
            words.append(Word(round(start, 2), round(end, 2), _ALTERNATE.sub("", seg.word)))
    return words


class SpeechExpert(Expert):
    """What is said, in segments of at most `segment_seconds`: Whisper's transcript (multilingual) when `asr` picks it
    and its checkpoint loads, else pocketsphinx's (English, inside its wheel). Both land in the same collection."""

    name = "speech"
    depends_on = ("pocketsphinx",)  # the voice detector, whichever recogniser decodes

    def __init__(self, segment_seconds: float = 5.0, *, asr: str = "pocketsphinx", asr_model: str | None = None,
                 asr_model_revision: str | None = None, asr_batch_size: int = 4, asr_word_times: bool = False,
                 device: str = "auto", hash_cache: str | None = None) -> None:
        super().__init__()
        self.segment_seconds = segment_seconds
        self.asr, self.asr_model, self.asr_model_revision = asr, asr_model, asr_model_revision
        self.asr_batch_size, self.asr_word_times = asr_batch_size, asr_word_times
        self.device, self.hash_cache = device, hash_cache
        self.decoder: Decoder | None = None  # pocketsphinx, loaded on first use
        self.whisper: WhisperRecognizer | None = None
        self._missing: str | None = None  # why Whisper, asked for by name, could not be loaded

    @classmethod
    def from_settings(cls, settings: Settings) -> SpeechExpert:
        return cls(segment_seconds=settings.speech_segment_seconds, asr=settings.asr, asr_model=settings.asr_model,
                   asr_model_revision=settings.asr_model_revision, asr_batch_size=settings.asr_batch_size,
                   asr_word_times=settings.asr_word_times, device=settings.device,
                   hash_cache=str(settings.checkpoint_hashes_file))

    @property
    def needs(self) -> AudioInput:
        return AudioInput(rate=RATE)

    @property
    def backend(self) -> str | None:
        """The recogniser in use once loaded: "whisper" or "pocketsphinx"."""
        return "whisper" if self.whisper is not None else "pocketsphinx" if self.decoder is not None else None

    def load(self) -> None:
        if self._missing is not None:
            raise ExpertUnavailable(self._missing)
        if self.asr in ("auto", "whisper") and self.asr_model:
            from ingest.experts.whisper import WhisperUnavailable, load_whisper

            try:
                self.whisper = load_whisper(self.asr_model, self.asr_model_revision, self.device,
                                            hash_cache=Path(self.hash_cache) if self.hash_cache else None)
                log.info("speech recogniser: Whisper %s (VIDSEARCH_ASR=%s)", self.asr_model, self.asr)
                return
            except WhisperUnavailable as exc:
                if self.asr == "whisper":  # asked for by name: no silent fallback, every video says why
                    self._missing = f"no Whisper checkpoint is available here: {exc}"
                    log.warning("the speech expert is unavailable: %s", exc)
                    raise ExpertUnavailable(self._missing) from exc
                log.info("speech recogniser: pocketsphinx, English (VIDSEARCH_ASR=auto; Whisper not loaded: %s)", exc)
        from pocketsphinx import Decoder

        # The default config points at the model inside the wheel (hmm, lm, dict). 5.1.1 logs at WARN by default,
        # quiet in use (INFO is ~200 lines a decoder); ERROR keeps warnings out of the worker's stderr but not errors.
        self.decoder = Decoder(samprate=RATE, loglevel="ERROR")

    def transcribe(self, data: Audio) -> list[TextSegment]:
        if data.rate != RATE:
            raise ValueError(f"the speech expert reads {RATE} Hz audio, got {data.rate} Hz")
        if self.backend is None:
            self.load()
        began = time.process_time()
        spans = speech_spans(data.samples, data.rate)
        if self.whisper is not None:
            segments = self.whisper.transcribe(data.samples, spans, self.asr_batch_size,
                                             self.segment_seconds if self.asr_word_times else None)
            log.info("speech (Whisper): %d segments in %d stretches (%.0f s of %.0f s) in %.1f s CPU", len(segments),
                     len(spans), sum(b - a for a, b in spans) / data.rate, data.duration, time.process_time() - began)
            if not segments:
                raise ExpertUnavailable("no speech was recognised in the audio track")
            return segments
        words = decode_words(self.decoder, data.samples, spans, data.rate)
        log.info("speech: %d words in %d stretches (%.0f s of %.0f s) in %.1f s CPU", len(words), len(spans),
                 sum(b - a for a, b in spans) / data.rate, data.duration, time.process_time() - began)
        if not words:
            raise ExpertUnavailable("no speech was recognised in the audio track")
        return group_words(words, self.segment_seconds)


def describe_asr(settings: Settings) -> str:
    """Which recogniser the speech expert will use, for `vidsearch status`, decided without loading a model: Whisper
    when VIDSEARCH_ASR allows it and its checkpoint is a folder or in the hub cache (or the hub can be reached)."""
    from huggingface_hub import is_offline_mode

    from ingest.checkpoint import cached_hub_snapshot
    from ingest.encoder import _is_local

    if settings.asr == "pocketsphinx":
        return "pocketsphinx (English)"
    model = settings.asr_model
    if _is_local(model):
        have = (Path(model).expanduser() / "config.json").is_file()
    else:
        have = not is_offline_mode() or cached_hub_snapshot(model, settings.asr_model_revision) is not None
    if have:
        words = ", word times" if settings.asr_word_times else ""
        return f"Whisper {model}{words}" + ("" if settings.asr == "whisper" else " (else pocketsphinx, English)")
    if settings.asr == "whisper":
        return f"Whisper {model}: not available here (the speech expert is unavailable)"
    return f"pocketsphinx (English; Whisper {model} is not available here)"
