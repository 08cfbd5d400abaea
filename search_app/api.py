"""JSON HTTP API under /api: embeddings, text and image search, the library, uploads and jobs.

Every request and response has a Pydantic model, so /openapi.json describes the API exactly. Errors are answered
as {"detail": "<one sentence>"}: 400 unreadable image, 404 unknown id, 413 too large, 415 wrong kind of upload,
422 invalid input, 503 model or vector store unavailable; the project's exceptions become HTTP errors here, at the
edge, and nowhere else. Model work is CPU-bound and runs in the threadpool, never on the event loop.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import re
import tempfile
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Message, Receive

from ingest.encoder import ModelUnavailableError
from ingest.library import Outcome, delete_video, enqueue_file
from ingest.runtime import Runtime
from schema.catalog import Job, JobState, Video, VideoStatus
from schema.filters import MAX_FILTER_TAGS, MAX_TAG_LENGTH, check_tag
from schema.storage import StorageError
from schema.vectors import VectorStoreError
from search_app.audio_query import expert_sources
from search_app.present import fragment, media_url, thumbnail_url
from search_app.search import (
    MAX_IMAGE_BYTES,
    MAX_K,
    ImageQueryError,
    ImageTooLargeError,
    QueryError,
    SearchFilters,
    SearchResult,
    decode_base64_image,
    embed_query_image,
    search_image,
    search_text,
)
from search_app.slots import ModelSlots
from search_app.timeline import TimelineService

log = logging.getLogger(__name__)

MAX_TEXT = 2000  # characters; the tokenizer truncates far earlier, this only bounds the work
# Bodies of the JSON / image routes: a base64 image of MAX_IMAGE_BYTES plus room for the rest.
MAX_BODY_BYTES = MAX_IMAGE_BYTES * 4 // 3 + 1024 * 1024
MULTIPART_SLACK = 64 * 1024  # headers and boundaries around an uploaded file
MAX_DB_ID = 2**63 - 1
UPLOAD_FIELD = "file"

PAGE_SIZE, MAX_PAGE_SIZE = 100, 1000  # videos per page of GET /api/videos: default, most
MAX_CURSOR = 64

VideoId = Annotated[int, PathParam(ge=1, le=MAX_DB_ID, description="Video id")]
JobId = Annotated[int, PathParam(ge=1, le=MAX_DB_ID, description="Job id")]


# --- models -----------------------------------------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorOut(BaseModel):
    detail: str = Field(description="What was wrong, in one sentence.")


class TextIn(_Strict):
    text: str = Field(min_length=1, max_length=MAX_TEXT, description="What happens in the video.")


class ImageIn(_Strict):
    image: str = Field(min_length=1, description="Base64 of an encoded image (PNG, JPEG, WebP, GIF, ...); a "
                       "data: URL is accepted too.")


class EmbeddingOut(BaseModel):
    embedding: list[float] = Field(description="L2-normalised vector, in the space the videos are indexed in.")
    dim: int
    model: str = Field(description="Model key (id@revision): vectors of different keys must not be compared.")


class Filters(_Strict):
    """Conditions on the video, evaluated by Milvus with the vector search. All given conditions must hold. Unknown
    keys are refused."""

    min_duration: float | None = Field(None, ge=0, le=1e9, description="Shortest duration, seconds.")
    max_duration: float | None = Field(None, ge=0, le=1e9, description="Longest duration, seconds.")
    ingested_after: str | None = Field(None, max_length=40, description="Added to the library on or after this "
                                       "date or date-time, ISO 8601 (2026-11-23, 2026-11-23T14:00:00Z; UTC unless "
                                       "an offset is given).", examples=["2026-11-01"])
    ingested_before: str | None = Field(None, max_length=40, description="Added on or before this date (a bare "
                                        "date includes that whole day) or date-time.", examples=["2026-11-30"])
    tags: list[str] = Field(default_factory=list, max_length=MAX_FILTER_TAGS, description="The video's tag (set "
                            "at upload or `vidsearch ingest --tag`) is one of these. Matched literally.")

    @model_validator(mode="after")
    def _ordered(self) -> Filters:
        if self.min_duration is not None and self.max_duration is not None and self.min_duration > self.max_duration:
            raise ValueError("min_duration must not be larger than max_duration")
        return self

    def to_search(self) -> SearchFilters:
        """Dates parsed, tags checked: a value that can match nothing as written is refused with a 422."""
        return SearchFilters.from_text(self.min_duration, self.max_duration, self.ingested_after,
                                       self.ingested_before, self.tags)


class SearchIn(_Strict):
    """Exactly one of `text` and `image`."""

    text: str | None = Field(None, min_length=1, max_length=MAX_TEXT, description="What happens in the video.")
    image: str | None = Field(None, min_length=1, description="Base64 of an encoded still image.")
    k: int = Field(10, ge=1, le=MAX_K, description="Number of results.")
    filters: Filters | None = None
    weights: dict[Literal["appearance", "speech", "text", "audio"], float] | None = Field(
        None, description="Text queries: how much each expert counts in the fused ranking (0 turns one off; "
        "defaults in the README, Experts). Image queries use appearance alone.",
        examples=[{"speech": 1.0, "appearance": 0.5}])

    @model_validator(mode="after")
    def _one_query(self) -> SearchIn:
        if (self.text is None) == (self.image is None):
            raise ValueError("give exactly one of 'text' and 'image'")
        for name, value in (self.weights or {}).items():
            if not 0 <= value <= 100:
                raise ValueError(f"the weight of {name} must be between 0 and 100")
        return self


class Moment(BaseModel):
    """A time span of a video that matches the query: a window of about VIDSEARCH_MOMENT_SECONDS."""

    start: float = Field(description="Seconds from the start of the video.")
    end: float = Field(description="Seconds from the start of the video.")
    score: float = Field(description="appearance: cosine similarity between the query and this part of the video; "
                         "speech, text: the share of the query's words found there (0..1); audio: how far "
                         "this window's sound stands out for the query (0..1).")
    thumbnail_url: str | None = Field(None, description="Thumbnail of the best-matching frame (under /thumbnails).")
    media_url: str | None = Field(None, description="The video with a media fragment (#t=start,end): a player "
                                  "given this URL starts at the moment.")
    expert: str = Field("appearance", description="What matched here: appearance (the pictures), speech (what is "
                        "said), text (what is written on screen), audio (what is heard).")
    text: str | None = Field(None, description="speech, text: what was said or shown in this moment.")


class TimelinePoint(BaseModel):
    time: float = Field(description="Seconds: the centre of a sampled frame's span.")
    score: float = Field(description="Cosine similarity between the query and that frame.")


class ExpertPoint(BaseModel):
    start: float = Field(description="Seconds: where this frame's span, segment or window starts.")
    end: float = Field(description="Seconds: where it ends.")
    score: float = Field(description="appearance, audio: cosine similarity with the query in that expert's model; "
                         "speech, text: the share of the query's words said or shown there (0..1).")
    normalized: float = Field(description="The score on 0..1, to share one plot with the other experts: speech and "
                              "text as they are; appearance and audio scaled to this video's range (min 0, max 1).")
    text: str | None = Field(None, description="speech, text: what is said or shown there.")


class ExpertLineOut(BaseModel):
    expert: str = Field(description="appearance (per sampled frame), speech or text (per stored segment), audio "
                        "(per window of the soundtrack).")
    points: list[ExpertPoint]
    moments: list[Moment] = Field(description="This expert's best moments, best first.")


class TimelineOut(BaseModel):
    video_id: int
    source: str = Field(description="'stored': from the segment vectors of the index; 'computed': the video had "
                        "none (ingested before they were stored), so its frames were embedded for this request.")
    points: list[TimelinePoint] = Field(description="Appearance, per sampled frame (as experts[0]).")
    moments: list[Moment] = Field(description="Appearance's best moments, best first.")
    experts: list[ExpertLineOut] = Field(default_factory=list, description="One line per expert with anything for "
                                         "this video, appearance first.")


class SearchHit(BaseModel):
    rank: int
    video_id: int
    title: str
    score: float = Field(description="The fused score (0..1) when speech or on-screen text took part, else the "
                         "cosine similarity between the query and the video.")
    experts: dict[str, float | None] = Field(
        default_factory=dict, description="Why it matched: appearance's cosine, and the share of the query's words "
        "found in its speech and on-screen text, audio's calibrated score (null: the video has none of that "
        "expert). Empty when appearance "
        "ranked alone.")
    duration: float | None = Field(description="Seconds.")
    media_url: str | None = Field(description="Path of the video under /media; null for files indexed in place.")
    thumbnail_url: str | None = Field(None, description="Poster image of the video (under /thumbnails).")
    moments: list[Moment] = Field(default_factory=list, description="Where in the video the query matches best, "
                                  "best first (1 to 3; empty for videos indexed before moments were stored).")


class TagList(BaseModel):
    tags: list[str]


class SearchOut(BaseModel):
    results: list[SearchHit]


class VideoOut(BaseModel):
    video_id: int
    title: str
    status: VideoStatus
    error: str | None
    duration: float | None
    fps: float | None
    width: int | None
    height: int | None
    codec: str | None
    size_bytes: int
    sha256: str
    created_at: datetime
    tag: str | None = Field(None, description="The label given at ingest, if any.")
    media_url: str | None
    experts: dict[str, ExpertOut] = Field(default_factory=dict, description="Each expert's state for this video "
                                          "(speech, text, audio); absent: not run on it.")


class ExpertOut(BaseModel):
    state: str = Field(description="queued, running, done, unavailable (the video has nothing for this expert: "
                       "no audio track, no text on screen, ...) or failed.")
    reason: str | None = Field(None, description="Why it is unavailable or failed.")
    segments: int = Field(0, description="Segments stored for search.")


class VideoList(BaseModel):
    videos: list[VideoOut] = Field(description="One page, in the order the videos were added (by id).")
    total: int = Field(description="How many videos match (the status filter), on all pages together.")
    next: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class UploadOut(BaseModel):
    video_id: int
    job_id: int | None = Field(description="Follow it at /api/jobs/{job_id}; null when nothing is to be done.")
    outcome: Outcome = Field(description="queued: new; requeued: had failed, tried again; already present / "
                             "already queued: the same content is in the library already.")
    title: str


class JobOut(BaseModel):
    job_id: int
    video_id: int
    state: JobState
    attempts: int
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


_BAD_CURSOR = "cursor: not a cursor of this API; pass the `next` of the previous page, or no cursor for the first"


def page_cursor(video_id: int) -> str:
    """The opaque cursor of the page after `video_id`: keyset paging on the id, so pages stay put while videos are
    added (they come last) or deleted. Opaque so that what it holds may change without breaking clients."""
    return base64.urlsafe_b64encode(f"after:{video_id}".encode()).decode().rstrip("=")


def cursor_after(cursor: str) -> int:
    """The id a cursor of page_cursor continues after; HTTP 422 for anything else."""
    try:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", cursor):
            raise ValueError
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        found = re.fullmatch(r"after:([1-9][0-9]{0,18})", text)
        if found is None or int(found.group(1)) > MAX_DB_ID:
            raise ValueError
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
        raise HTTPException(422, _BAD_CURSOR) from None
    return int(found.group(1))


def _utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=timezone.utc) if value is not None and value.tzinfo is None else value


def _video_out(runtime: Runtime, v: Video, runs: dict | None = None) -> VideoOut:
    """`runs`: the video's expert runs (name -> ExpertRun), when already read; else read here."""
    runs = runtime.catalog.expert_runs([v.id]).get(v.id, {}) if runs is None else runs
    return VideoOut(video_id=v.id, title=v.title, status=v.status, error=v.error, duration=v.duration, fps=v.fps,
                    width=v.width, height=v.height, codec=v.codec, size_bytes=v.size_bytes, sha256=v.sha256,
                    created_at=_utc(v.created_at), tag=v.tag, media_url=media_url(runtime, v.stored_path),
                    experts={name: ExpertOut(state=run.state.value, reason=run.reason, segments=run.segments)
                             for name, run in sorted(runs.items())})


