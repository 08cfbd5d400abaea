"""The `vidsearch` command as a user runs it: real subprocesses on the embedded default (Milvus Lite server)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import CLIPS, cli_env
from tests.procs import vidsearch_cmd
from tests.videos import write_video
from tests.zygote import Zygote

RESULT_KEYS = {"rank", "score", "video_id", "title", "path", "duration", "sha256", "moments", "experts"}


class Cli:
    """Runs `vidsearch` commands: forked from the session's zygote (see tests/zygote.py), or through the installed
    console script when none is given."""

    def __init__(self, home: Path, model: Path, zygote: Zygote | None = None) -> None:
        self.home, self.model, self.zygote = home, model, zygote
        self.env: dict[str, str] = {}  # for every command (e.g. the catalog's database)

    def __call__(self, *args: str, expect: int | None = 0, **env: str) -> subprocess.CompletedProcess:
        environment = cli_env(self.home, self.model, **{**self.env, **env})
        if self.zygote is not None:
            proc = self.zygote.run(list(args), environment, self.home.parent / "cli-output", timeout=300)
        else:
            proc = subprocess.run([*vidsearch_cmd(), *args], env=environment, capture_output=True, text=True,
                                  timeout=300)
        if expect is not None:
            assert proc.returncode == expect, f"{args} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    def stop(self) -> None:
        self("milvus", "stop", expect=None)


@pytest.fixture
def cli(tmp_path, tiny_model, zygote):
    runner = Cli(tmp_path / "home", tiny_model, zygote)
    yield runner
    runner.stop()


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_ingest_search_list_status_delete(cli, mixed_folder, database, request):
    if database == "postgresql":  # the same commands with the catalog on a real PostgreSQL server
        cli.env["VIDSEARCH_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    first = cli("ingest", str(mixed_folder), "--recursive", "--wait", expect=1)
    assert f"Ingested: {len(CLIPS)}" in first.stdout
    assert "failed: 1" in first.stdout and "broken.mp4" in first.stdout and "skipped (not video): 1" in first.stdout

    again = cli("ingest", str(mixed_folder / "clips" / "red_circle.mp4"), "--wait")
    assert "already present: 1" in again.stdout and "Ingested: 0" in again.stdout

    found = cli("search", "a red circle", "-k", "3", "--json")
    results = json.loads(found.stdout)  # nothing but one JSON document on stdout
    assert [set(r) for r in results] == [RESULT_KEYS] * 3
    assert results[0]["title"] == "red_circle.mp4" and results[0]["rank"] == 1
    assert results[0]["score"] >= results[1]["score"] >= results[2]["score"]
    assert Path(results[0]["path"]).is_file()
    [moment] = results[0]["moments"]  # a 1 s clip: one moment, all of it
    assert set(moment) == {"start", "end", "score", "frame", "expert", "text"} and moment["start"] == 0.0

    text = cli("search", "a blue triangle").stdout
    assert text.splitlines()[1].split()[-1] == "blue_triangle.mkv"
    assert "moments: 0:00-0:01 (" in text.splitlines()[3]

    listed = json.loads(cli("list", "--json").stdout)
    assert len(listed) == len(CLIPS)  # the broken file never became a video row: it failed at the content check
    assert [v["video_id"] for v in listed] == sorted(v["video_id"] for v in listed)  # oldest first
    assert json.loads(cli("list", "--json", "--limit", "2").stdout) == listed[:2]
    assert "--limit" in cli("list", "--limit", "0", expect=2).stderr
    status = json.loads(cli("status", "--json").stdout)
    assert status["jobs"]["done"] == len(CLIPS) and status["jobs"]["queued"] == 0
    assert status["vector_store"]["reachable"] is True and status["vector_store"]["vectors"] == len(CLIPS)

    victim = next(v for v in listed if v["title"] == "red_circle.mp4")
    assert "deleted" in cli("delete", str(victim["video_id"])).stdout
    assert not Path(victim["path"]).exists()
    after = json.loads(cli("search", "a red circle", "-k", "10", "--json").stdout)
    assert victim["video_id"] not in {r["video_id"] for r in after}
    assert len(after) == len(CLIPS) - 1

    missing = cli("delete", "987654", expect=1)
    assert "no video with id 987654" in missing.stderr


def test_failed_decode_is_reported_by_status(cli, tmp_path):
    # A real Matroska header followed by scrambled frame data: it passes the content check, then fails to decode
    # in the worker. It must fail alone, with its reason, while the good file beside it is ingested.
    source = write_video(tmp_path / "source.mkv", colour="red", shape="circle", seconds=1.0, fps=8)
    data = bytearray(source.read_bytes())
    # Everything after the first Cluster's header: scrambling from the middle of the file instead left a decodable
    # keyframe in some encodings (the Matroska header holds a random segment UID, so files differ run to run).
    for i in range(data.index(b"\x1f\x43\xb6\x75") + 16, len(data)):
        data[i] = (data[i] * 7 + 13) % 256
    broken = tmp_path / "scrambled.mkv"
    broken.write_bytes(bytes(data))
    good = write_video(tmp_path / "good.mp4", colour="green", shape="square", seconds=1.0, fps=8)
    result = cli("ingest", str(broken), str(good), "--wait", expect=1)
    assert "Ingested: 1" in result.stdout and "failed: 1" in result.stdout
    assert "scrambled.mkv: could not decode any frame" in result.stdout
    status = json.loads(cli("status", "--json").stdout)
    assert status["jobs"]["done"] == 1 and status["jobs"]["failed"] == 1
    assert status["failed"][0]["title"] == "scrambled.mkv"
    assert status["failed"][0]["error"].startswith("could not decode any frame")
    assert "scrambled.mkv" in cli("status").stdout


def test_other_model_is_refused_with_reindex_advice(cli, clips_dir, random_model):
    cli("ingest", str(clips_dir / "red_circle.mp4"), "--wait")
    refused = cli("search", "a red circle", expect=1, VIDSEARCH_MODEL=str(random_model))
    assert "vidsearch reindex" in refused.stderr and "Error:" in refused.stderr
    cli("reindex", "--yes", VIDSEARCH_MODEL=str(random_model))
    cli("ingest", str(clips_dir / "green_square.webm"), "--wait",
        VIDSEARCH_MODEL=str(random_model))
    results = json.loads(cli("search", "a red circle", "--json", VIDSEARCH_MODEL=str(random_model)).stdout)
    assert {r["title"] for r in results} == {"red_circle.mp4", "green_square.webm"}


def test_missing_model_is_one_clear_message(cli):
    proc = cli("search", "anything", expect=1, VIDSEARCH_MODEL="nobody/not-a-model")
    assert "could not load the CLIP model 'nobody/not-a-model'" in proc.stderr
    assert "VIDSEARCH_MODEL" in proc.stderr


def test_serve_without_the_hub_says_so_once_and_never_announces_its_url(tmp_path, tiny_model):
    """No hub (nothing is reachable from here) and HF_HUB_OFFLINE unset, as on a new user's offline machine: serve
    stops before its URL with one message, no line of it twice, saying how to bring a checkpoint over."""
    from tests.procs import free_port

    env = cli_env(tmp_path / "home", tiny_model, VIDSEARCH_MODEL="nobody/not-a-model")
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        env.pop(name)
    proc = subprocess.run([*vidsearch_cmd(), "serve", "--port", str(free_port())], env=env, capture_output=True,
                          text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert "http://" not in output and "Traceback" not in output, output
    assert "could not load the CLIP model 'nobody/not-a-model'" in output
    assert "hf download nobody/not-a-model --local-dir DIR" in output and "VIDSEARCH_MODEL=DIR" in output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == len(set(lines)), output


def test_serve_stopped_by_sigterm_mid_batch_puts_the_batch_back_and_leaks_nothing(tmp_path, tiny_model, clips_dir):
    """`docker stop` / systemd: SIGTERM while the worker's decode processes are still starting. serve shuts down as
    on Ctrl-C: the unfinished job goes back to the queue without using an attempt, the decode processes and their
    queues are closed (before, the process died at once and multiprocessing reported leaked semaphores)."""
    import signal
    import time

    import httpx

    from schema.catalog import Catalog, JobState
    from tests.procs import free_port, wait_http

    home, log, port = tmp_path / "home", tmp_path / "serve.log", free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen([*vidsearch_cmd(), "serve", "--port", str(port)], env=cli_env(home, tiny_model),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/", proc)
        with open(clips_dir / "red_circle.mp4", "rb") as f:
            job_id = httpx.post(url + "/api/videos", files={"file": ("red_circle.mp4", f)}, timeout=60).json()["job_id"]
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/api/jobs/{job_id}", timeout=10).json()["state"] != "running":  # claimed, decoding
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        Cli(home, tiny_model)("milvus", "stop", expect=None)
    text = log.read_text()
    assert "resource_tracker" not in text and "leaked" not in text and "Traceback" not in text, text[-3000:]
    assert "vidsearch: stopped" in text, text[-3000:]
    catalog = Catalog(f"sqlite:///{home / 'catalog.db'}")
    try:
        job = catalog.get_job(job_id)
        assert (job.state, job.attempts) in {(JobState.QUEUED, 0), (JobState.DONE, 1)}, vars(job)
    finally:
        catalog.close()


def test_bad_setting_is_reported(tmp_path, tiny_model):
    # Through the installed console script, as a user runs it (the other tests fork from the zygote).
    proc = Cli(tmp_path / "home", tiny_model)("list", expect=2, VIDSEARCH_DEVICE="tpu")
    assert "VIDSEARCH_DEVICE" in proc.stderr


def test_worker_processes_the_queue_and_stops_cleanly_on_ctrl_c(cli, clips_dir, tmp_path):
    import signal
    import time

    cli("ingest", str(clips_dir / "red_circle.mp4"), str(clips_dir / "blue_triangle.mkv"))
    assert json.loads(cli("status", "--json").stdout)["jobs"]["queued"] == 2
    worker = subprocess.Popen([*vidsearch_cmd(), "worker"], env=cli_env(cli.home, cli.model),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while json.loads(cli("status", "--json").stdout)["jobs"]["done"] < 2:
            assert time.monotonic() < deadline and worker.poll() is None, worker.stderr.read()
            time.sleep(1)
    finally:
        worker.send_signal(signal.SIGINT)
        try:
            _, err = worker.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            pytest.fail(f"the worker did not stop within 60 s of Ctrl-C: {worker.communicate()[1][-3000:]}")
    assert worker.returncode == 0, err
    assert "worker stopped" in err and "Traceback" not in err
    assert "done: video" in err
    results = json.loads(cli("search", "a blue triangle", "--json").stdout)
    assert results[0]["title"] == "blue_triangle.mkv"


def test_migrate_upgrades_an_old_catalog_then_has_nothing_to_do(cli, tmp_path):
    from tests.test_migrations import FIRST_RELEASE, ROWS, execute

    home = tmp_path / "home"
    home.mkdir()
    url = f"sqlite:///{home / 'catalog.db'}"  # where VIDSEARCH_HOME keeps it
    execute(url, FIRST_RELEASE["sqlite"] + ROWS)  # as the first release left it: no counters, no tag
    from schema.migrations import head

    assert f"catalog schema: made before migrations, recognised as 0001; now at {head()}" in cli("migrate").stdout
    assert "catalog schema: already at" in cli("migrate").stdout
    listed = json.loads(cli("list", "--json").stdout)
    assert [(v["title"], v["status"], v["tag"]) for v in listed] == [("beach.mp4", "ready", None),
                                                                      ("broken.avi", "failed", None)]


def test_bad_search_input_is_refused_before_the_model_loads(cli, tmp_path):
    # A model folder that does not exist: had the model been loaded first, that error would be the one shown.
    absent = str(tmp_path / "no-model-here")
    for args, says in ((("search", ""), "type something to search for"),
                       (("search", "   "), "type something to search for"),
                       (("search", "a red circle", "-k", "0"), "k must be between 1 and"),
                       (("search", "a red circle", "-k", "5000"), "k must be between 1 and")):
        refused = cli(*args, expect=1, VIDSEARCH_MODEL=absent)
        assert says in refused.stderr and "could not load the CLIP model" not in refused.stderr, refused.stderr


def test_serve_checks_the_model_before_it_announces_the_url(cli, tmp_path):
    refused = cli("serve", "--port", "1", expect=1, VIDSEARCH_MODEL=str(tmp_path / "no-model-here"))
    assert "could not load the CLIP model" in refused.stderr
    assert "http://" not in refused.stderr + refused.stdout, "the URL was announced for an app that cannot start"


def test_search_after_the_milvus_lite_server_restarted_is_quiet(cli, clips_dir):
    cli("ingest", str(clips_dir / "red_circle.mp4"), "--wait")
    cli("milvus", "stop")  # the next command starts it again: its collections come back released
    found = cli("search", "a red circle", "--json", "-k", "1")  # `cli` also asserts no traceback on stderr
    assert json.loads(found.stdout)[0]["title"] == "red_circle.mp4"
    assert "released" not in found.stderr and "RPC error" not in found.stderr, found.stderr


def test_serve_logs_what_it_started_and_each_video_it_finished(tmp_path, tiny_model, clips_dir):
    import time

    import httpx

    from tests.procs import running_server

    log = tmp_path / "serve.log"
    with running_server(tmp_path / "home", tiny_model, log) as url, httpx.Client(base_url=url, timeout=60) as client:
        with open(clips_dir / "red_circle.mp4", "rb") as f:
            job = client.post("/api/videos", files={"file": ("red_circle.mp4", f)}).json()["job_id"]
        deadline = time.monotonic() + 120
        while client.get(f"/api/jobs/{job}").json()["state"] != "done":
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        time.sleep(0.5)  # the worker logs after the catalog commit the API just saw
    text = log.read_text()
    started = next((line for line in text.splitlines() if "INFO search_app.web: model" in line), "")
    dim = json.loads((tiny_model / "config.json").read_text())["projection_dim"]
    assert f"(dim {dim}) on cpu" in started and "(Milvus Lite)" in started and "data folder" in started, text
    assert text.index("INFO search_app.web: model") < text.index("vidsearch: http://")  # announced once ready
    assert "INFO search_app.web: video 1 ready: red_circle.mp4" in text, text
    assert "INFO search_app.web: experts: none" in text, text  # cli_env turns the experts off
    # Stopped with Ctrl-C: the decode processes and their queues are closed, nothing left to multiprocessing's tracker.
    assert "resource_tracker" not in text and "leaked" not in text, text[-3000:]


@pytest.mark.slow
def test_reindex_experts_fills_speech_for_indexed_videos_and_doctor_checks_it(cli, tmp_path):
    from tests.speech_clips import have_festival, write_speech_video

    if not have_festival():
        pytest.skip("needs festival's text2wave (scripts/test.sh installs it)")
    folder = tmp_path / "talks"
    folder.mkdir()
    said = {"orchestra.mp4": (1.0, "the orchestra rehearsed the final movement twice on sunday"),
            "doctor.mp4": (2.0, "the doctor asked the patient to breathe slowly")}
    for name, (at, phrase) in said.items():  # identical pictures
        write_speech_video(folder / name, [(at, phrase)], 5.0, folder=tmp_path / "voice")
    cli("ingest", str(folder), "--wait")  # with VIDSEARCH_EXPERTS= (cli_env): appearance only
    before = cli("search", said["doctor.mp4"][1], "--json")
    assert all(r["experts"] == {} for r in json.loads(before.stdout))  # nothing to hear yet

    filled = cli("reindex", "--experts", "speech")
    assert "speech: 2 done, 0 with nothing to read, 0 failed" in filled.stdout
    assert "queued: speech 0" in cli("reindex", "--experts", "speech").stderr  # nothing left to do: resumable
    found = cli("search", said["doctor.mp4"][1])
    first = found.stdout.split("\n   2 ")[0]
    assert "doctor.mp4" in first and "said at 0:0" in first, found.stdout
    status = json.loads(cli("status", "--json").stdout)
    assert status["experts"]["speech"]["done"] == 2
    assert "All consistent" in cli("doctor").stdout

    # Lose one video's speech segments behind vidsearch's back: doctor sees it, --repair queues the expert again.
    from schema.lexical import LexicalStore
    from schema.settings import Settings
    from schema.vectors import connect

    settings = Settings(home=cli.home)
    client = connect(settings)
    try:
        LexicalStore.open(client, f"{settings.collection}_speech").delete([1])
    finally:
        client.close()
    damaged = cli("doctor", "--json", expect=1)
    kinds = {f["kind"]: f["video_ids"] for f in json.loads(damaged.stdout)["findings"]}
    assert kinds == {"speech_segments_mismatch": [1]}
    cli("doctor", "--repair")
    assert "speech: 2 done" in cli("reindex", "--experts", "speech").stdout
    assert "All consistent" in cli("doctor").stdout

    # With the experts on (the default), `ingest --wait` also waits for them.
    third = write_speech_video(tmp_path / "farmer.mp4", [(1.0, "the farmer planted corn in the north field")], 5.0,
                               folder=tmp_path / "voice")
    cli("ingest", str(third), "--wait", VIDSEARCH_EXPERTS="speech,text")
    status = json.loads(cli("status", "--json").stdout)["experts"]
    assert status["speech"]["done"] == 3 and status["text"]["unavailable"] == 1 and status["text"]["queued"] == 0
    assert "farmer.mp4" in cli("search", "farmer planted corn").stdout.split("\n   2 ")[0]

    bad = cli("reindex", "--experts", "smell", expect=1)
    assert "unknown expert(s) smell; known: speech, text" in bad.stderr
    assert "NAME=W" in cli("search", "x", "--weight", "speech", expect=1).stderr
