"""Whisper as the speech expert's recogniser (transformers' WhisperForConditionalGeneration): multilingual, far better
than pocketsphinx, and heavier.

Long audio is never given to Whisper whole. The same voice-activity spans as pocketsphinx's (speech.py
`speech_spans`, at most 30 s each: Whisper's window) are cut out, decoded in batches, and each segment's times, which
Whisper gives relative to its chunk, are shifted by the chunk's offset and clipped to it (faster-whisper's way with its
VAD chunks). Language is detected per chunk and stored with each of its segments. On request (VIDSEARCH_ASR_WORD_TIMES)
word times come from the cross-attention alignment (the checkpoint's `alignment_heads`) and a long segment is split
at its words into pieces of at most `segment_seconds`, as pocketsphinx's words are grouped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ingest.experts.base import TextSegment, Word, group_words

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

WINDOW_SECONDS = 30.0  # Whisper reads 30 s of log-mel features at a time; shorter chunks are padded to it


class WhisperUnavailable(Exception):
    """The Whisper checkpoint cannot be loaded here; str(e) says why and how to provide one."""


@dataclass
class WhisperRecognizer:
    """A loaded Whisper checkpoint with its processor, on one device."""

    model: object
    processor: object
    device: torch.device
    source: str
    snapshot: str

    @property
    def rate(self) -> int:
        return int(self.processor.feature_extractor.sampling_rate)

    def transcribe(self, samples: np.ndarray, spans: list[tuple[int, int]], batch_size: int,
                   split_seconds: float | None = None) -> list[TextSegment]:
        """Segments of every span (sample ranges of at most 30 s), `batch_size` spans per forward pass, on the
        track's timeline. With `split_seconds` and a checkpoint that can align words (alignment heads, as OpenAI's
        have), a segment is split at its word times into pieces of at most that long, as pocketsphinx's words are
        grouped; the alignment costs about as much again as the decoding (the bench measures both)."""
        align = split_seconds is not None and self.can_align
        segments: list[TextSegment] = []
        for at in range(0, len(spans), batch_size):
            batch = spans[at : at + batch_size]
            for (a, b), found in zip(batch, self._decode([samples[a:b] for a, b in batch], align), strict=True):
                offset, length = a / self.rate, (b - a) / self.rate
                for piece in found:
                    if piece.words:
                        segments.extend(place_words(piece, offset, length, split_seconds))
                    else:
                        segments.extend(place([(piece.start, piece.end, piece.text, piece.language)], offset, length))
        return segments

    @property
    def can_align(self) -> bool:
        """Whether word times can be had: cross-attention alignment needs the checkpoint's alignment heads."""
        return bool(getattr(self.model.generation_config, "alignment_heads", None))

    def _decode(self, chunks: list[np.ndarray], align: bool = False) -> list[list[Piece]]:
        """Per chunk, its segments with times relative to the chunk, with word times when `align`."""
        import torch

        inputs = self.processor(chunks, sampling_rate=self.rate, return_tensors="pt", return_attention_mask=True)
        features = inputs.input_features.to(self.device, self.model.dtype)
        # The mask gives each chunk's real length (chunks are padded to 30 s): decoding stops at the chunk's end
        # instead of seeking on through the padding, and the alignment reads only real frames.
        mask = inputs.attention_mask.to(self.device)
        with torch.inference_mode():
            language_ids = self.model.detect_language(features)
            languages = [_code(self.processor.tokenizer.convert_ids_to_tokens(int(i))) for i in language_ids]
            out = self.model.generate(features, attention_mask=mask, language=[code or "en" for code in languages],
                                      task="transcribe", return_timestamps=True, return_segments=True,
                                      return_token_timestamps=align)
        text_below = int(self.processor.tokenizer.eos_token_id)  # Whisper's text tokens come before its specials
        found = []
        for language, pieces in zip(languages, out["segments"], strict=True):
            chunk = []
            for piece in pieces:
                tokens = [int(t) for t in piece["tokens"]]
                text = self.processor.tokenizer.decode([t for t in tokens if t < text_below],
                                                       skip_special_tokens=True).strip()
                if not text:
                    continue
                times = piece.get("token_timestamps")
                words = (_words(self.processor.tokenizer, tokens, [float(t) for t in times], float(piece["end"]),
                                text_below) if times is not None and len(times) == len(tokens) else ())
                chunk.append(Piece(float(piece["start"]), float(piece["end"]), text, language, words))
            found.append(chunk)
        return found


@dataclass(frozen=True)
class Piece:
    """One Whisper segment of a chunk, times relative to the chunk; `words` (start, end, text) when aligned."""

    start: float
    end: float
    text: str
    language: str | None
    words: tuple[tuple[float, float, str], ...] = ()


