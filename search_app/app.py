"""Gradio Blocks UI (Search, Upload, Library) mounted on FastAPI, which also serves the stored media."""

from __future__ import annotations

import html
import logging
import threading
from pathlib import Path

import gradio as gr
from fastapi import FastAPI

from ingest.library import Outcome, delete_video, enqueue_file
from ingest.runtime import Runtime
from ingest.worker import JobResult, Worker
from schema.catalog import VideoStatus
from schema.vectors import VectorStoreError
from search_app.auth import MediaFiles, gradio_blocked_paths, load_credentials, protect, warn_if_exposed
from search_app.search import QueryError, SearchResult, search_text

log = logging.getLogger(__name__)

MEDIA_ROUTE = "/media"
STATUS_LABEL = {
    VideoStatus.QUEUED: "queued",
    VideoStatus.PROCESSING: "processing",
    VideoStatus.READY: "done",
    VideoStatus.FAILED: "failed",
}
LIBRARY_COLUMNS = ["id", "title", "status", "duration (s)", "resolution", "codec", "added", "error"]
UPLOAD_COLUMNS = ["file", "status", "video id", "detail"]

CSS = """
.vs-results { display: grid; grid-template-columns: repeat(auto-fill, minmax(280px, 1fr)); gap: 12px; }
.vs-card { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 8px; }
.vs-card video { width: 100%; max-height: 200px; background: #000; border-radius: 4px; }
.vs-card .vs-title { font-weight: 600; overflow-wrap: anywhere; }
.vs-card .vs-meta { color: var(--body-text-color-subdued); font-size: 0.9em; }
.vs-empty { color: var(--body-text-color-subdued); padding: 12px 0; }
"""


def media_url(runtime: Runtime, stored_path: str) -> str | None:
    """URL of a stored video under /media, or None for files kept outside the data folder (--link)."""
    try:
        relative = Path(stored_path).resolve().relative_to(runtime.settings.videos_dir)
    except ValueError:
        return None
    return f"{MEDIA_ROUTE}/{relative.as_posix()}"


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}:{secs:02d}"


def render_results(runtime: Runtime, query: str, results: list[SearchResult]) -> str:
    if not results:
        if not runtime.catalog.list_videos(VideoStatus.READY):
            return '<div class="vs-empty">No videos yet — upload some in the Upload tab.</div>'
        return f'<div class="vs-empty">No results for “{html.escape(query)}”.</div>'
    cards = []
    for r in results:
        url = media_url(runtime, r.path)
        player = (f'<video controls preload="metadata" src="{html.escape(url, quote=True)}"></video>'
                  if url else "")
        cards.append(
            f'<div class="vs-card" data-video-id="{r.video_id}">{player}'
            f'<div class="vs-title">{r.rank}. {html.escape(r.title)}</div>'
            f'<div class="vs-meta">score {r.score:.3f} · {_fmt_duration(r.duration)} · id {r.video_id}</div></div>'
        )
    return f'<div class="vs-results">{"".join(cards)}</div>'


def message_html(text: str) -> str:
    return f'<div class="vs-empty">{html.escape(text)}</div>'


def search_html(runtime: Runtime, text: str, k: int) -> str:
    """The Search tab's answer: results, or a message saying what is wrong (never a stack trace)."""
    try:
        found = search_text(runtime.catalog, runtime.search_store, runtime.encoder, text, k)
    except QueryError as exc:
        return message_html(str(exc))
    except VectorStoreError as exc:
        log.warning("search failed: %s", exc)
        return message_html(f"The vector store is not reachable, so searching is not possible right now ({exc}). "
                            "Uploads are kept and processed once it is back.")
    return render_results(runtime, text, found)


def library_rows(runtime: Runtime) -> list[list]:
    rows = []
    for v in runtime.catalog.list_videos():
        rows.append([
            v.id, v.title, STATUS_LABEL[v.status],
            round(v.duration, 2) if v.duration is not None else None,
            f"{v.width}×{v.height}" if v.width else "",
            v.codec or "", v.created_at.strftime("%Y-%m-%d %H:%M"), v.error or "",
        ])
    return rows


