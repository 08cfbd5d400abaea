"""Many workers, as on many hosts: four real `vidsearch worker` processes, each with its own worker identity and
scratch folder, over one real PostgreSQL catalog, one Milvus endpoint (a Milvus Lite server) and one shared store
(S3: moto's server on 127.0.0.1; each worker decodes from its own cache).
One is SIGKILLed mid-job, one paused (SIGSTOP) past its lease and resumed; every video ends processed once, with one
copy of its vectors, and `vidsearch doctor` finds nothing to repair."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from ingest.library import enqueue_file
from schema.catalog import Catalog, Job, JobState, VideoStatus, select
from schema.settings import Settings
from schema.storage import open_storage
from schema.vectors import MilvusVectorStore
from tests.conftest import cli_env
from tests.procs import vidsearch_cmd
from tests.videos import COLOURS, SHAPES, render_frame, write_video

LEASE = 4.0  # seconds: long enough for a busy 2-core machine to renew (every third of it), short for the test


def _clips(folder: Path, n: int) -> list[Path]:
    folder.mkdir()
    colours = list(COLOURS)
    return [write_video(folder / f"clip{i:02d}.mp4", [render_frame(colours[i % len(colours)], SHAPES[i % 3], 96,
                                                                   jitter=i * 31 + k) for k in range(24)], fps=8)
            for i in range(n)]


def _running(catalog: Catalog, worker: str) -> Job | None:
    with catalog.sessions() as s:
        return s.scalar(select(Job).where(Job.state == JobState.RUNNING, Job.worker.startswith(f"{worker}:")))


def _wait(what: str, check, timeout: float, logs: list[Path], poll: float = 0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (found := check()) is not None and found is not False:
            return found
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}\n" + "\n".join(f"--- {p.name}\n{p.read_text()[-2500:]}"
                                                                       for p in logs))


@pytest.mark.slow
def test_four_workers_share_one_queue_through_a_kill_and_a_pause(tmp_path, tiny_model, milvus_uri, postgres_url,
                                                                 s3_bucket):
    collection = f"w_{uuid.uuid4().hex[:8]}"
    store = f"s3://{s3_bucket.name}/videos"  # (the AWS credentials s3fs reads are in the environment: s3_bucket)
    common = {"VIDSEARCH_DATABASE_URL": postgres_url, "VIDSEARCH_MILVUS_URI": milvus_uri,
              "VIDSEARCH_COLLECTION": collection, "VIDSEARCH_LEASE_SECONDS": str(LEASE), "VIDSEARCH_CLAIM_SIZE": "1",
              "VIDSEARCH_DECODE_WORKERS": "1", "VIDSEARCH_STORAGE": store,
              "VIDSEARCH_S3_ENDPOINT_URL": s3_bucket.endpoint}
    library = Settings(home=tmp_path / "uploader", database_url=postgres_url, storage=store,
                       s3_endpoint_url=s3_bucket.endpoint)
    library.ensure_dirs()
    catalog = Catalog(postgres_url)
    storage = open_storage(library)
    videos = [enqueue_file(catalog, library, clip, storage=storage).video_id for clip in _clips(tmp_path / "clips", 16)]
    assert len(s3_bucket.keys()) == len(videos)

    procs: dict[str, subprocess.Popen] = {}
    logs: list[Path] = []
    for i in range(4):
        name, log = f"w{i}", tmp_path / f"w{i}.log"
        env = cli_env(tmp_path / f"scratch{i}", tiny_model, VIDSEARCH_WORKER_ID=name, **common)
        with open(log, "w") as out:
            procs[name] = subprocess.Popen([*vidsearch_cmd(), "worker"], env=env, stdout=out,
                                           stderr=subprocess.STDOUT, start_new_session=True)
        logs.append(log)
    try:
        # w0 dies mid-job (SIGKILL, with its decode process): no pid check reaches another identity, so the job
        # waits out its lease, then another worker finishes it.
        killed = _wait("a job of w0 running", lambda: _running(catalog, "w0"), 240, logs)
        os.killpg(procs["w0"].pid, signal.SIGKILL)
        procs["w0"].wait()
        # w1 freezes mid-job past its lease (a stalled VM, a long GC pause), then comes back.
        paused = _wait("a job of w1 running", lambda: _running(catalog, "w1"), 240, logs)
        os.killpg(procs["w1"].pid, signal.SIGSTOP)
        status = subprocess.run([*vidsearch_cmd(), "status", "--json"], capture_output=True, text=True, timeout=120,
                                env=cli_env(tmp_path / "scratch3", tiny_model, **common))
        listed = {w["worker"] for w in json.loads(status.stdout)["workers"]}
        # (Unless the lease already ran out and another worker took the job while status started.)
        assert paused.worker in listed or catalog.get_job(paused.id).lease > paused.lease, status.stdout
        taken = _wait("w1's job taken over and done", lambda: (job := catalog.get_job(paused.id)).state
                      is JobState.DONE and job, 120, logs, poll=0.2)
        assert not taken.worker.startswith("w1:") and taken.lease > paused.lease
        os.killpg(procs["w1"].pid, signal.SIGCONT)
        _wait("every video ready", lambda: all(v.status is VideoStatus.READY for v in catalog.list_videos()), 240,
              logs, poll=0.2)
        time.sleep(LEASE)  # w1 has renewed (or tried to write) since it woke, and found its job taken
        assert "taken over by another worker" in (tmp_path / "w1.log").read_text()
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGCONT)
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)

    jobs = {j.video_id: j for j in (catalog.get_job(i) for i in range(1, len(videos) + 1))}
    assert all(j.state is JobState.DONE for j in jobs.values()), {v: j.state for v, j in jobs.items()}
    assert jobs[killed.video_id].worker.split(":")[0] not in ("w0", None)
    assert jobs[paused.video_id].worker == taken.worker  # w1, awake again, did not finish over its successor
    # Each video exactly once: one done job each, one vector each, and each segment once.
    with catalog.sessions() as s:
        assert sorted(s.scalars(select(Job.video_id))) == sorted(videos)
    store = MilvusVectorStore.attach(Settings(home=tmp_path / "scratch2", milvus_uri=milvus_uri,
                                              collection=collection))
    assert store.vector_counts() == {v: 1 for v in videos}
    for video_id, segments in store.segments(videos).items():
        assert len(segments.starts) == len(set(segments.starts.tolist())), video_id
    catalog.close()

    env = cli_env(tmp_path / "scratch2", tiny_model, **common)
    doctor = subprocess.run([*vidsearch_cmd(), "doctor", "--json"], env=env, capture_output=True, text=True,
                            timeout=300)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert json.loads(doctor.stdout)["findings"] == []
