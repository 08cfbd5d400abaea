"""Dense collections for the experts whose segments are vectors (audio: CLAP embeddings of windows of the
soundtrack): `<collection>_<expert>`, one row per window (video id, start, end, vector), searched by inner product.

The collection records the key of the model that made its vectors (checkpoint snapshot and dimension, property
PROP_MODEL); vectors of another model are refused with the advice to rebuild the expert, never mixed. It is created
on the first write, when the dimension is known (the model loads in the expert's process). Like the lexical
collections it is independent of the appearance model, so it outlives `vidsearch reindex` of the video vectors.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from schema.vectors import CONNECTION_ERRORS, METRIC, VectorStoreError, row_count, video_counts

log = logging.getLogger(__name__)

PROP_MODEL = "vidsearch.dense.model"
PROP_DIM = "vidsearch.dense.dim"
INSERT_ROWS = 2048
FETCH_LIMIT = 16_384  # a Milvus query returns at most this many rows
SAMPLE = 2048  # stored vectors a query's scores are compared against (see `sample`)


class DenseModelMismatch(VectorStoreError):
    """The collection holds vectors of another model than the one writing or querying it."""


class VectorSegmentLike(Protocol):
    start: float
    end: float
    vector: np.ndarray


@dataclass(frozen=True)
class DenseHit:
    video_id: int
    start: float
    end: float
    score: float  # inner product of normalised vectors: the cosine


@dataclass(frozen=True)
class Windows:
    """The stored windows of one video, in time order."""

    starts: np.ndarray  # (n,) float32 seconds
    ends: np.ndarray
    vectors: np.ndarray  # (n, dim) float32


class DenseSegmentStore:
    """One dense expert's collection. `model` is the recorded model key (None while the collection does not
    exist)."""

    def __init__(self, client, name: str, *, lite: bool = False) -> None:
        self.client = client
        self.name = name
        self.lite = lite
        self.reconnect: Callable[[], object] | None = None
        self.model: str | None = None
        self.dim: int | None = None
        self._sample: tuple[int, np.ndarray] | None = None  # (rows when taken, vectors)

    @classmethod
    def open(cls, client, name: str, *, lite: bool = False) -> DenseSegmentStore:
        store = cls(client, name, lite=lite)
        store._read()
        return store

    def _read(self) -> None:
        from pymilvus.exceptions import MilvusException

        try:
            if not self.client.has_collection(self.name):
                self.model = self.dim = None
                return
            info = self.client.describe_collection(self.name)
            props = info.get("properties") or {}
            if PROP_MODEL not in props:
                raise VectorStoreError(f"the Milvus collection '{self.name}' is not a vidsearch dense collection of "
                                       "this version; drop it or run `vidsearch reindex --experts audio --again`")
            self.model, self.dim = props[PROP_MODEL], int(props[PROP_DIM])
            if getattr(self.client.get_load_state(self.name).get("state"), "name", "") == "NotLoad":
                self.client.load_collection(self.name)
        except MilvusException as exc:
            raise VectorStoreError(f"Milvus could not open collection '{self.name}': {exc}") from exc

    @property
    def exists(self) -> bool:
        return self.model is not None

    def bind(self, model: str, dim: int) -> None:
        """Make sure the collection holds vectors of `model` (`dim` dimensions), creating it if there is none."""
        if self.model is None:
            self._read()
        if self.model is None:
            self._create(model, dim)
        elif self.model != model:
            raise DenseModelMismatch(
                f"the collection '{self.name}' holds vectors of {self.model}, not of {model} (the model configured "
                "now); run `vidsearch reindex --experts audio --again` to rebuild it with the new one")

    def _create(self, model: str, dim: int) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=True, enable_dynamic_field=False)
        schema.add_field("pk", DataType.INT64, is_primary=True)
        schema.add_field("video_id", DataType.INT64)
        schema.add_field("start_s", DataType.FLOAT)
        schema.add_field("end_s", DataType.FLOAT)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=int(dim))
        index = self.client.prepare_index_params()
        index.add_index(field_name="vector", index_type="FLAT", metric_type=METRIC)
        self.client.create_collection(self.name, schema=schema, index_params=index, consistency_level="Strong",
                                      properties={PROP_MODEL: model, PROP_DIM: str(int(dim))})
        self.model, self.dim = model, int(dim)
        log.info("created Milvus collection %s (%s, %d dimensions)", self.name, model, dim)

    def _call(self, what: str, fn):
        """One Milvus operation; its errors become VectorStoreError. A lost connection is opened again once, a
        released collection loaded again once (as the other stores do)."""
        from pymilvus.exceptions import MilvusException

        try:
            return fn()
        except MilvusException as exc:
            text = str(exc).lower()
            try:
                if self.reconnect is not None and any(s in text for s in CONNECTION_ERRORS):
                    old, self.client = self.client, self.reconnect()
                    with contextlib.suppress(Exception):
                        old.close()
                elif "released" in text or "not loaded" in text:
                    self.client.load_collection(self.name)
                else:
                    raise VectorStoreError(f"Milvus {what} failed: {exc}") from exc
            except (MilvusException, OSError) as again:
                raise VectorStoreError(f"Milvus {what} failed: {exc}") from again
        try:
            return fn()
        except MilvusException as exc:
            raise VectorStoreError(f"Milvus {what} failed: {exc}") from exc

    # --- the LexicalWriter protocol of the expert stage -----------------------------------------------------------
    def add(self, video_id: int, segments: Sequence[VectorSegmentLike]) -> list[int]:
        """Insert one video's windows (call `bind` first, and `delete` when replacing). Returns the rows' primary
        keys."""
        if not segments:
            return []
        if self.dim is None:
            raise VectorStoreError(f"the collection '{self.name}' was not bound to a model before writing")
        rows = []
        for seg in segments:
            vec = np.asarray(seg.vector, dtype=np.float32).ravel()
            if vec.shape[0] != self.dim:
                raise DenseModelMismatch(f"a {vec.shape[0]}-dimensional vector for '{self.name}' ({self.dim})")
            rows.append({"video_id": int(video_id), "start_s": float(seg.start), "end_s": float(seg.end),
                         "vector": vec.tolist()})
        pks: list[int] = []
        for start in range(0, len(rows), INSERT_ROWS):
            chunk = rows[start : start + INSERT_ROWS]
            done = self._call("insert", lambda chunk=chunk: self.client.insert(self.name, chunk))
            pks += [int(p) for p in done["ids"]]
        return pks

    def delete_other_rows(self, video_id: int, keep: Sequence[int]) -> None:
        """Remove the video's rows other than `keep` (primary keys): what an earlier run of its expert stored."""
        if not self.exists:
            return
        others = f" and pk not in [{', '.join(str(int(p)) for p in keep)}]" if keep else ""  # ints only
        expr = f"video_id == {int(video_id)}{others}"
        self._call("delete", lambda: self.client.delete(self.name, filter=expr))

    def delete_rows(self, pks: Sequence[int]) -> None:
        """Remove exactly these rows (what a worker wrote for a run it lost to another worker)."""
        if pks and self.exists:
            ids = [int(p) for p in pks]
            self._call("delete", lambda: self.client.delete(self.name, ids=ids))

    def delete(self, video_ids: Sequence[int]) -> None:
        if len(video_ids) == 0 or not self.exists:
            return
        ids = ", ".join(str(int(v)) for v in video_ids)  # ints only: nothing user-typed reaches the expression
        self._call("delete", lambda: self.client.delete(self.name, filter=f"video_id in [{ids}]"))

    def flush(self) -> None:
        """After a burst of writes: Milvus Lite seals them (see MilvusVectorStore.flush); a server is left alone."""
        if self.lite and self.exists:
            self._call("flush", lambda: self.client.flush(self.name))

    # --- reading ------------------------------------------------------------------------------------------------
    def search(self, vector: np.ndarray, k: int, video_ids: Sequence[int] | None = None) -> list[DenseHit]:
        """The k windows nearest to `vector` (only those of `video_ids` when given), best first."""
        if k <= 0 or not self.exists or (video_ids is not None and len(video_ids) == 0):
            return []
        expr = f"video_id in [{', '.join(str(int(v)) for v in video_ids)}]" if video_ids is not None else ""
        result = self._call("search", lambda: self.client.search(
            self.name, data=[np.asarray(vector, dtype=np.float32).tolist()], limit=min(k, FETCH_LIMIT), filter=expr,
            output_fields=["video_id", "start_s", "end_s"], search_params={"metric_type": METRIC}))
        return [DenseHit(int(h["entity"]["video_id"]), float(h["entity"]["start_s"]), float(h["entity"]["end_s"]),
                         float(h["distance"])) for h in result[0]]

    def windows(self, video_ids: Sequence[int]) -> dict[int, Windows]:
        """The stored windows of each of these videos (videos without any are left out)."""
        if not self.exists or not video_ids:
            return {}
        expr = f"video_id in [{', '.join(str(int(v)) for v in video_ids)}]"
        rows = self._call("query", lambda: self.client.query(
            self.name, filter=expr, output_fields=["video_id", "start_s", "end_s", "vector"], limit=FETCH_LIMIT))
        by_video: dict[int, list[dict]] = {}
        for row in rows:
            by_video.setdefault(int(row["video_id"]), []).append(row)
        out = {}
        for video_id, found in by_video.items():
            found.sort(key=lambda r: (r["start_s"], r["end_s"]))
            out[video_id] = Windows(np.array([r["start_s"] for r in found], np.float32),
                                    np.array([r["end_s"] for r in found], np.float32),
                                    np.array([r["vector"] for r in found], np.float32))
        return out

    def sample(self) -> np.ndarray:
        """Up to SAMPLE stored vectors, the background a query's scores are measured against (search_app/fusion.py
        calibrates a window's cosine by its z-score among them). Taken again when the collection has grown by a
        quarter since."""
        if not self.exists:
            return np.zeros((0, self.dim or 0), np.float32)
        rows = self._call("count", lambda: row_count(self.client, self.name))
        taken = self._sample[0] if self._sample is not None else -1
        if taken < 0 or rows > 1.25 * taken or (taken < SAMPLE and rows != taken):
            found = self._call("query", lambda: self.client.query(self.name, filter="", output_fields=["vector"],
                                                                  limit=SAMPLE))
            self._sample = (rows, np.array([r["vector"] for r in found], np.float32).reshape(-1, self.dim))
        return self._sample[1]

    def counts(self) -> Counter[int]:
        """How many windows each video has (for doctor)."""
        if not self.exists:
            return Counter()
        return self._call("query", lambda: video_counts(self.client, self.name))

    def video_ids(self) -> set[int]:
        return set(self.counts())

    def drop(self) -> None:
        if self.client.has_collection(self.name):
            self.client.drop_collection(self.name)
        self.model = self.dim = None
        self._sample = None
