"""Load: >= 20 concurrent clients search a real `vidsearch serve` over loopback HTTP while its worker ingests real
encoded clips; no request may fail. Figures are checked for shape only, never for speed."""

from __future__ import annotations

import json
import subprocess

import pytest

from schema.settings import Settings
from search_app.loadtest import ClipSpec, format_report, run_self_contained, summarize, to_json
from tests.conftest import cli_env
from tests.procs import free_port, vidsearch_cmd

CLIENTS = 20


@pytest.mark.slow
def test_searches_under_load_while_ingesting(random_model, monkeypatch):
    # The server reads its settings from the environment, like `vidsearch serve`; conftest cleared VIDSEARCH_*.
    monkeypatch.setenv("VIDSEARCH_FRAMES", "4")
    monkeypatch.setenv("VIDSEARCH_BATCH_SIZE", "16")
    report = run_self_contained(Settings(model=str(random_model)), clients=CLIENTS, seconds=5, videos=6,
                                clip=ClipSpec(width=160, height=96, seconds=2, fps=12))
    load, ingest = report.load, report.ingest

    assert load.errors == 0, load.error_samples
    assert load.clients == CLIENTS and load.target == "api" and load.url.startswith("http://127.0.0.1:")
    assert load.requests >= CLIENTS and load.throughput_rps > 0 and load.duration_s >= 5
    assert load.p50_ms is not None and load.p95_ms is not None and load.p99_ms is not None
    assert 0 < load.p50_ms <= load.p95_ms <= load.p99_ms <= load.max_ms

    assert ingest is not None and ingest.model == str(random_model)
    assert ingest.ready_at_start == 1 and ingest.queued == 6 and ingest.failed == 0
    assert ingest.ingested >= 1, ingest  # the worker made progress while the clients searched
    assert ingest.ingested + ingest.left == 6
    assert report.conditions["VIDSEARCH_CLAIM_SIZE"] == "1"  # the load test's default: ready video by video

    document = json.loads(to_json(report))
    assert document["errors"] == 0 and document["ingest"]["ingested"] == ingest.ingested
    assert any(line.startswith("latency   p50") for line in format_report(report))


def test_summary_percentiles_and_errors():
    result = summarize("http://x", "api", 2, 2.0, [10.0, 20.0, 30.0, 40.0], ["HTTP 503: busy", "HTTP 503: busy"])
    assert (result.requests, result.errors, result.throughput_rps) == (4, 2, 1.0)
    assert result.p50_ms == 25.0 and result.p50_ms <= result.p95_ms <= result.p99_ms <= result.max_ms == 40.0
    assert result.error_samples == ("HTTP 503: busy (x2)",)
    empty = summarize("http://x", "api", 1, 1.0, [], [])
    assert (empty.requests, empty.p50_ms, empty.throughput_rps) == (0, None, 0.0)


def test_cli_reports_an_unreachable_url_in_one_line(tmp_path, random_model):
    env = cli_env(tmp_path / "home", random_model)
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    proc = subprocess.run([*vidsearch_cmd(), "loadtest", "--url", url, "--seconds", "1"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith(f"Error: {url} is not reachable") and proc.stderr.count("\n") == 1
