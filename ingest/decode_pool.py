"""Decode workers: sample and preprocess frames beside the model, in killable processes by default.

A decoder can hang or crash on a damaged or crafted file. A thread cannot be stopped, a process can: in "process"
mode each file gets `timeout` seconds, after which its worker process is killed and replaced, and a worker that dies
(an FFmpeg crash, the OOM killer) fails only the file it was decoding. Processes start once per worker (about 2 s)
and ship each video's preprocessed frames back as one array (with JPEG thumbnails when asked); `vidsearch bench`
measures both modes. What is decoded from each file is one DecodeRequest: ingestion and the web app's timeline send
the same one (from the same settings), so a video embedded on demand gets exactly the frames ingestion would give it.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from ingest.decode import DecodeError, Limits, Sampling, VideoInfo, frame_spans, iter_sampled_frames, probe
from ingest.encoder import Preprocessing, decode_size_for, resize_crop_frame
from ingest.thumbnails import jpeg_thumbnail, luma_stats, pick_poster

if TYPE_CHECKING:
    from schema.settings import Settings

log = logging.getLogger(__name__)

DecodeMode = Literal["process", "thread"]
STARTUP_GRACE_SECONDS = 10.0
# How a decode process ends when it is stopped rather than crashed: pebble's SIGTERM handler exits with the signal
# number; a SIGHUP/SIGINT/SIGTERM death shows as its negative. A service manager stopping the whole group does this.
STOPPED_EXIT_CODES = frozenset({signal.SIGTERM, -signal.SIGTERM, -signal.SIGINT, -signal.SIGHUP})
FailureKind = Literal["error", "crash", "stopped"]


class DecodeFailure(str):
    """Why one file's decoding failed: the message for a person (the string itself), and its `kind`: the file's own
    error, a decoder process that died on it ("crash": a segfault, the OOM killer), or one stopped from outside
    ("stopped": not the file's doing). The worker retries a crash alone before failing the file."""

    kind: FailureKind

    def __new__(cls, message: str, kind: FailureKind = "error") -> DecodeFailure:
        failure = super().__new__(cls, message)
        failure.kind = kind
        return failure


@dataclass(frozen=True)
class Decoded:
    """One decoded video: model-ready pixels of its samples, the time span each stands for, and thumbnails."""

    info: VideoInfo
    pixels: np.ndarray  # (n,3,H,W) uint8 at the model's input size; the model side normalises them per batch
    spans: list[tuple[float, float]] = field(default_factory=list)  # (start, end) seconds per sample
    thumbs: list[bytes] = field(default_factory=list)  # JPEG per sample (empty when not asked for)
    poster: int = 0  # the sample that shows the video best (not a black lead-in)


def decode_pixels(prep: Preprocessing, path: Path, frames: int | Sampling,
                  limits: Limits = Limits(), *, thumbs: bool = False) -> Decoded:  # noqa: B008 (frozen)
    """Probe, sample frames (resized by swscale while decoding) and resize/crop them to the model's input.

    Memory grows with the sample count by only one uint8 model-size image per sample: each decoded frame is
    dropped as soon as it is resized, and the float normalisation waits for the model's batch.

    frames: a fixed count, or a Sampling that grows the count with the duration. thumbs: also make a JPEG
    thumbnail of each sample (from the same decoded frame) and pick the poster."""
    if not path.is_file():
        raise DecodeError(f"the stored file is missing: {path}")
    info = probe(path, limits)
    n = frames.count(info.duration) if isinstance(frames, Sampling) else frames
    size = decode_size_for(prep, info.height, info.width)
    pixels = np.empty((n, 3, *prep.crop_hw), np.uint8)  # filled in place: no list, no stacked second copy
    jpegs, stats = [], []
    for i, frame in enumerate(iter_sampled_frames(path, n, info, size=size)):
        pixels[i] = resize_crop_frame(frame, prep).numpy()
        if thumbs:
            jpegs.append(jpeg_thumbnail(frame))
            stats.append(luma_stats(frame))
    return Decoded(info, pixels, frame_spans(info.duration, n), jpegs, pick_poster(stats) if thumbs else 0)


@dataclass(frozen=True)
class DecodeRequest:
    """What to decode from each file, within which limits: its sampled frames at the model's input size (`frames`: a
    count or the Sampling rule), and their JPEG thumbnails when asked. Another stream (audio for a speech model) joins
    as a field here, decoded by its own function beside decode_pixels, so every decode path stays this one."""

    prep: Preprocessing
    frames: int | Sampling
    limits: Limits = Limits()  # noqa: RUF009 (frozen)
    thumbs: bool = False

    @classmethod
    def from_settings(cls, settings: Settings, prep: Preprocessing, *, thumbs: bool = False) -> DecodeRequest:
        """The request of this installation: its sampling rule and its limits."""
        return cls(prep, Sampling.from_settings(settings), Limits.from_settings(settings), thumbs)


def decode(request: DecodeRequest, path: Path) -> Decoded:
    """Everything `request` asks of one file (this is what a decode worker runs)."""
    return decode_pixels(request.prep, path, request.frames, request.limits, thumbs=request.thumbs)


def _init_process(started) -> None:
    # Each decode process works on one file at a time: more torch threads would only fight the model for cores.
    torch.set_num_threads(1)
    # Ctrl-C reaches the whole process group; the parent requeues its jobs and stops these workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    started.put(os.getpid())  # see DecodePool.close


def failure_message(exc: BaseException, timeout: float | None) -> DecodeFailure:
    """What to tell a person about a file whose decoding failed."""
    from pebble import ProcessExpired

    if isinstance(exc, DecodeError):
        return DecodeFailure(str(exc))
    if isinstance(exc, FutureTimeout | TimeoutError):
        return DecodeFailure(f"decoding took longer than {timeout:g} s and was stopped; the file may be damaged or "
                             "crafted to stall the decoder")
    if isinstance(exc, ProcessExpired):
        if exc.exitcode in STOPPED_EXIT_CODES:
            return DecodeFailure(f"the decoder was stopped from outside (exit code {exc.exitcode})", "stopped")
        return DecodeFailure(f"the decoder crashed on this file (exit code {exc.exitcode}): the file is probably "
                             "damaged, or decoding it needs more memory than there is", "crash")
    return DecodeFailure(f"could not read the video: {exc.__class__.__name__}: {exc}")


class DecodePool:
    """`submit(path)` -> Future of a Decoded (what `request` asks of that file). Close it (or use `with`) to stop the
    workers."""

    def __init__(self, request: DecodeRequest, *, workers: int = 2, mode: DecodeMode = "process",
                 timeout: float | None = 120.0) -> None:
        self.request = request
        self.mode = mode
        self.timeout = timeout if mode == "process" else None  # a thread cannot be stopped
        if mode == "process":
            from pebble import ProcessPool

            # spawn, not fork: forking a process that runs torch threads can deadlock the child.
            context = multiprocessing.get_context("spawn")
            self._started, self._workers = context.Queue(), workers
            self._running = False  # pebble starts its processes with the first task (or `active`), not here
            self._pool = ProcessPool(max_workers=workers, initializer=_init_process, initargs=(self._started,),
                                     context=context)
        elif mode == "thread":
            self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
        else:
            raise ValueError(f"unknown decode mode {mode!r}")

    def submit(self, path: Path) -> Future:
        if self.mode == "process":
            self._running = True
            return self._pool.schedule(decode, args=(self.request, Path(path)), timeout=self.timeout)
        return self._pool.submit(decode, self.request, Path(path))

    def outcome(self, future: Future) -> Decoded | DecodeFailure:
        """The decoded video, or a message saying why this file (and only this file) failed."""
        try:
            return future.result()
        except Exception as exc:
            return self.explain(exc)

    def explain(self, exc: BaseException) -> DecodeFailure:
        """Why a file's decoding failed, for a person; the unexpected kinds are logged too."""
        if not isinstance(exc, DecodeError | FutureTimeout | TimeoutError):
            log.warning("decoding failed: %s", exc, exc_info=not _is_expired(exc))
        return failure_message(exc, self.timeout)

    def map(self, paths: list[Path]) -> list[Decoded | DecodeFailure]:
        """Decode all of `paths` (in parallel), in order: each the decoded video or why it failed."""
        futures = [self.submit(p) for p in paths]
        return [self.outcome(f) for f in futures]

    def wait_started(self, timeout: float) -> bool:
        """Wait until every worker process has started (imported torch & co); True if they all did in time."""
        if self.mode != "process":
            return True
        if not self._running:
            self._running = self._pool.active  # starts the worker processes now
        deadline = time.monotonic() + timeout
        while self._workers > 0 and (left := deadline - time.monotonic()) > 0:
            try:
                self._started.get(timeout=left)
                self._workers -= 1
            except queue.Empty:
                break
        return self._workers <= 0

    def close(self) -> None:
        if self.mode == "process":
            # A worker stopped while it is still starting up (importing torch) prints a multiprocessing traceback
            # on the terminal, its start-up pipe being gone: give those a few seconds to finish starting first.
            if self._running:  # a pool that never ran has no process to wait for
                self.wait_started(STARTUP_GRACE_SECONDS)
            self._pool.stop()
            self._pool.join()
            self._started.close()
        else:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _is_expired(exc: BaseException) -> bool:
    from pebble import ProcessExpired

    return isinstance(exc, ProcessExpired)
