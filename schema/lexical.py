"""Full-text (BM25) collections for the lexical experts: one collection per expert, `<collection>_<expert>` (e.g.
vidsearch_videos_speech), one row per timestamped text segment.

Milvus computes BM25 itself (2.5+, and Milvus Lite): a VARCHAR field with an analyzer feeds a BM25 Function whose
output is a sparse vector, searched with the BM25 metric. Each row is indexed twice:

- `text`, its words (standard tokenizer, lowercased): exact words rank first;
- `grams`, the character trigrams of its words (computed here, stored as space-separated tokens): a word OCR misread
  in part ("PLATF0RM", "HARVEST MOC") or typed in part ("platf", "re16" for "RE16TGK") still shares most of its
  trigrams with the query.

A search asks both fields and adds the two BM25 scores (scripts/compare_lexical.py measured the alternatives: words
alone miss partial and misread words; trigrams alone rank as well, the sum keeps exact words ahead of near ones).
Milvus Lite's analyzers are only `standard` and `jieba` (no ngram tokenizer or filter), which is why the trigrams
are made here: the same collection then behaves alike on Lite and on a server. This module does not import ingest:
segments are any objects with `start`, `end` and `text`.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from schema.vectors import CONNECTION_ERRORS, VectorStoreError, video_counts

log = logging.getLogger(__name__)

# Lowercase explicitly: a Milvus server's `standard` tokenizer keeps case (Lite's always lowercases).
ANALYZER = {"tokenizer": "standard", "filter": ["lowercase"]}
GRAM = 3
# Text beyond this many characters of one segment is not indexed (a segment is a few seconds of speech or one
# screen of text); VARCHAR lengths are in bytes, up to 4 per character, and a word of n letters has n-2 trigrams.
MAX_TEXT_CHARS = 2000
TEXT_BYTES = 4 * MAX_TEXT_CHARS
GRAMS_BYTES = 65_535
# Each field is asked for this many times k rows (at least CANDIDATES_MIN) before the two scores are added.
CANDIDATE_FACTOR = 4
CANDIDATES_MIN = 50
MAX_LIMIT = 16_384  # a Milvus search returns at most this many rows
INSERT_ROWS = 2048
PROP_SCHEME = "vidsearch.lexical"
SCHEME = f"words+grams{GRAM}"
LANGUAGE_CHARS = 16
_WORD = re.compile(r"\w+", re.UNICODE)


class FullTextUnsupported(VectorStoreError):
    """The Milvus server cannot do BM25 full-text search (it needs Milvus 2.5 or newer, or Milvus Lite)."""


class SegmentLike(Protocol):
    start: float
    end: float
    text: str


@dataclass(frozen=True)
class LexicalHit:
    """A stored segment matching a query: `text` of `video_id` between `start` and `end` seconds. `score` is BM25,
    positive, higher is better (words + trigrams), whatever sign the server gives its distances."""

    video_id: int
    start: float
    end: float
    text: str
    score: float
    language: str | None = None  # when stored (Whisper's segments); read by video_segments


def collection_name(collection: str, expert: str) -> str:
    """The lexical collection of `expert` beside the videos' `collection`."""
    return f"{collection}_{expert}"


def words(text: str) -> list[str]:
    """Lowercased words (letters and digits), as the standard analyzer sees them."""
    return _WORD.findall(text.lower())


def grams(text: str, n: int = GRAM) -> list[str]:
    """The character n-grams of each word of `text` (a word of n letters or fewer is kept whole)."""
    out: list[str] = []
    for word in words(text):
        out += [word] if len(word) <= n else [word[i : i + n] for i in range(len(word) - n + 1)]
    return out


def _server_version(client) -> tuple[int, int] | None:
    """(major, minor) of a Milvus server ("v2.4.15" -> (2, 4)); None for Milvus Lite or when it cannot tell."""
    from pymilvus.exceptions import MilvusException

    try:
        version = str(client.get_server_version())
    except MilvusException:
        return None
    match = re.match(r"v?(\d+)\.(\d+)", version)
    return (int(match[1]), int(match[2])) if match and not version.lower().startswith("milvus_lite") else None


def _unsupported(client, cause: object) -> FullTextUnsupported:
    version = _server_version(client)
    found = f" (this one is {'.'.join(map(str, version))})" if version else ""
    return FullTextUnsupported(
        f"this Milvus server does not support full-text search (BM25, Milvus 2.5 or newer){found}; the speech and "
        f"text experts need it: upgrade Milvus, use the embedded Milvus Lite (unset VIDSEARCH_MILVUS_URI), or turn "
        f"the experts off (VIDSEARCH_EXPERTS=). The server said: {cause}")


