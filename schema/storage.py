"""Where stored videos live: a folder (`<home>/videos` by default, or a shared mount) or S3-compatible object storage
(VIDSEARCH_STORAGE=s3://bucket/prefix, `.[s3]`). README, Shared storage.

A video is stored under a content-addressed key, `ab/<sha256><.ext>`, and `Video.stored_path` holds its location:
the local path for a folder (as before this module, so old catalogs keep working), the `s3://bucket/prefix/key` URL
for object storage. Reading a remote video for decoding goes through a bounded local cache (VideoCache).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from filelock import FileLock

from schema.settings import Settings

S3_SCHEME = "s3://"
# The keys the library writes, and the only ones /media serves: ab/<sha256> with a short lowercase extension.
KEY_PATTERN = re.compile(r"[0-9a-f]{2}/[0-9a-f]{64}(\.[a-z0-9]{1,5})?")
_CHUNK = 1 << 20


class StorageError(OSError):
    """The store cannot be reached or refused a request (not: an object is missing, which is FileNotFoundError)."""


def is_remote(stored_path: str) -> bool:
    """Whether a `Video.stored_path` is an object-store URL (else a local path, of the library's folder or --link)."""
    return stored_path.startswith(S3_SCHEME)


def key_for(sha256: str, suffix: str) -> str:
    """The content-addressed key of a video: `ab/<sha256><suffix>` (suffix: '' or '.mp4' and the like)."""
    return f"{sha256[:2]}/{sha256}{suffix}"


class Storage(Protocol):
    """A place for the library's videos. Locations are `Video.stored_path` values; keys are `ab/<sha256><.ext>`."""

    url: str  # the folder or s3://bucket/prefix, as shown to users
    remote: bool  # object storage: files are not local paths

    def location(self, key: str) -> str:
        """The stored_path of `key` in this store."""
        ...

    def key_of(self, location: str) -> str | None:
        """The key of a location in this store, None when it is elsewhere (a --link file, another store)."""
        ...

    def put(self, src: Path, key: str) -> str:
        """Store a local file under `key` (atomically: readers never see half of it); its location."""
        ...

    def open(self, location: str) -> BinaryIO:
        """A binary file object for reading (seekable). FileNotFoundError when it is not there."""
        ...

    def read_range(self, location: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of a stored file."""
        ...

    def size(self, location: str) -> int:
        """Size in bytes. FileNotFoundError when it is not there."""
        ...

    def exists(self, location: str) -> bool: ...

    def delete(self, location: str) -> None:
        """Remove a stored file; one already gone is fine."""
        ...

    def sizes(self) -> dict[str, int]:
        """Every stored video: location -> size (one listing; doctor). StorageError when unreachable."""
        ...

    def check(self) -> None:
        """Raise StorageError (with the reason) when the store cannot be reached."""
        ...

    def local_copy(self, location: str) -> contextlib.AbstractContextManager[Path]:
        """A local path of the stored file for as long as the context lasts (a folder's file itself; for object
        storage, a copy in the bounded cache that is not evicted while in use)."""
        ...


def open_storage(settings: Settings) -> Storage:
    """The store of these settings: VIDSEARCH_STORAGE (a folder, or s3://bucket/prefix), else `<home>/videos`."""
    if settings.storage_is_remote:
        return S3Storage(settings.storage or "", endpoint_url=settings.s3_endpoint_url,
                         cache=VideoCache(settings.storage_cache_dir, int(settings.storage_cache_gb * 2**30)))
    return FolderStorage(settings.videos_dir)


@dataclass
class FolderStorage:
    """A local folder, or a shared mount (NFS, SMB, ...) that several hosts see under the same path."""

    root: Path
    remote = False

    @property
    def url(self) -> str:
        return str(self.root)

    def location(self, key: str) -> str:
        return str(self.root / key)

    def key_of(self, location: str) -> str | None:
        if is_remote(location):
            return None
        try:
            return Path(location).resolve().relative_to(self.root).as_posix()
        except ValueError:
            return None

    def put(self, src: Path, key: str) -> str:
        dest = self.root / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".incoming-")  # renamed into place: atomic
        try:
            with os.fdopen(fd, "wb") as out, open(src, "rb") as handle:
                shutil.copyfileobj(handle, out, _CHUNK)
            os.replace(tmp, dest)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return str(dest)

    def open(self, location: str) -> BinaryIO:
        return open(location, "rb")

    def read_range(self, location: str, start: int, end: int) -> bytes:
        with open(location, "rb") as handle:
            handle.seek(start)
            return handle.read(max(0, end - start))

    def size(self, location: str) -> int:
        return Path(location).stat().st_size

    def exists(self, location: str) -> bool:
        return Path(location).is_file()

    def delete(self, location: str) -> None:
        Path(location).unlink(missing_ok=True)

    def sizes(self) -> dict[str, int]:
        if not self.root.is_dir():
            raise StorageError(f"the video folder {self.root} does not exist (is the shared mount mounted?)")
        return {str(p): p.stat().st_size for p in self.root.glob("*/*") if p.is_file() and not p.name.startswith(".")}

    def check(self) -> None:
        if not self.root.is_dir():
            raise StorageError(f"the video folder {self.root} does not exist (is the shared mount mounted?)")

    @contextlib.contextmanager
    def local_copy(self, location: str) -> Iterator[Path]:
        yield Path(location)


class S3Storage:
    """S3-compatible object storage through fsspec's s3fs. Credentials and region come from the usual AWS sources
    (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE / AWS_DEFAULT_REGION, ~/.aws); the endpoint of a
    non-AWS server from VIDSEARCH_S3_ENDPOINT_URL (or botocore's own AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL)."""

    remote = True

    def __init__(self, url: str, *, endpoint_url: str | None = None, cache: VideoCache) -> None:
        if not url.startswith(S3_SCHEME) or not url[len(S3_SCHEME):].strip("/"):
            raise ValueError(f"not an s3://bucket[/prefix] URL: {url!r}")
        self.root = url[len(S3_SCHEME):].strip("/")  # bucket[/prefix]
        self.url = S3_SCHEME + self.root
        self.endpoint_url = endpoint_url
        self.cache = cache
        self._fs = None

    @property
    def fs(self):  # -> s3fs.S3FileSystem
        if self._fs is None:
            try:
                import s3fs
            except ImportError as exc:
                raise StorageError("VIDSEARCH_STORAGE is an s3:// URL but s3fs is not installed: "
                                   "pip install 'vidsearch[s3]'") from exc
            # Short connect timeout and few retries: an unreachable store is reported in seconds, not minutes.
            fs = s3fs.S3FileSystem(endpoint_url=self.endpoint_url,
                                   config_kwargs={"connect_timeout": 5, "read_timeout": 60,
                                                  "retries": {"max_attempts": 2}})
            fs.retries = 2  # s3fs's own retries of a failed call (a class attribute, 5 by default)
            self._fs = fs
        return self._fs

    def _path(self, location: str) -> str:
        if not location.startswith(S3_SCHEME):
            raise ValueError(f"not an s3:// location: {location!r}")
        return location[len(S3_SCHEME):]

    def location(self, key: str) -> str:
        return f"{self.url}/{key}"

    def key_of(self, location: str) -> str | None:
        prefix = self.url + "/"
        return location[len(prefix):] if location.startswith(prefix) else None

    def _call(self, what: str, fn, *args, **kwargs):
        """Run an s3fs call; a missing object stays FileNotFoundError, anything else is a StorageError."""
        try:
            return fn(*args, **kwargs)
        except FileNotFoundError:
            raise
        except StorageError:
            raise
        except Exception as exc:  # noqa: BLE001 (botocore/aiohttp errors of every kind: the store is unreachable)
            raise StorageError(f"the video store {self.url} cannot be reached ({what}): "
                               f"{str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__}") from exc

    def put(self, src: Path, key: str) -> str:
        location = self.location(key)
        self._call("upload", self.fs.put_file, str(src), self._path(location))  # one PUT or a multipart upload:
        return location  # either way the object appears whole or not at all

    def open(self, location: str) -> BinaryIO:
        return self._call("open", self.fs.open, self._path(location), "rb", block_size=_CHUNK * 4)

    def read_range(self, location: str, start: int, end: int) -> bytes:
        if end <= start:
            return b""
        return self._call("read", self.fs.cat_file, self._path(location), start=start, end=end)

    def size(self, location: str) -> int:
        return int(self._call("stat", self.fs.info, self._path(location), refresh=True)["size"])

    def exists(self, location: str) -> bool:
        try:
            self.size(location)
        except FileNotFoundError:
            return False
        return True

    def delete(self, location: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._call("delete", self.fs.rm_file, self._path(location))
        self.cache.discard(location)

    def sizes(self) -> dict[str, int]:
        self.check()
        found = self._call("list", self.fs.find, self.root, detail=True, refresh=True)
        return {f"{S3_SCHEME}{path}": int(info.get("size") or 0) for path, info in found.items()}

    def check(self) -> None:
        bucket = self.root.split("/", 1)[0]
        try:
            self._call("list", self.fs.ls, bucket, refresh=True)
        except FileNotFoundError as exc:
            raise StorageError(f"the video store {self.url}: no bucket {bucket!r}") from exc

    def local_copy(self, location: str) -> contextlib.AbstractContextManager[Path]:
        return self.cache.use(location, lambda dest: self._call("download", self.fs.get_file, self._path(location),
                                                                str(dest)))

    def adopt(self, location: str, local: Path) -> None:
        """A local file that holds what `location` holds (the copy just uploaded) becomes its cached copy."""
        self.cache.adopt(location, local)

    # --- small files beside the videos (the thumbnails: ingest/thumbnails.py) ------------------------------------
    def put_files(self, files: dict[str, bytes]) -> None:
        """Write small objects, key -> bytes (each whole or not at all), concurrently."""
        if files:
            self._call("upload", self.fs.pipe, {self._path(self.location(k)): v for k, v in files.items()})

    def get_files(self, prefix: str) -> dict[str, bytes]:
        """Every object under `prefix` (a key ending in /): key -> bytes; {} when there is none."""
        base = self._path(self.location(prefix))
        try:
            found = self._call("list", self.fs.find, base, refresh=True)
        except FileNotFoundError:
            return {}
        if not found:
            return {}
        data = self._call("download", self.fs.cat, list(found))
        cut = len(self.root) + 1
        return {path[cut:]: value for path, value in data.items()}

    def delete_files(self, prefix: str) -> None:
        """Remove every object under `prefix`; none is fine."""
        with contextlib.suppress(FileNotFoundError):
            self._call("delete", self.fs.rm, self._path(self.location(prefix)), recursive=True)


class VideoCache:
    """Local copies of remote videos, bounded by size (least recently used evicted), safe for several processes on
    one host: downloads go to a temporary name and are renamed into place, one download per file at a time (a file
    lock), and a copy in use is held with a shared flock() so that eviction (which needs an exclusive one) skips it.
    The bound can be exceeded only by copies in use at once (e.g. one video larger than the whole cache)."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes

    def path_for(self, location: str) -> Path:
        name = location.rsplit("/", 1)[-1]  # <sha256><.ext>: content-addressed, the extension kept for decoders
        if not re.fullmatch(r"[0-9a-f]{64}(\.[a-z0-9]{1,5})?", name):
            name = hashlib.sha256(location.encode()).hexdigest() + Path(name).suffix[:6]
        return self.folder / name

    def _lock(self, path: Path) -> FileLock:
        locks = self.folder / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        return FileLock(str(locks / f"{path.name}.lock"))

    @contextlib.contextmanager
    def use(self, location: str, download) -> Iterator[Path]:
        """The cached copy of `location` (fetched by `download(dest_path)` when absent), held while in the context."""
        path = self.path_for(location)
        fd = self._hold(path)
        if fd is None:
            with self._lock(path):
                fd = self._hold(path)  # another process may have fetched it meanwhile
                if fd is None:
                    self.folder.mkdir(parents=True, exist_ok=True)
                    tmp = self.folder / f".part-{os.getpid()}-{os.urandom(6).hex()}"
                    try:
                        download(tmp)
                        os.replace(tmp, path)
                    finally:
                        tmp.unlink(missing_ok=True)
                    fd = self._hold(path)
                    if fd is None:  # evicted between the rename and the hold: not possible under our lock
                        raise FileNotFoundError(errno.ENOENT, "cached copy vanished", str(path))
        try:
            self.evict()
            yield path
        finally:
            with contextlib.suppress(OSError):
                os.utime(path)  # recency is the end of its last use
            os.close(fd)
            self.evict()

    def _hold(self, path: Path) -> int | None:
        """Open and share-lock a cached copy, refreshing its last use; None when it is not (or no longer) there."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        fcntl.flock(fd, fcntl.LOCK_SH)
        if os.fstat(fd).st_nlink == 0:  # evicted between our open and our lock
            os.close(fd)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)
        return fd

    def adopt(self, location: str, local: Path) -> None:
        """Move a local file holding `location`'s content into the cache (no download needed later)."""
        path = self.path_for(location)
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(local, path)
        except OSError:  # another file system
            return
        self.evict()

    def discard(self, location: str) -> None:
        self.path_for(location).unlink(missing_ok=True)

    def entries(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return [p for p in self.folder.iterdir() if p.is_file() and not p.name.startswith(".")]

    def total_bytes(self) -> int:
        return sum(_size_or_zero(p) for p in self.entries())

    def evict(self) -> int:
        """Remove least recently used copies not in use until the cache is within its bound; bytes removed."""
        if not self.folder.is_dir():
            return 0
        removed = 0
        with FileLock(str(self.folder / ".evict.lock")):
            stats = []
            for p in self.entries():
                with contextlib.suppress(FileNotFoundError):
                    stats.append((p.stat().st_mtime, p.stat().st_size, p))
            total = sum(s for _, s, _ in stats)
            for _, size, path in sorted(stats):
                if total <= self.max_bytes:
                    break
                try:
                    fd = os.open(path, os.O_RDONLY)
                except FileNotFoundError:
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # in use: kept
                    os.close(fd)
                    continue
                try:
                    path.unlink(missing_ok=True)
                finally:
                    os.close(fd)
                total -= size
                removed += size
        return removed


def _size_or_zero(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
