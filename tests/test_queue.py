"""The queue for many workers on many hosts: fencing tokens, the database's clock, worker identities, and a worker
that lost its lease while it worked. On real SQLite and a real PostgreSQL server; the worker tests run the real
pipeline (PyAV, the tiny CLIP checkpoint, Milvus Lite)."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

import pytest

import schema.catalog as catalog_module
from ingest.library import enqueue_file
from ingest.worker import Worker
from schema.catalog import Catalog, ExpertState, Job, JobState, VideoStatus, select, worker_name


def _add(cat: Catalog, n: int) -> list[int]:
    return [cat.add_video(sha256=f"{i:064d}", title=f"v{i}", stored_path="/nowhere", size_bytes=1)[1].id
            for i in range(n)]


def test_every_claim_moves_the_fencing_token_and_a_stale_holder_can_do_nothing(catalog):
    [job_id] = _add(catalog, 1)
    [first] = catalog.claim_jobs(1, worker="host-a:1")
    assert catalog.renew({job_id: first.lease}) == {job_id}
    # host-a stops renewing (paused, cut off); past its lease the job is handed on and claimed again.
    assert catalog.recover(lease_seconds=0, max_attempts=3) == [job_id]
    [second] = catalog.claim_jobs(1, worker="host-b:1")
    assert second.lease == first.lease + 1
    stale = {job_id: first.lease}
    assert catalog.renew(stale) == set()
    assert catalog.finish_jobs([(job_id, {"duration": 1.0})], leases=stale) == set()
    assert not catalog.finish_job(job_id, "host-a failed it", stale)
    catalog.requeue_jobs([job_id], leases=stale)
    assert not catalog.crashed(job_id, "a crash seen by host-a", max_crashes=1, leases=stale)
    job = catalog.get_job(job_id)
    assert (job.state, job.worker, job.error, job.crashes) == (JobState.RUNNING, "host-b:1", None, 0)
    # The holder's own calls go through.
    assert catalog.finish_jobs([(job_id, {"duration": 2.5})], leases={job_id: second.lease}) == {job_id}
    assert catalog.get_video(job.video_id).status is VideoStatus.READY
    assert catalog.get_video(job.video_id).duration == 2.5


def test_expert_runs_are_fenced_too(catalog):
    [job_id] = _add(catalog, 1)
    [job] = catalog.claim_jobs(1)
    catalog.finish_jobs([(job_id, {})], experts=["speech"])
    [run] = catalog.claim_expert_runs(4, worker="host-a:1")
    assert catalog.recover_expert_runs(lease_seconds=0) == [run.id]
    [again] = catalog.claim_expert_runs(4, worker="host-b:1")
    assert again.id == run.id and again.lease == run.lease + 1
    assert catalog.renew_experts({run.id: run.lease}) == set()
    assert not catalog.finish_expert_run(run.id, ExpertState.DONE, segments=3, lease=run.lease)
    assert not catalog.retry_expert_run(run.id, "host-a's process died", 1, lease=run.lease)
    assert catalog.finish_expert_run(run.id, ExpertState.DONE, segments=2, lease=again.lease)
    assert catalog.expert_segment_counts("speech") == {job.video_id: 2}


def test_concurrent_claimers_never_share_a_job_and_none_comes_back_empty_while_jobs_wait(catalog_url):
    setup = Catalog(catalog_url)
    ids = _add(setup, 60)
    claims: list[list[tuple[int, int]]] = [[] for _ in range(6)]
    start = threading.Barrier(6)
    sizes: list[int] = []

    def claim(slot: int) -> None:
        cat = Catalog(catalog_url)  # an engine each, as separate hosts have
        start.wait()
        while jobs := cat.claim_jobs(4, worker=f"host-{slot}:1"):
            sizes.append(len(jobs))
            claims[slot] += [(j.id, j.lease) for j in jobs]
        cat.close()

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = sorted(j for c in claims for j, _ in c)
    assert everything == ids  # each job once: no two claimers took one, and no claimer stopped while some waited
    assert {lease for c in claims for _, lease in c} == {1}
    assert max(sizes) <= 4  # (PostgreSQL may run a LIMIT subquery of an UPDATE once per row: never more than asked)
    assert setup.job_counts()[JobState.RUNNING.value] == 60
    setup.close()


def test_leases_are_judged_by_the_database_clock(postgres_url, monkeypatch):
    """Two hosts whose clocks disagree by an hour: the PostgreSQL server's clock decides, so neither a fast host
    nor a slow one takes a job over early or keeps a dead one forever."""
    cat = Catalog(postgres_url)
    [job_id] = _add(cat, 1)
    real = catalog_module.utcnow
    monkeypatch.setattr(catalog_module, "utcnow", lambda: real() - timedelta(hours=1))  # a slow host claims
    [job] = cat.claim_jobs(1, worker="slow-host:1")
    monkeypatch.setattr(catalog_module, "utcnow", lambda: real() + timedelta(hours=1))  # a fast host looks
    assert cat.recover(lease_seconds=600, max_attempts=3) == []  # by its own clock the lease ended 50 min ago
    assert cat.get_job(job_id).state is JobState.RUNNING
    with cat.engine.begin() as conn:  # the lease really ends (by the server's clock): the fast host takes over
        conn.exec_driver_sql("UPDATE jobs SET updated_at = updated_at - interval '601 seconds'")
    assert cat.recover(lease_seconds=600, max_attempts=3) == [job.id]
    cat.close()


def test_status_lists_the_workers_holding_jobs(catalog):
    _add(catalog, 3)
    catalog.claim_jobs(2, worker="gpu-1:10")
    catalog.claim_jobs(1, worker="gpu-2:20")
    with catalog.sessions.begin() as s:  # gpu-2 last renewed 5 minutes ago
        job = s.scalar(select(Job).where(Job.worker == "gpu-2:20"))
        job.updated_at = job.started_at - timedelta(seconds=300)
    [first, second] = catalog.workers()
    assert (first["worker"], first["running"], second["worker"], second["running"]) == ("gpu-1:10", 2, "gpu-2:20", 1)
    assert first["renewed_s_ago"] < 60 and 299 < second["renewed_s_ago"] < 400


def test_a_dead_pid_is_judged_only_on_its_own_identity(catalog):
    """Containers share host names and pid numbers: a job of `node-b`'s pid 999999999 is not taken over by
    `node-a` before its lease ends, though no such pid runs here; `node-a`'s own dead pid is seen at once."""
    a, b = _add(catalog, 2)
    catalog.claim_jobs(1, worker="node-b:999999999")
    catalog.claim_jobs(1, worker="node-a:999999999")
    assert catalog.recover(lease_seconds=600, max_attempts=3, identity="node-a") == [b]
    assert catalog.get_job(a).state is JobState.RUNNING
    assert catalog.recover(lease_seconds=600, max_attempts=3, identity="node-b") == [a]
    assert worker_name("node-a").startswith("node-a:")


