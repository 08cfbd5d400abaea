"""Query -> vector -> Milvus -> join catalog metadata -> ranked results. Pure of any UI."""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from dataclasses import asdict, dataclass, replace

import numpy as np

from ingest.encoder import ClipEncoder
from schema.catalog import Catalog, VideoStatus
from schema.filters import QueryError, SearchFilters, epoch_seconds
from schema.vectors import VectorStore
from search_app.moments import DEFAULT_MOMENT_SECONDS, Moment, best_moments, fetch_segments

# Query images: bounded before anything is decoded (a small PNG can claim gigapixels: a decompression bomb).
MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_IMAGE_PIXELS = 64_000_000


class ImageQueryError(QueryError):
    """The query image cannot be read (not an image, truncated, bad base64)."""


class ImageTooLargeError(ImageQueryError):
    """The query image is over MAX_IMAGE_BYTES or MAX_IMAGE_PIXELS."""


@dataclass(frozen=True)
class SearchResult:
    rank: int
    score: float
    video_id: int
    title: str
    path: str
    duration: float | None
    sha256: str = ""
    moments: tuple[Moment, ...] = ()  # where in the video the query matches best, best first

    def as_dict(self) -> dict:
        return asdict(self)


MAX_K = 1000


def search_vector(catalog: Catalog, store: VectorStore, vector: np.ndarray, k: int,
                  filters: SearchFilters | None = None, *,
                  moment_seconds: float | None = DEFAULT_MOMENT_SECONDS) -> list[SearchResult]:
    """Top-k ready videos for a query vector, each with its best moments (moment_seconds=None: without).

    Videos are ranked by their whole-video vector; then the segment vectors of those k videos are fetched in one
    query and scored exactly, so every video appears once with its own moments (grouping by construction)."""
    results = _rank(catalog, store, vector, k, filters)
    if moment_seconds is None or not results:
        return results
    segments = fetch_segments(store, [r.video_id for r in results])
    return [replace(r, moments=tuple(best_moments(segments[r.video_id], vector, moment_seconds)))
            if r.video_id in segments else r for r in results]


def _rank(catalog: Catalog, store: VectorStore, vector: np.ndarray, k: int,
          filters: SearchFilters | None = None) -> list[SearchResult]:
    """Top-k ready videos for a query vector. Milvus applies the filters while it searches; the catalog (the source
    of truth) is checked again, and vectors whose video is not (or no longer) ready are skipped."""
    if not 1 <= k <= MAX_K:
        raise QueryError(f"k must be between 1 and {MAX_K}")
    fetch = k
    while True:
        hits = store.search(vector, fetch, filters)
        videos = catalog.videos_by_ids([h.video_id for h in hits])
        results: list[SearchResult] = []
        seen: set[int] = set()
        for hit in hits:
            video = videos.get(hit.video_id)
            if video is None or video.status != VideoStatus.READY or hit.video_id in seen:
                continue
            if filters is not None and not filters.accepts(video.duration, epoch_seconds(video.created_at), video.tag):
                continue
            seen.add(hit.video_id)
            results.append(SearchResult(len(results) + 1, round(hit.score, 6), video.id, video.title,
                                        video.stored_path, video.duration, video.sha256))
            if len(results) == k:
                return results
        if len(hits) < fetch or fetch >= 8 * MAX_K:
            return results  # the store has nothing more to give
        fetch *= 4


def search_text(catalog: Catalog, store: VectorStore, encoder: ClipEncoder, query: str, k: int = 10,
                filters: SearchFilters | None = None, *,
                moment_seconds: float | None = DEFAULT_MOMENT_SECONDS) -> list[SearchResult]:
    query = check_query(query)
    check_k(k)
    return search_vector(catalog, store, encoder.embed_text(query), k, filters, moment_seconds=moment_seconds)


def check_query(query: str) -> str:
    """The query text, stripped; an empty one is refused (before any model is loaded or run)."""
    query = query.strip()
    if not query:
        raise QueryError("type something to search for, e.g. 'a dog catching a frisbee'")
    return query