def _job_out(j: Job) -> JobOut:
    return JobOut(job_id=j.id, video_id=j.video_id, state=j.state, attempts=j.attempts, error=j.error,
                  created_at=_utc(j.created_at), started_at=_utc(j.started_at), finished_at=_utc(j.finished_at))


def _moments(runtime: Runtime, url: str | None, sha256: str, moments) -> list[Moment]:
    return [Moment(start=m.start, end=m.end, score=m.score, thumbnail_url=thumbnail_url(runtime, sha256, m.frame),
                   media_url=fragment(url, m.start, m.end) if url else None, expert=m.expert, text=m.text)
            for m in moments]


def _line(runtime: Runtime, url: str | None, sha256: str, line) -> ExpertLineOut:
    texts = line.texts or [None] * len(line.starts)
    return ExpertLineOut(expert=line.expert, moments=_moments(runtime, url, sha256, line.moments),
                         points=[ExpertPoint(start=a, end=b, score=s, normalized=n, text=t) for a, b, s, n, t in
                                 zip(line.starts, line.ends, line.scores, line.normalized, texts, strict=True)])


def _hit(runtime: Runtime, r: SearchResult) -> SearchHit:
    url = media_url(runtime, r.path)
    return SearchHit(rank=r.rank, video_id=r.video_id, title=r.title, score=r.score, experts=r.experts,
                     duration=r.duration,
                     media_url=url, thumbnail_url=thumbnail_url(runtime, r.sha256),
                     moments=_moments(runtime, url, r.sha256, r.moments))


