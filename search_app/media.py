"""/media for videos in object storage: streamed from the store with range reads, HTTP Range honoured (players
seek without fetching the whole file), with the same safeguards as the folder's MediaFiles (search_app/auth.py)."""

from __future__ import annotations

import mimetypes
import re
from collections.abc import Iterator

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse

from schema.storage import KEY_PATTERN, Storage, StorageError
from search_app.auth import MediaFiles

CHUNK = 1 << 20  # bytes per range read from the store (one GET each)
_RANGE = re.compile(r"bytes=\s*(.+)", re.IGNORECASE)
_PART = re.compile(r"(\d*)\s*-\s*(\d*)")


class MalformedRange(ValueError):
    pass


class Unsatisfiable(ValueError):
    pass


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """The byte span [start, end) a Range header asks for; None for the whole file. Several ranges are served as
    the one span that covers them (RFC 9110 lets a server coalesce). MalformedRange: not a bytes range;
    Unsatisfiable: no part of it lies within the file."""
    match = _RANGE.fullmatch(header.strip())
    if not match:
        raise MalformedRange(header)
    spans = []
    for part in match.group(1).split(","):
        if not part.strip():
            continue
        m = _PART.fullmatch(part.strip())
        if not m or (not m.group(1) and not m.group(2)):
            raise MalformedRange(header)
        first, last = m.group(1), m.group(2)
        if first:
            start = int(first)
            end = min(int(last) + 1, size) if last else size
            if last and int(last) < start:
                raise MalformedRange(header)
        else:  # a suffix: the last N bytes
            start, end = max(0, size - int(last)), size
            if int(last) == 0:
                continue
        if start < size:
            spans.append((start, end))
    if not spans:
        raise Unsatisfiable(header)
    start, end = min(s for s, _ in spans), max(e for _, e in spans)
    return None if (start, end) == (0, size) else (start, end)


def _headers(key: str, size: int) -> dict[str, str]:
    media_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
    headers = {"accept-ranges": "bytes", "content-type": media_type, "etag": f'"{key.rsplit("/", 1)[-1]}"',
               "x-content-type-options": "nosniff",
               "content-security-policy": "sandbox; default-src 'none'; media-src 'self'"}
    if not media_type.startswith(MediaFiles.SAFE_PREFIXES) or media_type == "image/svg+xml":
        headers.update({"content-type": "application/octet-stream", "content-disposition": "attachment"})
    return headers


def _chunks(storage: Storage, location: str, start: int, end: int) -> Iterator[bytes]:
    position = start
    while position < end:
        block = storage.read_range(location, position, min(position + CHUNK, end))
        if not block:
            return
        yield block
        position += len(block)


def remote_media_router(storage: Storage, route: str) -> APIRouter:
    """GET/HEAD `route`/ab/<sha256>.ext from `storage`: 200 (whole file), 206 (one span), 416 (outside the file);
    404 for anything that is not a stored video's key; 503 when the store cannot be reached."""
    router = APIRouter()

    @router.api_route(route + "/{key:path}", methods=["GET", "HEAD"], include_in_schema=False)
    def media(key: str, request: Request) -> Response:
        if not KEY_PATTERN.fullmatch(key):
            return PlainTextResponse("Not Found", status_code=404)
        location = storage.location(key)
        try:
            size = storage.size(location)
        except FileNotFoundError:
            return PlainTextResponse("Not Found", status_code=404)
        except StorageError:
            return PlainTextResponse("the video store cannot be reached", status_code=503)
        headers = _headers(key, size)
        span: tuple[int, int] | None = None
        if (wanted := request.headers.get("range")) is not None:
            try:
                span = parse_range(wanted, size)
            except MalformedRange:
                span = None  # RFC 9110: a Range header that cannot be parsed is ignored
            except Unsatisfiable:
                return PlainTextResponse("Range Not Satisfiable", status_code=416,
                                         headers={"content-range": f"bytes */{size}", "accept-ranges": "bytes"})
        start, end = span or (0, size)
        status = 200
        if span is not None:
            status = 206
            headers["content-range"] = f"bytes {start}-{end - 1}/{size}"
        headers["content-length"] = str(end - start)
        if request.method == "HEAD":
            return Response(status_code=status, headers=headers)
        # A sync iterator: Starlette runs each read in a worker thread, so the event loop never waits on the store.
        return StreamingResponse(_chunks(storage, location, start, end), status_code=status, headers=headers)

    return router
