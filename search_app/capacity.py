"""Capacity on paper: what a library costs in Milvus memory, PostgreSQL disk and embedding time, computed.

Everything here is arithmetic over the collections' schemas (schema/vectors.py, schema/lexical.py), the sampling
rule (ingest/decode.Sampling) and a few measured figures named below; nothing is measured when it runs. The README's
capacity section is this module's output (`vidsearch capacity --markdown`), and tests/test_capacity.py keeps them
the same, so a schema change that moves the figures moves the README too.
"""

from __future__ import annotations

from dataclasses import dataclass

from ingest.decode import Sampling
from schema.settings import Settings

INT64, FLOAT, DOUBLE = 8, 4, 8
# A video row: pk, video_id, duration_s, ingested_at, a tag (VARCHAR: its bytes plus a 4-byte offset), the vector.
VIDEO_SCALARS = INT64 + INT64 + DOUBLE + INT64 + (8 + 4)
SEGMENT_SCALARS = INT64 + INT64 + FLOAT + FLOAT  # pk, video_id, start_s, end_s

# Measured: the catalog on PostgreSQL 15 after `vacuum analyze`, 20,000 videos each with its done job and its done
# speech and text runs: 33.3 MB, of which videos 745 B, expert_runs 590 B, jobs 323 B per video, tables with their
# indexes (`python scripts/catalog_size.py`, 2026-12-05).
POSTGRES_BYTES_PER_VIDEO = 1_660

# Measured on this project's 2-core CI machine (README, Benchmarks, 2026-11-23): the whole pipeline, and the decode
# ceiling (processes) of the same clips. ViT-B/32 on one H100 has not been measured here: GPU_MODEL_FPS is an
# assumption (fp16/fp32 CLIP ViT-B/32 image throughput is commonly several thousand frames/s on such a GPU) and the
# figures built on it say so.
CPU_PIPELINE_FPS_2_CORES = 4.02
DECODE_FPS_PER_CORE = 10.3 / 2
GPU_MODEL_FPS = 3_000.0


def index_bytes(index_type: str, dim: int, params: dict | None = None) -> float:
    """Query-node bytes per vector of one index, as Milvus's sizing guide counts them (graph links, ids, codes)."""
    kind = index_type.upper()
    if kind in ("FLAT", "AUTOINDEX"):
        return 4 * dim
    if kind == "IVF_FLAT":
        return 4 * dim + INT64
    if kind in ("IVF_SQ8", "HNSW_SQ"):  # one byte per dimension; compact mode re-scores from the raw floats (below)
        return dim + INT64
    if kind == "HNSW":
        return 4 * dim + 2 * int((params or {}).get("M", 16)) * 4  # level-0 links dominate
    if kind in ("BIN_FLAT", "BIN_IVF_FLAT"):  # the sign bits of each vector, in their own collection, whose rows
        return dim / 8 + VIDEO_SCALARS  # repeat the video row's key and filter fields (filters apply in that search)
    raise ValueError(f"no sizing rule for index type {index_type!r}")


@dataclass(frozen=True)
class Library:
    """What is sized: `videos` videos of `seconds` seconds, with these expert rows each (assumptions, not defaults:
    speech rows are ~5 s of transcript each, text rows one per change of on-screen text)."""

    videos: int
    seconds: float = 30.0
    speech_rows: float = 6.0
    text_rows: float = 2.0
    text_bytes: float = 60.0  # UTF-8 bytes of one row's text


def lexical_row_bytes(text_bytes: float) -> float:
    """One speech or text row: scalars, the text, its character 3-grams (~3x the text), the language, and two BM25
    sparse vectors (index + weight, 8 B per distinct term: ~1 term per 6 bytes of text, ~1 gram per byte) with their
    inverted indexes (as large again)."""
    terms, grams = text_bytes / 6, text_bytes
    return SEGMENT_SCALARS + text_bytes + 3 * text_bytes + 3 + 2 * 8 * (terms + grams)


@dataclass(frozen=True)
class Estimate:
    segments: int  # per video
    video_bytes: float  # the video row with its index, per video
    segment_bytes: float  # all its segment rows (FLAT: read by video id, then scored exactly)
    expert_bytes: float
    raw_float_bytes: float  # compact mode: the floats re-scored from, when the index does not hold them

    @property
    def per_video(self) -> float:
        return self.video_bytes + self.segment_bytes + self.expert_bytes