# --- errors at the edge -----------------------------------------------------------------------------------------
def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def _describe(errors: Any) -> str:
    """Pydantic / FastAPI validation errors -> one readable line: 'k: Input should be less than or equal to 1000'."""
    parts = []
    for err in list(errors)[:5]:
        loc = [str(x) for x in err.get("loc", ())]
        if loc and loc[0] in ("body", "query", "path", "header"):
            loc = loc[1:]
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if err.get("type") == "json_invalid":
            msg = f"the body is not valid JSON ({err.get('ctx', {}).get('error', 'decode error')})"
            loc = []
        parts.append(f"{'.'.join(loc)}: {msg}" if loc else msg)
    return "; ".join(parts) or "invalid request"


def _limited(receive: Receive, limit: int, too_large: str) -> Receive:
    """The request body stream, cut off with 413 once more than `limit` bytes have arrived."""
    received = 0

    async def receive_limited() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise HTTPException(413, too_large)
        return message

    return receive_limited


def _route_class(max_upload_mb: int) -> type[APIRoute]:
    upload_limit = max_upload_mb * 1024 * 1024 + MULTIPART_SLACK

    class ApiRoute(APIRoute):
        """Bounds the request body and turns the project's exceptions into JSON errors, for every /api route."""

        def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
            handler = super().get_route_handler()
            if getattr(self.endpoint, "_is_upload", False):
                limit, too_large = upload_limit, _upload_too_large(max_upload_mb)
            else:
                limit, too_large = MAX_BODY_BYTES, f"the request body is larger than {MAX_BODY_BYTES >> 20} MB"

            async def route(request: Request) -> Response:
                try:
                    declared = request.headers.get("content-length", "")
                    if declared.isdigit() and int(declared) > limit:  # refused before a byte is read
                        raise HTTPException(413, too_large)
                    return await handler(Request(request.scope, _limited(request.receive, limit, too_large)))
                except RequestValidationError as exc:
                    return _error(422, _describe(exc.errors()))
                except StarletteHTTPException as exc:
                    if exc.status_code == 400 and isinstance(exc.__cause__, ValueError):  # e.g. not UTF-8
                        return _error(422, f"the body could not be read as JSON: {exc.__cause__}")
                    raise
                except ImageTooLargeError as exc:
                    return _error(413, str(exc))
                except ImageQueryError as exc:
                    return _error(400, str(exc))
                except QueryError as exc:
                    return _error(422, str(exc))
                except (ModelUnavailableError, VectorStoreError) as exc:
                    log.warning("%s %s: %s", request.method, request.url.path, exc)
                    return _error(503, str(exc))
                except SQLAlchemyError as exc:
                    log.error("%s %s: catalog error: %s", request.method, request.url.path, exc)
                    return _error(503, "the catalog database is unavailable; see the server log")
                except ClientDisconnect:
                    return _error(400, "the client disconnected before sending the whole request")
                except Exception:
                    log.exception("%s %s failed", request.method, request.url.path)
                    return _error(500, "internal error; see the server log")

            return route

    return ApiRoute


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {400: "The image cannot be read", 404: "No such id", 413: "Too large", 415: "Unsupported content type",
            422: "Invalid input", 503: "Model, vector store or catalog unavailable"}
    return {code: {"model": ErrorOut, "description": text[code]} for code in codes}