def upload_rows(runtime: Runtime, tracked: list[dict]) -> list[list]:
    videos = runtime.catalog.videos_by_ids([t["video_id"] for t in tracked if t.get("video_id")])
    rows = []
    for t in tracked:
        video = videos.get(t["video_id"]) if t.get("video_id") else None
        if video is None:
            rows.append([t["file"], t["outcome"], t.get("video_id") or "", t.get("detail", "")])
        else:
            rows.append([t["file"], STATUS_LABEL[video.status], video.id, video.error or t.get("detail", "")])
    return rows


def build_ui(runtime: Runtime) -> gr.Blocks:
    with gr.Blocks(title="vidsearch") as demo:
        gr.Markdown("# vidsearch\nFind videos by describing what happens in them.")
        with gr.Tab("Search"):
            with gr.Row():
                query = gr.Textbox(label="Describe the video", placeholder="a dog catching a frisbee on the beach",
                                   scale=4, elem_id="query")
                k = gr.Slider(1, 50, value=10, step=1, label="Results", scale=1)
            search_btn = gr.Button("Search", variant="primary", elem_id="search-btn")
            with gr.Row():  # ... or find videos that look like a still image
                image_query = gr.Image(type="numpy", label="…or search with an image", elem_id="query-image",
                                       height=200, scale=4)
                image_btn = gr.Button("Search by image", elem_id="image-search-btn", scale=1)
            results = gr.HTML(elem_id="results")

        with gr.Tab("Upload"):
            files = gr.File(label="Videos", file_count="multiple", type="filepath", elem_id="upload-files")
            add_btn = gr.Button("Add to library", variant="primary", elem_id="add-btn")
            tracked = gr.State([])
            uploads = gr.Dataframe(headers=UPLOAD_COLUMNS, value=[], interactive=False, elem_id="upload-status",
                                   label="Uploads")
            timer = gr.Timer(1.0)

        with gr.Tab("Library") as library_tab:
            refresh_btn = gr.Button("Refresh")
            library = gr.Dataframe(headers=LIBRARY_COLUMNS, value=lambda: library_rows(runtime), interactive=False,
                                   elem_id="library", label="Videos")
            with gr.Row():
                delete_id = gr.Number(label="Video id", precision=0, elem_id="delete-id")
                delete_btn = gr.Button("Delete", variant="stop", elem_id="delete-btn")
            delete_msg = gr.Markdown()

        def do_search(text: str, count: float) -> str:
            return search_html(runtime, text, int(count))

        def do_image_search(image, count: float) -> str:
            from search_app.search import search_image

            if image is None:
                return '<div class="vs-empty">Choose an image first.</div>'
            try:
                found = search_image(runtime.catalog, runtime.search_store, runtime.encoder, image, int(count))
            except QueryError as exc:
                return f'<div class="vs-empty">{html.escape(str(exc))}</div>'
            return render_results(runtime, "this image", found)

        def do_add(paths: list[str] | None, current: list[dict]) -> tuple[list[dict], list[list], None]:
            current = list(current or [])
            for p in paths or []:
                path = Path(p)
                try:
                    r = enqueue_file(runtime.catalog, runtime.settings, path, title=path.name)
                except OSError as exc:
                    current.append({"file": path.name, "outcome": "failed", "video_id": None, "detail": str(exc)})
                    continue
                finally:
                    path.unlink(missing_ok=True)  # Gradio's upload copy: the library keeps its own
                detail = "" if r.outcome is Outcome.QUEUED else r.outcome.value
                if r.outcome is Outcome.NOT_VIDEO:
                    detail = "not a video file (no decodable video stream)"
                current.append({"file": path.name, "outcome": "failed" if r.outcome is Outcome.NOT_VIDEO else
                                r.outcome.value, "video_id": r.video_id, "detail": detail})
            return current, upload_rows(runtime, current), None

        def do_delete(video_id: float | None) -> tuple[str, list[list]]:
            if video_id is None:
                return "Enter the id of the video to delete.", library_rows(runtime)
            video = delete_video(runtime.catalog, runtime.existing_store(), int(video_id))
            if video is None:
                return f"No video with id {int(video_id)}.", library_rows(runtime)
            msg = f"Deleted “{html.escape(video.title)}” (id {video.id})."
            return msg, library_rows(runtime)

        search_btn.click(do_search, [query, k], results)
        query.submit(do_search, [query, k], results)
        image_btn.click(do_image_search, [image_query, k], results)
        add_btn.click(do_add, [files, tracked], [tracked, uploads, files])
        timer.tick(lambda t: upload_rows(runtime, t), tracked, uploads, show_progress="hidden")
        refresh_btn.click(lambda: library_rows(runtime), None, library)
        library_tab.select(lambda: library_rows(runtime), None, library)
        delete_btn.click(do_delete, delete_id, [delete_msg, library])
    return demo


