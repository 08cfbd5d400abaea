"""A live publisher for tests: generated frames encoded with PyAV (H.264 in MPEG-TS, a keyframe every half second)
and sent to udp://127.0.0.1:PORT at real-time pace, as a camera or `ffmpeg -re` would.

    python -m tests.streams PORT SECONDS [COLOUR:SHAPE:FROM:TO ...] [--fps N]

Between FROM and TO seconds (of this publisher's own clock, from 0) the frame shows the shape; otherwise it is black.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
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


def publish_hls(folder: Path, seconds: float, shows: list[tuple[str, str, float, float]], fps: int = 10) -> None:
    """The same picture as a live HLS playlist in `folder` (1 s segments, the last 6 listed, no end tag), written at
    real-time pace, as a camera's HLS output is."""
    import av

    out = av.open(str(folder / "live.m3u8"), "w", format="hls",
                  options={"hls_time": "1", "hls_list_size": "6", "hls_flags": "delete_segments+omit_endlist"})
    stream = out.add_stream("libx264", rate=fps)
    stream.width = stream.height = SIZE
    stream.pix_fmt = "yuv420p"
    stream.options = {"preset": "ultrafast", "tune": "zerolatency", "g": str(fps)}
    began = time.monotonic()
    for i in range(round(seconds * fps)):
        time.sleep(max(0.0, began + i / fps - time.monotonic()))
        frame = av.VideoFrame.from_ndarray(frame_at(i / fps, shows), format="rgb24")
        frame.pts = i
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
    out.close()


@contextlib.contextmanager
def http_folder(folder: Path) -> Iterator[str]:
    """`folder` served over HTTP on 127.0.0.1 (a thread); its base URL."""
    import functools
    import http.server
    import socketserver
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *_args) -> None:
            pass

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


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
