"""Bulk ingestion on Ray Data (`vidsearch ingest --ray`): the worker's own decode and embedding stages, spread over
a Ray cluster (or a local Ray on this machine).

The worker (ingest/worker.py) still claims the jobs, holds their leases, writes thumbnails, vectors and catalog rows
in batches and runs the experts; only the step between a claimed batch's files and their embeddings changes. Here it
is a Ray Data pipeline: each file is decoded in a CPU task by the same `decode` a decode process runs, and the
frames are embedded in an actor pool (one actor per GPU, or one on the CPUs) by the same FrameBatcher the single
worker uses, each actor loading the model through the same `load_encoder` call. The results stream back to the
driver, which writes them as they come, so a million files never sit in memory at once.

A file fails alone, as with `--wait`: its decode error (or timeout) comes back as that file's failure, and a decode
task that dies (a segfault, the OOM killer) loses only its own block (each file is one), which the worker counts as
a crash of that file and retries alone. Resumable: content already in the library is skipped at enqueue time, and an
interrupted run's jobs are claimed again by the next one.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ingest.decode import VideoInfo
from ingest.decode_pool import Decoded, DecodeFailure, DecodeRequest, decode, failure_message
from ingest.pipeline import Embedded, FrameBatcher, Stopped

if TYPE_CHECKING:
    from schema.settings import Settings

log = logging.getLogger(__name__)

INSTALL_HINT = 'Ray is not installed: pip install "vidsearch[ray]"'
# Jobs claimed per Ray pipeline run: large, because each run starts its actors anew (each loads the model: 7 s for
# ViT-B/32 on ONNX Runtime on 2 busy cores, measured), yet bounded, so leases stay few and an interrupted run puts
# back at most this many.
CLAIM_SIZE = 512
CRASHED = ("the decoder crashed on this file (its Ray task died): the file is probably damaged, or decoding it needs "
           "more memory than there is")


class RayUnavailable(RuntimeError):
    """Ray is not installed, or the cluster cannot be reached: the message says which, for a person."""


def connect(address: str | None) -> None:
    """Join the Ray cluster at `address` ("auto": the one this machine belongs to), or start a local Ray sized to
    this machine; a no-op when this process is connected already (a test's ray.init)."""
    try:
        import ray
    except ImportError:
        raise RayUnavailable(INSTALL_HINT) from None
    if ray.is_initialized():
        return
    if address not in (None, "auto"):
        _probe(address)
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
                 configure_logging=True)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RayUnavailable(f"cannot reach the Ray cluster at {address}: {exc}") from None
    # One progress bar (the command's), and a dropped block is a file's failure we report, not a traceback.
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)