def create_app(runtime: Runtime) -> FastAPI:
    app = FastAPI(title="vidsearch")
    runtime.settings.videos_dir.mkdir(parents=True, exist_ok=True)
    credentials = load_credentials(runtime.settings.auth)  # None: no login
    # Only the content-addressed video folder is served; nothing else of the data folder is reachable
    # (follow_symlink=False: a symlink inside the folder that points out of it is refused).
    # MediaFiles: never served as a page of this site (no HTML/SVG from /media, nosniff, sandbox CSP).
    app.mount(MEDIA_ROUTE, MediaFiles(directory=runtime.settings.videos_dir, follow_symlink=False), name="media")
    from search_app.api import build_api  # JSON API under /api, before the Gradio mount at "" takes the rest

    app.include_router(build_api(runtime))
    demo = build_ui(runtime)
    demo.queue(default_concurrency_limit=4)
    # Gradio's own file routes (/gradio_api/file=...) must never serve anything of the data folder.
    blocked = gradio_blocked_paths(runtime.settings.home_dir, [Path(gr.utils.get_upload_folder()),
                                                               gr.utils.get_cache_folder()])
    app = gr.mount_gradio_app(app, demo, path="", css=CSS, footer_links=[], blocked_paths=blocked,
                              auth=credentials.check if credentials else None)
    if credentials is not None:
        protect(app, credentials)  # every route, including ones added after this: Basic or Gradio login, else 401
    return app


def start_worker_thread(runtime: Runtime, stop: threading.Event) -> threading.Thread:
    worker = Worker.from_settings(runtime.catalog, runtime.store, runtime.encoder, runtime.settings)

    def log_result(r: JobResult) -> None:
        log.info("video %d %s: %s", r.video_id, "ready" if r.ok else "failed", r.error or r.title)

    thread = threading.Thread(target=worker.run_forever, args=(stop, log_result), name="vidsearch-worker",
                              daemon=True)
    thread.start()
    return thread


def serve(runtime: Runtime, host: str, port: int, with_worker: bool = True) -> None:
    import uvicorn

    warn_if_exposed(host, load_credentials(runtime.settings.auth))  # also rejects a malformed VIDSEARCH_AUTH early
    # Load the model and open the collection before accepting requests: fail fast with a clear message.
    _ = runtime.encoder, runtime.store
    # Start building the in-memory copy now (in the background when large) so the first searches are fast.
    from schema.memory_index import MemoryIndex

    if isinstance(runtime.search_store, MemoryIndex):
        runtime.search_store.current()
    stop = threading.Event()
    thread = start_worker_thread(runtime, stop) if with_worker else None
    app = create_app(runtime)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        stop.set()
        if thread:
            thread.join(timeout=30)
