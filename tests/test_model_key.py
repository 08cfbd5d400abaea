"""The collection records the checkpoint's snapshot: moved hub revisions and replaced folder weights are refused,
collections from before snapshots are upgraded once. Offline, through the real loader and a real Milvus Lite."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
from safetensors.torch import load_file, save_file

import ingest.checkpoint
from ingest.checkpoint import folder_snapshot
from ingest.encoder import load_encoder
from ingest.runtime import Runtime
from schema.model_key import PRECISION_EXACT, PRECISION_INT8, PROP_PRECISION, PROP_SNAPSHOT, ModelKey
from schema.vectors import SEGMENTS_SUFFIX, MilvusVectorStore, ModelMismatchError, Segments, connect

REPO = "vidsearch-test/tiny-clip"
COMMIT_A = hashlib.sha1(b"first upload").hexdigest()
COMMIT_B = hashlib.sha1(b"new weights pushed to main").hexdigest()
OLD = 1_600_000_000  # an mtime long past: such files' hashes may be cached (ingest.checkpoint.RACY_SECONDS)


class HubCache:
    """A Hugging Face cache laid out as the hub leaves it: refs/<revision> holds a commit, snapshots/<commit>/ the
    files (plain copies here; the hub links them into blobs/)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def repo(self, repo_id: str) -> Path:
        return self.root / ("models--" + repo_id.replace("/", "--"))

    def add(self, repo_id: str, commit: str, checkpoint: Path) -> None:
        shutil.copytree(checkpoint, self.repo(repo_id) / "snapshots" / commit)

    def point(self, repo_id: str, revision: str, commit: str) -> None:
        (self.repo(repo_id) / "refs").mkdir(parents=True, exist_ok=True)
        (self.repo(repo_id) / "refs" / revision).write_text(commit)


@pytest.fixture
def hub(tmp_path, monkeypatch, tiny_model, random_model) -> HubCache:
    cache = HubCache(tmp_path / "hf-cache")
    cache.add(REPO, COMMIT_A, tiny_model)
    cache.add(REPO, COMMIT_B, random_model)
    cache.point(REPO, "main", COMMIT_A)
    # huggingface_hub and transformers read the cache location from this attribute on every call (HF_HUB_CACHE is
    # read into it at import, so setting the variable now would be too late): the default cache, moved.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache.root))
    return cache


@pytest.fixture
def hub_settings(settings):
    return settings.model_copy(update={"model": REPO, "model_revision": "main"})


def dim_of(checkpoint: Path) -> int:
    return int(json.loads((checkpoint / "config.json").read_text())["projection_dim"])


def unit(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def fill(store, dim: int) -> np.ndarray:
    vectors = unit(3, dim)
    store.add([1, 2, 3], vectors)
    store.add_segments([1], [Segments(np.array([0.0, 1.0], np.float32), np.array([1.0, 2.0], np.float32),
                                      unit(2, dim, seed=1))])
    store.flush()
    return vectors


def properties(settings, name: str) -> dict[str, str]:
    client = connect(settings)
    try:
        return dict(client.describe_collection(name).get("properties") or {})
    finally:
        client.close()


def create_old_collection(settings, dim: int, recorded: str) -> np.ndarray:
    """Collections exactly as vidsearch made them before snapshots: vidsearch.model and vidsearch.dim only."""
    store = MilvusVectorStore.open(settings, dim, recorded)  # a plain label is written as it is
    vectors = fill(store, dim)
    store.close()
    props = properties(settings, settings.collection)
    assert props.get("vidsearch.model") == recorded and PROP_SNAPSHOT not in props
    return vectors


def old_folder_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for f in dst.iterdir():
        os.utime(f, (OLD, OLD))
    return dst


def upgrade_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "without a snapshot" in r.getMessage()]


# -------------------------------------------------------------------------------------------------- hub ids


def test_hub_revision_is_recorded_as_the_commit_it_resolves_to(hub, hub_settings, tiny_model):
    rt = Runtime(hub_settings)
    try:
        key = rt.encoder.model_key
        assert (key.model, key.revision, key.snapshot, key.precision) == (REPO, "main", COMMIT_A, PRECISION_EXACT)
        assert key.dim == dim_of(tiny_model) and rt.encoder.key == f"{REPO}@{COMMIT_A[:12]}"
        # The weights loaded are that snapshot's: the same vectors as the folder it was copied from.
        direct = load_encoder(str(tiny_model), device="cpu")
        np.testing.assert_allclose(rt.encoder.embed_text("a red circle"), direct.embed_text("a red circle"),
                                   atol=1e-6)
        rt.store.milvus()  # creates both collections with the key
        for name in (hub_settings.collection, hub_settings.collection + SEGMENTS_SUFFIX):
            props = properties(hub_settings, name)
            assert props[PROP_SNAPSHOT] == COMMIT_A and props[PROP_PRECISION] == PRECISION_EXACT
            assert props["vidsearch.model"] == REPO and props["vidsearch.dim"] == str(key.dim)
    finally:
        rt.close()


