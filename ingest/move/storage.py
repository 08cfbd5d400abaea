"""Move stage 2: the stored video files, copied into another store, and the catalog's `stored_path` rewritten.

The step is `copy_video_files(catalog, target, ...)`: it walks the catalog's videos, hands each file the library
owns to `target.put` (which stores it under its content hash and returns where it now is) and writes that into the
catalog's row. Videos ingested in place (`--link`, owned=False) are the user's own files: they stay where they are
and are listed as such. `FolderTarget` is the store for a folder (a mount shared by several machines), laid out as
ingest/library.py lays out the data folder: <folder>/<first two hex digits>/<sha256><extension>. Another kind of
store (`s3://bucket/prefix`) is a StoreTarget: the product's own Storage (schema/storage.py), keyed as ingest keys
uploads, so the moved library's videos look exactly like ones ingested into that store.

The source files are left in place (remove them once the moved library works); a file already in the target with
the right content is not copied again, so an interrupted step is resumed by running it again.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from sqlalchemy import select, update

from ingest.library import content_path, copy_hashing, sha256_file
from ingest.move.common import BatchHook, MoveError, Progress
from schema.catalog import Catalog, Video
from schema.settings import Settings
from schema.storage import S3_SCHEME, Storage, StorageError, key_for, open_storage

log = logging.getLogger(__name__)


class VideoTarget(Protocol):
    """Where the library's video files go."""

    def holds(self, stored_path: str) -> bool:
        """Whether `stored_path` (from the catalog) is already in this store."""
        ...

    def put(self, source: Path, sha256: str, name: str) -> str:
        """Store the bytes of `source`, whose content hash is `sha256` (`name`: the stored file's name, for its
        extension); returns what the catalog's `stored_path` becomes. Raises MoveError when the bytes do not hash
        to `sha256`."""
        ...


class FolderTarget:
    """A folder (local or a shared mount), content-addressed like the data folder's videos/."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().resolve()

    def __str__(self) -> str:
        return str(self.root)

    def holds(self, stored_path: str) -> bool:
        return Path(stored_path).is_relative_to(self.root) and Path(stored_path).is_file()

    def put(self, source: Path, sha256: str, name: str) -> str:
        dest = content_path(self.root, sha256, name)
        if dest.is_file() and dest.stat().st_size == source.stat().st_size:
            return str(dest)  # written whole by an earlier run (files are renamed into place, never half there)
        tmp, digest = copy_hashing(source, dest.parent)  # as ingest stores files: hashed as written
        try:
            if digest != sha256:
                raise MoveError(f"{source} no longer holds the content the catalog recorded (sha256 {sha256[:12]}…): "
                                "not copied; run `vidsearch doctor` at the source")
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return str(dest)


class StoreTarget:
    """Object storage (S3-compatible) through the product's Storage: what VIDSEARCH_STORAGE=s3://... reads."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def __str__(self) -> str:
        return self.storage.url

    def holds(self, stored_path: str) -> bool:
        if not stored_path.startswith(self.storage.url + "/"):
            return False
        try:
            return self.storage.exists(stored_path)
        except StorageError as exc:
            raise MoveError(f"--to-storage {self.storage.url}: the store cannot be reached: {exc}") from None

    def put(self, source: Path, sha256: str, name: str) -> str:
        key = key_for(sha256, Path(name).suffix.lower())
        location = self.storage.location(key)
        try:
            if self.storage.exists(location) and self.storage.size(location) == source.stat().st_size:
                return location  # uploaded whole by an earlier run (an object appears whole or not at all)
            if sha256_file(source) != sha256:  # read once to check, then uploaded: a second read, not a copy
                raise MoveError(f"{source} no longer holds the content the catalog recorded (sha256 "
                                f"{sha256[:12]}…): not copied; run `vidsearch doctor` at the source")
            return self.storage.put(source, key)
        except StorageError as exc:
            raise MoveError(f"--to-storage {self.storage.url}: uploading {source.name} failed: {exc}") from None


def storage_target(where: str | Path, settings: Settings | None = None) -> VideoTarget:
    """The store `--to-storage` names: a folder (a shared mount), or s3://bucket/prefix (its endpoint and
    credentials as VIDSEARCH_STORAGE's: VIDSEARCH_S3_ENDPOINT_URL and the usual AWS sources)."""
    text = str(where)
    if text.startswith(S3_SCHEME):
        base = settings or Settings()
        try:
            storage = open_storage(base.model_copy(update={"storage": text}))
            storage.check()
        except (StorageError, ValueError) as exc:
            raise MoveError(f"--to-storage {text}: {exc}") from None
        return StoreTarget(storage)
    if "://" in text:
        raise MoveError(f"--to-storage {text}: a folder or an s3://bucket/prefix URL")
    return FolderTarget(Path(text))


@dataclass
class StorageReport:
    target: str
    copied: int = 0  # files copied by this run
    already: int = 0  # owned files already in the target
    linked: list[str] = field(default_factory=list)  # files ingested in place: left where they are
    missing: list[str] = field(default_factory=list)  # owned files not found at the source: left as they were
    damaged: list[str] = field(default_factory=list)  # owned files whose bytes no longer match their hash: left

    @property
    def nothing_to_do(self) -> bool:
        return not self.copied


def copy_video_files(catalog: Catalog, target: VideoTarget, *, progress: Progress, on_batch: BatchHook
                     ) -> StorageReport:
    """Copy every video file the library owns into `target` and point the catalog's rows at the copies (see the
    module's docstring). `catalog` is the catalog the library uses from now on (the destination's, when the
    catalog moves too)."""
    report = StorageReport(str(target))
    with catalog.sessions() as s:
        videos = [(v.id, v.sha256, v.stored_path, v.owned)
                  for v in s.scalars(select(Video).order_by(Video.id))]
    todo = []
    for video_id, sha256, stored, owned in videos:
        if not owned:
            report.linked.append(stored)
        elif target.holds(stored):
            report.already += 1
        elif not Path(stored).is_file():
            report.missing.append(stored)
        else:
            todo.append((video_id, sha256, stored))
    bar = progress("videos", len(todo))
    try:
        for video_id, sha256, stored in todo:
            try:
                placed = target.put(Path(stored), sha256, Path(stored).name)
            except MoveError as exc:
                log.warning("%s", exc)
                report.damaged.append(stored)
                bar.update(1)
                continue
            with catalog.sessions.begin() as s:
                s.execute(update(Video).where(Video.id == video_id).values(stored_path=placed))
            report.copied += 1
            bar.update(1)
            on_batch("storage", "videos", 1)
    finally:
        bar.close()
    return report