def check_k(k: int) -> None:
    if not 1 <= k <= MAX_K:  # checked before the model runs (or loads), too
        raise QueryError(f"k must be between 1 and {MAX_K}")


_DATA_URL = re.compile(r"^data:image/[\w.+-]+;base64,", re.I)


def decode_base64_image(data: str) -> bytes:
    """Base64 (standard or URL-safe alphabet, or a data: URL) -> bytes, bounded by MAX_IMAGE_BYTES."""
    text = _DATA_URL.sub("", data.strip(), count=1)
    text = "".join(text.split())  # line-wrapped base64 is common
    if len(text) > (MAX_IMAGE_BYTES + 2) // 3 * 4:
        raise ImageTooLargeError(f"the image is larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MB")
    try:
        raw = base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise ImageQueryError("the image is not valid base64") from None
    if not raw:
        raise ImageQueryError("the image is empty")
    return raw


def decode_image(data: bytes):
    """Encoded image bytes (PNG, JPEG, WebP, GIF: first frame, ...) -> an upright RGB PIL image.

    The size in the header is checked against MAX_IMAGE_PIXELS before any pixel is decoded."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if len(data) > MAX_IMAGE_BYTES:
        raise ImageTooLargeError(f"the image is larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MB")
    if not data:
        raise ImageQueryError("the image is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ImageTooLargeError(f"the image is {width}x{height} pixels; at most {MAX_IMAGE_PIXELS:,} "
                                         "pixels are accepted")
            image.load()
            image = ImageOps.exif_transpose(image).convert("RGB")  # phone photos: upright, as a viewer shows them
    except QueryError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLargeError(f"the image has more than {MAX_IMAGE_PIXELS:,} pixels") from None
    except UnidentifiedImageError:
        raise ImageQueryError("the file is not an image in a known format (PNG, JPEG, WebP, GIF, ...)") from None
    except Exception as exc:  # truncated or corrupt data: Pillow's plugins raise many kinds of error
        raise ImageQueryError(f"the image could not be decoded ({type(exc).__name__}: {exc})") from None
    if image.width == 0 or image.height == 0:
        raise ImageQueryError("the image has no pixels")
    return image


def query_image_array(encoder: ClipEncoder, image) -> np.ndarray:
    """Bytes, a PIL image or an array -> HxWx3 uint8, downscaled (as video frames are at decode time) when it is
    more than twice the model's input, so a large photo never becomes a huge float tensor."""
    from PIL import Image

    from ingest.encoder import as_rgb_array

    if isinstance(image, (bytes, bytearray, memoryview)):
        image = decode_image(bytes(image))
    if isinstance(image, Image.Image):
        if image.width * image.height > MAX_IMAGE_PIXELS:
            raise ImageTooLargeError(f"the image has more than {MAX_IMAGE_PIXELS:,} pixels")
        height, width = encoder.decode_size(image.height, image.width)
        if (height, width) != (image.height, image.width):
            image = image.convert("RGB").resize((width, height), Image.Resampling.BICUBIC, reducing_gap=3.0)
    try:
        array = as_rgb_array(image)
    except (TypeError, ValueError) as exc:
        raise ImageQueryError(str(exc)) from None
    if array.shape[0] * array.shape[1] > MAX_IMAGE_PIXELS:
        raise ImageTooLargeError(f"the image has more than {MAX_IMAGE_PIXELS:,} pixels")
    return array


def embed_query_image(encoder: ClipEncoder, image) -> np.ndarray:
    return encoder.embed_image(query_image_array(encoder, image))


def search_image(catalog: Catalog, store: VectorStore, encoder: ClipEncoder, image, k: int = 10,
                 filters: SearchFilters | None = None, *,
                 moment_seconds: float | None = DEFAULT_MOMENT_SECONDS) -> list[SearchResult]:
    """Videos that look like a still image: encoded bytes, a PIL image, or an HxWx3 uint8 array."""
    check_k(k)
    return search_vector(catalog, store, embed_query_image(encoder, image), k, filters,
                         moment_seconds=moment_seconds)
