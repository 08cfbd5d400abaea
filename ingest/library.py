"""Bringing files into the library: content hashing, content-addressed storage, enqueueing, deletion."""

from __future__ import annotations

import enum
import hashlib
import logging
import os
import re
import tempfile
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.exc import IntegrityError

from ingest import thumbnails
from ingest.decode import looks_like_video
from schema.catalog import Catalog, Job, Video, VideoStatus
from schema.filters import check_tag
from schema.settings import Settings
from schema.storage import S3Storage, Storage, StorageError, is_remote, key_for, open_storage
from schema.vectors import VectorStore

log = logging.getLogger(__name__)

MAX_TITLE = 255


class Outcome(str, enum.Enum):
    QUEUED = "queued"
    ALREADY_PRESENT = "already present"
    ALREADY_QUEUED = "already queued"
    REQUEUED = "requeued"  # the same content failed before; try again
    NOT_VIDEO = "not a video"


class LinkRefused(ValueError):
    """--link with object storage: a linked file stays on the host that added it, where no other host (worker, web
    app) can read it."""


LINK_REFUSED = ("--link cannot be used with object storage (VIDSEARCH_STORAGE={}): a linked file stays on this host, "
                "where other workers and the web app cannot read it. Add the files without --link (they are uploaded "
                "to the store), or put them on a shared folder and use that folder as VIDSEARCH_STORAGE.")


@dataclass(frozen=True)
class Enqueued:
    source: str
    outcome: Outcome
    video_id: int | None = None
    job_id: int | None = None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def safe_title(name: str) -> str:
    """A display title from a client-supplied file name: base name only, no control or bidi-override characters,
    line breaks and tabs as single spaces, bounded (a long name keeps its extension). Never used as a path."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(" " if ch.isspace() else ch for ch in unicodedata.normalize("NFC", name)
                   if ch.isspace() or unicodedata.category(ch)[0] != "C")
    name = " ".join(name.split())
    if len(name) > MAX_TITLE:
        stem, dot, ext = name.rpartition(".")
        suffix = f".{ext}" if dot and stem and len(ext) <= 16 else ""
        name = name[: MAX_TITLE - len(suffix)].rstrip() + suffix
    return name or "untitled"


def _safe_suffix(name: str) -> str:
    """Keep a short alphanumeric extension so browsers can guess the media type; anything else is dropped."""
    suffix = Path(safe_title(name)).suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,5}", suffix) else ""


def content_path(folder: Path, sha256: str, name: str) -> Path:
    """Where a file of this content is kept in a content-addressed folder (the videos folder, or the folder a
    library is moved to): <folder>/<first two hex digits>/<sha256><extension of `name`>."""
    return folder / sha256[:2] / f"{sha256}{_safe_suffix(name)}"


def stored_path_for(settings: Settings, sha256: str, name: str) -> Path:
    return content_path(settings.videos_dir, sha256, name)


def copy_hashing(src: Path, folder: Path) -> tuple[Path, str]:
    """Copy `src` to a temporary file in `folder`, hashing the bytes as they are written: (temp file, its sha256).
    The hash is of what was stored, whatever the source did meanwhile."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".incoming-")
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
                out.write(block)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp), digest.hexdigest()


