"""Milvus collection definition and the narrow VectorStore interface the rest of the app uses."""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from schema.filters import UNKNOWN_DURATION, SearchFilters, check_tag, epoch_seconds
from schema.model_key import (
    PRECISION_EXACT,
    PROP_DIM,
    PROP_MODEL,
    PROP_SNAPSHOT,
    ModelKey,
    describe_mismatch,
    parse_legacy,
)
from schema.settings import Settings

log = logging.getLogger(__name__)


class _NoLiteTimestampWarning(logging.Filter):
    """Milvus Lite sends no session timestamp for query iterators, so pymilvus warns "failed to get mvccTs ..." on
    every scan and falls back to the client's clock, which is what Strong consistency needs anyway. The warning says
    nothing a person can act on, so it is dropped (only that one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "failed to get mvccTs" not in record.getMessage()


logging.getLogger("pymilvus.client.iterator.query_iterator").addFilter(_NoLiteTimestampWarning())

# Given the (model, revision) an old collection recorded, the snapshot that names now (the encoder looks it up in
# the Hugging Face cache, or hashes the folder); None when it cannot tell.
LegacySnapshot = Callable[[str, "str | None"], "str | None"]
# Inner product on L2-normalised vectors is cosine similarity.
METRIC = "IP"
PK = "pk"  # the primary key field: search hits carry it under this name
# Ids per `fetch` query: larger chunks amortise Milvus Lite's per-query cost (18 s vs 41 s per 100k vectors
# for 16k vs 1k ids, measured).
FETCH_CHUNK = 16_000
# Compact mode on a server: the sign bits of each video vector in a sibling collection, searched by Hamming
# distance, the candidates re-scored exactly from the floats (the model card's "binarized ... with rerank100").
BINARY_INDEXES = ("BIN_FLAT", "BIN_IVF_FLAT")
BITS_SUFFIX = "_bits"
BITS_FIELD = "bits"
BINARY_RERANK = 100  # candidates re-scored when VIDSEARCH_RERANK is 0: Hamming distances are no similarity to show
# Words of pymilvus/gRPC errors that mean the server could not be reached (as opposed to refusing the operation).
CONNECTION_ERRORS = ("fail connecting", "unavailable", "connection refused", "failed to connect")


class VectorStoreError(RuntimeError):
    """The vector store is unreachable or refused an operation."""


def sign_bits(vectors: np.ndarray) -> list[bytes]:
    """Each vector as its sign bits, packed 8 to a byte (a dimension not a multiple of 8 is padded with zeros)."""
    return [row.tobytes() for row in np.packbits(np.asarray(vectors) > 0, axis=-1)]


class ModelMismatchError(VectorStoreError):
    """The collection was built with another model; mixing vector spaces would give meaningless results."""


@dataclass(frozen=True)
class Hit:
    video_id: int
    score: float


@dataclass(frozen=True)
class VideoFields:
    """Scalar fields stored beside a video's vector, so that Milvus can filter while it searches."""

    duration: float | None = None  # seconds; None: the container did not say
    ingested_at: int = 0  # epoch seconds: when the video was added to the library
    tag: str = ""  # "" = no tag

    @classmethod
    def of(cls, video) -> VideoFields:  # a catalog Video
        return cls(video.duration, epoch_seconds(video.created_at), video.tag or "")

    def row(self) -> dict:
        return {"duration_s": float(self.duration) if self.duration is not None else UNKNOWN_DURATION,
                "ingested_at": int(self.ingested_at), "tag": check_tag(self.tag) if self.tag else ""}


# The scalar fields filters use; a collection created before they existed lacks them (`vidsearch reindex` adds them).
FILTER_FIELDS = ("duration_s", "ingested_at", "tag")


@dataclass(frozen=True)
class Segments:
    """The stored segment vectors of one video, in time order: segment i covers [starts[i], ends[i]] seconds."""

    starts: np.ndarray  # float32 (n,)
    ends: np.ndarray  # float32 (n,)
    vectors: np.ndarray  # float32 (n, dim), L2-normalised rows

    def __len__(self) -> int:
        return int(self.starts.shape[0])


# Segment rows per video are bounded by VIDSEARCH_MAX_FRAMES (<= 1024); a Milvus query returns at most 16,384 rows.
SEGMENT_FETCH_VIDEOS = 16
SEGMENT_INSERT_ROWS = 4096
SEGMENTS_SUFFIX = "_segments"


