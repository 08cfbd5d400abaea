"""Move stage 3: the library's Milvus collections, copied to another endpoint (Milvus Lite -> a Milvus server).

Each collection is made again at the destination from the source's own description: the same fields, functions
(BM25), indexes (type, metric, build parameters), consistency level and properties (the model key and dimension
that guard against mixing vector spaces). Then its rows are copied as they are stored, vectors included: nothing is
recomputed and no model loads. The sparse fields a BM25 function fills are not copied (Milvus computes them from
the text again, as it did at ingest), nor are the primary keys (the destination gives its own, as it would at
ingest: a Milvus Lite destination numbers them from 1, so copied keys would collide with its next ones).

Rows are read in one pass over the source in primary-key order (query_iterator), `batch` at a time, and the last
key copied is recorded after each batch, so a rerun goes on after it. A run cut short between a batch's insert and
its record would copy that batch twice; so at the end each video's row count at the destination is compared with
the source's, and the rows of any video that differs are replaced by the source's (deleted, then copied again by
video id). A resumed or repeated move thus ends equal to the source, without duplicates.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

from ingest.move.common import BatchHook, MoveError, Progress
from ingest.move.state import MoveState
from schema.settings import EXPERT_NAMES, Settings
from schema.vectors import SEGMENTS_SUFFIX, video_counts

# Keys describe_index reports beside an index's build parameters.
_INDEX_META = {"field_name", "index_name", "index_type", "metric_type", "total_rows", "indexed_rows",
               "pending_index_rows", "state"}
_INSERT_BYTES = 16 << 20  # one insert request stays well under gRPC's message limit
_ITERATOR_BATCH = 4000
MAX_QUERY_ROWS = 16_384  # the most rows one Milvus query (an iterator's batch) returns
_ALLOW_AUTO_ID = "allow_insert_auto_id"


@dataclass
class CollectionReport:
    name: str
    rows: int = 0  # rows at the source (and now at the destination)
    copied: int = 0  # rows written by this run
    created: bool = False


@dataclass
class VectorReport:
    destination: str
    collections: list[CollectionReport] = field(default_factory=list)

    @property
    def nothing_to_do(self) -> bool:
        return not any(c.copied or c.created for c in self.collections)


def library_collections(settings: Settings) -> list[str]:
    """Every collection a library may have: the model's, its segments', and one per expert (schema/store.py names
    them `<collection>_<expert>`, schema/lexical.py and schema/dense.py make them). Not `<collection>_bits` (binary
    compact mode): its rows are keyed by the video rows' primary keys, which a move does not keep; the destination's
    first open in binary mode fills it from the moved floats."""
    base = settings.collection
    return [base, base + SEGMENTS_SUFFIX, *(f"{base}_{expert}" for expert in EXPERT_NAMES)]


def _insertable(info: dict) -> list[str]:
    """The fields rows are written with: not the auto primary key, not the outputs of functions (BM25)."""
    return [f["name"] for f in info["fields"]
            if not (f.get("is_primary") and f.get("auto_id", info.get("auto_id"))) and not f.get("is_function_output")]


def _create_like(src, dst, name: str, info: dict) -> None:
    from pymilvus import CollectionSchema

    schema = CollectionSchema.construct_from_dict(info)
    index = dst.prepare_index_params()
    for index_name in src.list_indexes(name):
        described = src.describe_index(name, index_name)
        params = {k: v for k, v in described.items() if k not in _INDEX_META}
        index.add_index(field_name=described["field_name"], index_type=described.get("index_type", ""),
                        index_name=described.get("index_name", index_name), metric_type=described.get("metric_type"),
                        params=params)
    properties = {k: v for k, v in (info.get("properties") or {}).items() if k != _ALLOW_AUTO_ID}
    dst.create_collection(name, schema=schema, index_params=index,
                          consistency_level=info.get("consistency_level_name") or "Strong", properties=properties)


def _same_fields(a: dict, b: dict) -> bool:
    def shape(info: dict) -> list[tuple]:
        return sorted((f["name"], str(f.get("type")), bool(f.get("is_function_output"))) for f in info["fields"])

    return shape(a) == shape(b)


def check_destination(src, dst, names: list[str], state: MoveState, uri: str) -> list[str]:
    """The library's collections that exist at the source; refuses a destination that already has one of them and
    is not the one an earlier run of this move was filling."""
    present = [n for n in names if src.has_collection(n)]
    ours = (state.section("vectors", uri) or {}).get("collections", {})
    clash = [n for n in present if dst.has_collection(n) and n not in ours]
    if clash:
        raise MoveError(f"the destination Milvus {uri} already has collection(s) {', '.join(clash)}, not made by a "
                        "run of this move: give another endpoint, or drop them there first")
    for n in present:
        if dst.has_collection(n) and not _same_fields(src.describe_collection(n), dst.describe_collection(n)):
            raise MoveError(f"the destination's collection {n} does not have the fields of the source's: drop it "
                            "there, then run this again")
    return present


def _groups(counts: Counter[int], batch: int) -> list[list[int]]:
    """Video ids in order, grouped so that a group holds about `batch` rows (a video is never split)."""
    groups: list[list[int]] = []
    current: list[int] = []
    rows = 0
    for video_id in sorted(counts):
        if current and rows + counts[video_id] > batch:
            groups.append(current)
            current, rows = [], 0
        current.append(video_id)
        rows += counts[video_id]
    if current:
        groups.append(current)
    return groups


def _size(row: dict) -> int:
    return sum(len(v) * 4 if isinstance(v, list | dict) else len(v) if isinstance(v, str | bytes) else 8
               for v in row.values())


def _copy_videos(src, dst, name: str, fields: list[str], video_ids: list[int]) -> int:
    """Replace the destination's rows of these videos with the source's (the repair of `copy_collection`)."""
    expr = f"video_id in [{', '.join(str(int(v)) for v in video_ids)}]"  # ints from Milvus itself
    rows: list[dict] = []
    iterator = src.query_iterator(name, batch_size=_ITERATOR_BATCH, filter=expr, output_fields=fields)
    try:
        while batch := iterator.next():
            rows += [{f: row[f] for f in fields if f in row} for row in batch]
    finally:
        iterator.close()
    dst.delete(name, filter=expr)
    _insert(dst, name, rows)
    return len(rows)


def _key_literal(value) -> str:
    return str(int(value)) if isinstance(value, int) else json.dumps(str(value))


def _count(client, name: str, expr: str) -> int:
    rows = client.query(name, filter=expr, output_fields=["count(*)"])
    return int(rows[0]["count(*)"]) if rows else 0


def _insert(dst, name: str, rows: list[dict]) -> None:
    """Insert `rows` in requests of at most _INSERT_BYTES."""
    chunk: list[dict] = []
    size = 0
    for row in rows:
        chunk.append(row)
        size += _size(row)
        if size >= _INSERT_BYTES:
            dst.insert(name, chunk)
            chunk, size = [], 0
    if chunk:
        dst.insert(name, chunk)


def copy_collection(src, dst, name: str, section: dict, state: MoveState, *, batch: int, progress: Progress,
                    on_batch: BatchHook) -> CollectionReport:
    report = CollectionReport(name)
    info = src.describe_collection(name)
    key = next(f["name"] for f in info["fields"] if f.get("is_primary"))
    record = section.setdefault("collections", {}).setdefault(name, {"after": None, "done": False})
    state.save()  # before the collection exists there: a rerun then knows it is ours
    if not dst.has_collection(name):
        _create_like(src, dst, name, info)
        record.update(after=None, done=False)
        state.save()
        report.created = True
    fields = _insertable(info)
    after = record.get("after")
    expr = f"{key} > {_key_literal(after)}" if after is not None else ""
    bar = progress(name, _count(src, name, expr))
    try:
        iterator = src.query_iterator(name, batch_size=min(batch, MAX_QUERY_ROWS), filter=expr,
                                      output_fields=[*fields, key])
        try:
            while rows := iterator.next():
                _insert(dst, name, [{f: row[f] for f in fields if f in row} for row in rows])
                record["after"] = max(row[key] for row in rows)
                state.save()
                report.copied += len(rows)
                bar.update(len(rows))
                on_batch("vectors", name, len(rows))
        finally:
            iterator.close()
        dst.flush(name)  # sealed: Milvus Lite searches unsealed rows by a slow scan (schema/vectors.py, flush)
        counts, there = video_counts(src, name), video_counts(dst, name)
        report.rows = sum(counts.values())
        wrong = sorted(v for v in set(counts) | set(there) if counts.get(v, 0) != there.get(v, 0))
        if wrong:  # left by a run cut short between an insert and its record, or a source changed meanwhile
            for group in _groups(Counter({v: max(1, counts.get(v, 0)) for v in wrong}), batch):
                report.copied += _copy_videos(src, dst, name, fields, group)
            dst.flush(name)
            there = video_counts(dst, name)
            still = [v for v in wrong if counts.get(v, 0) != there.get(v, 0)]
            if still:
                raise MoveError(f"collection {name}: the rows of video(s) {', '.join(map(str, still[:10]))} differ "
                                "from the source's after copying them again (is a worker writing?); run this again")
    finally:
        bar.close()
    record["done"] = True
    state.save()
    return report


def copy_vectors(src, dst, uri: str, names: list[str], state: MoveState, *, batch: int, progress: Progress,
                 on_batch: BatchHook) -> VectorReport:
    """Copy each of `names` (see check_destination) from client `src` to client `dst` (the endpoint `uri`)."""
    from pymilvus.exceptions import MilvusException

    section = state.begin("vectors", uri, uri)
    report = VectorReport(uri)
    for name in names:
        try:
            report.collections.append(copy_collection(src, dst, name, section, state, batch=batch,
                                                      progress=progress, on_batch=on_batch))
        except MilvusException as exc:
            raise MoveError(f"copying collection {name} to {uri} failed ({exc}); run the same command again to go "
                            "on from where it stopped") from exc
    section["done"] = True
    state.save()
    return report