def estimate(settings: Settings, library: Library, index_type: str | None = None, dim: int = 512) -> Estimate:
    """Bytes per video in Milvus for this index type (default: the configured one)."""
    index_type = index_type or settings.index_type
    segments = Sampling.from_settings(settings).count(library.seconds)
    vector = index_bytes(index_type, dim, settings.index_params)
    raw = 4 * dim if index_type.upper() not in ("FLAT", "AUTOINDEX", "IVF_FLAT", "HNSW") else 0.0
    if index_type.upper().startswith("BIN_"):  # the float collection (FLAT) stays beside the bits
        vector += 4 * dim
        raw = 0.0
    return Estimate(segments=segments, video_bytes=VIDEO_SCALARS + vector,
                    segment_bytes=segments * (SEGMENT_SCALARS + 4 * dim),
                    expert_bytes=(library.speech_rows + library.text_rows) * lexical_row_bytes(library.text_bytes),
                    raw_float_bytes=raw)


def frames_per_minute(settings: Settings, seconds: float) -> float:
    """Frames sampled per minute of video, for videos of this length."""
    return Sampling.from_settings(settings).count(seconds) * 60 / seconds


def _size(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


INDEXES = ("FLAT", "HNSW", "IVF_SQ8", "BIN_FLAT")


def markdown(settings: Settings, dim: int = 512, seconds: float = 30.0) -> str:
    """The README's capacity tables for the default library shape."""
    lib = Library(videos=1, seconds=seconds)
    rows = ["| index (video vectors) | video row | segments | experts | per video | 1M videos | 10M videos |",
            "|---|---|---|---|---|---|---|"]
    for kind in INDEXES:
        e = estimate(settings, lib, kind, dim)
        extra = f" (+{_size(e.raw_float_bytes)} raw floats unless memory-mapped)" if e.raw_float_bytes else ""
        rows.append(f"| {kind} | {_size(e.video_bytes)}{extra} | {e.segments} x {_size(e.segment_bytes / e.segments)}"
                    f" | {_size(e.expert_bytes)} | {_size(e.per_video)} | {_size(e.per_video * 1e6)} | "
                    f"{_size(e.per_video * 1e7)} |")
    long = estimate(settings, Library(videos=1, seconds=300.0), "FLAT", dim)
    fpm = frames_per_minute(settings, 300.0)
    frames = fpm * 1e6
    gpu_model_h = frames / GPU_MODEL_FPS / 3600
    decode_core_h = frames / DECODE_FPS_PER_CORE / 3600
    cpu_h = frames / CPU_PIPELINE_FPS_2_CORES / 3600
    out = [
        f"Computed for {dim}-dimensional vectors (ViT-B/32), {seconds:g} s videos ({lib.speech_rows:g} speech and "
        f"{lib.text_rows:g} text rows each, {lib.text_bytes:g} bytes of text a row: assumptions), the default "
        "sampling, loaded data only (Milvus's sizing guide adds headroom for queries and compaction):",
        "", *rows, "",
        f"A 5-minute video samples {long.segments} frames: {_size(long.per_video)} per video with FLAT, "
        f"{_size(long.per_video * 1e6)} for 1M such videos. Segments are the bulk either way: the video vectors' "
        "index choice moves the total by a few per cent; compact mode (IVF_SQ8, BIN_FLAT) buys search speed, not "
        "memory, unless the raw floats are memory-mapped (Milvus 2.4+ `mmap.enabled`).",
        "",
        f"PostgreSQL: {_size(POSTGRES_BYTES_PER_VIDEO)} per video (measured, tables and indexes) -> "
        f"{_size(POSTGRES_BYTES_PER_VIDEO * 1e6)} for 1M videos, {_size(POSTGRES_BYTES_PER_VIDEO * 1e7)} for 10M.",
        "",
        f"Embedding one million video-minutes (5-minute videos: {fpm:g} frames a minute, {frames / 1e6:g}M "
        f"frames): {cpu_h:,.0f} hours of a 2-core machine at the measured {CPU_PIPELINE_FPS_2_CORES:g} frames/s; "
        f"on GPUs, {gpu_model_h:,.1f} GPU-hours of model time at an assumed {GPU_MODEL_FPS:,.0f} frames/s (an "
        f"estimate: no GPU figure exists yet), which needs {decode_core_h:,.0f} CPU core-hours of decoding at the "
        f"measured {DECODE_FPS_PER_CORE:g} frames/s per core to feed it "
        f"(~{GPU_MODEL_FPS / DECODE_FPS_PER_CORE:,.0f} decoding cores per GPU).",
    ]
    return "\n".join(out)