def _place(tmp: Path, dest: Path, digest: str) -> None:
    """Rename a fully written file to its content-addressed name (atomic: a crash never leaves half a file there).
    A file already at that name is kept only if it really holds that content; a damaged one is replaced."""
    try:
        if dest.exists():
            if sha256_file(dest) == digest:
                return
            log.warning("replacing %s: its content does not match its name (damaged or changed on disk)", dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _take(src: Path, folder: Path, expected: str, *, move: bool) -> tuple[Path, str]:
    """A private copy of `src` in `folder` and its sha256. move: `src` is our own temporary file (an upload), renamed
    instead of written a second time when it is on the same file system."""
    if move:
        tmp = folder / f".incoming-{os.getpid()}-{os.urandom(6).hex()}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            os.replace(src, tmp)  # nobody else writes our temporary file: `expected` is its hash
            return tmp, expected
        except OSError:  # another file system: copy it after all
            pass
    return copy_hashing(src, folder)


def _store(settings: Settings, src: Path, shown: str, expected: str, *, move: bool,
           storage: Storage | None = None) -> tuple[str, str, int]:
    """Bring `src` into the store under the hash of the bytes stored: (sha256, stored path or URL, size)."""
    if settings.storage_is_remote:
        return _store_remote(settings, storage or open_storage(settings), src, shown, expected, move=move)
    tmp, digest = _take(src, settings.videos_dir, expected, move=move)
    if digest != expected:
        log.warning("%s changed while it was being added; stored as its new content", src)
    dest = stored_path_for(settings, digest, shown)
    _place(tmp, dest, digest)
    return digest, str(dest), dest.stat().st_size


def _store_remote(settings: Settings, storage: Storage, src: Path, shown: str, expected: str, *,
                  move: bool) -> tuple[str, str, int]:
    """Object storage: the private copy (hashed as it is written, in the local cache's folder) is uploaded under its
    content key, unless an object of that key and size is there already, and then kept as the cached copy, so the
    worker on this host decodes it without downloading it again."""
    tmp, digest = _take(src, settings.storage_cache_dir, expected, move=move)
    try:
        if digest != expected:
            log.warning("%s changed while it was being added; stored as its new content", src)
        size = tmp.stat().st_size
        key = key_for(digest, _safe_suffix(shown))
        location = storage.location(key)
        try:
            present = storage.size(location) == size
        except FileNotFoundError:
            present = False
        if not present:
            storage.put(tmp, key)
        if isinstance(storage, S3Storage):
            storage.adopt(location, tmp)
        return digest, location, size
    finally:
        tmp.unlink(missing_ok=True)


def enqueue_file(catalog: Catalog, settings: Settings, src: Path, *, title: str | None = None,
                 link: bool = False, check_video: bool = True, tag: str | None = None, move: bool = False,
                 storage: Storage | None = None) -> Enqueued:
    """Register one file for ingestion. Same content twice is recognised by its SHA-256 and not embedded again
    (it keeps the tag it was first given). The file is hashed first, so content already in the library costs no
    copy; a new file is hashed again as it is copied, and stored under the hash of what was written.

    move: `src` is a temporary file of ours (an upload) that may be renamed into the library; it is gone after.
    storage: the settings' store (open_storage), passed in by long-lived callers. LinkRefused: `link` with object
    storage."""
    src = Path(src)
    if link and settings.storage_is_remote:
        raise LinkRefused(LINK_REFUSED.format(settings.storage))
    tag = check_tag(tag) if tag else None
    shown = safe_title(title if title is not None else src.name)
    if check_video and not looks_like_video(src):
        return Enqueued(str(src), Outcome.NOT_VIDEO)
    digest = sha256_file(src)
    existing = catalog.find_by_sha(digest)
    if existing is not None:
        return _existing(catalog, str(src), existing)
    if link:
        resolved = src.resolve()
        stored, owned, size = str(resolved), False, resolved.stat().st_size
    else:
        digest, stored, size = _store(settings, src, shown, digest, move=move, storage=storage)
        owned = True
        if (existing := catalog.find_by_sha(digest)) is not None:  # it changed into content we already have
            return _existing(catalog, str(src), existing)
    try:
        video, job = catalog.add_video(sha256=digest, title=shown, stored_path=stored, owned=owned,
                                       size_bytes=size, tag=tag)
    except IntegrityError:  # another process registered the same content between our check and insert
        if (again := catalog.find_by_sha(digest)) is None:
            raise
        return _existing(catalog, str(src), again)
    return Enqueued(str(src), Outcome.QUEUED, video.id, job.id)


def _existing(catalog: Catalog, source: str, video: Video) -> Enqueued:
    if video.status == VideoStatus.FAILED:
        job = catalog.requeue_video(video.id)
        return Enqueued(source, Outcome.REQUEUED, video.id, job.id)
    latest: Job | None = catalog.jobs_for([video.id]).get(video.id)
    outcome = Outcome.ALREADY_PRESENT if video.status == VideoStatus.READY else Outcome.ALREADY_QUEUED
    return Enqueued(source, outcome, video.id, latest.id if latest else None)


def iter_candidate_files(paths: Iterable[Path], recursive: bool) -> Iterator[Path]:
    """Files named directly, and the files inside named folders (recursively on request), in a stable order."""
    for path in paths:
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            for child in sorted(path.glob(pattern)):
                if child.is_file() and not child.name.startswith("."):
                    yield child
        else:
            yield path


def delete_video(catalog: Catalog, store: VectorStore | None, video_id: int,
                 thumbnails_dir: Path | None = None, *, storage: Storage | None = None) -> Video | None:
    """Remove vectors first (so search never returns a video that no longer exists), then the row, then the file
    (or object) and the thumbnails.

    `store` is None when no collection exists yet (nothing was ever indexed). `storage`: the settings' store, needed
    to delete a video kept in object storage (a ValueError without it, before anything is removed). A store that
    cannot be reached at that moment leaves the object behind (logged); the video is deleted all the same."""
    video = catalog.get_video(video_id)
    if video is None:
        return None
    if video.owned and is_remote(video.stored_path) and (storage is None or not storage.remote):
        raise ValueError(f"video {video_id} is in object storage ({video.stored_path}): pass its storage")
    if store is not None:
        store.delete([video_id])  # its segment vectors too
        if hasattr(store, "delete_experts"):  # the Store facade: what its experts found goes too
            store.delete_experts([video_id])
    catalog.delete_video(video_id)
    if video.owned:
        if is_remote(video.stored_path):
            try:
                storage.delete(video.stored_path)
            except StorageError as exc:
                log.warning("video %d is deleted, but its object %s was left in the store: %s", video_id,
                            video.stored_path, exc)
        else:
            Path(video.stored_path).unlink(missing_ok=True)
    if thumbnails_dir is not None:
        thumbnails.remove(thumbnails_dir, video.sha256)
    if storage is not None and storage.remote:
        try:
            thumbnails.remove_remote(storage, video.sha256)
        except StorageError as exc:
            log.warning("video %d is deleted, but its thumbnails were left in the store: %s", video_id, exc)
    return video
