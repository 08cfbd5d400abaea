"""How results are shown, wherever they are shown: media and thumbnail URLs, times as clocks. Used by the Gradio
page, the JSON API and the command line alike."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

from ingest import thumbnails
from ingest.experts.speech import describe_asr
from ingest.runtime import Runtime
from schema.settings import Settings
from schema.storage import KEY_PATTERN, StorageError, is_remote
from schema.units import clock

log = logging.getLogger(__name__)

MEDIA_ROUTE = "/media"
THUMBS_ROUTE = "/thumbnails"


def experts_summary(settings: Settings) -> str:
    """The experts a worker runs besides appearance, speech with its recogniser: for start-up logs."""
    names = [f"speech ({describe_asr(settings)})" if n == "speech" else n for n in settings.expert_names]
    return ", ".join(names) or "none"


def media_url(runtime: Runtime, stored_path: str) -> str | None:
    """URL of a stored video under /media, or None for files kept outside the video store (--link)."""
    if is_remote(stored_path):
        key = runtime.storage.key_of(stored_path) if runtime.storage.remote else None
        return f"{MEDIA_ROUTE}/{key}" if key is not None and KEY_PATTERN.fullmatch(key) else None
    if runtime.storage.remote:
        return None  # /media serves the object store only (a file stored locally before the switch is not there)
    try:
        relative = Path(stored_path).resolve().relative_to(runtime.settings.videos_dir)
    except ValueError:
        return None
    return f"{MEDIA_ROUTE}/{relative.as_posix()}"


def thumbnail_url(runtime: Runtime, sha256: str, name: str | int = thumbnails.POSTER) -> str | None:
    """URL of a video's poster (or of one sample's thumbnail) under /thumbnails; None when it has none (ingested
    before thumbnails were made)."""
    if not sha256:
        return None
    if not thumbnails.has_poster(runtime.settings.thumbnails_dir, sha256) and not _mirrored(runtime, sha256):
        return None
    return f"{THUMBS_ROUTE}/{thumbnails.relative_url(sha256, name)}"


_MISSED: dict[str, float] = {}  # sha256 -> when object storage had no thumbnails for it (asked again after a while)
_MISS_SECONDS = 60.0


def _mirrored(runtime: Runtime, sha256: str) -> bool:
    """With object storage, a video another host's worker ingested: fetch its thumbnails once into this host's
    data folder. A miss (none made yet, or the store unreachable) is not asked again for a minute, so a page of
    results costs the store at most one listing per video."""
    storage = runtime.storage
    if not storage.remote or time.monotonic() - _MISSED.get(sha256, -_MISS_SECONDS) < _MISS_SECONDS:
        return False
    try:
        if thumbnails.mirror(storage, runtime.settings.thumbnails_dir, sha256):
            return True
    except (StorageError, OSError) as exc:
        log.warning("thumbnails of %s… could not be fetched from the store: %s", sha256[:12], exc)
    if len(_MISSED) > 10_000:
        _MISSED.clear()
    _MISSED[sha256] = time.monotonic()
    return False


def fragment(url: str, start: float, end: float) -> str:
    """A media fragment URL: players start at `start` and pause at `end`."""
    return f"{url}#t={start:.2f},{end:.2f}"


def span(start: float, end: float) -> str:
    """'0:12–0:17' (whole seconds, rounded outwards so a short moment never reads as 0:03–0:03)."""
    return f"{clock(math.floor(start))}–{clock(math.ceil(end))}"
