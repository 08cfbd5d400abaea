"""`vidsearch evaluate --json` on a small corpus: every figure it promises is present and sane (no wall-clock
assertions: timings only have to be positive)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import cli_env
from tests.procs import vidsearch_cmd
from tests.speech_clips import have_festival

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not have_festival(), reason="needs festival's text2wave (scripts/test.sh installs it)")


def recall(fig: dict) -> tuple[float, float]:
    r1, r5 = fig["recall_at_1"], fig["recall_at_5"]
    assert 0.0 <= r1 <= r5 <= 1.0 and fig["queries"] > 0, fig
    return r1, r5


@pytest.mark.slow
def test_evaluate_reports_every_figure(tmp_path, tiny_model):
    env = cli_env(tmp_path / "home", tiny_model, VIDSEARCH_EVALUATE_MINIMUMS="test")
    del env["VIDSEARCH_EXPERTS"]  # the evaluation runs the default experts whatever the environment says
    env["PYTHONPATH"] = str(ROOT)  # this checkout's code, even when the console script was installed from another
    proc = subprocess.run([*vidsearch_cmd(), "evaluate", "--json", "--clips", "12", "--queries-per-kind", "8",
                           "--model", str(tiny_model), "--long-minutes", "2"],
                          env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)  # one JSON document, nothing else on stdout

    assert report["corpus"]["clips"] == 12 and report["corpus"]["speech_clips"] == 4
    assert report["queries"] == {"per_kind": 8, "tuning": 12, "held_out": 12}
    rec = report["recall"]
    assert {"appearance", "speech", "text", "fused"} <= set(rec)
    for mode, figures in rec.items():
        for kind in ("appearance", "speech", "text", "mixed"):
            recall(figures[kind])
        assert figures["mixed"]["queries"] == 12, mode
    # Each expert finds its own kind of query, and fusion keeps what each one found.
    assert recall(rec["fused"]["speech"])[0] > recall(rec["appearance"]["speech"])[0]
    assert recall(rec["fused"]["text"])[0] > recall(rec["appearance"]["text"])[0]
    assert recall(rec["speech"]["speech"])[0] > recall(rec["speech"]["text"])[0]
    assert recall(rec["text"]["text"])[0] > recall(rec["text"]["speech"])[0]
    assert recall(rec["appearance"]["appearance"])[0] > recall(rec["speech"]["appearance"])[0]
    assert recall(rec["fused"]["mixed"])[0] > max(recall(rec[m]["mixed"])[0] for m in ("appearance", "speech", "text"))
    goals = report["goals"]
    assert isinstance(goals["fused_beats_best_single_on_mixed"], bool)
    assert goals["appearance_queries"] == rec["appearance"]["appearance"]["queries"]

    tuning = report["tuning"]
    assert tuning["points"] >= 48 and {"speech", "text", "z0"} <= set(tuning["chosen"])
    assert 0 <= tuning["chosen"]["mixed_r1"] <= 1 and 0 <= tuning["defaults"]["mixed_r1"] <= 1
    ingest = report["ingest"]
    assert ingest["video_minutes"] > 0
    assert ingest["speech_recognizer"].startswith("pocketsphinx (English")  # offline: no Whisper to load
    for expert in ("appearance", "speech", "text"):
        assert ingest[expert]["s_per_video_minute"] > 0, expert
    assert ingest["speech"]["runs"].get("done", 0) == report["corpus"]["with_speech"]
    assert ingest["text"]["runs"].get("done", 0) == report["corpus"]["with_text"]
    for label in ("appearance_only", "with_experts"):
        assert report["latency"][label]["p95_ms"] >= report["latency"][label]["p50_ms"] > 0
    memory = report["memory"]
    assert memory["long_minutes"] == 2
    for expert in ("speech", "text"):
        m = memory[expert]
        assert m["rss_long_mb"] > 0 and m["rss_short_mb"] > 0 and m["segments_long"] >= 2
        assert m["ratio"] == pytest.approx(m["rss_long_mb"] / m["rss_short_mb"], rel=1e-2)
    assert not (tmp_path / "home").exists() or not any((tmp_path / "home").iterdir())  # worked in a temp dir
