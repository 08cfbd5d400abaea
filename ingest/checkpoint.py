"""Which snapshot a checkpoint is: a hub revision's commit in the Hugging Face cache, or a folder's content hash.

The snapshot is recorded on the Milvus collections (schema/model_key.py), so new weights under an old name (a push
to `main`, files replaced in a folder) are refused instead of mixed with the old vectors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

from schema.model_key import FOLDER_HASH_PREFIX

log = logging.getLogger(__name__)

# The files whose bytes make a folder's vector space. Weights and their shard indexes; config.json (projection
# size, activation, layer norm eps, image size: the forward pass) and preprocessor_config.json (resize, crop,
# mean/std: the pixels every stored vector was computed from). Tokenizer files are left out: they shape only the
# queries, and re-embedding the videos would not follow a change there.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")
CONFIG_FILES = ("config.json", "preprocessor_config.json")
# Keys save_pretrained rewrites without changing any number: a re-save by another transformers version is the
# same checkpoint.
VOLATILE_CONFIG_KEYS = frozenset({"transformers_version", "_name_or_path", "processor_class"})
# A file changed within this long of being hashed could change again without its mtime moving (the file system's
# timestamps are coarser than the write), so such a hash is used but not cached ("racy git").
RACY_SECONDS = 2.0
CACHE_VERSION = 1


def hub_revision(model: str, revision: str | None, cache_dir: Path | None = None):
    """The commit `revision` of hub id `model` points to (a huggingface_hub ResolvedRevision: a str equal to the
    revision asked for, `.resolved` the commit). Offline, from the cache's refs/<revision>; online, asked of the
    hub (which also updates the cache). Passing it on as `revision` loads every file from that one snapshot."""
    from huggingface_hub import is_offline_mode, resolve_revision

    return resolve_revision(model, revision=revision, cache_dir=cache_dir, local_files_only=is_offline_mode())


def cached_hub_snapshot(model: str, revision: str | None, cache_dir: Path | None = None) -> str | None:
    """The commit `revision` of `model` points to in the local cache (never the network); None if not there."""
    from huggingface_hub import resolve_revision
    from huggingface_hub.errors import RevisionResolutionError

    try:
        return resolve_revision(model, revision=revision, cache_dir=cache_dir, local_files_only=True).resolved
    except (RevisionResolutionError, OSError, ValueError):
        return None


def folder_snapshot(folder: Path, cache_file: Path | None = None) -> str:
    """FOLDER_HASH_PREFIX + sha256 over the folder's weight and config files (see WEIGHT_SUFFIXES/CONFIG_FILES).

    Weight files' hashes are kept in `cache_file` (JSON) keyed by resolved path, size, mtime, ctime and inode, so
    a start hashes ~600 MB only when a file changed; config files are small and hashed every time."""
    folder = folder.expanduser().resolve()
    weights = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if not weights:
        raise ValueError(f"{folder} holds no weight files ({', '.join('*' + s for s in WEIGHT_SUFFIXES[:2])})")
    cache = HashCache(cache_file)
    total = hashlib.sha256()
    for path in weights:
        total.update(f"{path.name}\0{cache.digest(path)}\n".encode())
    for name in CONFIG_FILES:
        if (folder / name).is_file():
            total.update(f"{name}\0{config_digest(folder / name)}\n".encode())
    cache.save()
    return FOLDER_HASH_PREFIX + total.hexdigest()


def config_digest(path: Path) -> str:
    """sha256 of a JSON config with sorted keys and without VOLATILE_CONFIG_KEYS (any file that is not JSON: its
    bytes)."""
    raw = path.read_bytes()
    try:
        data = json.loads(raw)
    except ValueError:
        return hashlib.sha256(raw).hexdigest()
    return hashlib.sha256(json.dumps(_strip_volatile(data), sort_keys=True).encode()).hexdigest()


def _strip_volatile(data):
    if isinstance(data, dict):
        return {k: _strip_volatile(v) for k, v in data.items() if k not in VOLATILE_CONFIG_KEYS}
    if isinstance(data, list):
        return [_strip_volatile(v) for v in data]
    return data


def hash_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class HashCache:
    """sha256 of files, remembered in a small JSON file (written atomically) while their stat says unchanged."""

    def __init__(self, cache_file: Path | None) -> None:
        self.cache_file = cache_file
        self.entries: dict[str, dict] = self._read()
        self.dirty = False

    def _read(self) -> dict[str, dict]:
        if self.cache_file is None or not self.cache_file.is_file():
            return {}
        try:
            data = json.loads(self.cache_file.read_text())
            if data.get("version") == CACHE_VERSION and isinstance(data.get("files"), dict):
                return data["files"]
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("ignoring unreadable checkpoint hash cache %s: %s", self.cache_file, exc)
        return {}

    def digest(self, path: Path) -> str:
        path = path.resolve()  # a hub snapshot's files are links into blobs/: the blob is what is hashed
        stat = path.stat()
        fingerprint = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns,
                       "inode": stat.st_ino}
        entry = self.entries.get(str(path))
        if entry is not None and all(entry.get(k) == v for k, v in fingerprint.items()):
            return str(entry["sha256"])
        digest = hash_file(path)
        if time.time_ns() - stat.st_mtime_ns > RACY_SECONDS * 1e9:
            self.entries[str(path)] = {**fingerprint, "sha256": digest}
            self.dirty = True
        return digest

    def save(self) -> None:
        if self.cache_file is None or not self.dirty:
            return
        # Files that are gone are forgotten, so the cache stays as small as the checkpoints in use.
        files = {p: e for p, e in self.entries.items() if os.path.exists(p)}
        tmp = self.cache_file.with_name(f".{self.cache_file.name}.{os.getpid()}.tmp")
        try:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"version": CACHE_VERSION, "files": files}, indent=1, sort_keys=True))
            os.replace(tmp, self.cache_file)
            self.dirty = False
        except OSError as exc:  # a read-only data folder costs a re-hash next time, nothing else
            log.warning("could not save the checkpoint hash cache %s: %s", self.cache_file, exc)
            tmp.unlink(missing_ok=True)
