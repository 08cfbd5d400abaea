"""`vidsearch bench --live`'s measurements, small: real UDP streams from its own publisher processes on 127.0.0.1,
scored by a real Watcher with the tiny CLIP. Figures are checked for sense, never for speed."""

from __future__ import annotations

import pytest

from ingest.encoder import load_encoder
from ingest.live import QUEUE_FRAMES
from search_app.bench_live import format_live, measure_overload, measure_streams


@pytest.mark.slow
def test_live_bench_measures_streams_and_an_overloaded_watcher(tiny_model, tmp_path):
    encoder = load_encoder(str(tiny_model), device="cpu", inference="torch")
    two = measure_streams(encoder, 2, 4.0, fps=5, publish_fps=10, size=64, folder=tmp_path / "s")
    assert two["streams"] == 2 and two["seconds"] >= 4.0
    assert 2.0 <= two["fps_per_stream"] <= 6.0, two  # sampled at 5/s from a 10 fps stream, scored as they come
    assert 0 < two["latency_ms_p50"] <= two["latency_ms_p95"], two
    over = measure_overload(encoder, (0.05, 0.1), size=64, folder=tmp_path / "o")
    assert over["read"] > 0 and over["max_queue"] <= QUEUE_FRAMES and over["dropped"] >= 0, over
    assert over["rss_mb_0.05min"] > 0 and over["rss_mb_0.1min"] > 0, over
    lines = format_live({"model": "tiny", "inference": "torch fp32", "streams": [two], "overload": over})
    assert len(lines) == 3 and "2 stream(s)" in lines[1] and "RSS 0.05min" in lines[2], lines