def _multipart_file_schema() -> dict[str, Any]:
    return {"type": "object", "properties": {UPLOAD_FIELD: {"type": "string", "format": "binary"}},
            "required": [UPLOAD_FIELD]}


# --- streaming upload -------------------------------------------------------------------------------------------
def _upload_too_large(max_upload_mb: int) -> str:
    return f"the video is larger than the upload limit of {max_upload_mb} MB (VIDSEARCH_MAX_UPLOAD_MB)"


class _UploadTooLarge(Exception):
    pass


async def _receive_upload(request: Request, folder: Path, max_bytes: int) -> tuple[Path, str] | None:
    """Stream the multipart field `file` straight into a temporary file in `folder`, stopping at `max_bytes`.

    Returns (temp path, client file name) or None when the form has no such field. Other fields are ignored."""
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header

    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data":
        raise HTTPException(415, f"send the video as multipart/form-data with a field named '{UPLOAD_FIELD}'")
    boundary = params.get(b"boundary")
    if not boundary:
        raise HTTPException(422, "the multipart body has no boundary")

    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=".upload-")
    tmp = Path(tmp_name)
    out = os.fdopen(fd, "wb")
    state: dict[str, Any] = {"header": [b"", b""], "size": 0, "disposition": b"", "field": None, "name": None,
                             "done": False, "written": 0}
    pending: list[bytes] = []

    def on_part_begin() -> None:
        state["header"], state["size"], state["disposition"], state["field"] = [b"", b""], 0, b"", None

    def _grow(n: int) -> None:
        state["size"] += n
        if state["size"] > 16 * 1024:
            raise HTTPException(422, "the multipart part headers are too long")

    def on_header_field(data: bytes, start: int, end: int) -> None:
        _grow(end - start)
        state["header"][0] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        _grow(end - start)
        state["header"][1] += data[start:end]

    def on_header_end() -> None:
        name, value = state["header"]
        if name.strip().lower() == b"content-disposition":
            state["disposition"] = value
        state["header"] = [b"", b""]

    def on_headers_finished() -> None:
        _, opts = parse_options_header(state["disposition"])
        if opts.get(b"name") == UPLOAD_FIELD.encode() and b"filename" in opts and state["name"] is None:
            state["field"] = "file"
            state["name"] = opts[b"filename"].decode("utf-8", "replace")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["field"] == "file":
            state["written"] += end - start
            if state["written"] > max_bytes:
                raise _UploadTooLarge
            pending.append(data[start:end])

    def on_part_end() -> None:
        if state["field"] == "file":
            state["done"] = True
        state["field"] = None

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished, "on_part_data": on_part_data,
        "on_part_end": on_part_end,
    })
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            if pending:
                block = b"".join(pending)
                pending.clear()
                await run_in_threadpool(out.write, block)
        parser.finalize()
        out.close()
    except BaseException as exc:
        out.close()
        tmp.unlink(missing_ok=True)
        if isinstance(exc, _UploadTooLarge):
            raise HTTPException(413, _upload_too_large(max_bytes >> 20)) from None
        if isinstance(exc, FormParserError):
            raise HTTPException(422, "the multipart body is malformed") from None
        raise
    if not state["done"]:
        tmp.unlink(missing_ok=True)
        return None
    return tmp, state["name"] or "untitled"