class VectorStore(Protocol):
    """What ingest and search need from a vector database, and nothing more."""

    dim: int
    model: str

    def add(self, video_ids: Sequence[int], vectors: np.ndarray, fields: Sequence[VideoFields] | None = None
            ) -> list[int]: ...
    def add_segments(self, video_ids: Sequence[int], segments: Sequence[Segments]) -> list[int]: ...
    def delete_rows(self, pks: Sequence[int], segment_pks: Sequence[int] = ()) -> None: ...
    def delete_other_rows(self, keep: Mapping[int, Sequence[int]], keep_segments: Mapping[int, Sequence[int]]
                          ) -> None: ...
    def delete(self, video_ids: Sequence[int], *, segments: bool = True) -> None: ...
    def segments(self, video_ids: Sequence[int]) -> dict[int, Segments]: ...
    def segment_counts(self) -> Counter[int]: ...
    def flush(self) -> None: ...
    def search(self, vector: np.ndarray, k: int, filters: SearchFilters | None = None) -> list[Hit]: ...
    def video_ids(self) -> set[int]: ...
    def vector_counts(self) -> Counter[int]: ...
    def fetch(self, video_ids: Sequence[int]) -> dict[int, np.ndarray]: ...
    def count(self) -> int: ...


def resolve_uri(settings: Settings) -> str:
    """The Milvus endpoint: the configured server, or the shared embedded Milvus Lite server."""
    if settings.milvus_uri:
        return settings.milvus_uri
    from schema.lite_server import ensure_server

    return ensure_server(settings.milvus_lite_dir, port=settings.milvus_lite_port)


CONNECT_ATTEMPTS = 2


def connect(settings: Settings):  # -> pymilvus.MilvusClient (imported lazily: it is slow to import)
    from pymilvus import MilvusClient
    from pymilvus.exceptions import MilvusException

    uri = resolve_uri(settings)
    for attempt in range(CONNECT_ATTEMPTS):
        try:
            # dedicated: pymilvus otherwise shares one channel per address, and a channel whose recovery failed
            # while the server was down stays broken for every client built on it afterwards (tests/test_outage.py).
            return MilvusClient(uri=uri, token=settings.milvus_token or "", timeout=30, dedicated=True)
        except MilvusException as exc:
            # A server may turn a new channel away once (grpc GOAWAY "too_many_pings", seen with Milvus Lite in CI):
            # a fresh channel a moment later connects. Still failing after that: it is really unreachable.
            if attempt == CONNECT_ATTEMPTS - 1:
                raise VectorStoreError(f"cannot connect to Milvus at {uri}: {exc}") from exc
            log.warning("connecting to Milvus at %s failed (%s); retrying", uri, exc)
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def is_milvus_lite(client) -> bool:
    """Whether the endpoint is Milvus Lite (its server reports `milvus_lite-<version>`), whatever the URI says: the
    embedded default, or a Lite server shared by URI as the tests do. Lite needs its writes sealed and is worth an
    in-memory copy; a Milvus server is neither. An endpoint that cannot tell is taken for a server."""
    from pymilvus.exceptions import MilvusException

    try:
        return str(client.get_server_version()).lower().startswith("milvus_lite")
    except MilvusException:
        return False


