"""Thumbnails: a small JPEG of every sampled frame and a poster per video, kept in the data folder.

With shared storage every host must see them: in a shared folder they live in it (Settings.thumbnails_dir); with
object storage the worker also uploads them beside the videos (`thumbnails/<sha[:2]>/<sha>/...`), and a host that
has not got a video's thumbnails fetches its folder once, on first view (`mirror`), into its own data folder.

Layout: thumbnails/<sha[:2]>/<sha>/<index>.jpg (sample `index` of the video) and poster.jpg, keyed by the video's
content hash like the stored copy, so a re-ingest overwrites the same files and nothing user-typed becomes a path.
They are made in the decode processes from the frames already decoded for the model (no second decoding pass).
"""

from __future__ import annotations

import io
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

THUMB_SIDE = 320  # longest side, pixels
JPEG_QUALITY = 80
POSTER = "poster.jpg"
# A frame this dark on average is taken for a fade-in / black lead-in and avoided as the poster.
DARK_LUMA = 16.0
_SHA = re.compile(r"[0-9a-f]{64}")


def jpeg_thumbnail(frame: np.ndarray, side: int = THUMB_SIDE) -> bytes:
    """HxWx3 uint8 RGB -> JPEG bytes, the longest side at most `side` pixels."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(frame), "RGB")
    if max(image.size) > side:
        image.thumbnail((side, side), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=JPEG_QUALITY, optimize=True)
    return out.getvalue()


def luma_stats(frame: np.ndarray) -> tuple[float, float]:
    """(mean, standard deviation) of the frame's luma (BT.601), on a subsample: cheap, and enough to spot black."""
    small = frame[:: max(1, frame.shape[0] // 64), :: max(1, frame.shape[1] // 64)].astype(np.float32)
    luma = small @ np.array([0.299, 0.587, 0.114], np.float32)
    return float(luma.mean()), float(luma.std())


def pick_poster(stats: Sequence[tuple[float, float]]) -> int:
    """The sample to show for the whole video: the most detailed (highest luma variance) of the first quarter that
    is not near-black; failing that, of all samples; failing that (a dark video), the most detailed of all."""
    if not stats:
        return 0
    head = max(3, len(stats) // 4)
    for candidates in (range(min(head, len(stats))), range(len(stats))):
        lit = [i for i in candidates if stats[i][0] >= DARK_LUMA]
        if lit:
            return max(lit, key=lambda i: stats[i][1])
    return max(range(len(stats)), key=lambda i: stats[i][1])


def folder(root: Path, sha256: str) -> Path:
    if not _SHA.fullmatch(sha256):
        raise ValueError("not a SHA-256 hex digest")
    return root / sha256[:2] / sha256


def relative_url(sha256: str, name: str | int) -> str:
    """Path under the thumbnails route: '<sha[:2]>/<sha>/<index>.jpg' or '.../poster.jpg'."""
    file = name if isinstance(name, str) else f"{int(name)}.jpg"
    return f"{sha256[:2]}/{sha256}/{file}"


def write(root: Path, sha256: str, jpegs: Sequence[bytes], poster: int) -> Path:
    """Write every sample's JPEG and the poster; each file atomically (a reader never sees half a JPEG)."""
    target = folder(root, sha256)
    target.mkdir(parents=True, exist_ok=True)
    names = [f"{i}.jpg" for i in range(len(jpegs))]
    for name, data in zip(names, jpegs, strict=True):
        _atomic_write(target / name, data)
    if jpegs:
        _atomic_write(target / POSTER, jpegs[min(max(poster, 0), len(jpegs) - 1)])
    for stale in target.glob("*.jpg"):  # a previous ingest with more samples
        if stale.name not in names and stale.name != POSTER:
            stale.unlink(missing_ok=True)
    return target


def remove(root: Path, sha256: str) -> None:
    try:
        shutil.rmtree(folder(root, sha256))
    except FileNotFoundError:
        pass
    except ValueError:
        return


def has_poster(root: Path, sha256: str) -> bool:
    try:
        return (folder(root, sha256) / POSTER).is_file()
    except ValueError:
        return False


def stored_hashes(root: Path) -> set[str]:
    """Content hashes that have a thumbnail folder."""
    if not root.is_dir():
        return set()
    return {p.name for p in root.glob("??/*") if p.is_dir() and _SHA.fullmatch(p.name)}


REMOTE = "thumbnails"  # their prefix in object storage


def _remote_prefix(sha256: str) -> str:
    return f"{REMOTE}/{relative_url(sha256, '')}"


def upload(storage, root: Path, sha256: str) -> None:
    """Copy a video's thumbnail folder into object storage (`storage`: schema.storage.S3Storage), replacing what a
    previous ingest left there."""
    files = {_remote_prefix(sha256) + p.name: p.read_bytes() for p in folder(root, sha256).glob("*.jpg")}
    storage.delete_files(_remote_prefix(sha256))
    storage.put_files(files)


def mirror(storage, root: Path, sha256: str) -> bool:
    """Fetch a video's thumbnails from object storage into `root` (this host's copy); whether it has a poster."""
    if not _SHA.fullmatch(sha256):
        return False
    files = {name.rsplit("/", 1)[-1]: data for name, data in storage.get_files(_remote_prefix(sha256)).items()}
    names = [n for n in files if re.fullmatch(r"\d+\.jpg|poster\.jpg", n)]
    if not names:
        return False
    target = folder(root, sha256)
    target.mkdir(parents=True, exist_ok=True)
    for name in sorted(names, key=lambda n: n == POSTER):  # the poster last: it marks the folder complete
        _atomic_write(target / name, files[name])
    return POSTER in names


def remove_remote(storage, sha256: str) -> None:
    if _SHA.fullmatch(sha256):
        storage.delete_files(_remote_prefix(sha256))


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
