"""vidsearch watch on real streams on 127.0.0.1: a PyAV publisher sends H.264 in MPEG-TS over UDP at real-time pace
(tests/streams.py), the real CLI decodes it with PyAV and scores it with the trained tiny CLIP; plus the event
tracker's hysteresis, the bounded queue under a stalled model, reconnects and credentials."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ingest.encoder import load_encoder
from ingest.live import QUEUE_FRAMES, Event, LiveError, PromptTracker, Source, Thresholds, default_name, redact
from search_app.eval_corpus import render_frame
from tests.conftest import cli_env
from tests.procs import vidsearch_cmd
from tests.streams import SIZE, start_publisher

PROMPT = "a red circle"


def _port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _url(port: int) -> str:
    return f"udp://127.0.0.1:{port}?timeout=5000000"


@pytest.fixture(scope="module")
def thresholds(tiny_model) -> tuple[float, float]:
    """(enter, leave) between the prompt's cosine on its shape and on a black frame, for the tiny model (a real CLIP's
    cosines live elsewhere: the defaults are for those)."""
    encoder = load_encoder(str(tiny_model), device="cpu", inference="torch")
    text = encoder.embed_text(PROMPT)
    shown = encoder.embed_images([render_frame("red", "circle", SIZE, jitter=j) for j in range(7)]) @ text
    black = encoder.embed_images([np.zeros((SIZE, SIZE, 3), np.uint8)]) @ text
    assert shown.min() > black.max() + 0.05, (shown, black)  # the model tells them apart: the test can mean something
    gap = shown.min() - black.max()
    return float(black.max() + 0.6 * gap), float(black.max() + 0.4 * gap)


def _watch(home: Path, model: Path, url: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([*vidsearch_cmd(), "watch", url, "--prompt", PROMPT, "--json", *args],
                            env=cli_env(home, model), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_watching(proc: subprocess.Popen) -> list[str]:
    """stderr lines up to 'watching ...' (the model is loaded and the socket is being opened)."""
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("watching "):
            return lines
    raise AssertionError("the watcher exited before watching: " + "".join(lines))


def _finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[list[dict], str]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return [json.loads(line) for line in out.splitlines()], err


@pytest.mark.slow
def test_a_shape_seen_from_4_to_8_s_on_a_udp_stream_is_one_event_with_its_times(tiny_model, thresholds, tmp_path):
    enter, leave = thresholds
    port = _port()
    proc = _watch(tmp_path / "home", tiny_model, _url(port), "--fps", "5", "--threshold", f"{enter:.4f}",
                  "--exit-threshold", f"{leave:.4f}", "--min-seconds", "0.5", "--max-seconds", "25")
    _wait_watching(proc)
    time.sleep(0.5)  # the socket is bound once av.open runs
    publisher = start_publisher(port, 11.0, [("red", "circle", 4.0, 8.0)])
    publisher.wait(timeout=60)
    time.sleep(6)  # the watcher notices the stream is gone (its read timeout), then Ctrl-C
    proc.send_signal(2)
    events, err = _finish(proc)
    assert len(events) == 1, (events, err)
    event = events[0]
    assert set(event) == {"source", "name", "prompt", "start", "end", "peak_score", "peak_softmax", "started_at",
                          "ended_at", "thumbnail", "clip"}
    assert event["clip"] is None  # no --record
    # seconds since the watcher's first decoded frame: the publisher's 0 s, give or take its first keyframe
    assert abs(event["start"] - 4.0) <= 1.0 and abs(event["end"] - 8.0) <= 1.0, event
    assert event["peak_score"] >= enter and event["prompt"] == PROMPT and event["name"] == f"127.0.0.1:{port}"
    assert event["started_at"] < event["ended_at"] and event["started_at"].endswith("Z")
    thumb = Path(event["thumbnail"])
    assert thumb.is_file() and (tmp_path / "home").resolve() in thumb.resolve().parents
    assert thumb.read_bytes()[:2] == b"\xff\xd8"  # a JPEG
    assert "stopped: 1 event(s)" in err


@pytest.mark.slow
def test_a_threshold_above_every_score_gives_no_event(tiny_model, tmp_path):
    port = _port()
    proc = _watch(tmp_path / "home", tiny_model, _url(port), "--fps", "5", "--threshold", "1.0", "--max-seconds",
                  "9")
    _wait_watching(proc)
    time.sleep(0.5)
    start_publisher(port, 5.0, [("red", "circle", 1.0, 4.0)]).wait(timeout=60)
    events, err = _finish(proc)
    assert events == [] and "stopped: 0 event(s)" in err
    assert " 0 frames" not in err  # frames were read and scored: the stream was there


@pytest.mark.slow
def test_the_publisher_restarting_mid_stream_keeps_times_monotonic_and_events_coming(tiny_model, thresholds,
                                                                                      tmp_path):
    enter, leave = thresholds
    port = _port()
    proc = _watch(tmp_path / "home", tiny_model, _url(port), "--fps", "5", "--threshold", f"{enter:.4f}",
                  "--exit-threshold", f"{leave:.4f}", "--min-seconds", "0.5", "--max-seconds", "40")
    _wait_watching(proc)
    time.sleep(0.5)
    first = start_publisher(port, 4.0, [("red", "circle", 1.0, 3.0)])
    first.wait(timeout=60)
    time.sleep(7)  # longer than the watcher's read timeout: it gives up on the connection and reconnects
    # its clock starts at 0 again; the circle comes late enough that a slow start of this process loses nothing
    second = start_publisher(port, 6.0, [("red", "circle", 2.5, 4.5)])
    second.wait(timeout=60)
    time.sleep(6)
    proc.send_signal(2)
    events, err = _finish(proc)
    assert len(events) == 2, (events, err)
    a, b = events
    assert abs(a["start"] - 1.0) <= 1.0 and abs(a["end"] - 3.0) <= 1.0, a
    # times go on after the gap instead of starting over at the second publisher's 0
    assert b["start"] > a["end"] + 5, (a, b)
    # the circle was there 2 s (frames decoded in a burst just after connecting may be dropped as stale)
    assert abs(b["end"] - b["start"] - 2.0) <= 1.0, b
    assert "reconnect" in err, err


def test_a_model_that_falls_behind_drops_frames_and_the_queue_stays_bounded(tiny_model):
    encoder = load_encoder(str(tiny_model), device="cpu", inference="torch")
    port = _port()
    stop = threading.Event()
    source = Source(_url(port), fps=100, decode_size=encoder.decode_size, stop=stop).start()
    time.sleep(0.5)
    publisher = start_publisher(port, 3.0, [("red", "circle", 0.0, 3.0)], fps=25)
    time.sleep(2.5)  # nobody reads the queue: a model stalled for 2.5 s
    got = []
    while not source.frames.empty():
        got.append(source.frames.get_nowait())
    publisher.wait(timeout=30)
    stop.set()
    source.join(15)
    assert source.done
    stats = source.stats
    assert stats.dropped > 0 and stats.max_queue <= QUEUE_FRAMES, stats
    assert len(got) <= QUEUE_FRAMES
    assert all(isinstance(f.t, float) and f.rgb.dtype == np.uint8 for f in got if f is not None)


def test_a_file_that_is_not_a_video_fails_alone_with_a_message(tiny_model, tmp_path):
    bad = tmp_path / "camera.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    for target, message in ((bad, "not a video FFmpeg can read"), (tmp_path / "missing.mp4", "no such file")):
        proc = _watch(tmp_path / "home", tiny_model, str(target))
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 1 and out == "", err
        assert message in err and "Traceback" not in err, err


def test_a_password_in_the_url_is_never_shown(tiny_model, tmp_path):
    assert redact("rtsp://admin:s3cret@10.0.0.2:554/stream1?x=1") == "rtsp://***@10.0.0.2:554/stream1?x=1"
    assert redact("udp://127.0.0.1:5000") == "udp://127.0.0.1:5000" and redact("clip.mp4") == "clip.mp4"
    assert default_name("rtsp://admin:s3cret@10.0.0.2:554/stream1") == "10.0.0.2:554/stream1"
    assert default_name("/videos/door.mp4") == "door"
    # a password with an unescaped / or :, a scheme not in the list, secrets in the query
    assert redact("rtsp://admin:pa/ss:x@cam:554/s") == "rtsp://***@cam:554/s"
    assert default_name("tcp://user:pass@10.0.0.2:1234") == "10.0.0.2:1234"
    assert redact("https://cam/live.m3u8?user=me&password=hunter2&token=abc&q=1") == \
        "https://cam/live.m3u8?user=me&password=***&token=***&q=1"
    # nothing answers here: the watcher retries, and says so, for as long as it runs
    proc = _watch(tmp_path / "home", tiny_model, f"udp://viewer:s3cret@127.0.0.1:{_port()}?timeout=1000000",
                  "--max-seconds", "4")
    out, err = proc.communicate(timeout=120)
    assert "s3cret" not in out + err and "viewer" not in out + err, err
    assert "***@127.0.0.1" in err


def _ev(prompt: str, t: float, score: float, softmax: float) -> Event:
    return Event("src", "src", prompt, t, None, score, softmax, "2026-12-04T00:00:00.000Z", None)


def test_hysteresis_opens_at_the_threshold_closes_below_the_exit_and_not_before_min_seconds():
    tracker = PromptTracker("p", Thresholds(0.3, 0.2, 1.0), smooth_seconds=0)  # no smoothing: the rules alone
    frame = np.zeros((2, 2, 3), np.uint8)
    scores = [0.1, 0.29, 0.31, 0.25, 0.21, 0.19, 0.35, 0.1, 0.1, 0.1, 0.1]  # one sample every 0.5 s
    log = []
    for i, score in enumerate(scores):
        started, ended = tracker.update(i * 0.5, score, 0.9, frame, _ev)
        log += [("start", started.start)] if started else []
        log += [("end", ended.event.start, ended.event.end, ended.event.peak_score)] if ended else []
    # opens at 1.0 s (0.31); 0.25 and 0.21 are above the exit; 0.19 at 2.5 s closes it (open 1.5 s >= 1 s);
    # 0.35 at 3.0 s opens another, whose drop at 3.5 s must wait until it has been open 1 s (4.0 s)
    assert log == [("start", 1.0), ("end", 1.0, 2.5, 0.31), ("start", 3.0), ("end", 3.0, 4.0, 0.35)]
    assert tracker.close(9.0) is None


def test_smoothing_ignores_a_one_frame_flash():
    tracker = PromptTracker("p", Thresholds(0.3, 0.2, 0.0), smooth_seconds=0.5)
    frame = np.zeros((2, 2, 3), np.uint8)
    opened = [tracker.update(i * 0.2, 0.5 if i == 5 else 0.1, 0.5, frame, _ev)[0] for i in range(12)]
    assert opened == [None] * 12  # one frame at 0.5 among 0.1s: the smoothed score stays below 0.3
    opened = [tracker.update(3 + i * 0.2, 0.5, 0.5, frame, _ev)[0] for i in range(5)]
    assert any(opened)  # held for a second, it opens


def test_thresholds_must_be_in_order():
    with pytest.raises(LiveError, match="exit threshold"):
        Thresholds(0.2, 0.3)


def test_a_file_is_read_whole_without_drops_and_times_follow_its_timestamps(tiny_model, tmp_path):
    from tests.videos import write_video

    clip = write_video(tmp_path / "clip.mp4", seconds=4.0, fps=10)
    encoder = load_encoder(str(tiny_model), device="cpu", inference="torch")
    source = Source(str(clip), fps=2, decode_size=encoder.decode_size).start()
    times = []
    while (frame := source.frames.get(timeout=30)) is not None:
        times.append(frame.t)
        time.sleep(0.05)  # a slow model: a file waits for it
    assert source.stats.dropped == 0 and source.stats.state == "ended"
    assert times == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5], abs=0.06), times


def test_a_file_that_ends_while_the_prompt_is_seen_gives_one_event_closed_at_its_end(tiny_model, thresholds,
                                                                                      tmp_path):
    from ingest.live import Watched, Watcher
    from tests.videos import write_video

    enter, leave = thresholds
    frames = [render_frame("red", "circle", SIZE, jitter=i % 7) if i >= 10 else np.zeros((SIZE, SIZE, 3), np.uint8)
              for i in range(40)]  # black for 1 s, then the circle until the end at 4 s
    clip = write_video(tmp_path / "ends.mp4", frames, fps=10)
    encoder = load_encoder(str(tiny_model), device="cpu", inference="torch")
    watcher = Watcher(encoder, tmp_path / "live")
    watcher.add(Watched(Source(str(clip), fps=10, decode_size=encoder.decode_size), [PROMPT],
                        Thresholds(enter, leave, 0.5)))
    events = watcher.run(threading.Event())
    assert len(events) == 1, events
    assert abs(events[0].start - 1.0) <= 0.5 and events[0].end == pytest.approx(3.9, abs=0.11), events
    assert Path(events[0].thumbnail).is_file()


@pytest.mark.slow
def test_record_puts_the_events_clip_into_the_library_where_search_finds_it(tiny_model, thresholds, tmp_path):
    from ingest.runtime import Runtime
    from ingest.worker import Worker
    from schema.settings import Settings

    enter, leave = thresholds
    home, port = tmp_path / "home", _port()
    proc = subprocess.Popen([*vidsearch_cmd(), "watch", _url(port), "--prompt", PROMPT, "--json", "--record",
                             "--name", "porch", "--fps", "5", "--threshold", f"{enter:.4f}", "--exit-threshold",
                             f"{leave:.4f}", "--min-seconds", "0.5", "--max-seconds", "30"],
                            env=cli_env(home, tiny_model), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_watching(proc)
    time.sleep(0.5)
    start_publisher(port, 14.0, [("red", "circle", 4.0, 8.0)]).wait(timeout=60)
    proc.send_signal(2)
    events, err = _finish(proc)
    assert len(events) == 1 and events[0]["clip"], (events, err)
    assert "1 clip(s) queued for the library, tagged 'porch'" in err, err

    env = cli_env(home, tiny_model)
    settings = Settings(home=home, model=str(tiny_model), frames=int(env["VIDSEARCH_FRAMES"]), experts="")
    runtime = Runtime(settings)
    try:
        (video,) = runtime.catalog.list_videos()
        assert video.tag == "porch" and video.title.startswith("porch ")
        with Worker.from_settings(runtime.catalog, runtime.store, runtime.encoder, settings) as worker:
            results = worker.run_until_empty()
        assert [r.ok for r in results] == [True], [r.error for r in results]
        video = runtime.catalog.get_video(video.id)
        # from up to 5 s before the start (the keyframe before) to 3 s after the end: 4-8 s seen -> about 7-12 s
        assert 6.0 <= video.duration <= 13.0, video.duration
    finally:
        runtime.close()
    found = subprocess.run([*vidsearch_cmd(), "search", PROMPT, "--tag", "porch", "--json"], env=env,
                           capture_output=True, text=True, timeout=180)
    assert found.returncode == 0, found.stderr
    assert [r["video_id"] for r in json.loads(found.stdout)] == [video.id]


@pytest.mark.slow
def test_a_live_hls_playlist_over_http_gives_its_event(tiny_model, thresholds, tmp_path):
    from tests.streams import http_folder, publish_hls

    enter, leave = thresholds
    folder = tmp_path / "hls"
    folder.mkdir()
    with http_folder(folder) as base:
        # started before the playlist exists: the first answers are 404s, retried until it is there
        proc = _watch(tmp_path / "home", tiny_model, f"{base}/live.m3u8", "--fps", "5", "--threshold", f"{enter:.4f}",
                      "--exit-threshold", f"{leave:.4f}", "--min-seconds", "0.5", "--max-seconds", "40")
        _wait_watching(proc)
        publisher = threading.Thread(target=publish_hls, args=(folder, 12.0, [("red", "circle", 4.0, 8.0)]))
        publisher.start()
        publisher.join(60)
        time.sleep(3)
        proc.send_signal(2)
        events, err = _finish(proc)
    assert len(events) == 1, (events, err)
    assert abs(events[0]["start"] - 4.0) <= 1.0 and abs(events[0]["end"] - 8.0) <= 1.0, events