class MilvusVectorStore:
    """Two collections on one client: the videos' vectors (auto primary key, video id, float vector of the model's
    dimension) and, named `<collection>_segments`, their segments' vectors (plus start and end seconds). In binary
    compact mode (index type BIN_FLAT or BIN_IVF_FLAT, a Milvus server only) a third, `<collection>_bits`, holds each
    video vector's sign bits under the same primary key, with the filter fields: searches run there by Hamming
    distance and the candidates are re-scored exactly from the floats."""

    def __init__(self, client, collection: str, dim: int, model: str | ModelKey, *, index_type: str = "FLAT",
                 index_params: dict | None = None, search_params: dict | None = None,
                 lite: bool = False, rerank: int = 0, legacy_snapshot: LegacySnapshot | None = None) -> None:
        if isinstance(model, ModelKey) and model.dim != dim:
            raise ValueError(f"model key {model.key} has dim {model.dim}, not {dim}")
        self.client = client
        self.collection = collection
        self.segment_collection = collection + SEGMENTS_SUFFIX
        self.dim = dim
        # The encoder's key decides which collections are compatible. A plain string labels vectors that come from
        # no checkpoint (tests, benchmarks on synthetic data) and is compared as it is.
        self.key: ModelKey | None = model if isinstance(model, ModelKey) else None
        self.model = model.key if isinstance(model, ModelKey) else model  # printable (the memory index keys by it)
        self.legacy_snapshot = legacy_snapshot
        # FLAT (exact) by default: approximate indexes are chosen by measured recall (`vidsearch bench`).
        self.index_type = index_type
        self.index_params = dict(index_params or {})
        self.search_params = dict(search_params or {})
        self.lite = lite  # the endpoint is Milvus Lite: seal writes (flush)
        # Compact mode: candidates asked of a (quantized) index, re-scored exactly from the stored floats (`_rerank`).
        self.rerank = rerank
        self.binary = index_type in BINARY_INDEXES
        self.bits_collection = collection + BITS_SUFFIX
        self.bits_dim = -(-dim // 8) * 8
        if self.binary and not rerank:
            self.rerank = BINARY_RERANK
        self.has_bits = self.binary  # writes and deletes keep the bits collection in step (also when it is stale)
        self.reconnect: Callable[[], object] | None = None  # makes a new client after a lost connection
        self.has_filter_fields = True  # False for a collection created by a version without filters

    @classmethod
    def open(cls, settings: Settings, dim: int, model: str | ModelKey, *, client=None, lite: bool | None = None,
             legacy_snapshot: LegacySnapshot | None = None) -> MilvusVectorStore:
        """Connect (or use `client`), create the collections if needed, and refuse collections built with another
        model.

        `model` is the encoder's ModelKey (ClipEncoder.model_key), or a label for vectors from no checkpoint. A
        collection made before snapshots were recorded is upgraded once to the snapshot `legacy_snapshot` finds
        for what it recorded (ClipEncoder.legacy_snapshot); without it, only when it recorded the configured key.
        """
        client = client if client is not None else connect(settings)
        store = cls(client, settings.collection, dim, model, index_type=settings.index_type,
                    index_params=settings.index_params, search_params=settings.search_params,
                    lite=is_milvus_lite(client) if lite is None else lite, rerank=settings.rerank,
                    legacy_snapshot=legacy_snapshot)
        store.reconnect = lambda: connect(settings)
        store._ensure_collection()
        return store

    @classmethod
    def attach(cls, settings: Settings, *, client=None, lite: bool | None = None) -> MilvusVectorStore | None:
        """Open an existing collection whatever model built it (old or new properties); None if there is none yet
        (a client passed in is left open then, one made here is closed)."""
        own = client is None
        client = connect(settings) if own else client
        if not client.has_collection(settings.collection):
            if own:
                client.close()
            return None
        info = client.describe_collection(settings.collection)
        dim = next(int(f["params"]["dim"]) for f in info["fields"] if f.get("name") == "vector")
        props = info.get("properties") or {}
        recorded = ModelKey.from_properties(props, dim)
        store = cls(client, settings.collection, dim, recorded if recorded is not None else props.get(PROP_MODEL, ""),
                    lite=is_milvus_lite(client) if lite is None else lite, rerank=settings.rerank,
                    search_params=settings.search_params)
        store.reconnect = lambda: connect(settings)
        store.has_filter_fields = all(f in {x.get("name") for x in info["fields"]} for f in FILTER_FIELDS)
        store.has_bits = client.has_collection(store.bits_collection)
        return store

    def _ensure_collection(self) -> None:
        """Create the collections if missing (losing a creation race to another process is fine), then check them."""
        from pymilvus.exceptions import MilvusException

        if self.binary and self.lite:
            raise VectorStoreError(
                f"VIDSEARCH_INDEX_TYPE={self.index_type} needs binary vectors, which Milvus Lite does not have: use it "
                "with a Milvus server (VIDSEARCH_MILVUS_URI), or compact mode on Milvus Lite with "
                "VIDSEARCH_INDEX_TYPE=IVF_SQ8 and VIDSEARCH_RERANK=100")
        upgraded: list[tuple[str, str, ModelKey]] = []
        names = [(self.collection, "videos"), (self.segment_collection, "segments")]
        if self.binary:
            names.append((self.bits_collection, "bits"))
        else:
            self.has_bits = self.client.has_collection(self.bits_collection)  # left by an earlier binary mode
        made_bits = False
        for name, kind in names:
            try:
                if not self.client.has_collection(name):
                    try:
                        if kind == "bits":
                            self._create_bits()
                            made_bits = True
                        else:
                            self._create(name, kind == "segments")
                    except MilvusException:
                        if not self.client.has_collection(name):  # a real failure, not a lost race
                            raise
                self._check_compatible(name, upgraded)
                # A restarted server (Milvus Lite always) has its collections released: load them now, rather than
                # let the first query fail (pymilvus logs that failure with a traceback) and be retried by `_call`.
                if getattr(self.client.get_load_state(name).get("state"), "name", "") == "NotLoad":
                    self.client.load_collection(name)
            except MilvusException as exc:
                raise VectorStoreError(f"Milvus could not open collection '{name}': {exc}") from exc
        if self.binary and (made_bits or self._call("count", lambda: row_count(self.client, self.bits_collection))
                            != self._call("count", lambda: row_count(self.client, self.collection))):
            try:
                self.sync_bits()
            except MilvusException as exc:
                raise VectorStoreError(f"Milvus could not fill collection '{self.bits_collection}': {exc}") from exc
        if upgraded:
            _, recorded, key = upgraded[0]
            source = ("the content hash of that folder's weight files" if key.is_folder
                      else "its snapshot in the Hugging Face cache")
            log.warning("Milvus collection %s recorded %s without a snapshot; recorded %s %s (done once; the "
                        "vectors are assumed to come from these weights)", " and ".join(n for n, _, _ in upgraded),
                        recorded, source, key.snapshot)

    def _create(self, name: str, segments: bool = False) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=True, enable_dynamic_field=False)
        schema.add_field("pk", DataType.INT64, is_primary=True)
        schema.add_field("video_id", DataType.INT64)
        if segments:
            schema.add_field("start_s", DataType.FLOAT)
            schema.add_field("end_s", DataType.FLOAT)
        else:
            # DOUBLE, not FLOAT: a float32 10.1 s is above a 10.1 s bound and would be filtered out.
            schema.add_field("duration_s", DataType.DOUBLE)
            schema.add_field("ingested_at", DataType.INT64)
            schema.add_field("tag", DataType.VARCHAR, max_length=4 * 64)  # bytes: 64 characters of UTF-8
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
        index = self.client.prepare_index_params()
        # Segments are only ever read by video id, then scored exactly: no approximate index to tune. In binary
        # compact mode the floats are only read by primary key (the rerank): the index is on the bits.
        if segments or self.binary:
            index.add_index(field_name="vector", index_type="FLAT", metric_type=METRIC)
        else:
            index.add_index(field_name="vector", index_type=self.index_type, metric_type=METRIC,
                            params=self.index_params)
        # Strong consistency: a video marked done must be searchable by the very next query. The model is recorded
        # at creation, so no other process can ever see the collection untagged.
        properties = self.key.properties() if self.key else {PROP_MODEL: self.model, PROP_DIM: str(self.dim)}
        self.client.create_collection(name, schema=schema, index_params=index, consistency_level="Strong",
                                      properties=properties)
        log.info("created Milvus collection %s (dim %d, model %s)", name, self.dim, self.model)

    def _create_bits(self) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("pk", DataType.INT64, is_primary=True)  # the video row's own primary key
        schema.add_field("video_id", DataType.INT64)
        schema.add_field("duration_s", DataType.DOUBLE)
        schema.add_field("ingested_at", DataType.INT64)
        schema.add_field("tag", DataType.VARCHAR, max_length=4 * 64)
        schema.add_field(BITS_FIELD, DataType.BINARY_VECTOR, dim=self.bits_dim)
        index = self.client.prepare_index_params()
        index.add_index(field_name=BITS_FIELD, index_type=self.index_type, metric_type="HAMMING",
                        params=self.index_params)
        properties = self.key.properties() if self.key else {PROP_MODEL: self.model, PROP_DIM: str(self.dim)}
        self.client.create_collection(self.bits_collection, schema=schema, index_params=index,
                                      consistency_level="Strong", properties=properties)
        log.info("created Milvus collection %s (%s, %d bits)", self.bits_collection, self.index_type, self.bits_dim)

    def _bits_rows(self, pks: Sequence[int], video_ids: Sequence[int], vectors: np.ndarray,
                   fields: Sequence[dict]) -> list[dict]:
        return [{PK: int(pk), "video_id": int(v), BITS_FIELD: bits, **VideoFields().row(), **f}
                for pk, v, bits, f in zip(pks, video_ids, sign_bits(vectors), fields, strict=True)]

    def sync_bits(self) -> int:
        """Make the bits collection hold exactly the sign bits of the video rows: after it was made for a library
        that already had videos (compact mode switched on, a moved library), or when their counts differ (rows
        written while it was off). Upserts by primary key, so a concurrent writer's rows are not doubled. Returns
        the rows written."""
        log.warning("filling Milvus collection %s with the sign bits of the %s rows (once)", self.bits_collection,
                    self.collection)
        fields = ["video_id", "vector", *(FILTER_FIELDS if self.has_filter_fields else ())]
        # Bits first, then videos: a bits row written after our read of the videos has its video row written earlier.
        bit_pks = self._call("query", lambda: {int(r[PK]) for b in scan(self.client, self.bits_collection, [PK])
                                               for r in b})
        written, seen = 0, set()
        for batch in scan(self.client, self.collection, [PK, *fields]):
            pks = [int(r[PK]) for r in batch]
            seen.update(pks)
            rows = self._bits_rows(pks, [r["video_id"] for r in batch],
                                   np.asarray([r["vector"] for r in batch], np.float32),
                                   [{f: r[f] for f in FILTER_FIELDS if f in r} for r in batch])
            self._call("upsert", lambda rows=rows: self.client.upsert(self.bits_collection, rows))
            written += len(rows)
        if extra := sorted(bit_pks - seen):
            self._call("delete", lambda: self.client.delete(self.bits_collection, ids=extra))
        return written

    def _check_compatible(self, name: str | None = None, upgraded: list | None = None) -> None:
        name = name or self.collection
        info = self.client.describe_collection(name)
        props = info.get("properties") or {}
        stored_dim = next(
            (int(f["params"]["dim"]) for f in info.get("fields", []) if f.get("name") == "vector"), self.dim
        )
        if name == self.collection:
            names = {f.get("name") for f in info.get("fields", [])}
            self.has_filter_fields = all(f in names for f in FILTER_FIELDS)
        if self.key is None:
            stored_model = props.get(PROP_MODEL)
            if props.get(PROP_SNAPSHOT) or stored_model != self.model or stored_dim != self.dim:
                raise ModelMismatchError(
                    f"the Milvus collection '{name}' holds vectors from model {stored_model!r} (dim {stored_dim}), "
                    f"but they were asked for as {self.model!r} (dim {self.dim}). Vectors from different models "
                    "cannot be compared: use another VIDSEARCH_COLLECTION, or run `vidsearch reindex`."
                )
            return
        stored = ModelKey.from_properties(props, stored_dim)
        if stored is None:
            stored = self._upgrade(name, props.get(PROP_MODEL) or "", stored_dim)
            if upgraded is not None:
                upgraded.append((name, props.get(PROP_MODEL) or "", stored))
        if not stored.same_space(self.key):
            raise ModelMismatchError(describe_mismatch(name, stored, self.key))
        if name == self.collection:
            self.model = stored.key  # one identity per collection, whichever name of its snapshot opened it

    def _upgrade(self, name: str, recorded: str, dim: int) -> ModelKey:
        """Record the snapshot of a collection made before snapshots were (it has only model@revision and dim)."""
        assert self.key is not None
        model, revision = parse_legacy(recorded)
        if self.legacy_snapshot is not None:
            snapshot = self.legacy_snapshot(model, revision)
        else:
            snapshot = self.key.snapshot if recorded == self.key.legacy_key else None
        if snapshot is None:
            raise ModelMismatchError(
                f"the Milvus collection '{name}' was made by an older vidsearch with model {recorded!r} (dim {dim}) "
                f"and records no snapshot, and which snapshot that names cannot be told here (it is not the "
                f"configured {self.key.key}, nor found in the Hugging Face cache). Set VIDSEARCH_MODEL/"
                "VIDSEARCH_MODEL_REVISION back to it once (its snapshot is then recorded), or run "
                "`vidsearch reindex` to rebuild the index with the configured model."
            )
        stored = ModelKey(model=model, snapshot=snapshot, precision=PRECISION_EXACT, dim=dim, revision=revision)
        self.client.alter_collection_properties(name, properties=stored.properties())
        return stored

    def _call(self, what: str, fn):
        """Run one Milvus operation; its errors become VectorStoreError. A collection dropped under a running
        process (`vidsearch reindex`) is created again once, so workers and the UI keep going; a lost connection
        is opened again once (a pymilvus client does not recover by itself after the server comes back: every
        call kept failing, measured)."""
        from pymilvus.exceptions import MilvusException

        try:
            return fn()
        except MilvusException as exc:
            text = str(exc).lower()
            if self.reconnect is not None and any(s in text for s in CONNECTION_ERRORS):
                try:
                    self._new_client()
                except (MilvusException, VectorStoreError, OSError) as again:
                    raise VectorStoreError(f"Milvus {what} failed: {exc}") from again
            elif "not exist" in text or "not found" in text:
                self._ensure_collection()
            elif "released" in text or "not loaded" in text:  # a restarted server loads nothing by itself
                try:
                    self.client.load_collection(self.collection)
                    for name in (self.segment_collection, self.bits_collection):
                        if self.client.has_collection(name):
                            self.client.load_collection(name)
                except MilvusException as again:
                    raise VectorStoreError(f"Milvus {what} failed: {exc}") from again
            else:
                raise VectorStoreError(f"Milvus {what} failed: {exc}") from exc
        try:
            return fn()
        except MilvusException as exc:
            raise VectorStoreError(f"Milvus {what} failed: {exc}") from exc

    def _new_client(self) -> None:
        old, self.client = self.client, self.reconnect()
        with contextlib.suppress(Exception):
            old.close()

    def add(self, video_ids: Sequence[int], vectors: np.ndarray, fields: Sequence[VideoFields] | None = None
            ) -> list[int]:
        """Insert one vector per video, with its filterable fields (defaults: unknown duration, no tag). Returns the
        rows' primary keys, in order (see delete_rows)."""
        if len(video_ids) == 0:
            return []
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(video_ids), self.dim):
            raise ValueError(f"expected {len(video_ids)} vectors of dim {self.dim}, got {vectors.shape}")
        fields = list(fields) if fields is not None else [VideoFields()] * len(video_ids)
        rows = [{"video_id": int(v), "vector": vec, **(f.row() if self.has_filter_fields else {})}
                for v, vec, f in zip(video_ids, vectors.tolist(), fields, strict=True)]
        pks = [int(pk) for pk in self._call("insert", lambda: self.client.insert(self.collection, rows))["ids"]]
        if self.binary:  # after the floats: a bits row always has its video row (see sync_bits)
            bits = self._bits_rows(pks, video_ids, vectors, [f.row() for f in fields])
            self._call("upsert", lambda: self.client.upsert(self.bits_collection, bits))
        return pks

    def add_segments(self, video_ids: Sequence[int], segments: Sequence[Segments]) -> list[int]:
        """Insert the segment vectors of these videos (call `delete` first when replacing). Returns the rows'
        primary keys, in order."""
        rows = []
        for video_id, seg in zip(video_ids, segments, strict=True):
            vectors = np.asarray(seg.vectors, dtype=np.float32)
            if vectors.ndim != 2 or vectors.shape[1:] != (self.dim,) or len(vectors) != len(seg.starts):
                raise ValueError(f"expected {len(seg.starts)} segment vectors of dim {self.dim}, got {vectors.shape}")
            rows += [{"video_id": int(video_id), "start_s": float(a), "end_s": float(b), "vector": vec}
                     for a, b, vec in zip(seg.starts.tolist(), seg.ends.tolist(), vectors.tolist(), strict=True)]
        pks: list[int] = []
        for start in range(0, len(rows), SEGMENT_INSERT_ROWS):
            chunk = rows[start : start + SEGMENT_INSERT_ROWS]
            done = self._call("insert", lambda chunk=chunk: self.client.insert(self.segment_collection, chunk))
            pks += [int(pk) for pk in done["ids"]]
        return pks

    def delete_rows(self, pks: Sequence[int], segment_pks: Sequence[int] = ()) -> None:
        """Remove exactly these rows (primary keys that add and add_segments returned): what a worker wrote for a
        job it lost to another worker, leaving the other's rows of the same video alone."""
        if segment_pks:
            ids = [int(p) for p in segment_pks]
            self._call("delete", lambda: self.client.delete(self.segment_collection, ids=ids))
        if pks:
            ids = [int(p) for p in pks]
            self._call("delete", lambda: self.client.delete(self.collection, ids=ids))
            if self.has_bits:
                self._call("delete", lambda: self.client.delete(self.bits_collection, ids=ids))

    def delete_other_rows(self, keep: Mapping[int, Sequence[int]], keep_segments: Mapping[int, Sequence[int]]
                          ) -> None:
        """For each video in `keep`, remove its rows other than the listed primary keys (and likewise its segment
        rows other than `keep_segments`'): what an earlier, crashed attempt at the same job left behind."""
        pairs = [(self.collection, keep), (self.segment_collection, keep_segments)]
        if self.has_bits:  # the same primary keys as the video rows
            pairs.append((self.bits_collection, keep))
        for collection, wanted in pairs:
            for expr in _other_rows_filters({v: wanted.get(v, ()) for v in keep}):
                self._call("delete", lambda collection=collection, expr=expr: self.client.delete(collection,
                                                                                                 filter=expr))

    def delete(self, video_ids: Sequence[int], *, segments: bool = True) -> None:
        """Remove the vectors of these videos, and (unless told otherwise) their segment vectors."""
        if len(video_ids) == 0:
            return
        ids = ", ".join(str(int(v)) for v in video_ids)  # ints only: nothing user-typed reaches the expression
        if segments:
            self._call("delete", lambda: self.client.delete(self.segment_collection, filter=f"video_id in [{ids}]"))
        self._call("delete", lambda: self.client.delete(self.collection, filter=f"video_id in [{ids}]"))
        if self.has_bits:
            self._call("delete", lambda: self.client.delete(self.bits_collection, filter=f"video_id in [{ids}]"))

    def segments(self, video_ids: Sequence[int]) -> dict[int, Segments]:
        """The stored segments of each of these videos, in time order (videos without any are left out)."""
        rows_by_video: dict[int, list[dict]] = {}
        ids = [int(v) for v in video_ids]
        for start in range(0, len(ids), SEGMENT_FETCH_VIDEOS):
            chunk = ids[start : start + SEGMENT_FETCH_VIDEOS]
            expr = f"video_id in [{', '.join(map(str, chunk))}]"  # ints only
            rows = self._call("query", lambda expr=expr: self.client.query(  # noqa: B008
                self.segment_collection, filter=expr, output_fields=["video_id", "start_s", "end_s", "vector"],
                limit=16_384))
            for row in rows:
                rows_by_video.setdefault(int(row["video_id"]), []).append(row)
        out: dict[int, Segments] = {}
        for video_id, rows in rows_by_video.items():
            rows.sort(key=lambda r: (r["start_s"], r["end_s"]))
            out[video_id] = Segments(np.array([r["start_s"] for r in rows], np.float32),
                                     np.array([r["end_s"] for r in rows], np.float32),
                                     np.array([r["vector"] for r in rows], np.float32))
        return out

    def segment_counts(self) -> Counter[int]:
        """How many segment vectors each video has."""
        return self._counts(self.segment_collection)

    def flush(self) -> None:
        """After a burst of writes. Milvus Lite searches unsealed rows by a slow scan (586 ms vs 21 ms at 10k rows,
        measured), so its segments are sealed; a Milvus server indexes growing segments itself and is left alone
        (lite: the endpoint is Milvus Lite, see is_milvus_lite)."""
        if self.lite:
            self._call("flush", lambda: self.client.flush(self.segment_collection))
            self._call("flush", lambda: self.client.flush(self.collection))

    def search(self, vector: np.ndarray, k: int, filters: SearchFilters | None = None) -> list[Hit]:
        """The k nearest videos; with filters, only those whose stored fields match (Milvus filters while it
        searches, so k matching videos come back whenever that many exist)."""
        if k <= 0:
            return []
        expr = filters.expression() if filters is not None else ""
        if expr and not self.has_filter_fields:
            raise VectorStoreError(f"the Milvus collection '{self.collection}' was created by an older vidsearch "
                                   "without filter fields; run `vidsearch reindex` to rebuild it with them")
        if self.binary:
            return self._rerank(self._hamming(vector, max(k, self.rerank), expr), vector, k)
        result = self._call("search", lambda: self.client.search(
            self.collection,
            data=[np.asarray(vector, dtype=np.float32).tolist()],
            limit=max(k, self.rerank),
            filter=expr,
            output_fields=["video_id"],
            search_params={"metric_type": METRIC, "params": self.search_params},
        ))
        if self.rerank:
            return self._rerank(result[0], vector, k)
        return [Hit(video_id=int(h["entity"]["video_id"]), score=float(h["distance"])) for h in result[0]]

    def _hamming(self, vector: np.ndarray, limit: int, expr: str) -> list:
        """The `limit` videos whose sign bits are nearest the query's, filters applied inside the search."""
        result = self._call("search", lambda: self.client.search(
            self.bits_collection, data=sign_bits(np.asarray(vector, np.float32)[None]), anns_field=BITS_FIELD,
            limit=limit, filter=expr, output_fields=["video_id"],
            search_params={"metric_type": "HAMMING", "params": self.search_params}))
        return result[0]

    def _rerank(self, hits, vector: np.ndarray, k: int) -> list[Hit]:
        """The top k of the index's candidates by their exact inner product with `vector`. A quantized index ranks
        by approximate scores; the collection keeps every raw float vector, so one query by primary key re-scores
        the candidates exactly (the binarized "rerank100" idea, on whatever quantization the endpoint offers)."""
        pks = [_hit_pk(h) for h in hits]
        if not pks:
            return []
        expr = f"{PK} in [{', '.join(map(str, pks))}]"  # ints from Milvus itself
        rows = self._call("query", lambda: self.client.query(self.collection, filter=expr,
                                                             output_fields=["video_id", "vector"], limit=len(pks)))
        if not rows:  # deleted between the search and the query
            return []
        scores = np.asarray([r["vector"] for r in rows], dtype=np.float32) @ np.asarray(vector, dtype=np.float32)
        order = np.argsort(-scores, kind="stable")[:k]
        return [Hit(video_id=int(rows[i]["video_id"]), score=float(scores[i])) for i in order]

    def fetch(self, video_ids: Sequence[int]) -> dict[int, np.ndarray]:
        """The stored vector of each of these videos (absent ones are left out)."""
        found: dict[int, np.ndarray] = {}
        ids = [int(v) for v in video_ids]
        for start in range(0, len(ids), FETCH_CHUNK):
            chunk = ids[start : start + FETCH_CHUNK]
            expr = f"video_id in [{', '.join(map(str, chunk))}]"  # ints only
            rows = self._call("query", lambda expr=expr, n=len(chunk): self.client.query(  # noqa: B008
                self.collection, filter=expr, output_fields=["video_id", "vector"], limit=n))
            for row in rows:
                found[int(row["video_id"])] = np.asarray(row["vector"], dtype=np.float32)
        return found

    def video_ids(self) -> set[int]:
        return set(self.vector_counts())

    def vector_counts(self) -> Counter[int]:
        """How many vectors each video has (exactly one, when all is well)."""
        return self._counts(self.collection)

    def _counts(self, collection: str) -> Counter[int]:
        # A fresh count per attempt: `_call` runs it again after a lost connection, so nothing is counted twice.
        return self._call("query", lambda: video_counts(self.client, collection))

    def count(self) -> int:
        return self._call("count", lambda: row_count(self.client, self.collection))

    def drop(self) -> None:
        for name in (self.bits_collection, self.segment_collection):
            if self.client.has_collection(name):
                self.client.drop_collection(name)
        self.client.drop_collection(self.collection)

    def close(self) -> None:
        self.client.close()


