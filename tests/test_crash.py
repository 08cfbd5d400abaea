"""Fault injection: a real worker process is killed with SIGKILL at random moments of a real ingest, again and again.

After a restart every clip is searchable exactly once: 0 lost, 0 duplicated, 0 orphan vectors."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import pytest

from schema.catalog import VideoStatus
from tests.conftest import cli_env
from tests.test_cli import Cli
from tests.videos import COLOURS, SHAPES, render_frame, write_video
from tests.zygote import Forked, Zygote

TRIALS = 20
CLIPS_PER_TRIAL = 4


def _start_worker(zygote: Zygote, home: Path, model: Path, log: Path) -> Forked:
    # A real `vidsearch worker` process in its own session (so the kill takes everything), forked from a process
    # that has imported vidsearch already: 21 lives would otherwise spend minutes importing torch. Threads decode
    # here: the property under test is the worker's write order, and decode processes would only add start-up time.
    return zygote.spawn(["worker"], cli_env(home, model, VIDSEARCH_DECODE_MODE="thread"), log)


def _wait_for(log: Path, text: str, count: int, proc: Forked, timeout: float = 180) -> float:
    start = time.monotonic()
    while log.read_text(errors="replace").count(text) < count:
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() - start < timeout, f"no {text!r} in the worker's log"
        time.sleep(0.02)
    return time.monotonic() - start


def _unique_clip(path: Path, n: int) -> Path:
    colour, shape = list(COLOURS)[n % len(COLOURS)], SHAPES[n % len(SHAPES)]
    return write_video(path, [render_frame(colour, shape, 64, jitter=1000 * n + k + 1) for k in range(8)], fps=8)


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_and_duplicates_nothing(tmp_path, tiny_model, zygote):
    from ingest.library import enqueue_file
    from schema.catalog import Catalog
    from schema.settings import Settings

    home, log = tmp_path / "home", tmp_path / "worker.log"
    settings = Settings(home=home, model=str(tiny_model))
    settings.ensure_dirs()
    catalog = Catalog(settings.catalog_url)
    cli = Cli(home, tiny_model, zygote)
    rng = random.Random(20261123)  # a fixed schedule, so a failure can be replayed
    sources: list[Path] = []
    (tmp_path / "in").mkdir()

    def add_clips(trial: int) -> None:
        for i in range(CLIPS_PER_TRIAL):
            clip = _unique_clip(tmp_path / "in" / f"t{trial:02d}_{i}.mp4", trial * CLIPS_PER_TRIAL + i)
            assert enqueue_file(catalog, settings, clip).job_id is not None
            sources.append(clip)

    try:
        # Calibration: how long a worker takes, once ready, to finish one trial's clips on this machine.
        add_clips(-1)
        worker = _start_worker(zygote, home, tiny_model, log)
        _wait_for(log, "worker ready", 1, worker)
        busy = _wait_for(log, "done: video", CLIPS_PER_TRIAL, worker)
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)

        finished_between_kills = []
        for trial in range(TRIALS):
            add_clips(trial)  # every kill lands on a worker with work to do
            jobs = catalog.job_counts()
            pending = jobs["queued"] + jobs["running"]
            done_before = log.read_text().count("done: video")
            worker = _start_worker(zygote, home, tiny_model, log)
            _wait_for(log, "worker ready", trial + 2, worker)
            # Anywhere in the time the pending work takes (and a little after): claim, decode, embed, the Milvus
            # write, the catalog commit, or idle. A restart first retries the dead worker's jobs one at a time, each
            # in a decode process of its own (slow to start), so half the kills wait until the restart has finished
            # a video: the later, batched writes get hit too.
            if rng.random() < 0.5:
                _wait_for(log, "done: video", done_before + 1, worker)
            time.sleep(rng.uniform(0.0, 1.3 * busy * pending / CLIPS_PER_TRIAL))
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
            finished_between_kills.append(log.read_text().count("done: video") - done_before)

        worker = _start_worker(zygote, home, tiny_model, log)  # the restart: recovers the dead workers' jobs
        deadline = time.monotonic() + 300
        while (counts := catalog.job_counts())["queued"] or counts["running"]:
            assert worker.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)

        videos = json.loads(cli("list", "--json").stdout)
        assert sorted(v["title"] for v in videos) == sorted(p.name for p in sources)  # 0 lost, 0 duplicate rows
        assert {v["status"] for v in videos} == {VideoStatus.READY.value}, [v for v in videos if v["error"]]
        assert catalog.job_counts()["failed"] == 0

        from ingest.runtime import Runtime

        runtime = Runtime(settings)
        try:
            vectors = runtime.store.vector_counts()
            segments = runtime.store.segment_counts()
        finally:
            runtime.close()
        assert vectors == {v["video_id"]: 1 for v in videos}  # exactly one vector each, no orphans
        assert segments == {v["video_id"]: 4 for v in videos}  # one per sampled frame, none twice, no orphans
        assert "All consistent" in cli("doctor").stdout
        hit = json.loads(cli("search", "a red circle", "--json", "-k", "1").stdout)
        assert hit and hit[0]["title"] in {p.name for p in sources}
        # The schedule must really have hit work in progress (and not only before the first write).
        assert sum(1 for n in finished_between_kills if n == 0) >= TRIALS // 4, finished_between_kills
        assert sum(1 for n in finished_between_kills if n > 0) >= TRIALS // 4, finished_between_kills
        print(f"\n{TRIALS} kills (busy {busy:.2f} s); videos finished between kills: {finished_between_kills}")
    finally:
        catalog.close()
        cli.stop()


SEGFAULT_INJECTION = Path(__file__).parent / "segfault"  # its sitecustomize crashes the decoding of one file


@pytest.mark.slow
def test_a_file_that_kills_its_worker_fails_alone_and_the_rest_is_ingested(tmp_path, tiny_model, clips_dir):
    """Decoding in threads, a file that crashes the decoder kills the whole worker. The next worker (a service
    manager restarts it) retries the dead worker's jobs one at a time, each in a decode process of its own: the
    crashing file fails after VIDSEARCH_MAX_CRASHES crashes, with a reason, and every other file is ingested. Before,
    each restart claimed the batch again and died again, for ever."""
    import subprocess

    from ingest.library import enqueue_file, sha256_file
    from schema.catalog import Catalog, JobState
    from schema.settings import Settings
    from tests.procs import vidsearch_cmd

    home, log = tmp_path / "home", tmp_path / "worker.log"
    settings = Settings(home=home, model=str(tiny_model))
    settings.ensure_dirs()
    catalog = Catalog(settings.catalog_url)
    crasher = _unique_clip(tmp_path / "damaged.mp4", 99)
    good = [clips_dir / "red_circle.mp4", clips_dir / "green_square.webm", clips_dir / "blue_triangle.mkv"]
    jobs = {p.name: enqueue_file(catalog, settings, p).job_id for p in [good[0], crasher, *good[1:]]}
    env = cli_env(home, tiny_model, VIDSEARCH_DECODE_MODE="thread", VIDSEARCH_MAX_CRASHES="2",
                  VIDSEARCH_TEST_SEGFAULT_ON=sha256_file(crasher)[:16],
                  PYTHONPATH=os.pathsep.join([str(SEGFAULT_INJECTION), os.environ.get("PYTHONPATH", "")]))
    deaths = []
    try:
        deadline = time.monotonic() + 300
        while (counts := catalog.job_counts())["queued"] or counts["running"]:
            assert len(deaths) < 4, f"the worker keeps dying: {deaths}\n{log.read_text()[-3000:]}"
            with open(log, "a") as out:  # a service manager restarting the worker each time it dies
                worker = subprocess.Popen([*vidsearch_cmd(), "worker"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True)
            while worker.poll() is None and ((counts := catalog.job_counts())["queued"] or counts["running"]):
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.2)
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                worker.wait(timeout=60)
            else:
                deaths.append(worker.returncode)
        assert deaths == [-signal.SIGSEGV]  # the first worker only: later crashes took a decode process instead

        by_job = {name: catalog.get_job(job_id) for name, job_id in jobs.items()}
        assert all(by_job[p.name].state is JobState.DONE for p in good), by_job
        failed = by_job[crasher.name]
        assert failed.state is JobState.FAILED and failed.crashes == 2, vars(failed)
        assert "the decoder crashed on this file" in failed.error and "2 times" in failed.error, failed.error
        video = catalog.get_video(failed.video_id)
        assert video.status is VideoStatus.FAILED and video.error == failed.error
        text = log.read_text()
        assert "queued again, to be retried one at a time" in text
        assert "will be retried alone" in text and text.count("done: video") == len(good)
    finally:
        catalog.close()
        Cli(home, tiny_model)("milvus", "stop", expect=None)
