"""Experts beside appearance: each reads one thing in a video (what is said, what is written on screen, what is heard)
and returns timestamped segments: text (speech, text) or vectors (audio). One module per expert behind the interface
in base.py; EXPERTS maps names to classes."""

from __future__ import annotations

from ingest.experts.base import (
    AudioInput,
    Expert,
    ExpertUnavailable,
    FramesInput,
    TextSegment,
    VectorSegment,
)

# name -> "module:Class", imported on first use: an expert's engine (pocketsphinx, RapidOCR) loads only when it runs.
EXPERTS: dict[str, str] = {
    "speech": "ingest.experts.speech:SpeechExpert",
    "text": "ingest.experts.text:TextExpert",
    "audio": "ingest.experts.sound:AudioExpert",
}

__all__ = ["EXPERTS", "AudioInput", "Expert", "ExpertUnavailable", "FramesInput", "TextSegment", "VectorSegment",
           "expert_class"]


def expert_class(name: str) -> type[Expert]:
    """The class of the expert called `name` (KeyError for an unknown one)."""
    import importlib

    module, _, cls = EXPERTS[name].partition(":")
    return getattr(importlib.import_module(module), cls)