def test_worker_identity_and_lease_come_from_settings(settings):
    from schema.settings import Settings

    s = Settings(home=settings.home, worker_id="gpu-7", lease_seconds=9)
    assert (s.worker_id, s.lease_seconds) == ("gpu-7", 9)
    with pytest.raises(ValueError, match="worker_id"):
        Settings(home=settings.home, worker_id="has spaces")


# --- the real worker -------------------------------------------------------------------------------------------
def _worker(runtime, identity: str) -> Worker:
    return Worker.from_settings(runtime.catalog, runtime.store, runtime.encoder, runtime.settings.model_copy(
        update={"worker_id": identity, "lease_seconds": 3.0, "decode_mode": "thread"}), with_experts=False)


def _take_over(runtime, identity: str) -> None:
    """What another host does once this one's lease has expired: recover the job and run it to the end."""
    runtime.catalog.recover(lease_seconds=0, max_attempts=3)
    with _worker(runtime, identity) as successor:
        assert successor.run_until_empty()


def test_a_worker_that_lost_its_lease_before_writing_writes_nothing(runtime, clips_dir, caplog):
    video_id = enqueue_file(runtime.catalog, runtime.settings, clips_dir / "red_circle.mp4").video_id
    with _worker(runtime, "host-a") as a:
        jobs = runtime.catalog.claim_jobs(4, a.name)
        _take_over(runtime, "host-b")  # host-a was paused past its lease; host-b finished the job meanwhile
        with caplog.at_level(logging.WARNING):
            assert a.process(jobs) == []
    assert "taken over by another worker" in caplog.text
    job = runtime.catalog.jobs_for([video_id])[video_id]
    assert job.state is JobState.DONE and job.worker.startswith("host-b:") and job.lease == 2
    assert runtime.store.vector_counts() == {video_id: 1}


def test_a_worker_that_lost_its_lease_while_writing_takes_back_exactly_its_rows(runtime, clips_dir, caplog):
    video_id = enqueue_file(runtime.catalog, runtime.settings, clips_dir / "red_circle.mp4").video_id
    with _worker(runtime, "host-a") as a:
        jobs = runtime.catalog.claim_jobs(4, a.name)
        real_add = a.store.add

        def add_then_pause(*args, **kwargs):
            pks = real_add(*args, **kwargs)
            _take_over(runtime, "host-b")  # host-a paused between its insert and its finish
            return pks

        a.store = type("Paused", (), {"__getattr__": lambda _, n: getattr(runtime.store, n),
                                      "add": staticmethod(add_then_pause)})()
        with caplog.at_level(logging.WARNING):
            assert a.process(jobs) == []
    assert "this worker's rows of them are removed" in caplog.text
    assert runtime.store.vector_counts() == {video_id: 1}  # host-b's copy, alone
    segments = runtime.store.segments([video_id])[video_id]
    assert len(segments.starts) == len(set(segments.starts.tolist()))  # host-b's segments, once each
    assert runtime.catalog.jobs_for([video_id])[video_id].worker.startswith("host-b:")


def test_a_retry_after_a_crash_mid_write_leaves_one_copy(runtime, clips_dir):
    """An attempt that wrote its vectors and died before the catalog heard of it: the next attempt's rows replace
    them (removed after its finish, so a crash there leaves a duplicate, never a gap)."""
    video_id = enqueue_file(runtime.catalog, runtime.settings, clips_dir / "red_circle.mp4").video_id
    with _worker(runtime, "host-a") as a:
        a.run_until_empty()
    vector = runtime.store.fetch([video_id])[video_id]
    runtime.store.add([video_id], vector[None, :])  # what the crashed attempt left
    runtime.catalog.requeue_video(video_id)  # and the job runs again
    assert runtime.store.vector_counts() == {video_id: 2}
    with _worker(runtime, "host-b") as b:
        assert b.run_until_empty()
    assert runtime.store.vector_counts() == {video_id: 1}
