"""Decode workers: sample and preprocess frames beside the model, in killable processes by default.

A decoder can hang or crash on a damaged or crafted file. A thread cannot be stopped, a process can: in "process"
mode each file gets `timeout` seconds, after which its worker process is killed and replaced, and a worker that dies
(an FFmpeg crash, the OOM killer) fails only the file it was decoding. Processes start once per worker (about 2 s)
and ship each video's preprocessed frames back as one array; `vidsearch bench` measures both modes.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ingest.decode import DecodeError, Limits, VideoInfo, iter_sampled_frames, probe
from ingest.encoder import Preprocessing, decode_size_for, preprocess_frame

log = logging.getLogger(__name__)

DecodeMode = Literal["process", "thread"]


def decode_pixels(prep: Preprocessing, path: Path, frames: int, limits: Limits = Limits()  # noqa: B008 (frozen)
                  ) -> tuple[VideoInfo, np.ndarray]:
    """Probe, sample `frames` frames (resized by swscale while decoding) and preprocess them: (n,3,H,W) float32."""
    if not path.is_file():
        raise DecodeError(f"the stored file is missing: {path}")
    info = probe(path, limits)
    size = decode_size_for(prep, info.height, info.width)
    sampled = iter_sampled_frames(path, frames, info, size=size)
    return info, torch.stack([preprocess_frame(f, prep) for f in sampled]).numpy()


def _init_process() -> None:
    # Each decode process works on one file at a time: more torch threads would only fight the model for cores.
    torch.set_num_threads(1)
    # Ctrl-C reaches the whole process group; the parent requeues its jobs and stops these workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def failure_message(exc: BaseException, timeout: float | None) -> str:
    """What to tell a person about a file whose decoding failed."""
    from pebble import ProcessExpired

    if isinstance(exc, DecodeError):
        return str(exc)
    if isinstance(exc, FutureTimeout | TimeoutError):
        return (f"decoding took longer than {timeout:g} s and was stopped; the file may be damaged or crafted to "
                "stall the decoder")
    if isinstance(exc, ProcessExpired):
        return f"the decoder crashed on this file (exit code {exc.exitcode}); the file is probably damaged"
    return f"could not read the video: {exc.__class__.__name__}: {exc}"


class DecodePool:
    """`submit(path)` -> Future of (VideoInfo, pixels). Close it (or use `with`) to stop the workers."""

    def __init__(self, prep: Preprocessing, frames: int, *, workers: int = 2, mode: DecodeMode = "process",
                 timeout: float | None = 120.0, limits: Limits = Limits()) -> None:  # noqa: B008 (frozen)
        self.prep = prep
        self.frames = frames
        self.limits = limits
        self.mode = mode
        self.timeout = timeout if mode == "process" else None  # a thread cannot be stopped
        if mode == "process":
            from pebble import ProcessPool

            # spawn, not fork: forking a process that runs torch threads can deadlock the child.
            self._pool = ProcessPool(max_workers=workers, initializer=_init_process,
                                     context=multiprocessing.get_context("spawn"))
        elif mode == "thread":
            self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
        else:
            raise ValueError(f"unknown decode mode {mode!r}")

    def submit(self, path: Path) -> Future:
        if self.mode == "process":
            return self._pool.schedule(decode_pixels, args=(self.prep, Path(path), self.frames, self.limits),
                                       timeout=self.timeout)
        return self._pool.submit(decode_pixels, self.prep, Path(path), self.frames, self.limits)

    def outcome(self, future: Future) -> tuple[VideoInfo, np.ndarray] | str:
        """The decoded video, or a message saying why this file (and only this file) failed."""
        try:
            return future.result()
        except Exception as exc:
            if not isinstance(exc, DecodeError | FutureTimeout | TimeoutError):
                log.warning("decoding failed: %s", exc, exc_info=not _is_expired(exc))
            return failure_message(exc, self.timeout)

    def map(self, paths: list[Path]) -> list[tuple[VideoInfo, np.ndarray] | str]:
        """Decode all of `paths` (in parallel), in order: each the decoded video or why it failed."""
        futures = [self.submit(p) for p in paths]
        return [self.outcome(f) for f in futures]

    def close(self) -> None:
        if self.mode == "process":
            self._pool.stop()
            self._pool.join()
        else:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _is_expired(exc: BaseException) -> bool:
    from pebble import ProcessExpired

    return isinstance(exc, ProcessExpired)
