"""Builds the web app (FastAPI with the JSON API, the stored media and the Gradio page) and serves it, with an
ingestion worker thread beside it."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio.to_thread
import gradio as gr
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from ingest.live_service import LiveSupervisor
from ingest.runtime import Runtime
from ingest.worker import JobResult, Worker
from search_app.api import build_api
from search_app.audio_query import expert_sources
from search_app.auth import MediaFiles, gradio_blocked_paths, load_credentials, protect, warn_if_exposed
from search_app.live_api import LIVE_ROUTE, build_live_api
from search_app.media import remote_media_router
from search_app.page import CSS, build_ui
from search_app.present import MEDIA_ROUTE, THUMBS_ROUTE, experts_summary
from search_app.slots import ModelSlots
from search_app.timeline import TimelineService

log = logging.getLogger(__name__)


def create_app(runtime: Runtime) -> FastAPI:
    """The web app of one runtime. Its one ModelSlots (`app.state.model_slots`) bounds the model calls of the API
    and of the page together; its TimelineService (`app.state.timelines`) is closed when the app shuts down."""
    slots = ModelSlots(runtime.settings.search_concurrency)
    timelines = TimelineService(runtime.settings, runtime.catalog, runtime.store, lambda: runtime.encoder, slots,
                                experts=lambda: expert_sources(runtime), storage=runtime.storage)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(timelines.close)  # stops its decode process

    # /docs with Swagger UI served from the package, not a CDN: it works on a machine without internet.
    app = FastAPIOffline(title="vidsearch", lifespan=lifespan)
    app.state.model_slots = slots
    app.state.timelines = timelines
    credentials = load_credentials(runtime.settings.auth)  # None: no login
    if runtime.storage.remote:
        # Object storage: content-addressed keys only, streamed with range reads (HTTP Range: players seek).
        app.include_router(remote_media_router(runtime.storage, MEDIA_ROUTE))
    else:
        runtime.settings.videos_dir.mkdir(parents=True, exist_ok=True)
        # Only the content-addressed video folder is served; nothing else of the data folder is reachable
        # (follow_symlink=False: a symlink inside the folder that points out of it is refused).
        # MediaFiles: never served as a page of this site (no HTML/SVG from /media, nosniff, sandbox CSP).
        app.mount(MEDIA_ROUTE, MediaFiles(directory=runtime.settings.videos_dir, follow_symlink=False), name="media")
    # ... and the thumbnails made at ingest (JPEGs under content-hash names), with the same safeguards.
    runtime.settings.thumbnails_dir.mkdir(parents=True, exist_ok=True)
    app.mount(THUMBS_ROUTE, MediaFiles(directory=runtime.settings.thumbnails_dir, follow_symlink=False),
              name="thumbnails")
    # ... and the peak frames of live events (JPEGs under the data folder's live/).
    runtime.settings.live_dir.mkdir(parents=True, exist_ok=True)
    app.mount(LIVE_ROUTE, MediaFiles(directory=runtime.settings.live_dir, follow_symlink=False), name="live")
    # The JSON API under /api, before the Gradio mount at "" takes the rest.
    app.include_router(build_api(runtime, slots, timelines))
    app.include_router(build_live_api(runtime))
    demo = build_ui(runtime, slots, timelines)
    demo.queue(default_concurrency_limit=4)
    # Gradio's own file routes (/gradio_api/file=...) must never serve anything of the data folder.
    blocked = gradio_blocked_paths(runtime.settings.home_dir, [Path(gr.utils.get_upload_folder()),
                                                               gr.utils.get_cache_folder()])
    videos = runtime.settings.videos_dir
    if not runtime.storage.remote and not videos.is_relative_to(runtime.settings.home_dir):
        blocked.append(str(videos))  # a shared video folder outside the data folder (VIDSEARCH_STORAGE)
    app = gr.mount_gradio_app(app, demo, path="", css=CSS, footer_links=[], blocked_paths=blocked,
                              auth=credentials.check if credentials else None)
    if credentials is not None:
        protect(app, credentials)  # every route, including ones added after this: Basic or Gradio login, else 401
    return app


def _interrupt(*_args: object) -> None:
    raise KeyboardInterrupt


def start_worker_thread(runtime: Runtime, stop: threading.Event) -> threading.Thread:
    worker = Worker.from_settings(runtime.catalog, runtime.store, runtime.encoder, runtime.settings)

    def log_result(r: JobResult) -> None:
        log.info("video %d %s: %s", r.video_id, "ready" if r.ok else "failed", r.error or r.title)

    thread = threading.Thread(target=worker.run_forever, args=(stop, log_result), name="vidsearch-worker",
                              daemon=True)
    thread.start()
    return thread


# Idle HTTP connections stay open longer than clients keep them (httpx and browsers drop theirs after ~5 s): with
# uvicorn's own 5 s the server could close a connection just as a client reused it ("Server disconnected").
KEEP_ALIVE_S = 30


def serve(runtime: Runtime, host: str, port: int, with_worker: bool = True,
          on_ready: Callable[[], None] | None = None) -> None:
    """Load the model and open the store, then serve; `on_ready` runs once both worked (the CLI prints the URL
    there, so a missing model is the first and only thing a person reads)."""
    import uvicorn

    warn_if_exposed(host, load_credentials(runtime.settings.auth))  # also rejects a malformed VIDSEARCH_AUTH early
    # Load the model and open the collection before accepting requests: fail fast with a clear message. The in-memory
    # copy starts building now (in the background when large) so the first searches are fast.
    runtime.store.warm()
    stop = threading.Event()
    thread = start_worker_thread(runtime, stop) if with_worker else None
    # Streams added through the API run in a watcher process of their own, started while there are any.
    live = LiveSupervisor(runtime.catalog).start()
    app = create_app(runtime)
    s, encoder = runtime.settings, runtime.encoder
    endpoint = s.milvus_uri or f"embedded Milvus Lite in {s.milvus_lite_dir}"
    log.info("model %s (dim %d) on %s; vector store: %s%s; catalog: %s; data folder: %s; worker: %s", encoder.key,
             encoder.dim, encoder.device, endpoint, " (Milvus Lite)" if runtime.store.is_lite else "",
             s.catalog_url.split("@")[-1], s.home_dir, "on" if with_worker else "off")
    if with_worker:
        log.info("experts: %s", experts_summary(s))
    if on_ready is not None:
        on_ready()
    # SIGTERM (a service manager, `docker stop`) ends like Ctrl-C: uvicorn shuts down, then re-raises the signal into
    # the handler that was there before it; this one makes that a KeyboardInterrupt, which uvicorn.run absorbs, so the
    # worker is stopped and its decode processes closed below. The default handler killed the process right there,
    # leaking their semaphores and leaving the batch in progress to the next start's recovery.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", timeout_keep_alive=KEEP_ALIVE_S)
    finally:
        stop.set()
        live.close()
        if thread:
            thread.join(timeout=30)
