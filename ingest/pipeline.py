"""Decode videos in parallel workers while the model embeds full batches of frames across videos.

Decoding runs in a DecodePool (killable processes by default, threads on request; see decode_pool.py). At most
`prefetch` decoded videos wait in memory (back-pressure), and results come back in completion order so one slow or
broken video never stalls the rest.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Hashable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ingest.decode import Sampling, VideoInfo
from ingest.decode_pool import Decoded, DecodePool, DecodeRequest, decode_pixels
from ingest.encoder import ClipEncoder, l2_normalize

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Embedded:
    """One video's outcome: its CLIP4Clip vector, its samples' vectors and probed metadata, or why it failed."""

    key: Hashable
    info: VideoInfo | None = None
    vector: np.ndarray | None = None
    error: str | None = None
    frames: np.ndarray | None = None  # (n, dim) L2-normalised embedding of each sampled frame, in time order
    spans: list[tuple[float, float]] = field(default_factory=list)  # (start, end) seconds each sample stands for
    thumbs: list[bytes] = field(default_factory=list)  # JPEG per sample
    poster: int = 0


def decode_video(encoder: ClipEncoder, path: Path, frames: int | Sampling) -> tuple[VideoInfo, torch.Tensor]:
    """Probe, sample `frames` frames and preprocess them, in this thread: (n,3,H,W)."""
    decoded = decode_pixels(encoder.prep, path, frames)
    return decoded.info, torch.from_numpy(decoded.pixels)


@dataclass
class _Waiting:
    key: Hashable
    info: VideoInfo
    pixels: torch.Tensor  # frames not yet sent to the model
    done: list[torch.Tensor] = field(default_factory=list)  # normalised frame embeddings so far
    decoded: Decoded | None = None  # spans and thumbnails, passed through


class FrameBatcher:
    """Feeds the model exactly `batch_size` frames at a time, whatever the video boundaries."""

    def __init__(self, encoder: ClipEncoder, batch_size: int) -> None:
        self.encoder = encoder
        self.batch_size = batch_size
        self.waiting: deque[_Waiting] = deque()
        self.buffered = 0

    def add(self, key: Hashable, info: VideoInfo, pixels: torch.Tensor, decoded: Decoded | None = None
            ) -> list[Embedded]:
        self.waiting.append(_Waiting(key, info, pixels, decoded=decoded))
        self.buffered += len(pixels)
        out: list[Embedded] = []
        while self.buffered >= self.batch_size:
            out += self._run(self.batch_size)
        return out

    def flush(self) -> list[Embedded]:
        out: list[Embedded] = []
        while self.buffered:
            out += self._run(min(self.buffered, self.batch_size))
        return out

    def _run(self, count: int) -> list[Embedded]:
        taken: list[tuple[_Waiting, int]] = []
        need = count
        for item in self.waiting:
            if need == 0:
                break
            k = min(need, len(item.pixels))
            taken.append((item, k))
            need -= k
        embeds = self.encoder.embed_pixels(torch.cat([item.pixels[:k] for item, k in taken]))
        self.buffered -= count
        finished: list[Embedded] = []
        start = 0
        for item, k in taken:
            item.done.append(embeds[start : start + k])
            item.pixels = item.pixels[k:]
            start += k
            if len(item.pixels) == 0:
                self.waiting.popleft()  # taken items are always a prefix of the queue
                frames = torch.cat(item.done)
                vector = l2_normalize(frames.mean(dim=0)).numpy().astype(np.float32)
                d = item.decoded
                finished.append(Embedded(item.key, item.info, vector, frames=frames.numpy().astype(np.float32),
                                         spans=d.spans if d else [], thumbs=d.thumbs if d else [],
                                         poster=d.poster if d else 0))
        return finished


class Stopped(Exception):
    """embed_videos was asked to stop (`stop` was set) before every video was embedded."""


def embed_videos(encoder: ClipEncoder, items: Iterable[tuple[Hashable, Path]], frames: int | Sampling, *,
                 pool: DecodePool | None = None, decode_workers: int = 2, prefetch: int = 8,
                 stop: threading.Event | None = None) -> Iterator[Embedded]:
    """Yield one Embedded per (key, path), in completion order. Memory: at most `prefetch` decoded videos.

    `pool` is the caller's long-lived DecodePool (the worker keeps one); without it a thread pool is used for
    this call. Setting `stop` raises Stopped within half a second, even while decodes are still running."""
    own_pool = pool is None
    if pool is None:
        pool = DecodePool(DecodeRequest(encoder.prep, frames), workers=decode_workers, mode="thread")
    batcher = FrameBatcher(encoder, encoder.batch_size)
    todo = iter(items)
    window: dict[Future, Hashable] = {}
    try:
        exhausted = False
        while True:
            while not exhausted and len(window) < prefetch:
                nxt = next(todo, None)
                if nxt is None:
                    exhausted = True
                    break
                window[pool.submit(Path(nxt[1]))] = nxt[0]
            if not window:
                break
            completed, _ = wait(window, timeout=None if stop is None else 0.5, return_when=FIRST_COMPLETED)
            if stop is not None and stop.is_set():
                raise Stopped
            for future in completed:
                key = window.pop(future)
                outcome = pool.outcome(future)
                if isinstance(outcome, str):
                    yield Embedded(key, error=outcome)
                else:
                    yield from batcher.add(key, outcome.info, torch.from_numpy(outcome.pixels), outcome)
        yield from batcher.flush()
    finally:
        for future in window:
            future.cancel()
        if own_pool:
            pool.close()