def _other_rows_filters(keep: Mapping[int, Sequence[int]], max_keys: int = 4096) -> list[str]:
    """Filters matching the rows of these videos except the listed primary keys, a few thousand keys per filter
    (ints only: nothing user-typed reaches the expression)."""
    filters, videos, keys = [], [], []
    for video_id, pks in keep.items():
        if videos and len(keys) + len(pks) > max_keys:
            filters.append((videos, keys))
            videos, keys = [], []
        videos.append(int(video_id))
        keys += [int(p) for p in pks]
    if videos:
        filters.append((videos, keys))
    return [f"video_id in [{', '.join(map(str, v))}]" + (f" and {PK} not in [{', '.join(map(str, k))}]" if k else "")
            for v, k in filters]


def _hit_pk(hit) -> int:
    """A search hit's primary key: Milvus Lite names it after the field (`pk`), a 2.3 server only as `id`."""
    for key in ("id", PK):
        try:
            return int(hit[key])
        except KeyError:
            continue
    raise VectorStoreError(f"a Milvus search hit without its primary key: {dict(hit)}")


def scan(client, collection: str, fields: Sequence[str]) -> Iterator[list[dict]]:
    """Every row of `collection` with these fields, a batch at a time (query_iterator, closed however it ends)."""
    iterator = client.query_iterator(collection, batch_size=4000, filter="", output_fields=list(fields))
    try:
        while batch := iterator.next():
            yield batch
    finally:
        iterator.close()


def row_count(client, collection: str) -> int:
    """Rows in `collection`, growing segments included: a server's collection statistics count only flushed
    segments (0 right after an insert on Milvus 2.3, tests/test_milvus_server.py), so ask for count(*)."""
    return int(client.query(collection, filter="", output_fields=["count(*)"])[0]["count(*)"])


def video_counts(client, collection: str) -> Counter[int]:
    """How many rows each video has in `collection`, by one scan of its video ids."""
    counts: Counter[int] = Counter()
    for batch in scan(client, collection, ["video_id"]):
        counts.update(int(row["video_id"]) for row in batch)
    return counts


def drop_collection(settings: Settings, client=None) -> bool:
    """Remove the collection and its segments' collection entirely (used by `reindex`). True if it existed."""
    own = client is None
    client = connect(settings) if own else client
    try:
        for name in (settings.collection + BITS_SUFFIX, settings.collection + SEGMENTS_SUFFIX):
            if client.has_collection(name):
                client.drop_collection(name)
        if client.has_collection(settings.collection):
            client.drop_collection(settings.collection)
            return True
        return False
    finally:
        if own:
            client.close()
