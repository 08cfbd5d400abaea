"""The `vidsearch` command as a user runs it: real subprocesses on the embedded default (Milvus Lite server)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import CLIPS, cli_env
from tests.procs import vidsearch_cmd

RESULT_KEYS = {"rank", "score", "video_id", "title", "path", "duration"}


class Cli:
    def __init__(self, home: Path, model: Path) -> None:
        self.home, self.model = home, model

    def __call__(self, *args: str, expect: int | None = 0, **env: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([*vidsearch_cmd(), *args], env=cli_env(self.home, self.model, **env),
                              capture_output=True, text=True, timeout=300)
        if expect is not None:
            assert proc.returncode == expect, f"{args} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    def stop(self) -> None:
        self("milvus", "stop", expect=None)


@pytest.fixture
def cli(tmp_path, tiny_model):
    runner = Cli(tmp_path / "home", tiny_model)
    yield runner
    runner.stop()


@pytest.fixture
def mixed_folder(tmp_path, clips_dir) -> Path:
    """Ordinary clips, a note, and a file that claims to be a video but is not."""
    folder = tmp_path / "incoming"
    shutil.copytree(clips_dir, folder / "clips")
    (folder / "notes.txt").write_text("shopping list\n")
    (folder / "clips" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(300))
    return folder


def test_ingest_search_list_status_delete(cli, mixed_folder):
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

    text = cli("search", "a blue triangle").stdout
    assert text.splitlines()[1].split()[-1] == "blue_triangle.mkv"

    listed = json.loads(cli("list", "--json").stdout)
    assert len(listed) == len(CLIPS)  # the broken file never became a video row: it failed at the content check
    status = json.loads(cli("status", "--json").stdout)
    assert status["jobs"]["done"] == len(CLIPS) and status["jobs"]["queued"] == 0

    victim = next(v for v in listed if v["title"] == "red_circle.mp4")
    assert "deleted" in cli("delete", str(victim["video_id"])).stdout
    assert not Path(victim["path"]).exists()
    after = json.loads(cli("search", "a red circle", "-k", "10", "--json").stdout)
    assert victim["video_id"] not in {r["video_id"] for r in after}
    assert len(after) == len(CLIPS) - 1

    missing = cli("delete", "987654", expect=1)
    assert "no video with id 987654" in missing.stderr


def test_failed_decode_is_reported_by_status(cli, tmp_path, clips_dir):
    # Passes the content check (a real header) but cannot be decoded: fails in the worker, with its reason.
    data = (clips_dir / "red_circle.mp4").read_bytes()
    truncated = tmp_path / "cut.mp4"
    truncated.write_bytes(data[: len(data) // 3])
    result = cli("ingest", str(truncated), str(clips_dir / "green_square.webm"), "--wait", expect=None)
    status = json.loads(cli("status", "--json").stdout)
    if result.returncode == 1:
        assert status["jobs"]["failed"] == 1 and status["failed"][0]["title"] == "cut.mp4"
        assert status["failed"][0]["error"]
    else:  # FFmpeg may decode the frames that survived the cut: then the file is simply ingested
        assert status["jobs"]["done"] == 2
    assert status["jobs"]["done"] >= 1


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


def test_bad_setting_is_reported(cli):
    proc = cli("list", expect=2, VIDSEARCH_DEVICE="tpu")
    assert "VIDSEARCH_DEVICE" in proc.stderr