def test_main_moving_to_new_weights_is_refused_and_pinning_the_old_commit_goes_back(hub, hub_settings):
    rt = Runtime(hub_settings)
    vectors = fill(rt.store.milvus(), rt.encoder.dim)
    rt.close()

    hub.point(REPO, "main", COMMIT_B)  # upstream pushed new weights to main
    moved = Runtime(hub_settings)
    try:
        assert moved.encoder.snapshot == COMMIT_B
        with pytest.raises(ModelMismatchError) as err:
            moved.store.milvus()
    finally:
        moved.close()
    message = str(err.value)
    assert f"snapshot {COMMIT_A[:12]} -> {COMMIT_B[:12]} of {REPO}" in message
    assert "the hub revision 'main' now points elsewhere" in message
    assert f"VIDSEARCH_MODEL_REVISION={COMMIT_A}" in message and "vidsearch reindex" in message

    pinned = Runtime(hub_settings.model_copy(update={"model_revision": COMMIT_A}))
    try:
        assert [h.video_id for h in pinned.store.milvus().search(vectors[1], 1)] == [2]
    finally:
        pinned.close()


def test_another_name_for_the_same_snapshot_opens_the_collection(hub, hub_settings, tiny_model):
    renamed = "vidsearch-test/tiny-clip-renamed"  # e.g. a hub repo renamed: same commits, another cache folder
    hub.add(renamed, COMMIT_A, tiny_model)
    hub.point(renamed, "main", COMMIT_A)
    rt = Runtime(hub_settings)
    vectors = fill(rt.store.milvus(), rt.encoder.dim)
    rt.close()
    other = Runtime(hub_settings.model_copy(update={"model": renamed}))
    try:
        assert [h.video_id for h in other.store.milvus().search(vectors[0], 1)] == [1]
    finally:
        other.close()


def test_old_hub_collection_is_upgraded_once_and_keeps_its_vectors(hub, hub_settings, caplog):
    dim = dim_of(hub.repo(REPO) / "snapshots" / COMMIT_A)
    vectors = create_old_collection(hub_settings, dim, f"{REPO}@main")
    old = MilvusVectorStore.attach(hub_settings)  # maintenance commands load no model
    assert old is not None and (old.model, old.key) == (f"{REPO}@main", None)
    old.close()

    caplog.set_level(logging.INFO, logger="schema.vectors")
    rt = Runtime(hub_settings)
    try:
        assert [h.video_id for h in rt.store.milvus().search(vectors[2], 1)] == [3]
        assert len(rt.store.milvus().segments([1])[1]) == 2
    finally:
        rt.close()
    lines = upgrade_lines(caplog)
    assert len(lines) == 1 and f"recorded {REPO}@main" in lines[0] and COMMIT_A in lines[0]
    assert "Hugging Face cache" in lines[0]
    for name in (hub_settings.collection, hub_settings.collection + SEGMENTS_SUFFIX):
        assert properties(hub_settings, name)[PROP_SNAPSHOT] == COMMIT_A

    caplog.clear()
    again = Runtime(hub_settings)
    try:
        assert [h.video_id for h in again.store.milvus().search(vectors[0], 1)] == [1]
    finally:
        again.close()
    assert upgrade_lines(caplog) == []
    attached = MilvusVectorStore.attach(hub_settings)
    assert attached is not None and attached.key is not None and attached.key.snapshot == COMMIT_A
    attached.close()


def test_old_collection_is_upgraded_to_what_its_own_revision_names(hub, hub_settings):
    """Recorded model@main, now pinned to a commit: main's snapshot in the cache decides, not the pin."""
    dim = dim_of(hub.repo(REPO) / "snapshots" / COMMIT_A)
    create_old_collection(hub_settings, dim, f"{REPO}@main")
    elsewhere = Runtime(hub_settings.model_copy(update={"model_revision": COMMIT_B}))
    try:
        with pytest.raises(ModelMismatchError, match=f"VIDSEARCH_MODEL_REVISION was 'main', now '{COMMIT_B}'"):
            elsewhere.store.milvus()
    finally:
        elsewhere.close()
    same = Runtime(hub_settings.model_copy(update={"model_revision": COMMIT_A}))
    try:
        assert same.store.count() == 3
    finally:
        same.close()


def test_old_collection_of_a_revision_not_in_the_cache_is_refused(hub, hub_settings):
    dim = dim_of(hub.repo(REPO) / "snapshots" / COMMIT_A)
    create_old_collection(hub_settings, dim, f"{REPO}@v0.9")
    rt = Runtime(hub_settings)
    try:
        with pytest.raises(ModelMismatchError, match="records no snapshot") as err:
            rt.store.milvus()
    finally:
        rt.close()
    assert "vidsearch reindex" in str(err.value)
    assert PROP_SNAPSHOT not in properties(hub_settings, hub_settings.collection)  # nothing recorded on a guess


# -------------------------------------------------------------------------------------------------- folders


