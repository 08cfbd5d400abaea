"""The timeline of one video for one query: how well each sampled frame matches, and the video's best moments.

Stored segment vectors are scored exactly (search_app/moments.py). A video without them (indexed before they were
stored) is decoded with ingestion's own DecodeRequest (its sampling rule and limits) in this service's killable decode
process, under ingestion's timeout and outside any model slot; its frames are then embedded batch by batch under the
web process's ModelSlots, and the result is kept in a small LRU cache (search never writes vectors).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import anyio.to_thread
import numpy as np
import torch

from ingest.decode_pool import Decoded, DecodePool, DecodeRequest
from ingest.encoder import ClipEncoder
from schema.catalog import Catalog, Video, VideoStatus
from schema.filters import QueryError
from schema.settings import Settings
from schema.storage import Storage, StorageError, is_remote, open_storage
from schema.vectors import Segments, VectorStoreError
from search_app.expert_lines import appearance_line, expert_lines, fusion_order, is_dense
from search_app.moments import SegmentSource, Timeline, fetch_segments, stored_timeline
from search_app.slots import ModelSlots

log = logging.getLogger(__name__)

CACHE_VIDEOS = 8  # videos whose computed segments are kept in memory (120 frames x 512 floats: 240 KB each)


class UnknownVideoError(QueryError):
    """No video has this id."""


class UnreadableVideoError(QueryError):
    """The video's stored file cannot be decoded now: damaged, over the limits, or too slow to decode."""


@dataclass(frozen=True)
class TimelineProgress:
    """Where an on-demand timeline is: decoding the file, then embedding its frames."""

    stage: Literal["decoding", "embedding"]
    done: int = 0  # frames embedded so far
    total: int = 0  # frames to embed; known once the file is decoded

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0

    def describe(self) -> str:
        if self.stage == "decoding":
            return "Decoding this video's frames"
        return f"Embedding frames of this video: {self.done}/{self.total}"


Progress = Callable[[TimelineProgress], None]