def _probe(address: str) -> None:
    """Fail in seconds on an address nobody answers at: ray.init retries a silent GCS for minutes."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise RayUnavailable(f"cannot reach the Ray cluster at {address}: expected HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise RayUnavailable(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


def shutdown() -> None:
    with contextlib.suppress(ImportError):
        import ray

        if ray.is_initialized():
            ray.shutdown()


@contextlib.contextmanager
def _time_limit(seconds: float | None):
    """Stop a decode that takes longer than `seconds` (a Ray task runs in its worker's main thread, where SIGALRM
    can interrupt PyAV between frames), raising TimeoutError as a decode process's timeout does."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(*_args: object) -> None:
        raise TimeoutError

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def videos_per_call(settings: Settings) -> int:
    """Decoded videos per actor call: about one model batch of frames (FrameBatcher batches across them). More
    would keep the actor waiting for the slowest decode of a bigger group (measured: 8 per call left the CPU actor
    idle for 19 s of a 62 s bench run, waiting on the last group's 1080p files)."""
    return max(1, settings.batch_size // settings.frames)


def _info_row(info: VideoInfo) -> dict[str, Any]:
    return {"duration": np.nan if info.duration is None else info.duration,
            "fps": np.nan if info.fps is None else info.fps, "width": info.width, "height": info.height,
            "codec": info.codec, "frame_count": -1 if info.frame_count is None else info.frame_count,
            "rotation": info.rotation}


def _info_of(row: dict[str, Any]) -> VideoInfo:
    def opt(value: float) -> float | None:
        return None if np.isnan(value) else float(value)

    return VideoInfo(opt(row["duration"]), opt(row["fps"]), int(row["width"]), int(row["height"]), str(row["codec"]),
                     None if int(row["frame_count"]) < 0 else int(row["frame_count"]), int(row["rotation"]))


def _pack(blobs: list[bytes]) -> tuple[bytes, np.ndarray]:
    """JPEG thumbnails as one byte string and their lengths: a column type Arrow infers the same for every block."""
    return b"".join(blobs), np.asarray([len(b) for b in blobs], np.int64)


def _unpack(blob: bytes, lengths: np.ndarray) -> list[bytes]:
    out, at = [], 0
    for n in lengths.tolist():
        out.append(blob[at : at + n])
        at += n
    return out


class DecodeTask:
    """One file -> one row: the request's pixels, spans, thumbnails and metadata, or why it failed."""

    def __init__(self, request: DecodeRequest, timeout: float | None) -> None:
        self.request = request
        self.timeout = timeout

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        torch.set_num_threads(1)  # as a decode process: one file at a time, the cores are the model's
        path = Path(row["path"])
        empty = np.zeros((0, 3, *self.request.prep.crop_hw), np.uint8)
        nothing = VideoInfo(None, None, 0, 0, "", None, 0)
        failed = {"key": row["key"], "pixels": empty, "spans": np.zeros((0, 2), np.float64), "thumbs": b"",
                  "thumb_lengths": np.zeros(0, np.int64), "poster": 0, **_info_row(nothing)}
        if not path.is_file():
            return {**failed, "error": f"the file is not readable on Ray node {socket.gethostname()} ({path}): on a "
                                       "cluster the videos must be on storage every node mounts at the same path",
                    "kind": "error"}
        try:
            with _time_limit(self.timeout):
                decoded = decode(self.request, path)
        except Exception as exc:  # the file's own failure, reported as a decode process reports it
            reason = failure_message(exc, self.timeout)
            return {**failed, "error": str(reason), "kind": reason.kind}
        thumbs, lengths = _pack(decoded.thumbs)
        spans = np.asarray(decoded.spans, np.float64).reshape(-1, 2)
        return {"key": row["key"], "pixels": decoded.pixels, "spans": spans, "thumbs": thumbs,
                "thumb_lengths": lengths, "poster": decoded.poster, "error": "", "kind": "", **_info_row(decoded.info)}


class EmbedActor:
    """Holds the model (loaded once per actor, as a worker loads it) and embeds decoded videos, batching frames
    across them exactly as the single worker does."""

    def __init__(self, settings: Settings) -> None:
        from ingest.runtime import load_settings_encoder

        self.encoder = load_settings_encoder(settings)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        batcher = FrameBatcher(self.encoder, self.encoder.batch_size)
        rows = [{k: batch[k][i] for k in batch} for i in range(len(batch["key"]))]
        by_key = {int(r["key"]): r for r in rows}
        done: list[Embedded] = []
        for r in rows:
            if r["error"]:
                continue
            info = _info_of(r)
            spans = [tuple(map(float, s)) for s in np.asarray(r["spans"]).reshape(-1, 2)]
            pixels = np.asarray(r["pixels"], np.uint8)
            decoded = Decoded(info, pixels, spans, _unpack(bytes(r["thumbs"]), np.asarray(r["thumb_lengths"])),
                              int(r["poster"]))
            done += batcher.add(int(r["key"]), info, torch.from_numpy(pixels), decoded)
        done += batcher.flush()
        dim = self.encoder.dim
        vectors = {int(e.key): e for e in done}
        out: dict[str, list] = {name: [] for name in ("key", "vector", "frames", "error", "kind")}
        for key, r in by_key.items():
            e = vectors.get(key)
            out["key"].append(key)
            out["vector"].append(e.vector if e is not None else np.zeros(dim, np.float32))
            out["frames"].append(e.frames if e is not None else np.zeros((0, dim), np.float32))
            out["error"].append(str(r["error"]))
            out["kind"].append(str(r["kind"]))
        # What the driver needs besides the vectors travels through unchanged.
        for name in ("spans", "thumbs", "thumb_lengths", "poster", "duration", "fps", "width", "height", "codec",
                     "frame_count", "rotation"):
            out[name] = [by_key[k][name] for k in out["key"]]
        return out


@dataclass
class RayEmbedder:
    """The worker's embed step on Ray: (job id, path) pairs in, one Embedded per pair out, in completion order."""

    settings: Settings
    request: DecodeRequest
    timeout: float | None = None

    def __call__(self, items: Iterable[tuple[int, Path]], stop: threading.Event | None = None) -> Iterator[Embedded]:
        import ray

        rows = [{"key": int(key), "path": str(path)} for key, path in items]
        if not rows:
            return
        gpus = int(ray.cluster_resources().get("GPU", 0))
        actors = self.settings.ray_actors or max(1, gpus)
        # One block per file: a decode task that dies loses that file only (max_errored_blocks), never the run.
        ray.data.DataContext.get_current().max_errored_blocks = -1
        with warnings.catch_warnings():
            # max_retries=0 has no named parameter yet (Ray 2.60 deprecates the remote-args dict it goes in), and
            # Ray Data's default retries a task whose process died without end: a file that segfaults would loop.
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*", category=DeprecationWarning)
            decoded = ray.data.from_items(rows, override_num_blocks=len(rows)).map(
                DecodeTask(self.request, self.timeout), num_cpus=self.settings.ray_decode_cpus, max_retries=0)
        ds = (decoded
              .map_batches(EmbedActor, fn_constructor_args=(self.settings,), batch_size=videos_per_call(self.settings),
                           batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors),
                           num_gpus=1 if gpus else 0, num_cpus=1))
        seen: set[int] = set()
        for row in ds.iter_rows():
            if stop is not None and stop.is_set():
                raise Stopped
            seen.add(int(row["key"]))
            yield _embedded(row)
        for row in rows:
            if row["key"] not in seen:
                yield Embedded(row["key"], error=DecodeFailure(CRASHED, "crash"))


def _embedded(row: dict[str, Any]) -> Embedded:
    key = int(row["key"])
    if row["error"]:
        return Embedded(key, error=DecodeFailure(str(row["error"]), row["kind"] or "error"))
    spans = [tuple(map(float, s)) for s in np.asarray(row["spans"]).reshape(-1, 2)]
    return Embedded(key, _info_of(row), np.asarray(row["vector"], np.float32),
                    frames=np.asarray(row["frames"], np.float32), spans=spans,
                    thumbs=_unpack(bytes(row["thumbs"]), np.asarray(row["thumb_lengths"])), poster=int(row["poster"]))
