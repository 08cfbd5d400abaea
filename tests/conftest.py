"""Shared fixtures: a tiny trained CLIP checkpoint, synthetic videos, a Milvus Lite server, fresh data dirs."""

from __future__ import annotations

import os
import shutil

# No network in tests: the hub must never be reached, models come from local folders.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
for _name in [n for n in os.environ if n.startswith("VIDSEARCH_")]:
    del os.environ[_name]  # a developer's own configuration must not leak into tests

import itertools  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

import pytest  # noqa: E402

from schema.settings import Settings  # noqa: E402
from tests.milvus_server import milvus_server  # noqa: E402,F401  (fixture: a real Milvus server)
from tests.postgres import postgres_server, postgres_url  # noqa: E402,F401  (fixtures)
from tests.s3 import s3_bucket, s3_endpoint  # noqa: E402,F401  (fixtures: a real S3 server on 127.0.0.1)
from tests.videos import write_video  # noqa: E402

if TYPE_CHECKING:
    from tests.zygote import Zygote

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

# (colour, shape, file name, codec): several containers and codecs, like an ordinary folder of clips.
CLIPS = [
    ("red", "circle", "red_circle.mp4", "libx264"),
    ("green", "square", "green_square.webm", None),
    ("blue", "triangle", "blue_triangle.mkv", "libx264"),
    ("yellow", "square", "yellow_square.avi", "mpeg4"),
    ("green", "circle", "green_circle.mov", "libx264"),
    ("blue", "square", "blue_square.gif", None),
]


@pytest.fixture(scope="session", autouse=True)
def exported_models(tmp_path_factory) -> Path:
    """One cache of exported ONNX towers for the session, as a user's data folder keeps one: each tiny checkpoint is
    exported once, then every test loads it through the same cache check. tests/test_backends.py exports into
    data folders of its own (the default place) and checks the export itself."""
    folder = tmp_path_factory.mktemp("exported-models")
    os.environ["VIDSEARCH_EXPORT_DIR"] = str(folder)  # Settings() and `vidsearch` subprocesses
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))  # load_encoder() without a folder
    return folder


@pytest.fixture(autouse=True)
def _stop_data_folder_servers(tmp_path: Path) -> Iterator[None]:
    """Stop the Milvus Lite servers a test's `vidsearch` commands left running in its data folders (a command leaves
    its folder's server up for the next one, as it does for a user): ~220 MB each, they outlived the test before."""
    yield
    from schema.lite_server import stop_server

    for state in tmp_path.rglob("milvus-server.json"):
        stop_server(state.parent / "milvus")


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny CLIP checkpoint trained on colour x shape captions, saved like any hub checkpoint."""
    from tests.tiny_clip import build_checkpoint

    return build_checkpoint(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def random_model(tmp_path_factory) -> Path:
    """Same architecture, untrained: for tests about numerics rather than meaning."""
    from tests.tiny_clip import build_checkpoint

    return build_checkpoint(tmp_path_factory.mktemp("random-clip"), trained=False, seed=1)


@pytest.fixture(scope="session")
def clips_dir(tmp_path_factory) -> Path:
    """A folder of short synthetic clips in several containers and codecs."""
    folder = tmp_path_factory.mktemp("clips")
    for colour, shape, name, codec in CLIPS:
        kwargs = {"codec": codec} if codec else {}
        write_video(folder / name, colour=colour, shape=shape, seconds=1.0, fps=8, size=64, **kwargs)
    return folder


@pytest.fixture(scope="session")
def zygote() -> Iterator[Zygote]:
    """Forks `vidsearch` commands that have already imported torch & co (see tests/zygote.py)."""
    from tests.zygote import Zygote

    forker = Zygote(Path(__file__).resolve().parent.parent)
    yield forker
    forker.close()


@pytest.fixture(scope="session")
def milvus_uri(tmp_path_factory) -> Iterator[str]:
    """One real Milvus Lite server for the session; each test gets its own collection on it."""
    from schema.lite_server import ensure_server, stop_server

    data_dir = tmp_path_factory.mktemp("milvus-session") / "milvus"
    uri = ensure_server(data_dir)
    yield uri
    stop_server(data_dir)


@pytest.fixture
def mixed_folder(tmp_path, clips_dir) -> Path:
    """Ordinary clips, a note, and a file that claims to be a video but is not."""
    folder = tmp_path / "incoming"
    shutil.copytree(clips_dir, folder / "clips")
    (folder / "notes.txt").write_text("shopping list\n")
    (folder / "clips" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(300))
    return folder


_counter = itertools.count()


@pytest.fixture
def settings(tmp_path, tiny_model, milvus_uri) -> Settings:
    """Fresh data folder and collection per test, on the shared Milvus Lite server, with the tiny model."""
    return Settings(
        home=tmp_path / "data",
        model=str(tiny_model),
        milvus_uri=milvus_uri,
        collection=f"t{next(_counter)}_{uuid.uuid4().hex[:8]}",
        frames=4,
        batch_size=16,
        worker_poll_seconds=0.2,
        # The clips of the appearance tests have no speech and no text; the expert tests (test_experts.py, ...)
        # run with the default experts on.
        experts="",
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request, tmp_path) -> str:
    """The catalog's database: a SQLite file (the embedded default) or a fresh database on a real PostgreSQL server.
    The catalog and queue tests take this (or `catalog`), so they run on both."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def catalog(catalog_url):
    from schema.catalog import Catalog

    cat = Catalog(catalog_url)
    yield cat
    cat.close()


@pytest.fixture
def runtime(settings):
    from ingest.runtime import Runtime

    rt = Runtime(settings)
    yield rt
    rt.close()


def cli_env(home: Path, model: Path, **extra: str) -> dict[str, str]:
    """Environment for a real `vidsearch` subprocess on the embedded default (its own Milvus Lite server)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDSEARCH_") or k == "VIDSEARCH_EXPORT_DIR"}
    env.update({"VIDSEARCH_HOME": str(home), "VIDSEARCH_MODEL": str(model), "VIDSEARCH_FRAMES": "4",
                "VIDSEARCH_BATCH_SIZE": "16", "VIDSEARCH_WORKER_POLL_SECONDS": "0.2", "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1", "VIDSEARCH_EXPERTS": "", **extra})
    return env


def drop_stored_segments(runtime, video_ids) -> None:
    """Leave these videos as a version before segment vectors left them: video vectors only. Deleted behind the
    store's back, so the in-memory copy's segment cache is emptied too (as a fresh process would start)."""
    milvus = runtime.store.milvus()
    ids = ", ".join(str(int(v)) for v in video_ids)
    milvus.client.delete(milvus.segment_collection, filter=f"video_id in [{ids}]")
    clear = getattr(runtime.store.searcher(), "clear_segment_cache", None)
    if clear is not None:
        clear()
