"""The text expert: words shown on screen (titles, signs, captions), read by RapidOCR from one frame a second.

RapidOCR (PP-OCR detection and recognition models in ONNX, inside its wheel) sits behind this adapter, which gives
it the project's settings: models from the wheel (nothing is downloaded), quiet logs, two onnxruntime threads (so it
does not fight the CLIP model for the CPU). A frame nearly identical to the one before it (a title card held for ten
seconds) is not read again: its text is reused. The lines of a frame are joined in reading order; consecutive frames
showing the same text (up to small OCR differences) become one segment.
"""

from __future__ import annotations

import difflib
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ingest.experts.base import Expert, ExpertUnavailable, Frames, FramesInput, TextSegment

if TYPE_CHECKING:
    from schema.settings import Settings

log = logging.getLogger(__name__)

# Lines RapidOCR is less sure of than this are dropped (its own default is 0.5; misreads of texture sit below 0.6).
MIN_SCORE = 0.6
# Texture (stripes, foliage) reads as a letter or two: "m", "11" at up to 0.84 on a busy background, measured. A line
# needs two letters or digits, and a line that short must be read with this confidence.
SHORT_LINE = 3
SHORT_MIN_SCORE = 0.9
# Two frames' texts are the same text when their normalised forms are this similar (difflib ratio): a letter or two
# read differently from one frame to the next must not split a caption in two.
SAME_TEXT_RATIO = 0.8
# A frame is "the same picture" as the one before when no cell of a coarse grey grid (longer side STILL_GRID cells)
# changed by more than STILL_MAX_DIFF grey levels: encoder noise moves cell means by 1-3 levels, a word appearing in a
# cell by tens of levels.
STILL_GRID = 96
STILL_MAX_DIFF = 8.0
# RapidOCR's detector resizes its input so the *shorter* side is at least 736 px by default, which upscales a 640x360
# frame to 1308x736 and costs ~5x more (measured); limiting the *longer* side to 960 px instead keeps 720p captions
# legible at a fraction of the cost.
DET_MAX_SIDE = 960
# immich's default for its ONNX sessions, "to avoid thread contention between models".
ORT_INTRA_THREADS = 2
ORT_INTER_THREADS = 1
# The model files shipped in the rapidocr 3.x wheel (its default PP-OCRv6 small detector and recogniser).
DET_MODEL = "PP-OCRv6_det_small.onnx"
REC_MODEL = "PP-OCRv6_rec_small.onnx"


@dataclass(frozen=True)
class OcrLine:
    """One line RapidOCR read: its text, confidence and bounding box (x0, y0, x1, y1) in pixels."""

    text: str
    score: float
    box: tuple[float, float, float, float]


@dataclass
class ReadStats:
    """What the last transcribe cost: frames looked at, frames actually read by OCR, seconds spent in OCR."""

    frames: int = 0
    ocr_frames: int = 0
    ocr_seconds: float = 0.0

    @property
    def skipped(self) -> int:
        return self.frames - self.ocr_frames


def reading_order(lines: Sequence[OcrLine]) -> str:
    """The lines' texts joined top to bottom, left to right within a row (boxes whose vertical centres are within
    half a line height of each other form one row)."""
    items = sorted(lines, key=lambda line: (line.box[1] + line.box[3]) / 2)
    rows: list[list[OcrLine]] = []
    for line in items:
        centre = (line.box[1] + line.box[3]) / 2
        if rows:
            first = rows[-1][0]
            height = max(1.0, first.box[3] - first.box[1])
            if abs(centre - (first.box[1] + first.box[3]) / 2) <= height / 2:
                rows[-1].append(line)
                continue
        rows.append([line])
    return " ".join(" ".join(x.text.strip() for x in sorted(row, key=lambda x: x.box[0])) for row in rows).strip()


def normalise(text: str) -> str:
    """Case and whitespace folded, for comparing what two frames show."""
    return " ".join(text.casefold().split())


def same_text(a: str, b: str) -> bool:
    """Whether two frames show the same text, tolerating a small OCR difference."""
    a, b = normalise(a), normalise(b)
    if not a or not b:
        return a == b
    return a == b or difflib.SequenceMatcher(None, a, b, autojunk=False).ratio() > SAME_TEXT_RATIO


def merge(times: Sequence[float], texts: Sequence[str], interval: float) -> list[TextSegment]:
    """One segment per run of consecutive frames showing the same text (frames without text end a run); a segment
    ends `interval` after its last frame and says the text most of its frames read."""
    segments: list[TextSegment] = []
    run: list[tuple[float, str]] = []

    def close() -> None:
        if run:
            text = Counter(t for _, t in run).most_common(1)[0][0]  # ties: the first read
            segments.append(TextSegment(run[0][0], run[-1][0] + interval, text))
            run.clear()

    for t, text in zip(times, texts, strict=True):
        if not text:
            close()
            continue
        if run and not same_text(run[-1][1], text):
            close()
        run.append((float(t), text))
    close()
    return segments


