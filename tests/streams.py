"""A live publisher for tests: generated frames encoded with PyAV (H.264 in MPEG-TS, a keyframe every half second)
and sent to udp://127.0.0.1:PORT at real-time pace, as a camera or `ffmpeg -re` would.

    python -m tests.streams PORT SECONDS [COLOUR:SHAPE:FROM:TO ...] [--fps N]

Between FROM and TO seconds (of this publisher's own clock, from 0) the frame shows the shape; otherwise it is black.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from search_app.eval_corpus import render_frame

SIZE = 64
ROOT = Path(__file__).resolve().parent.parent


def frame_at(t: float, shows: list[tuple[str, str, float, float]]) -> np.ndarray:
    for colour, shape, start, end in shows:
        if start <= t < end:
            return render_frame(colour, shape, SIZE, jitter=int(t * 10) % 7)
    return np.zeros((SIZE, SIZE, 3), dtype=np.uint8)


def publish(port: int, seconds: float, shows: list[tuple[str, str, float, float]], fps: int = 10) -> None:
    import av

    out = av.open(f"udp://127.0.0.1:{port}?pkt_size=1316", "w", format="mpegts")
    stream = out.add_stream("libx264", rate=fps)
    stream.width = stream.height = SIZE
    stream.pix_fmt = "yuv420p"
    stream.options = {"preset": "ultrafast", "tune": "zerolatency", "g": str(max(1, fps // 2))}
    began = time.monotonic()
    for i in range(round(seconds * fps)):
        t = i / fps
        time.sleep(max(0.0, began + t - time.monotonic()))
        frame = av.VideoFrame.from_ndarray(frame_at(t, shows), format="rgb24")
        frame.pts = i
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
    out.close()


def start_publisher(port: int, seconds: float, shows: list[tuple[str, str, float, float]], fps: int = 10
                    ) -> subprocess.Popen:
    """The publisher in a process of its own (so a test can kill it mid-stream, as a camera drops)."""
    args = [sys.executable, "-m", "tests.streams", str(port), str(seconds),
            *(f"{c}:{s}:{a}:{b}" for c, s, a, b in shows), "--fps", str(fps)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("seconds", type=float)
    parser.add_argument("shows", nargs="*")
    parser.add_argument("--fps", type=int, default=10)
    args = parser.parse_args()
    shows = []
    for spec in args.shows:
        colour, shape, start, end = spec.split(":")
        shows.append((colour, shape, float(start), float(end)))
    publish(args.port, args.seconds, shows, args.fps)


if __name__ == "__main__":
    main()