# --- the router -------------------------------------------------------------------------------------------------
def build_api(runtime: Runtime, slots: ModelSlots, timelines: TimelineService) -> APIRouter:
    """The /api routes of one runtime (its catalog, encoder and vector store). Every model call takes one of the
    web app's `slots` (shared with the page), waiting without holding a thread; `timelines` is the app's service."""
    settings = runtime.settings
    max_upload = settings.max_upload_mb * 1024 * 1024
    router = APIRouter(prefix="/api", tags=["api"], route_class=_route_class(settings.max_upload_mb),
                       responses=_errors(422, 503))

    def embedding(vector) -> EmbeddingOut:
        return EmbeddingOut(embedding=[float(x) for x in vector], dim=len(vector), model=runtime.encoder.key)

    def embed_text(text: str):
        text = text.strip()
        if not text:
            raise QueryError("the text is empty")
        return runtime.encoder.embed_text(text)

    @router.post("/embed/text", response_model=EmbeddingOut, summary="Embed a text query")
    async def embed_text_route(body: TextIn) -> EmbeddingOut:
        return embedding(await slots.run(embed_text, body.text))

    @router.post(
        "/embed/image", response_model=EmbeddingOut, summary="Embed a still image",
        description=f"A multipart form with the image in the field `{UPLOAD_FIELD}`, or JSON {{\"image\": base64}}.",
        responses=_errors(400, 413, 415),
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": ImageIn.model_json_schema()},
            "multipart/form-data": {"schema": _multipart_file_schema()},
        }}},
    )
    async def embed_image_route(request: Request) -> EmbeddingOut:
        data = await _image_bytes(request)
        vector = await slots.run(lambda: embed_query_image(runtime.encoder, data))  # the model loads in the thread
        return embedding(vector)

    @router.post("/search", response_model=SearchOut, summary="Search by text or by image",
                 responses=_errors(400, 413))
    async def search_route(body: SearchIn) -> SearchOut:
        return await slots.run(search, body)

    def search(body: SearchIn) -> SearchOut:
        filters = body.filters.to_search() if body.filters else None
        if body.text is not None:
            found = search_text(runtime.catalog, runtime.store, runtime.encoder, body.text, body.k, filters,
                                moment_seconds=settings.moment_seconds, experts=expert_sources(runtime),
                                weights=body.weights)
        else:
            assert body.image is not None
            found = search_image(runtime.catalog, runtime.store, runtime.encoder,
                                 decode_base64_image(body.image), body.k, filters,
                                 moment_seconds=settings.moment_seconds)
        return SearchOut(results=[_hit(runtime, r) for r in found])

    @router.get("/videos", response_model=VideoList, summary="List the library, a page at a time",
                description="Oldest first. Follow `next` (as `cursor`) until it is null to see every video once; "
                "videos added meanwhile come on later pages.")
    def list_route(
        status: VideoStatus | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="Videos per page.")] = PAGE_SIZE,
        cursor: Annotated[str | None, Query(max_length=MAX_CURSOR, description="The `next` of the previous "
                                            "page; none for the first page.")] = None,
    ) -> VideoList:
        after = cursor_after(cursor) if cursor else None
        videos = runtime.catalog.page_videos(limit + 1, after=after, status=status)  # one more: is there a next?
        page = videos[:limit]
        runs = runtime.catalog.expert_runs([v.id for v in page])  # one query for the page
        return VideoList(videos=[_video_out(runtime, v, runs.get(v.id, {})) for v in page],
                         total=runtime.catalog.count_videos(status),
                         next=page_cursor(page[-1].id) if len(videos) > limit else None)

    @router.get("/videos/{video_id}", response_model=VideoOut, summary="One video", responses=_errors(404))
    def get_route(video_id: VideoId) -> VideoOut:
        video = runtime.catalog.get_video(video_id)
        if video is None:
            raise HTTPException(404, f"no video with id {video_id}")
        return _video_out(runtime, video)

    @router.get("/videos/{video_id}/timeline", response_model=TimelineOut, responses=_errors(404),
                summary="Similarity of one video to a text over time, per expert, and its best moments",
                description="A video indexed before segment vectors were stored is decoded and embedded for the "
                "request (source 'computed'), within the ingestion limits and timeout; a file that cannot be "
                "decoded so is a 422.")
    async def timeline_route(video_id: VideoId, text: Annotated[str, Query(min_length=1, max_length=MAX_TEXT)]
                             ) -> TimelineOut:
        video = await run_in_threadpool(runtime.catalog.get_video, video_id)
        if video is None:
            raise HTTPException(404, f"no video with id {video_id}")
        timeline = await timelines.timeline(video, text)
        url = media_url(runtime, video.stored_path)
        return TimelineOut(video_id=video.id, source=timeline.source,
                           points=[TimelinePoint(time=t, score=s) for t, s in zip(timeline.times, timeline.scores,
                                                                                   strict=True)],
                           moments=_moments(runtime, url, video.sha256, timeline.moments),
                           experts=[_line(runtime, url, video.sha256, line) for line in timeline.lines])

    @router.delete("/videos/{video_id}", response_model=VideoOut, responses=_errors(404),
                   summary="Delete a video: its vectors, its catalog row and its stored file")
    def delete_route(video_id: VideoId) -> VideoOut:
        video = delete_video(runtime.catalog, runtime.store, video_id, settings.thumbnails_dir,
                             storage=runtime.storage)
        if video is None:
            raise HTTPException(404, f"no video with id {video_id}")
        return _video_out(runtime, video, {})

    @router.post(
        "/videos", response_model=UploadOut, status_code=201, summary="Upload a video",
        description=f"A multipart form with the video in the field `{UPLOAD_FIELD}` (its file name becomes the "
        f"title); `tag` labels it for filtered searches. 201: queued for ingestion; 200: the same content was "
        f"already in the library (it keeps its first tag). At most "
        f"VIDSEARCH_MAX_UPLOAD_MB ({settings.max_upload_mb}) MB.",
        responses={200: {"model": UploadOut, "description": "Already in the library (or requeued)"},
                   **_errors(413, 415)},
        openapi_extra={"requestBody": {"required": True, "content": {
            "multipart/form-data": {"schema": _multipart_file_schema()}}}},
    )
    async def upload_route(request: Request, tag: Annotated[str | None, Query(
            max_length=MAX_TAG_LENGTH, description="A label for the video, to filter searches by.")] = None
                           ) -> Response:
        tag = check_tag(tag) if tag else None  # refused before the body is read
        received = await _receive_upload(request, settings.home_dir / "incoming", max_upload)
        if received is None:
            raise HTTPException(422, f"send the video in a multipart file field named '{UPLOAD_FIELD}'")
        tmp, name = received
        try:
            # move: the received file is renamed into the library, not written a second time.
            result = await run_in_threadpool(enqueue_file, runtime.catalog, settings, tmp, title=name, tag=tag,
                                             move=True, storage=runtime.storage)
        except StorageError as exc:
            raise HTTPException(503, f"the video could not be stored: {exc}") from None
        finally:
            tmp.unlink(missing_ok=True)
        if result.outcome is Outcome.NOT_VIDEO or result.video_id is None:
            raise HTTPException(415, "not a video file (no decodable video stream)")
        video = runtime.catalog.get_video(result.video_id)
        body = UploadOut(video_id=result.video_id, job_id=result.job_id, outcome=result.outcome,
                         title=video.title if video else name)
        status = 201 if result.outcome is Outcome.QUEUED else 200
        headers = {"Location": f"/api/videos/{result.video_id}"}
        return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers)

    upload_route._is_upload = True  # type: ignore[attr-defined]  # its own body limit: VIDSEARCH_MAX_UPLOAD_MB

    @router.get("/tags", response_model=TagList, summary="The tags in use, for filters")
    def tags_route() -> TagList:
        return TagList(tags=runtime.catalog.tags())

    @router.get("/jobs/{job_id}", response_model=JobOut, summary="An ingestion job", responses=_errors(404))
    def job_route(job_id: JobId) -> JobOut:
        job = runtime.catalog.get_job(job_id)
        if job is None:
            raise HTTPException(404, f"no job with id {job_id}")
        return _job_out(job)

    return router


async def _image_bytes(request: Request) -> bytes:
    """The image of a multipart form (field `file`) or of a JSON body {"image": base64}."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=16)
        except HTTPException:
            raise
        except Exception as exc:  # starlette's MultiPartException and friends
            raise HTTPException(422, f"the multipart body is malformed: {exc}") from None
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(form.close)
            upload = form.get(UPLOAD_FIELD)
            if upload is None or isinstance(upload, str):
                raise HTTPException(422, f"send the image in a multipart file field named '{UPLOAD_FIELD}'")
            return await upload.read()
    if content_type == "application/json" or content_type.endswith("+json"):
        try:
            body = ImageIn.model_validate_json(await request.body())
        except ValidationError as exc:
            raise HTTPException(422, _describe(exc.errors())) from None
        return await run_in_threadpool(decode_base64_image, body.image)
    raise HTTPException(415, "send the image as multipart/form-data (field 'file') or as JSON {\"image\": base64}")

