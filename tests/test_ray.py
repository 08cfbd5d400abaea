"""`vidsearch ingest --ray` on a real local Ray (ray.init started by the command, as a user gets it): the same
outcome as `vidsearch ingest --wait` on the same folder, resumable, failures per file."""

from __future__ import annotations

import numpy as np
import pytest

from schema.catalog import Catalog
from schema.settings import Settings
from schema.vectors import connect
from tests.conftest import CLIPS
from tests.test_cli import Cli
from tests.videos import write_video

pytestmark = pytest.mark.slow  # a local Ray starts in a few seconds per command


def _library(home, model) -> dict[str, tuple[np.ndarray, np.ndarray, str]]:
    """sha256 -> (video vector, segment vectors in time order, status) of every video in a data folder."""
    settings = Settings(home=home, model=str(model))
    catalog = Catalog(settings.catalog_url)
    videos = catalog.list_videos()
    client = connect(settings)
    try:
        rows = client.query(settings.collection, filter="video_id >= 0", output_fields=["video_id", "vector"],
                            limit=1000)
        segments = client.query(f"{settings.collection}_segments", filter="video_id >= 0",
                                output_fields=["video_id", "start_s", "vector"], limit=10000)
    finally:
        client.close()
        catalog.close()
    vectors = {r["video_id"]: np.asarray(r["vector"], np.float32) for r in rows}
    segs: dict[int, list] = {}
    for s in sorted(segments, key=lambda s: s["start_s"]):
        segs.setdefault(s["video_id"], []).append(np.asarray(s["vector"], np.float32))
    return {v.sha256: (vectors.get(v.id), np.stack(segs[v.id]) if v.id in segs else None, v.status.value)
            for v in videos}


def _failures(stdout: str) -> set[str]:
    return {line.split(": ", 2)[1].rsplit("/", 1)[-1] + ": " + line.split(": ", 2)[2]
            for line in stdout.splitlines() if line.startswith("  failed: ")}


def test_ingest_on_ray_matches_ingest_wait(tmp_path, tiny_model, mixed_folder):
    waited = Cli(tmp_path / "wait", tiny_model)
    on_ray = Cli(tmp_path / "ray", tiny_model)
    try:
        first = waited("ingest", str(mixed_folder), "--recursive", "--wait", expect=1)
        ray_run = on_ray("ingest", str(mixed_folder), "--recursive", "--ray", expect=1)
        assert f"Ingested: {len(CLIPS)}" in ray_run.stdout and "failed: 1" in ray_run.stdout
        assert "skipped (not video): 1" in ray_run.stdout
        # Same failures, with the same messages.
        assert _failures(ray_run.stdout) == _failures(first.stdout) and "broken.mp4" in ray_run.stdout
        assert "Ingesting" in ray_run.stderr  # the progress bar

        expected = _library(tmp_path / "wait", tiny_model)
        got = _library(tmp_path / "ray", tiny_model)
        assert got.keys() == expected.keys() and len(got) == len(CLIPS)  # a failed file leaves no video
        for sha, (vector, segments, status) in expected.items():
            assert got[sha][2] == status
            if status == "ready":
                np.testing.assert_allclose(got[sha][0], vector, atol=1e-5)
                assert got[sha][1].shape == segments.shape
                np.testing.assert_allclose(got[sha][1], segments, atol=1e-5)

        # Searchable as any library, moments included.
        import json

        results = json.loads(on_ray("search", "a red circle", "-k", "3", "--json").stdout)
        assert results[0]["title"] == "red_circle.mp4" and results[0]["moments"]
        assert (tmp_path / "ray" / "thumbnails").is_dir() and any((tmp_path / "ray" / "thumbnails").rglob("*.jpg"))

        # Resumable: what is in the library is skipped; a new file alone is embedded.
        write_video(mixed_folder / "clips" / "new.mp4", colour="red", shape="square", seconds=1.0, fps=8, size=64)
        again = on_ray("ingest", str(mixed_folder), "--recursive", "--ray", expect=1)
        assert f"already present: {len(CLIPS)}" in again.stdout and "Ingested: 1" in again.stdout
        assert _failures(again.stdout) == _failures(first.stdout)  # the broken file is tried again, and fails again
    finally:
        waited.stop()
        on_ray.stop()


def test_ray_address_that_answers_nothing_is_a_clear_error(tmp_path, tiny_model, clips_dir):
    cli = Cli(tmp_path / "home", tiny_model)
    try:
        proc = cli("ingest", str(clips_dir), "--ray-address", "127.0.0.1:1", expect=2)
        assert "cannot reach the Ray cluster at 127.0.0.1:1" in proc.stderr
        assert "Ingested" not in proc.stdout
    finally:
        cli.stop()


def test_bench_ray_compares_the_ray_job_with_the_single_worker(tmp_path, tiny_model, clips_dir):
    import json
    import subprocess

    from tests.conftest import cli_env
    from tests.procs import vidsearch_cmd

    env = cli_env(tmp_path / "home", tiny_model)
    proc = subprocess.run([*vidsearch_cmd(), "bench", "--ray", "--json", "--model", str(tiny_model),
                           "--folder", str(clips_dir)], env=env, capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["model"] == str(tiny_model) and report["videos"] == len(CLIPS)
    assert report["single_videos_per_s"] > 0 and report["ray_videos_per_s"] > 0
    assert report["ratio"] == pytest.approx(report["ray_videos_per_s"] / report["single_videos_per_s"], abs=2e-3)
    assert report["overhead"] == pytest.approx(1 - report["ratio"], abs=1e-3)
    assert report["met"] == (report["overhead"] <= report["max_overhead"])
    assert report["ray_cpus"] >= 1 and report["actors"] >= 1 and report["ray_start_s"] > 0