class LexicalStore:
    """One expert's BM25 collection: rows of (video id, start s, end s, text)."""

    def __init__(self, client, name: str, *, lite: bool = False) -> None:
        self.client = client
        self.name = name
        self.lite = lite  # Milvus Lite: seal writes (flush), as MilvusVectorStore does
        self.reconnect: Callable[[], object] | None = None
        self.languages = False  # whether the collection has the language field (set by _check)

    @classmethod
    def open(cls, client, name: str, *, lite: bool | None = None,
             reconnect: Callable[[], object] | None = None) -> LexicalStore:
        """The collection `name` on `client`, created if missing (losing a creation race to another process is
        fine). `reconnect` makes a new client after a lost connection. Raises FullTextUnsupported on a server
        without BM25, VectorStoreError on other failures."""
        from schema.vectors import is_milvus_lite

        store = cls(client, name, lite=is_milvus_lite(client) if lite is None else lite)
        store.reconnect = reconnect
        store._ensure()
        return store

    def _ensure(self) -> None:
        from pymilvus.exceptions import MilvusException

        try:
            if not self.client.has_collection(self.name):
                version = _server_version(self.client)
                if version is not None and version < (2, 5):
                    raise _unsupported(self.client, f"server version {version[0]}.{version[1]}")
                try:
                    self._create()
                except MilvusException as exc:
                    if not self.client.has_collection(self.name):  # a real failure, not a lost race
                        if any(s in str(exc).lower() for s in CONNECTION_ERRORS):
                            raise
                        raise _unsupported(self.client, exc) from exc
            self._check()
            if getattr(self.client.get_load_state(self.name).get("state"), "name", "") == "NotLoad":
                self.client.load_collection(self.name)
        except MilvusException as exc:
            raise VectorStoreError(f"Milvus could not open collection '{self.name}': {exc}") from exc

    def _create(self) -> None:
        from pymilvus import DataType, Function, FunctionType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=True, enable_dynamic_field=False)
        schema.add_field("pk", DataType.INT64, is_primary=True)
        schema.add_field("video_id", DataType.INT64)
        schema.add_field("start_s", DataType.FLOAT)
        schema.add_field("end_s", DataType.FLOAT)
        schema.add_field("text", DataType.VARCHAR, max_length=TEXT_BYTES, enable_analyzer=True,
                         analyzer_params=ANALYZER)
        schema.add_field("grams", DataType.VARCHAR, max_length=GRAMS_BYTES, enable_analyzer=True,
                         analyzer_params=ANALYZER)
        # ISO 639-1 code of the segment's language when the engine tells it (Whisper); collections made before it
        # was added lack the field and are written without it.
        schema.add_field("language", DataType.VARCHAR, max_length=LANGUAGE_CHARS, nullable=True)
        schema.add_field("text_sparse", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_field("grams_sparse", DataType.SPARSE_FLOAT_VECTOR)
        for field in ("text", "grams"):
            schema.add_function(Function(name=f"{field}_bm25", function_type=FunctionType.BM25,
                                         input_field_names=[field], output_field_names=[f"{field}_sparse"]))
        index = self.client.prepare_index_params()
        for field in ("text_sparse", "grams_sparse"):
            index.add_index(field_name=field, index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
        # Strong consistency: a video whose expert finished is searchable by the very next query.
        self.client.create_collection(self.name, schema=schema, index_params=index, consistency_level="Strong",
                                      properties={PROP_SCHEME: SCHEME})
        log.info("created Milvus collection %s (BM25 on words and character %d-grams)", self.name, GRAM)

    def _check(self) -> None:
        info = self.client.describe_collection(self.name)
        names = {f.get("name") for f in info.get("fields", [])}
        scheme = (info.get("properties") or {}).get(PROP_SCHEME)
        self.languages = "language" in names
        if scheme != SCHEME or not {"video_id", "start_s", "end_s", "text", "grams"} <= names:
            raise VectorStoreError(
                f"the Milvus collection '{self.name}' is not a vidsearch full-text collection of this version "
                f"(it records {scheme!r}, expected {SCHEME!r}); drop it or run `vidsearch reindex`")

    def _call(self, what: str, fn):
        """Run one Milvus operation; its errors become VectorStoreError. A lost connection is opened again once, a
        dropped collection created again once, a released one loaded again once (as MilvusVectorStore._call)."""
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
                elif "not exist" in text or "not found" in text:
                    self._ensure()
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

    def add(self, video_id: int, segments: Sequence[SegmentLike]) -> list[int]:
        """Insert the segments of one video (call `delete` first when replacing); segments without words are left
        out. Returns the primary keys of the rows written."""
        rows = []
        for seg in segments:
            text = " ".join(str(seg.text).split())[:MAX_TEXT_CHARS]
            if words(text):
                row = {"video_id": int(video_id), "start_s": float(seg.start), "end_s": float(seg.end),
                       "text": text, "grams": " ".join(grams(text))}
                if self.languages:
                    row["language"] = (getattr(seg, "language", None) or None) and str(seg.language)[:LANGUAGE_CHARS]
                rows.append(row)
        pks: list[int] = []
        for start in range(0, len(rows), INSERT_ROWS):
            chunk = rows[start : start + INSERT_ROWS]
            done = self._call("insert", lambda chunk=chunk: self.client.insert(self.name, chunk))
            pks += [int(p) for p in done["ids"]]
        return pks

    def delete_other_rows(self, video_id: int, keep: Sequence[int]) -> None:
        """Remove the video's rows other than `keep` (primary keys): what an earlier run of its expert stored."""
        others = f" and pk not in [{', '.join(str(int(p)) for p in keep)}]" if keep else ""  # ints only
        expr = f"video_id == {int(video_id)}{others}"
        self._call("delete", lambda: self.client.delete(self.name, filter=expr))

    def delete_rows(self, pks: Sequence[int]) -> None:
        """Remove exactly these rows (what a worker wrote for a run it lost to another worker)."""
        if pks:
            ids = [int(p) for p in pks]
            self._call("delete", lambda: self.client.delete(self.name, ids=ids))

    def delete(self, video_ids: Sequence[int]) -> None:
        if len(video_ids) == 0:
            return
        ids = ", ".join(str(int(v)) for v in video_ids)  # ints only: nothing user-typed reaches the expression
        self._call("delete", lambda: self.client.delete(self.name, filter=f"video_id in [{ids}]"))

    def search(self, query: str, k: int, video_ids: Sequence[int] | None = None) -> list[LexicalHit]:
        """The k segments that best match `query` (only those of `video_ids` when given), best first."""
        query = " ".join(query.split())[:MAX_TEXT_CHARS]
        if k <= 0 or not words(query) or (video_ids is not None and len(video_ids) == 0):
            return []
        expr = f"video_id in [{', '.join(str(int(v)) for v in video_ids)}]" if video_ids is not None else ""
        limit = min(MAX_LIMIT, max(k * CANDIDATE_FACTOR, CANDIDATES_MIN))
        scores: Counter[int] = Counter()
        rows: dict[int, dict] = {}
        for field, text in (("text_sparse", query), ("grams_sparse", " ".join(grams(query)))):
            result = self._call("search", lambda field=field, text=text: self.client.search(  # noqa: B008
                self.name, data=[text], anns_field=field, limit=limit, filter=expr,
                output_fields=["video_id", "start_s", "end_s", "text"], search_params={"metric_type": "BM25"}))
            for hit in result[0]:
                score = abs(float(hit["distance"]))  # BM25 >= 0: Lite returns it negated, a server as it is
                if score > 0:
                    pk = int(hit["id"] if "id" in hit else hit["pk"])
                    scores[pk] += score
                    rows[pk] = hit["entity"]
        best = sorted(scores.items(), key=lambda item: (-item[1], item[0]))[:k]
        return [LexicalHit(int(rows[pk]["video_id"]), float(rows[pk]["start_s"]), float(rows[pk]["end_s"]),
                           str(rows[pk]["text"]), float(score)) for pk, score in best]

    def counts(self) -> Counter[int]:
        """How many segments each video has (for doctor)."""
        return self._call("query", lambda: video_counts(self.client, self.name))

    def video_ids(self) -> set[int]:
        return set(self.counts())

    def flush(self) -> None:
        """After a burst of writes: Milvus Lite seals them (see MilvusVectorStore.flush); a server is left alone."""
        if self.lite:
            self._call("flush", lambda: self.client.flush(self.name))

    def drop(self) -> None:
        if self.client.has_collection(self.name):
            self.client.drop_collection(self.name)

    def video_segments(self, video_id: int) -> list[LexicalHit]:
        """Every stored segment of one video, in time order (score 0: nothing was asked), for its timeline."""
        fields = ["video_id", "start_s", "end_s", "text", *(["language"] if self.languages else [])]
        rows = self._call("query", lambda: self.client.query(
            self.name, filter=f"video_id == {int(video_id)}", output_fields=fields, limit=MAX_LIMIT))
        rows.sort(key=lambda r: (float(r["start_s"]), float(r["end_s"])))
        return [LexicalHit(int(r["video_id"]), float(r["start_s"]), float(r["end_s"]), str(r["text"]), 0.0,
                           r.get("language") or None) for r in rows]