def thumbnail(image: np.ndarray, grid: int = STILL_GRID) -> np.ndarray:
    """A coarse grey copy (block means, longer side about `grid` cells), float32, for telling frames apart cheaply."""
    height, width = image.shape[:2]
    block = max(1, max(height, width) // grid)
    h, w = max(1, height // block), max(1, width // block)
    grey = image[: h * block, : w * block].astype(np.float32).mean(axis=2)
    return grey.reshape(h, block, w, block).mean(axis=(1, 3))


def is_still(previous: np.ndarray | None, current: np.ndarray) -> bool:
    """Whether `current` (a thumbnail) shows the same picture as `previous`."""
    if previous is None or previous.shape != current.shape:
        return False
    return float(np.abs(current - previous).max()) <= STILL_MAX_DIFF


class TextExpert(Expert):
    """Words on screen, read by RapidOCR from one frame every `interval` seconds at most `max_side` pixels."""

    name = "text"
    depends_on = ("rapidocr", "onnxruntime")

    def __init__(self, interval: float = 1.0, max_side: int = 1280, *, min_score: float = MIN_SCORE,
                 threads: int = ORT_INTRA_THREADS) -> None:
        super().__init__()
        self.interval = interval
        self.max_side = max_side
        self.min_score = min_score
        self.threads = threads
        self.engine = None
        self.stats = ReadStats()

    @classmethod
    def from_settings(cls, settings: Settings) -> TextExpert:
        return cls(settings.text_interval_seconds, settings.text_max_side)

    @property
    def needs(self) -> FramesInput:
        return FramesInput(self.interval, self.max_side)

    def load(self) -> None:
        import rapidocr

        models = Path(rapidocr.__file__).resolve().parent / "models"
        # model_path set: RapidOCR then skips its download step (which would otherwise verify, and fetch if missing,
        # the files its model table names). The angle classifier is off: text on screen is upright, and it is a
        # third network per line.
        params = {
            "Global.log_level": "error",
            "Global.use_cls": False,
            "Global.text_score": self.min_score,
            "Det.model_path": str(models / DET_MODEL),
            "Rec.model_path": str(models / REC_MODEL),
            "Det.limit_type": "max",
            "Det.limit_side_len": DET_MAX_SIDE,
            "EngineConfig.onnxruntime.intra_op_num_threads": self.threads,
            "EngineConfig.onnxruntime.inter_op_num_threads": ORT_INTER_THREADS,
        }
        for name in (DET_MODEL, REC_MODEL):
            if not (models / name).is_file():
                raise RuntimeError(f"the rapidocr package has no {name} in {models}; install rapidocr>=3.0 "
                                   "(its wheel ships the models the text expert uses)")
        self.engine = rapidocr.RapidOCR(params=params)
        log.debug("RapidOCR loaded from %s", models)

    def read(self, image: np.ndarray) -> list[OcrLine]:
        """The lines RapidOCR reads in one RGB frame, at least `min_score` sure."""
        # RapidOCR takes arrays as OpenCV does, BGR.
        result = self.engine(np.ascontiguousarray(image[..., ::-1]))
        txts, scores, boxes = (getattr(result, name, None) for name in ("txts", "scores", "boxes"))
        if not txts or boxes is None:
            return []
        lines = []
        for text, score, box in zip(txts, scores, boxes, strict=False):
            points = np.asarray(box, dtype=np.float32).reshape(-1, 2)
            if self.keep(text, float(score)):
                lines.append(OcrLine(text.strip(), float(score), (float(points[:, 0].min()), float(points[:, 1].min()),
                                                                 float(points[:, 0].max()), float(points[:, 1].max()))))
        return lines

    def keep(self, text: str, score: float) -> bool:
        """Whether a line read with `score` is text rather than texture."""
        letters = sum(c.isalnum() for c in text)
        if letters < 2 or score < self.min_score:
            return False
        return len(text.strip()) >= SHORT_LINE or score >= SHORT_MIN_SCORE

    def transcribe(self, data: Frames) -> list[TextSegment]:
        stats = self.stats = ReadStats(frames=len(data.times))
        texts: list[str] = []
        read_thumb: np.ndarray | None = None  # the last frame OCR read: a slow fade cannot creep past it
        for image in data.images:
            thumb = thumbnail(image)
            if texts and is_still(read_thumb, thumb):
                texts.append(texts[-1])
                continue
            start = time.perf_counter()
            texts.append(reading_order(self.read(image)))
            stats.ocr_seconds += time.perf_counter() - start
            stats.ocr_frames += 1
            read_thumb = thumb
        log.debug("text expert: OCR on %d of %d frames (%.2f s)", stats.ocr_frames, stats.frames, stats.ocr_seconds)
        segments = merge(data.times, texts, data.interval)
        if not segments:
            raise ExpertUnavailable("no text was found on screen")
        return segments
