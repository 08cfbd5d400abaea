"""Videos with words burnt into their frames, for the text expert and the lexical search tests.

Pillow draws the words with the DejaVu font (Debian `fonts-dejavu-core`) and tests/videos.py encodes the frames with
PyAV, so no ffmpeg command line is needed. RapidOCR reads the plain-background clips word for word; on the busy
background it may misread a word now and then, as it does on real footage.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tests.videos import write_video

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")
PLAIN = (24, 28, 56)  # dark blue: white words on it read like a title card


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont:
    if not FONT.exists():
        raise FileNotFoundError(f"{FONT} is missing: apt-get install fonts-dejavu-core")
    return ImageFont.truetype(str(FONT), size)


def busy_background(width: int, height: int, index: int) -> np.ndarray:
    """A moving, colourful picture (like ffmpeg's testsrc): colour bars, a diagonal gradient and a checker that
    scroll a few pixels every frame, so no two frames are alike."""
    yy, xx = np.mgrid[0:height, 0:width]
    shift = 7 * index
    bars = np.array([(230, 230, 230), (230, 230, 20), (20, 230, 230), (20, 230, 20),
                     (230, 20, 230), (230, 20, 20), (20, 20, 230)], np.float32)
    frame = bars[((xx + shift) * len(bars) // width) % len(bars)]
    gradient = ((xx + yy + 3 * shift) % 256 / 255.0)[..., None]
    frame = frame * (0.55 + 0.45 * gradient)
    checker = (((xx + shift) // 24 + yy // 24) % 2 == 0)[..., None]
    frame = np.where(checker, frame * 0.7, frame)
    return frame.astype(np.uint8)


def text_frame(texts: Sequence[str], width: int = 640, height: int = 360, *, background: str = "plain",
               index: int = 0, font_size: int | None = None) -> np.ndarray:
    """One RGB frame (height, width, 3) with `texts` as centred lines, white with a black outline."""
    if background == "plain":
        image = Image.new("RGB", (width, height), PLAIN)
    elif background == "busy":
        image = Image.fromarray(busy_background(width, height, index))
    else:
        raise ValueError(f"background must be 'plain' or 'busy', not {background!r}")
    if texts:
        draw = ImageDraw.Draw(image)
        font = _font(font_size or max(12, height // 9))
        gap = font.size // 2
        boxes = [draw.textbbox((0, 0), t, font=font) for t in texts]
        total = sum(b[3] - b[1] for b in boxes) + gap * (len(texts) - 1)
        y = (height - total) // 2
        for text, box in zip(texts, boxes, strict=True):
            x = (width - (box[2] - box[0])) // 2
            draw.text((x - box[0], y - box[1]), text, font=font, fill=(255, 255, 255),
                      stroke_width=max(1, font.size // 16), stroke_fill=(0, 0, 0))
            y += box[3] - box[1] + gap
    return np.asarray(image)


def write_text_video(
    path: str | os.PathLike,
    texts: Sequence[tuple[str, float, float]],
    *,
    seconds: float,
    size: tuple[int, int] = (640, 360),
    fps: float = 5,
    background: str = "plain",
    font_size: int | None = None,
    codec: str | None = None,
) -> Path:
    """Encode a clip of `seconds` at `fps` and `size` (width, height) in which each (text, start, end) of `texts` is
    shown from `start` to `end` seconds (a frame at time t shows the texts with start <= t < end, stacked as lines,
    in the order given). `background`: "plain" (one dark colour, every frame alike) or "busy" (a moving colourful
    pattern, see busy_background). The container comes from the suffix (tests/videos.write_video). Returns `path`.

    Example: write_text_video(tmp / "a.mp4", [("PLATFORM NINE", 2, 5)], seconds=7) shows the words from 2 s to 5 s.
    """
    width, height = size
    count = max(1, round(seconds * fps))

    def frames() -> Iterator[np.ndarray]:
        for i in range(count):
            t = i / fps
            shown = [text for text, start, end in texts if start <= t < end]
            yield text_frame(shown, width, height, background=background, index=i, font_size=font_size)

    kwargs = {"codec": codec} if codec else {}
    return write_video(path, frames(), fps=fps, **kwargs)
