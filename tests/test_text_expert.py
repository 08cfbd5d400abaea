"""The text expert: real RapidOCR on real encoded clips (tests/text_clips.py) decoded by ingest/expert_input.py, and
its frame-merging rules on their own."""

from __future__ import annotations

import numpy as np
import pytest

from ingest.expert_input import read_input
from ingest.experts import ExpertUnavailable, TextSegment, expert_class
from ingest.experts.base import Frames, FramesInput
from ingest.experts.text import (
    OcrLine,
    TextExpert,
    is_still,
    merge,
    normalise,
    reading_order,
    same_text,
    thumbnail,
)
from schema.settings import Settings
from tests.text_clips import text_frame, write_text_video


@pytest.fixture(scope="session")
def expert() -> TextExpert:
    """One RapidOCR for the whole session (it loads on first use, ~1 s)."""
    return TextExpert()


@pytest.fixture(scope="session")
def text_clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("text-clips")
    return {
        "nine": write_text_video(folder / "nine.mp4", [("PLATFORM NINE", 2, 5)], seconds=7),
        "two": write_text_video(folder / "two.mp4", [("PLATFORM NINE", 1, 3), ("HARVEST MOON", 4, 6)], seconds=7,
                                background="busy"),
        "plain": write_text_video(folder / "plain.mp4", [], seconds=5),
        "busy": write_text_video(folder / "busy.mp4", [], seconds=5, background="busy"),
    }


def _read(expert: TextExpert, path) -> list[TextSegment]:
    return expert.run(read_input(path, expert.needs))


def test_reads_text_where_it_is_shown(expert, text_clips):
    segments = _read(expert, text_clips["nine"])
    assert [s.text for s in segments] == ["PLATFORM NINE"]
    assert abs(segments[0].start - 2.0) <= 1.0 and abs(segments[0].end - 5.0) <= 1.0
    # The title card's frames are alike: OCR reads the first of each still stretch only (0-2 s blank, 2-5 s the
    # words, 5-7 s blank: 3 reads for 7 frames).
    assert expert.stats.frames == 7 and expert.stats.ocr_frames == 3


def test_two_texts_give_two_segments(expert, text_clips):
    segments = _read(expert, text_clips["two"])
    assert len(segments) == 2, segments
    first, second = segments
    assert same_text(first.text, "PLATFORM NINE") and same_text(second.text, "HARVEST MOON")
    assert first.start == pytest.approx(1.0, abs=1.0) and first.end == pytest.approx(3.0, abs=1.0)
    assert second.start == pytest.approx(4.0, abs=1.0) and second.end == pytest.approx(6.0, abs=1.0)
    assert expert.stats.ocr_frames == expert.stats.frames  # the background moves: every frame is read


@pytest.mark.parametrize("clip", ["plain", "busy"])
def test_no_text_is_unavailable(expert, text_clips, clip):
    # The busy background's stripes read as "m" or "11" at up to 0.84: texture, not text.
    with pytest.raises(ExpertUnavailable, match="no text was found on screen"):
        _read(expert, text_clips[clip])


def test_lines_in_reading_order(expert):
    frame = text_frame(["RE16 TGK", "PLATFORM NINE"], 640, 360)
    expert.run(Frames([frame], [0.0], 1.0, 1.0))  # loads
    assert reading_order(expert.read(frame)) == "RE16 TGK PLATFORM NINE"


def test_registry_settings_and_needs():
    assert expert_class("text") is TextExpert
    expert = TextExpert.from_settings(Settings(text_interval_seconds=0.5, text_max_side=640))
    assert expert.needs == FramesInput(0.5, 640)
    assert TextExpert.depends_on == ("rapidocr", "onnxruntime")


# --- the rules, without OCR ---

def _line(text, x0, y0, x1, y1, score=0.99):
    return OcrLine(text, score, (x0, y0, x1, y1))


def test_reading_order_rows_then_columns():
    lines = [_line("world", 200, 12, 300, 40), _line("second", 10, 60, 120, 90), _line("hello", 10, 10, 150, 42)]
    assert reading_order(lines) == "hello world second"


def test_merge_tolerates_small_ocr_differences():
    texts = ["", "PLATFORM NINE", "PLATFORM NlNE", "platform  nine", "", "HARVEST MOON", "HARVEST MOC", "RE16 TGK"]
    segments = merge([float(i) for i in range(len(texts))], texts, 1.0)
    assert segments == [TextSegment(1.0, 4.0, "PLATFORM NINE"), TextSegment(5.0, 7.0, "HARVEST MOON"),
                        TextSegment(7.0, 8.0, "RE16 TGK")]
    assert normalise("  Platform\tNINE ") == "platform nine"
    assert not same_text("PLATFORM NINE", "PLATFORM TEN")


def test_still_frames_are_told_from_new_words():
    base = text_frame([], 640, 360)
    noisy = np.clip(base.astype(np.int16) + np.random.default_rng(0).integers(-3, 4, base.shape), 0, 255)
    assert is_still(thumbnail(base), thumbnail(noisy.astype(np.uint8)))
    small_caption = text_frame(["ok go"], 640, 360, font_size=14)
    assert not is_still(thumbnail(base), thumbnail(small_caption))


class _Scripted(TextExpert):
    """Reads what it is told, counting OCR calls."""

    def __init__(self, script):
        super().__init__()
        self.script, self.loads, self.calls = script, 0, 0

    def load(self):
        self.loads += 1

    def read(self, image):
        self.calls += 1
        return [_line(self.script[int(image[0, 0, 0])], 0, 0, 10, 10)] if self.script[int(image[0, 0, 0])] else []


def test_still_frames_reuse_the_text_and_load_once():
    frames = [np.full((36, 64, 3), v, np.uint8) for v in (0, 0, 0, 100, 100)]
    expert = _Scripted({0: "", 100: "THE END"})
    assert expert.run(Frames(frames, [0.0, 1.0, 2.0, 3.0, 4.0], 1.0, 5.0)) == [TextSegment(3.0, 5.0, "THE END")]
    assert expert.calls == 2 and expert.stats.skipped == 3
    with pytest.raises(ExpertUnavailable):
        expert.run(Frames(frames[:3], [0.0, 1.0, 2.0], 1.0, 3.0))
    assert expert.loads == 1
