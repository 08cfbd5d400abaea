"""The live part of the JSON API: streams `serve` watches, their events, and the events as Server-Sent Events.

Streams are rows in the catalog; `serve`'s watcher process (ingest/live_service.py) follows them within a second.
Only network URLs are accepted here (check_network_url); a URL's credentials are kept to connect with and never
answered: every URL in a response is redacted.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import StreamingResponse

from ingest.live import LiveError, redact
from ingest.live_service import add_stream
from ingest.runtime import Runtime
from schema.catalog import LiveEvent, Stream
from search_app.api import _errors, _route_class

LIVE_ROUTE = "/live-media"  # event thumbnails (the data folder's live/), served like /thumbnails
POLL_SECONDS = 0.5  # how often an event stream looks for new writes
KEEPALIVE_SECONDS = 15.0
MAX_PROMPTS = 16

StreamId = Annotated[int, PathParam(ge=1, le=2**31 - 1)]



class StreamIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(min_length=1, max_length=2048, description="rtsp, rtsps, rtmp, srt, udp, http or https.")
    name: str | None = Field(None, min_length=1, max_length=128, description="Default: host, port and path.")
    prompts: list[Annotated[str, Field(min_length=1, max_length=300)]] = Field(min_length=1, max_length=MAX_PROMPTS)
    threshold: float | None = Field(None, ge=-1, le=1, description="Default VIDSEARCH_LIVE_THRESHOLD.")
    exit_threshold: float | None = Field(None, ge=-1, le=1, description="Default: the threshold minus the "
                                         "configured gap.")
    min_seconds: float | None = Field(None, ge=0, le=3600)
    fps: float | None = Field(None, gt=0, le=30)
    record: bool = Field(False, description="Keep each event as a clip in the library, tagged with the name.")


class StreamOut(BaseModel):
    id: int
    url: str = Field(description="Redacted: a password is never answered.")
    name: str
    prompts: list[str]
    threshold: float
    exit_threshold: float
    min_seconds: float
    fps: float
    record: bool
    state: str = Field(description="waiting (for the watcher process), connecting, live, retrying (with the reason), "
                       "failed (with the reason) or ended.")
    reason: str | None
    frames: int
    dropped: int = Field(description="Frames dropped because the model could not keep up.")
    reconnects: int
    created_at: datetime
    updated_at: datetime


class EventOut(BaseModel):
    id: int
    stream_id: int | None
    source: str
    name: str
    prompt: str
    start: float = Field(description="Seconds since the watcher's first frame of the stream.")
    end: float | None = Field(description="Empty while the event lasts.")
    peak_score: float
    peak_softmax: float
    started_at: datetime
    ended_at: datetime | None
    thumbnail: str | None = Field(description="URL of the peak frame's JPEG.")
    clip_video_id: int | None = Field(description="With recording: the library video holding the event's clip "
                                      "(GET /api/videos/{id}).")


class StreamList(BaseModel):
    streams: list[StreamOut]


class EventList(BaseModel):
    events: list[EventOut]


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.replace(tzinfo=timezone.utc)


def stream_out(s: Stream) -> StreamOut:
    return StreamOut(id=s.id, url=redact(s.url), name=s.name, prompts=json.loads(s.prompts), threshold=s.threshold,
                     exit_threshold=s.exit_threshold, min_seconds=s.min_seconds, fps=s.fps, record=s.record,
                     state=s.state, reason=s.reason, frames=s.frames, dropped=s.dropped, reconnects=s.reconnects,
                     created_at=_utc(s.created_at), updated_at=_utc(s.updated_at))


def event_out(e: LiveEvent) -> EventOut:
    return EventOut(id=e.id, stream_id=e.stream_id, source=e.source, name=e.name, prompt=e.prompt,
                    start=round(e.start, 2), end=None if e.end is None else round(e.end, 2),
                    peak_score=round(e.peak_score, 4), peak_softmax=round(e.peak_softmax, 4),
                    started_at=_utc(e.started_at), ended_at=_utc(e.ended_at),
                    thumbnail=f"{LIVE_ROUTE}/{e.thumbnail}" if e.thumbnail else None, clip_video_id=e.clip_video_id)


def _since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise HTTPException(422, f"since: not an ISO 8601 date or date-time: {value!r}") from None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(timezone.utc).replace(tzinfo=None)
    return parsed


def build_live_api(runtime: Runtime) -> APIRouter:
    # The API's own route class: the same body limits, and every error as {"detail": one sentence}.
    router = APIRouter(prefix="/api", tags=["live"], route_class=_route_class(runtime.settings.max_upload_mb),
                       responses=_errors(422, 503))
    settings, catalog = runtime.settings, runtime.catalog

    @router.post("/streams", response_model=StreamOut, status_code=201, summary="Watch a live stream for prompts",
                 description="serve's watcher process starts on it within a second. Only network URLs; a file, a "
                 "device or an FFmpeg protocol such as concat: is a 422 (they are for `vidsearch watch`).")
    def add_stream_route(body: StreamIn) -> StreamOut:
        try:
            stream = add_stream(catalog, settings, body.url, body.prompts, name=body.name, threshold=body.threshold,
                                exit_threshold=body.exit_threshold, min_seconds=body.min_seconds, fps=body.fps,
                                record=body.record)
        except LiveError as exc:
            raise HTTPException(422, str(exc)) from None
        return stream_out(stream)

    @router.get("/streams", response_model=StreamList, summary="The streams watched, with their state")
    def list_streams() -> StreamList:
        return StreamList(streams=[stream_out(s) for s in catalog.list_streams()])

    @router.delete("/streams/{stream_id}", response_model=StreamOut, responses=_errors(404),
                   summary="Stop watching a stream (its events stay)")
    def delete_stream(stream_id: StreamId) -> StreamOut:
        stream = catalog.delete_stream(stream_id)
        if stream is None:
            raise HTTPException(404, f"no stream with id {stream_id}")
        return stream_out(stream)

    @router.get("/events", response_model=EventList, summary="Events, newest first")
    def list_events(since: Annotated[str | None, Query(description="Only events that started at or after this ISO "
                                                                   "8601 time (UTC unless it has an offset).")] = None,
                    stream: Annotated[int | None, Query(ge=1, le=2**31 - 1, description="Only this stream's.")] = None,
                    limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> EventList:
        rows = catalog.live_events(since=_since(since), stream_id=stream, limit=limit)
        return EventList(events=[event_out(e) for e in rows])

    @router.get("/events/stream", summary="Events as they happen (Server-Sent Events)",
                description='Each message is `event: start` or `event: end` with the event as JSON data, '
                '`{"type": "start" | "end", ...event}`. Only events written after the request arrives.',
                response_class=StreamingResponse)
    async def event_stream(request: Request) -> StreamingResponse:
        seq = await run_in_threadpool(catalog.live_seq)

        async def messages():
            nonlocal seq
            announced: set[int] = set()
            quiet = 0.0
            yield ": connected\n\n"
            while not await request.is_disconnected():
                rows = await run_in_threadpool(catalog.live_events, after_seq=seq)
                for row in rows:
                    seq = max(seq, row.seq)
                    kinds = ["start"] if row.end is None else (["end"] if row.id in announced else ["start", "end"])
                    announced.add(row.id)
                    for kind in kinds:
                        data = {"type": kind, **event_out(row).model_dump(mode="json")}
                        yield f"event: {kind}\ndata: {json.dumps(data)}\n\n"
                    quiet = 0.0
                await asyncio.sleep(POLL_SECONDS)
                quiet += POLL_SECONDS
                if quiet >= KEEPALIVE_SECONDS:
                    quiet = 0.0
                    yield ": keepalive\n\n"

        return StreamingResponse(messages(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return router