class TimelineService:
    """One per web app. `await timeline(video, query)`; `close()` stops its decode process."""

    def __init__(self, settings: Settings, catalog: Catalog, store: SegmentSource, encoder: Callable[[], ClipEncoder],
                 slots: ModelSlots, *, cache_videos: int = CACHE_VIDEOS,
                 experts: Callable[[], Mapping[str, object]] | None = None, storage: Storage | None = None) -> None:
        self.settings = settings
        self.storage = storage or open_storage(settings)  # a video in object storage is decoded from a cached copy
        self.catalog = catalog
        self.store = store
        self.encoder = encoder  # called when needed: the model loads on first use, not when the app is built
        self.slots = slots
        self.experts = experts  # the experts' sources (search_app/audio_query.py expert_sources), for their lines
        self.cache_videos = cache_videos
        self.decodes = 0  # files sent to the decoder so far (cache misses)
        self._cache: OrderedDict[tuple, Segments] = OrderedDict()
        self._failed: OrderedDict[tuple, str] = OrderedDict()  # why a file could not be decoded
        self._pending: dict[tuple, concurrent.futures.Future] = {}  # key -> the computation in progress
        self._lock = threading.Lock()
        self._pool: DecodePool | None = None

    async def timeline(self, video: Video | int, query: np.ndarray | str, progress: Progress | None = None
                       ) -> Timeline:
        """Similarity of each sampled moment of `video` (or the video of this id) with the query (a vector, or a text
        embedded here), and its best moments. Reports (decoding, frames embedded) to `progress` when the video has to
        be embedded now."""
        if isinstance(video, int):
            found = await anyio.to_thread.run_sync(self.catalog.get_video, video)
            if found is None:
                raise UnknownVideoError(f"no video with id {video}")
            video = found
        if video.status != VideoStatus.READY:
            raise QueryError("the video is not ready yet (still being processed, or failed)")
        vector = await self._query_vector(query)
        moment_seconds = self.settings.moment_seconds
        stored = (await anyio.to_thread.run_sync(fetch_segments, self.store, [video.id])).get(video.id)
        if stored is not None and len(stored):
            timeline = stored_timeline(stored, vector, moment_seconds)
        else:
            stored = await self._computed(video, progress or _ignore)
            timeline = replace(stored_timeline(stored, vector, moment_seconds), source="computed")
        if isinstance(query, str) and self.experts is not None:
            timeline = replace(timeline, lines=await self._lines(video, query.strip(), timeline, stored))
        return timeline

    async def _lines(self, video: Video, text: str, timeline: Timeline, segments: Segments) -> tuple:
        """Appearance's line, then one per other expert holding anything for this video. An expert whose
        collection cannot be read now is left out (logged): the appearance timeline still stands."""
        first = appearance_line(timeline, segments)
        try:
            sources = await anyio.to_thread.run_sync(self.experts)
            dense = {n: src for n, src in sources.items() if is_dense(src)}
            lexical = {n: src for n, src in sources.items() if n not in dense}
            others = await anyio.to_thread.run_sync(expert_lines, video.id, text, lexical, segments) if lexical else []
            if dense:  # in a model slot: the audio expert embeds the query with CLAP
                others += await self.slots.run(expert_lines, video.id, text, dense, segments)
            others.sort(key=lambda line: fusion_order(line.expert))
        except VectorStoreError as exc:
            log.warning("timeline of video %d: the experts' lines are left out: %s", video.id, exc)
            others = []
        return (first, *others)

    def close(self) -> None:
        """Stop the decode process (the web app calls this at shutdown); a later timeline starts a new one."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    # --- query ------------------------------------------------------------------------------------------------
    async def _query_vector(self, query: np.ndarray | str) -> np.ndarray:
        if not isinstance(query, str):
            return np.asarray(query, np.float32)
        text = query.strip()
        if not text:
            raise QueryError("describe the moment to look for, e.g. 'a dog catching a frisbee'")
        return await self.slots.run(self._embed_text, text)

    def _embed_text(self, text: str) -> np.ndarray:
        return self.encoder().embed_text(text)

    # --- on-demand segments -------------------------------------------------------------------------------------
    async def _computed(self, video: Video, progress: Progress) -> Segments:
        """The cached segments of `video`, or computed now; concurrent requests for one video share one computation."""
        encoder = await anyio.to_thread.run_sync(self.encoder)  # loads the model if nothing has yet (not on the loop)
        request = DecodeRequest.from_settings(self.settings, encoder.prep)
        key = _cache_key(video, request, encoder.key)
        while True:
            with self._lock:
                if key in self._cache:
                    self._cache.move_to_end(key)
                    return self._cache[key]
                if key in self._failed:
                    raise UnreadableVideoError(self._failed[key])
                pending = self._pending.get(key)
                leader = pending is None
                if pending is None:
                    pending = self._pending[key] = concurrent.futures.Future()
            if not leader:
                shared = await _wait(pending)
                if shared is not None:
                    return shared
                continue  # the request computing it went away before finishing: compute it here
            try:
                segments = await self._compute(video, encoder, request, progress)
            except BaseException as exc:
                with self._lock:
                    del self._pending[key]
                    if isinstance(exc, UnreadableVideoError):  # the same file fails the same way: not again
                        _put(self._failed, key, str(exc), self.cache_videos)
                if isinstance(exc, Exception):
                    pending.set_exception(exc)
                else:  # cancelled: whoever waits for it computes it instead
                    pending.set_result(None)
                raise
            with self._lock:
                del self._pending[key]
                _put(self._cache, key, segments, self.cache_videos)
            pending.set_result(segments)
            return segments

    async def _compute(self, video: Video, encoder: ClipEncoder, request: DecodeRequest, progress: Progress
                       ) -> Segments:
        progress(TimelineProgress("decoding"))
        if is_remote(video.stored_path):
            with contextlib.ExitStack() as held:  # the cached copy stays while it is decoded
                try:
                    local = await anyio.to_thread.run_sync(held.enter_context,
                                                           self.storage.local_copy(video.stored_path))
                except (FileNotFoundError, StorageError) as exc:
                    raise UnreadableVideoError(f"the video could not be read from the store: {exc}") from None
                decoded = await self._decode(request, local)
        else:
            decoded = await self._decode(request, Path(video.stored_path))
        pixels = torch.from_numpy(decoded.pixels)
        total, batch = len(pixels), encoder.batch_size
        progress(TimelineProgress("embedding", 0, total))
        parts = []
        for start in range(0, total, batch):  # one slot per batch: searches get their turn between batches
            parts.append(await self.slots.run(encoder.embed_pixels, pixels[start : start + batch]))
            progress(TimelineProgress("embedding", min(start + batch, total), total))
        spans = np.asarray(decoded.spans, np.float32).reshape(-1, 2)
        return Segments(spans[:, 0], spans[:, 1], torch.cat(parts).numpy().astype(np.float32))

    async def _decode(self, request: DecodeRequest, path: Path) -> Decoded:
        """Decode in the service's own process, awaited without holding a thread or a model slot."""
        with self._lock:
            if self._pool is None:
                # One worker: a timeline decodes one file, and the ingestion worker needs the cores more.
                self._pool = DecodePool(request, workers=1, mode=self.settings.decode_mode,
                                        timeout=self.settings.decode_timeout_seconds)
            pool = self._pool
            self.decodes += 1
        future = pool.submit(path)
        try:
            return await asyncio.wrap_future(future)  # cancelling the request cancels the decode
        except Exception as exc:
            raise UnreadableVideoError(f"the video could not be read: {pool.explain(exc)}") from None


def _cache_key(video: Video, request: DecodeRequest, model: str) -> tuple:
    """A re-ingested or replaced file, another model or other sampling settings: another key."""
    try:
        stat = os.stat(video.stored_path)
        stamp: tuple[int, int] | None = (stat.st_size, stat.st_mtime_ns)
    except OSError:
        stamp = None  # the decoder will say what is wrong with it
    return video.id, video.sha256, video.stored_path, stamp, model, request


def _put(cache: OrderedDict, key: tuple, value: object, size: int) -> None:
    cache[key] = value
    while len(cache) > size:
        cache.popitem(last=False)


async def _wait(future: concurrent.futures.Future) -> Segments | None:
    """Await another request's computation; unlike asyncio.wrap_future, giving up here does not cancel it."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future = loop.create_future()

    def copy(done: concurrent.futures.Future) -> None:
        if waiter.cancelled():
            return
        if done.exception() is not None:
            waiter.set_exception(done.exception())  # type: ignore[arg-type]
        else:
            waiter.set_result(done.result())

    def on_done(done: concurrent.futures.Future) -> None:
        try:
            loop.call_soon_threadsafe(copy, done)
        except RuntimeError:  # that request's event loop is gone
            pass

    future.add_done_callback(on_done)
    return await waiter


def _ignore(_progress: TimelineProgress) -> None:
    pass
