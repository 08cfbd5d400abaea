"""What the text expert costs on this CPU: OCR seconds per frame at 640x360 and 1280x720 (RapidOCR's default detector
size vs the expert's), and seconds per minute of video at the default interval (a title card held still, where most
frames are skipped, and captions over moving footage, where every frame is read).

    python scripts/measure_text_expert.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ingest.expert_input import read_input  # noqa: E402
from ingest.experts.text import TextExpert, reading_order  # noqa: E402
from tests.text_clips import text_frame, write_text_video  # noqa: E402


def per_frame(expert: TextExpert, frame, repeat: int = 5) -> tuple[float, float, str]:
    expert.read(frame)  # warm-up
    wall, cpu = [], []
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        lines = expert.read(frame)
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return sorted(wall)[repeat // 2], sorted(cpu)[repeat // 2], reading_order(lines)


def main() -> None:
    ours = TextExpert()
    ours.load()
    default = TextExpert()
    default.load()
    default.engine.cfg.Det.limit_type, default.engine.cfg.Det.limit_side_len = "min", 736
    default.engine.text_det = None  # rebuilt with RapidOCR's own detector sizing
    print("frame          detector         wall s  cpu s   read")
    for width, height in ((640, 360), (1280, 720)):
        for label, texts, font in (("title", ["PLATFORM NINE", "RE16 TGK"], None), ("subtitle", ["the quick brown fox "
                                   "jumps over the lazy dog"], 18 * width // 640), ("blank", [], None)):
            frame = text_frame(texts, width, height, background="busy", font_size=font)
            for name, expert in (("rapidocr default", default), ("expert (max 960)", ours)):
                wall, cpu, text = per_frame(expert, frame)
                print(f"{width}x{height} {label:8} {name:16} {wall:6.3f} {cpu:6.3f}  {text!r}")
    with tempfile.TemporaryDirectory() as tmp:
        for background, label in (("plain", "title cards, still"), ("busy", "captions on moving footage")):
            cards = [(f"CAPTION NUMBER {i}", 6 * i + 1, 6 * i + 5) for i in range(10)]
            for size in ((640, 360), (1280, 720)):
                path = write_text_video(Path(tmp) / f"{background}{size[0]}.mp4", cards, seconds=60, size=size, fps=5,
                                        background=background)
                frames = read_input(path, ours.needs)
                start = time.perf_counter()
                segments = ours.transcribe(frames)
                took = time.perf_counter() - start
                print(f"1 min {size[0]}x{size[1]} {label:27}: {took:5.1f} s ({ours.stats.ocr_frames}/"
                      f"{ours.stats.frames} frames read, {len(segments)} segments)")


if __name__ == "__main__":
    main()
