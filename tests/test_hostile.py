"""Hostile input: every bad file fails alone with a clear reason, the worker keeps going, the good files get in."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from ingest.decode import DecodeError, Limits, probe
from ingest.decode_pool import DecodePool, DecodeRequest
from tests.hostile import write_corpus, write_good, write_slow_to_sample
from tests.test_cli import Cli


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, tuple[str, ...]], list[Path]]:
    folder = tmp_path_factory.mktemp("hostile")
    good = write_good(folder)
    return folder, write_corpus(folder, good[0]), good


def test_bad_files_fail_alone_and_good_ones_are_searchable(corpus, tiny_model, tmp_path, zygote):
    folder, expected, good = corpus
    cli = Cli(tmp_path / "home", tiny_model, zygote)
    # The product's 12 frames (12 seeks into the slow file: ~4 s of decoding) against a 1 s limit; a good clip
    # here decodes in well under 0.1 s.
    limits = {"VIDSEARCH_DECODE_TIMEOUT_SECONDS": "1", "VIDSEARCH_FRAMES": "12"}
    try:
        proc = cli("ingest", str(folder), "--wait", expect=1, **limits)  # some files failed: the exit says so
        reasons = {}
        for line in proc.stdout.splitlines():
            if line.startswith("  failed: "):
                source, _, reason = line.removeprefix("  failed: ").partition(": ")
                reasons[Path(source).name] = reason
        for name, phrases in expected.items():
            if name == "bitflipped.mp4" and name not in reasons:
                continue  # damage the decoder could conceal: then it was ingested, which is fine
            assert name in reasons, (name, proc.stdout)
            assert any(p in reasons[name] for p in phrases), (name, reasons[name])
        ingested = int(proc.stdout.split("Ingested: ")[1].split()[0])
        assert ingested == len(good) + int("bitflipped.mp4" not in reasons)

        status = {v["title"]: v["status"] for v in json.loads(cli("list", "--json").stdout)}
        assert all(status[g.name] == "ready" for g in good)
        assert status["slow_to_sample.mp4"] == "failed" and status["absurd_resolution.mp4"] == "failed"
        found = json.loads(cli("search", "a red circle", "--json", "-k", "1").stdout)
        assert found[0]["title"] == "good_red_circle.mp4"
    finally:
        cli.stop()


def test_limits_are_checked_on_the_header_with_a_clear_refusal(corpus):
    _, _, good = corpus
    with pytest.raises(DecodeError, match=r"64×64 pixels; the limit is 32 on the longer side"):
        probe(good[0], Limits(max_side=32))
    with pytest.raises(DecodeError, match=r"lasts 0:01; the limit is 0:00"):
        probe(good[0], Limits(max_duration=0.4))
    assert probe(good[0], Limits(max_side=64, max_duration=1.5)).width == 64


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:  # the thread ended after it was listed
            continue
    return out


def test_a_crashed_decoder_fails_its_file_and_the_pool_recovers(corpus, random_model, tmp_path):
    """A decode process that dies (an FFmpeg crash, the OOM killer: here SIGKILL) fails only its file."""
    from ingest.encoder import load_encoder

    _, _, good = corpus
    slow = write_slow_to_sample(tmp_path / "slow.mp4")
    prep = load_encoder(str(random_model), device="cpu").prep
    with DecodePool(DecodeRequest(prep, 4), workers=1, mode="process", timeout=None) as pool:
        assert not isinstance(pool.outcome(pool.submit(good[1])), str)  # the worker process is up
        future = pool.submit(slow)
        deadline = time.monotonic() + 30
        while not future.running() and time.monotonic() < deadline:  # a decoder has taken the file (~1 s of work)
            time.sleep(0.01)
        assert future.running()
        # Only the pool's spawned decoders: the session's Milvus Lite server is a child of this process too.
        victims = [c for c in _children(os.getpid()) if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()]
        assert len(victims) == 1
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        reason = pool.outcome(future)
        assert isinstance(reason, str) and "decoder crashed on this file" in reason, reason
        decoded = pool.outcome(pool.submit(good[0]))  # a fresh process took over
        assert decoded.info.width == 64 and decoded.pixels.shape[0] == 4
