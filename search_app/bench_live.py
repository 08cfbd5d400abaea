"""`vidsearch bench --live`: what watching live streams costs on this machine. Publishers (processes of their own)
send H.264 in MPEG-TS over UDP on 127.0.0.1 at real-time pace; one Watcher with the bench's model scores them as
`vidsearch watch` and `serve` do. Reported: frames scored per second per stream, the frames dropped, and the time
from a frame's decoding to its score (what a start event waits after the frame that crossed the threshold), p50
and p95, with 1 and 4 streams; and the watcher's RSS when fed faster than it can keep up, after 1 and 10 minutes
(bounded queues: it must not grow).

    python -m search_app.bench_live PORT SECONDS FPS SIZE      (the publisher)
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ingest.live import Source, Thresholds, Watched, Watcher
from search_app.eval_corpus import COLOURS, SHAPES, render_frame

PROMPTS = ["a person at the door", "a delivery van", "a dog"]
NEVER = Thresholds(1.01, 1.01, 0.0)  # scores only: no event is wanted here (cosines never reach 1.01)


def publish(port: int, seconds: float, fps: int, size: int) -> None:
    """Moving coloured shapes, encoded as a camera would (a keyframe a second), sent at real-time pace."""
    import av

    out = av.open(f"udp://127.0.0.1:{port}?pkt_size=1316", "w", format="mpegts")
    stream = out.add_stream("libx264", rate=fps)
    stream.width = stream.height = size
    stream.pix_fmt = "yuv420p"
    stream.options = {"preset": "ultrafast", "tune": "zerolatency", "g": str(fps)}
    colours, began = list(COLOURS), time.monotonic()
    for i in range(round(seconds * fps)):
        time.sleep(max(0.0, began + i / fps - time.monotonic()))
        picture = render_frame(colours[(i // fps) % len(colours)], SHAPES[(i // (2 * fps)) % len(SHAPES)], size,
                               jitter=i % 11)
        frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
        frame.pts = i
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
    out.close()


def _publisher(port: int, seconds: float, fps: int, size: int) -> subprocess.Popen:
    root = Path(__file__).resolve().parent.parent
    return subprocess.Popen([sys.executable, "-m", "search_app.bench_live", str(port), str(seconds), str(fps),
                             str(size)], cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (4096 / 2**20)


def measure_streams(encoder, streams: int, seconds: float, *, fps: float = 5.0, publish_fps: int = 10,
                    size: int = 320, folder: Path) -> dict:
    """`streams` live UDP streams watched at `fps` for `seconds` by one Watcher: per-stream rate, drops, latency."""
    waits: list[float] = []
    scored = [0] * streams
    index: dict[int, int] = {}

    def on_scores(w, frame, _scores) -> None:
        waits.append(time.monotonic() - frame.wall)
        scored[index[id(w)]] += 1

    watcher = Watcher(encoder, folder, on_scores=on_scores)
    ports = [_port() for _ in range(streams)]
    for i, port in enumerate(ports):
        w = watcher.add(Watched(Source(f"udp://127.0.0.1:{port}?timeout=5000000", fps=fps,
                                       decode_size=encoder.decode_size, name=f"bench-{i}"), PROMPTS, NEVER))
        index[id(w)] = i
    time.sleep(0.5)  # the sockets are bound
    publishers = [_publisher(port, seconds + 3.0, publish_fps, size) for port in ports]
    time.sleep(2.5)  # probing: the first frames arrive in a burst, not what a running watcher sees
    waits.clear()
    scored[:] = [0] * streams
    dropped_before = sum(w.source.stats.dropped for w in watcher.watched)
    began = time.monotonic()
    watcher.run(threading.Event(), max_seconds=seconds)
    elapsed = time.monotonic() - began
    for p in publishers:
        p.kill()
        p.wait()
    ms = np.array(waits) * 1000 if waits else np.array([0.0])
    return {"streams": streams, "sampled_fps": fps, "published_fps": publish_fps, "size": size,
            "seconds": round(elapsed, 1), "fps_per_stream": round(sum(scored) / streams / elapsed, 2),
            "dropped_per_stream": round((sum(w.source.stats.dropped for w in index_sources(watcher, index))
                                         - dropped_before) / streams, 1),
            "latency_ms_p50": round(float(np.percentile(ms, 50)), 1),
            "latency_ms_p95": round(float(np.percentile(ms, 95)), 1)}


def index_sources(watcher: Watcher, index: dict[int, int]) -> list[Watched]:
    """The watched sources (run() leaves them in the watcher's list)."""
    return [w for w in watcher.watched if id(w) in index]


def measure_overload(encoder, marks_minutes: tuple[float, ...], *, size: int = 320, folder: Path,
                     progress: Callable[[str], None] = lambda _m: None) -> dict:
    """One stream sampled at 30 frames/s (more than the model scores on a small CPU): RSS at each mark."""
    scored = [0]
    watcher = Watcher(encoder, folder, on_scores=lambda *_: scored.__setitem__(0, scored[0] + 1))
    port = _port()
    w = watcher.add(Watched(Source(f"udp://127.0.0.1:{port}?timeout=5000000", fps=30,
                                   decode_size=encoder.decode_size, name="overload"), PROMPTS, NEVER))
    time.sleep(0.5)
    publisher = _publisher(port, max(marks_minutes) * 60 + 10, 30, size)
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
    began = time.monotonic()
    thread.start()
    rss = {}
    try:
        for mark in sorted(marks_minutes):
            time.sleep(max(0.0, began + mark * 60 - time.monotonic()))
            rss[f"rss_mb_{mark:g}min"] = round(_rss_mb(), 1)
            progress(f"live overload: {mark:g} min, RSS {rss[f'rss_mb_{mark:g}min']} MB")
    finally:
        stop.set()
        thread.join(30)
        publisher.kill()
        publisher.wait()
    elapsed = time.monotonic() - began
    stats = w.source.stats
    return {"sampled_fps": 30, "scored_fps": round(scored[0] / elapsed, 2), "read": stats.frames,
            "dropped": stats.dropped, "max_queue": stats.max_queue, **rss}


def run_live(settings, *, quick: bool = False, model: str | None = None,
             progress: Callable[[str], None] = lambda _m: None) -> dict:
    from search_app.bench import bench_model

    with tempfile.TemporaryDirectory(prefix="vidsearch-bench-live-") as tmp:
        work = Path(tmp)
        encoder, name = bench_model(settings, model, work)
        seconds = 10.0 if quick else 30.0
        report: dict = {"model": name, "inference": encoder.choice.label, "streams": []}
        for n in (1, 4):
            progress(f"live: {n} stream(s) for {seconds:g} s")
            report["streams"].append(measure_streams(encoder, n, seconds, folder=work / f"s{n}"))
        marks = (0.5, 1.0) if quick else (1.0, 10.0)
        progress(f"live: one stream fed faster than the model, {max(marks):g} min")
        report["overload"] = measure_overload(encoder, marks, folder=work / "overload", progress=progress)
    return report


def format_live(report: dict) -> list[str]:
    lines = [f"live      model {report['model']} on {report['inference']}"]
    for row in report["streams"]:
        lines.append(f"live      {row['streams']} stream(s) of {row['published_fps']} fps at {row['size']} px, "
                     f"sampled {row['sampled_fps']:g}/s: {row['fps_per_stream']} scored/s per stream, "
                     f"{row['dropped_per_stream']} dropped per stream; decode-to-score p50 {row['latency_ms_p50']} "
                     f"ms, p95 {row['latency_ms_p95']} ms")
    o = report["overload"]
    marks = ", ".join(f"{k.removeprefix('rss_mb_')} {v} MB" for k, v in o.items() if k.startswith("rss_mb_"))
    lines.append(f"live      overload (sampled 30/s, scored {o['scored_fps']}/s): {o['dropped']} dropped, queue at "
                 f"most {o['max_queue']}; RSS {marks}")
    return lines


if __name__ == "__main__":
    publish(int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