def test_folder_is_keyed_by_its_content(tmp_path, tiny_model):
    a = old_folder_copy(tiny_model, tmp_path / "a")
    b = old_folder_copy(tiny_model, tmp_path / "b")
    snapshot = load_encoder(str(a), device="cpu").snapshot
    assert snapshot.startswith("sha256:") and snapshot == folder_snapshot(b)  # content, not path
    config = json.loads((b / "config.json").read_text())
    (b / "config.json").write_text(json.dumps({**config, "transformers_version": "9.9.9"}))  # a re-save
    assert folder_snapshot(b) == snapshot
    (b / "preprocessor_config.json").write_text(
        json.dumps({**json.loads((b / "preprocessor_config.json").read_text()), "image_mean": [0.5, 0.5, 0.5]}))
    assert folder_snapshot(b) != snapshot  # other pixels reach the model: another vector space


def perturb_weights(folder: Path) -> None:
    """Write a different tensor into the folder's weights, in place: same shapes, so the same file size."""
    path = folder / "model.safetensors"
    tensors = load_file(path)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1.0
    save_file(tensors, path, metadata={"format": "pt"})


def test_weights_replaced_in_place_are_detected_and_hashes_are_cached(tmp_path, tiny_model, monkeypatch):
    folder = old_folder_copy(tiny_model, tmp_path / "model")
    cache_file = tmp_path / "data" / "cache" / "checkpoint-hashes.json"
    hashed: list[Path] = []
    real = ingest.checkpoint.hash_file
    monkeypatch.setattr(ingest.checkpoint, "hash_file", lambda p: hashed.append(p) or real(p))

    first = load_encoder(str(folder), device="cpu", hash_cache=cache_file).snapshot
    assert [p.name for p in hashed] == ["model.safetensors"] and cache_file.is_file()
    assert load_encoder(str(folder), device="cpu", hash_cache=cache_file).snapshot == first
    assert len(hashed) == 1  # the second load read the weights' hash from the cache file

    weights = folder / "model.safetensors"
    before = weights.stat()
    perturb_weights(folder)
    assert weights.stat().st_size == before.st_size and weights.stat().st_mtime_ns != before.st_mtime_ns
    changed = load_encoder(str(folder), device="cpu", hash_cache=cache_file).snapshot
    assert changed != first and len(hashed) == 2


def test_folder_weights_replaced_under_a_collection_are_refused(settings, tmp_path, tiny_model):
    folder = old_folder_copy(tiny_model, tmp_path / "model")
    folder_settings = settings.model_copy(update={"model": str(folder)})
    rt = Runtime(folder_settings)
    fill(rt.store.milvus(), rt.encoder.dim)
    old_key = rt.encoder.model_key
    rt.close()

    perturb_weights(folder)
    rt = Runtime(folder_settings)
    try:
        with pytest.raises(ModelMismatchError) as err:
            rt.store.milvus()
    finally:
        rt.close()
    message = str(err.value)
    assert old_key.short_snapshot in message and "the weight files in that folder changed" in message
    assert f"put the old weight files back in {folder.resolve()}" in message and "vidsearch reindex" in message


def test_old_folder_collection_is_upgraded_to_its_content_hash(settings, tmp_path, tiny_model, caplog):
    folder = old_folder_copy(tiny_model, tmp_path / "model")
    folder_settings = settings.model_copy(update={"model": str(folder)})
    vectors = create_old_collection(folder_settings, dim_of(tiny_model), str(folder.resolve()))
    caplog.set_level(logging.INFO, logger="schema.vectors")
    rt = Runtime(folder_settings)
    try:
        assert [h.video_id for h in rt.store.milvus().search(vectors[1], 1)] == [2]
        snapshot = rt.encoder.snapshot
    finally:
        rt.close()
    lines = upgrade_lines(caplog)
    assert len(lines) == 1 and f"recorded {folder.resolve()} without a snapshot" in lines[0]
    assert "content hash" in lines[0] and snapshot in lines[0]
    assert properties(folder_settings, folder_settings.collection + SEGMENTS_SUFFIX)[PROP_SNAPSHOT] == snapshot


# -------------------------------------------------------------------------------------------------- precision


def test_another_precision_class_is_refused(settings):
    exact = ModelKey(model="m", snapshot=COMMIT_A, precision=PRECISION_EXACT, dim=8, revision="main")
    MilvusVectorStore.open(settings, 8, exact).close()
    reduced = ModelKey(model="m", snapshot=COMMIT_A, precision=PRECISION_INT8, dim=8, revision="main")
    with pytest.raises(ModelMismatchError, match="precision exact -> int8"):
        MilvusVectorStore.open(settings, 8, reduced)
    wider = ModelKey(model="m", snapshot=COMMIT_A, precision=PRECISION_EXACT, dim=16, revision="main")
    with pytest.raises(ModelMismatchError, match="dim 8 -> 16"):
        MilvusVectorStore.open(settings, 16, wider)