def _words(tokenizer, tokens: list[int], times: list[float], end: float, text_below: int
           ) -> tuple[tuple[float, float, str], ...]:
    """A segment's words from its tokens and their aligned times: a token whose text starts with a space begins a
    word (byte-level BPE); a word's tokens are decoded together (a character can span tokens), and it lasts until the
    next token's time. Scripts written without spaces come out as one word per segment."""
    groups: list[list[int]] = []  # indices into tokens
    for i, token in enumerate(tokens):
        if token >= text_below:
            continue
        piece = tokenizer.convert_tokens_to_string([tokenizer.convert_ids_to_tokens(token)])
        if not groups or piece[:1].isspace() or groups[-1][-1] != i - 1:
            groups.append([i])
        else:
            groups[-1].append(i)
    words = []
    for group in groups:
        text = tokenizer.decode([tokens[i] for i in group], skip_special_tokens=True).strip()
        after = group[-1] + 1
        if text:
            words.append((times[group[0]], times[after] if after < len(times) else end, text))
    return tuple(words)


def place_words(piece: Piece, offset: float, length: float, max_seconds: float) -> list[TextSegment]:
    """A segment's words on the track (shifted by the chunk's `offset`, clipped to its `length`; a word that starts
    past the chunk's end is dropped), grouped into segments of at most `max_seconds` with the segment's language."""
    kept = []
    for start, end, text in piece.words:
        if start >= length:
            continue
        start, end = min(max(start, 0.0), length), min(max(end, start, 0.0), length)
        kept.append(Word(round(offset + start, 2), round(offset + end, 2), text))
    return [TextSegment(s.start, s.end, s.text, piece.language) for s in group_words(kept, max_seconds)]


def _code(token: str) -> str | None:
    """"<|de|>" -> "de"."""
    return token[2:-2] if token.startswith("<|") and token.endswith("|>") and len(token) > 4 else None


def place(found: list[tuple[float, float, str, str | None]], offset: float, length: float) -> list[TextSegment]:
    """Segments of one chunk, Whisper's chunk-relative times mapped onto the track: shifted by the chunk's `offset`
    (seconds) and clipped to the chunk's `length` (Whisper can predict a time in the padding past the audio; a segment
    that starts there has nothing to hear and is dropped)."""
    placed = []
    for start, end, text, language in found:
        if start >= length:
            continue
        start, end = min(max(start, 0.0), length), min(max(end, 0.0), length)
        placed.append(TextSegment(round(offset + start, 2), round(offset + max(start, end), 2), text, language))
    return placed


def _unavailable(model: str, exc: Exception) -> WhisperUnavailable:
    detail = str(exc).splitlines()[0] if str(exc) else ""
    return WhisperUnavailable(
        f"could not load the Whisper model {model!r}: {exc.__class__.__name__}: {detail}. Allow access to the Hugging "
        "Face Hub once (the checkpoint is then cached), or set VIDSEARCH_ASR_MODEL to a local folder holding a "
        "Whisper checkpoint."
    )


def load_whisper(model: str, revision: str | None = None, device: str = "auto", *, hash_cache: Path | None = None,
                 cache_dir: Path | None = None) -> WhisperRecognizer:
    """Load a Whisper checkpoint (hub id at a revision, or a local folder) in fp32 (fp16 on CUDA)."""
    import torch
    from huggingface_hub.errors import RevisionResolutionError
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from ingest.checkpoint import folder_snapshot, hub_revision
    from ingest.encoder import _is_local, pick_device

    local = _is_local(model)
    source = str(Path(model).expanduser().resolve()) if local else model
    hub_dir = None if local else cache_dir
    target = pick_device(device)
    try:
        rev = None if local else hub_revision(model, revision, hub_dir)
        dtype = torch.float16 if target.type == "cuda" else torch.float32
        whisper = WhisperForConditionalGeneration.from_pretrained(source, revision=rev, cache_dir=hub_dir,
                                                                  dtype=dtype).eval().to(target)
        processor = WhisperProcessor.from_pretrained(source, revision=rev, cache_dir=hub_dir)
        snapshot = folder_snapshot(Path(source), hash_cache) if local else rev.resolved
    except (OSError, ValueError, RevisionResolutionError) as exc:
        raise _unavailable(model, exc) from exc
    if not hasattr(whisper.generation_config, "no_timestamps_token_id"):
        raise WhisperUnavailable(f"{model}: its generation config has no timestamp tokens; the speech expert needs "
                                 "segment times (use an openai/whisper-* checkpoint or one derived from it)")
    log.info("loaded Whisper %s (snapshot %s) on %s", source, snapshot, target)
    return WhisperRecognizer(whisper, processor, target, source, snapshot)
