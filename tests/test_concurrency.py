"""The UI, a CLI ingest and CLI searches at the same time, on the embedded default: three real processes."""

from __future__ import annotations

import json
import subprocess

import pytest

from schema.lite_server import read_state
from tests.conftest import CLIPS, cli_env
from tests.procs import running_server, vidsearch_cmd


@pytest.mark.slow
def test_ui_worker_ingest_and_search_share_one_milvus(tmp_path, tiny_model, clips_dir):
    home = tmp_path / "home"
    env = cli_env(home, tiny_model)
    with running_server(home, tiny_model, tmp_path / "serve.log"):
        state = read_state(home.resolve() / "milvus")
        assert state is not None, "serve should have started the shared Milvus Lite server"

        # Process 2: a bulk ingest that also works jobs itself, racing the server's worker for them.
        ingest = subprocess.Popen([*vidsearch_cmd(), "ingest", str(clips_dir), "--wait"], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # Process 3: searches while the ingest runs. Each must answer with a JSON list.
        searches = 0
        while ingest.poll() is None or searches == 0:
            proc = subprocess.run([*vidsearch_cmd(), "search", "a red circle", "--json"], env=env,
                                  capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, proc.stderr
            assert isinstance(json.loads(proc.stdout), list)
            searches += 1
        out, err = ingest.communicate(timeout=300)
        assert ingest.returncode == 0, out + err
        assert f"Ingested: {len(CLIPS)}" in out

        final = json.loads(subprocess.run([*vidsearch_cmd(), "search", "a red circle", "--json", "-k", "50"],
                                          env=env, capture_output=True, text=True, timeout=300).stdout)
        assert final[0]["title"] == "red_circle.mp4"
        assert len(final) == len(CLIPS)  # every clip exactly once, though two workers raced for the jobs

        # All processes used the one server started by `serve`; none started its own.
        assert read_state(home.resolve() / "milvus") == state
        from pymilvus import MilvusClient

        client = MilvusClient(uri=state.uri)
        assert client.get_collection_stats("vidsearch_videos")["row_count"] == len(CLIPS)
        client.close()

        status = json.loads(subprocess.run([*vidsearch_cmd(), "status", "--json"], env=env, capture_output=True,
                                           text=True, timeout=300).stdout)
        assert status["jobs"]["done"] == len(CLIPS) and status["jobs"]["running"] == 0
        assert searches >= 1
