"""The Gradio page: Search, Upload, Library and Timeline tabs, and the HTML they render."""

from __future__ import annotations

import html
import logging
from pathlib import Path

import anyio.to_thread
import gradio as gr

from ingest.library import Outcome, delete_video, enqueue_file
from ingest.runtime import Runtime
from schema.catalog import VideoStatus
from schema.filters import SearchFilters, check_tag
from schema.units import clock
from schema.vectors import VectorStoreError
from search_app.moments import Moment, Timeline
from search_app.present import fragment, media_url, span, thumbnail_url
from search_app.search import QueryError, SearchResult, search_text
from search_app.slots import ModelSlots
from search_app.timeline import TimelineProgress, TimelineService

log = logging.getLogger(__name__)

LIBRARY_COLUMNS = ["id", "title", "status", "duration (s)", "resolution", "codec", "added", "tag", "error"]
UPLOAD_COLUMNS = ["file", "status", "video id", "detail"]

SIMILARITY_COLOR = "#2563eb"  # the Timeline plot's similarity line
CSS = """
.vs-results { display: grid; grid-template-columns: repeat(auto-fill, minmax(280px, 1fr)); gap: 12px; }
.vs-card { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 8px; }
.vs-card video { width: 100%; max-height: 200px; background: #000; border-radius: 4px; }
.vs-card .vs-title { font-weight: 600; overflow-wrap: anywhere; }
.vs-card .vs-meta { color: var(--body-text-color-subdued); font-size: 0.9em; }
.vs-empty { color: var(--body-text-color-subdued); padding: 12px 0; }
.vs-weak { margin-top: 16px; padding-top: 8px; border-top: 1px solid var(--border-color-primary); }
.vs-weak > .vs-weak-label { font-weight: 600; margin-bottom: 6px; }
.vs-weak > .vs-results { opacity: 0.55; }
.vs-weak .vs-card { border-style: dashed; }
/* Timeline: a top moment is a wide translucent band behind the similarity line, so the line stays visible. */
#timeline-plot .mark-line path:not([stroke="#2563eb"]) { stroke-width: 10px; stroke-opacity: 0.35; }
.vs-moments { display: flex; flex-wrap: wrap; gap: 6px; margin-top: 6px; }
.vs-moment { display: flex; flex-direction: column; align-items: center; gap: 2px; padding: 3px; cursor: pointer;
  border: 1px solid var(--border-color-primary); border-radius: 6px; background: var(--background-fill-secondary);
  font-size: 0.8em; color: var(--body-text-color); }
.vs-moment img { width: 96px; height: 54px; object-fit: cover; border-radius: 3px; background: #000; }
.vs-moment.vs-active { border-color: var(--color-accent); box-shadow: 0 0 0 1px var(--color-accent); }
.vs-timeline video { width: 100%; max-width: 640px; max-height: 360px; background: #000; border-radius: 4px; }
.vs-gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 8px; }
.vs-tile { font-size: 0.85em; overflow-wrap: anywhere; }
.vs-tile img { width: 100%; aspect-ratio: 16 / 9; object-fit: cover; border-radius: 4px; background: #000; }
"""
# Clicking a moment plays the card's (or the timeline's) player from that moment: the src gets a media fragment
# (#t=start,end), which every browser honours. One delegated listener per HTML component, installed once.
MOMENT_CLICK_JS = """
element.addEventListener('click', (event) => {
  const button = event.target.closest('.vs-moment');
  if (!button || !element.contains(button)) return;
  const scope = button.closest('.vs-card, .vs-timeline') || element;
  const video = scope.querySelector('video');
  if (!video) return;
  video.src = button.dataset.src;
  video.play().catch(() => {});
  scope.querySelectorAll('.vs-moment').forEach((b) => b.classList.toggle('vs-active', b === button));
});
"""


def moment_buttons(runtime: Runtime, url: str | None, sha256: str, moments) -> str:
    """One button per moment (its thumbnail and time range); clicking plays the player from there."""
    if not url or not moments:
        return ""
    buttons = []
    for m in moments:
        thumb = thumbnail_url(runtime, sha256, m.frame)
        img = f'<img class="vs-thumb" src="{html.escape(thumb, quote=True)}" alt="" loading="lazy">' if thumb else ""
        buttons.append(
            f'<button type="button" class="vs-moment" data-start="{m.start:.2f}" data-end="{m.end:.2f}" '
            f'data-src="{html.escape(fragment(url, m.start, m.end), quote=True)}" '
            f'title="score {m.score:.3f}">{img}<span>{span(m.start, m.end)}</span></button>')
    return f'<div class="vs-moments">{"".join(buttons)}</div>'


# A result is a weaker match when its score is below the best one by more than a quarter of the best score's size
# (at least 0.05). Relative to the best, since scales differ by model: real CLIP4Clip's cosine scores sit around
# 0.2-0.35 with unrelated videos ~0.1 lower, the tests' tiny model spreads them over -1..1.
WEAK_GAP = 0.25
WEAK_GAP_MIN = 0.05


def weak_threshold(best: float) -> float:
    return best - max(WEAK_GAP_MIN, WEAK_GAP * abs(best))


def split_results(results: list[SearchResult]) -> tuple[list[SearchResult], list[SearchResult]]:
    """(strong, weak): the results (best first) at or above weak_threshold of the best score, and those below."""
    if not results:
        return [], []
    cut = weak_threshold(max(r.score for r in results))
    return [r for r in results if r.score >= cut], [r for r in results if r.score < cut]


def render_results(runtime: Runtime, query: str, results: list[SearchResult]) -> str:
    if not results:
        if not runtime.catalog.list_videos(VideoStatus.READY):
            return '<div class="vs-empty">No videos yet — upload some in the Upload tab.</div>'
        return f'<div class="vs-empty">No results for “{html.escape(query)}”.</div>'
    strong, weak = split_results(results)
    page = f'<div class="vs-results">{result_cards(runtime, strong)}</div>'
    if weak:
        page += ('<div class="vs-weak"><div class="vs-weak-label">Weaker matches</div>'
                 f'<div class="vs-results">{result_cards(runtime, weak)}</div></div>')
    return page


def result_cards(runtime: Runtime, results: list[SearchResult]) -> str:
    cards = []
    for r in results:
        url = media_url(runtime, r.path)
        poster = thumbnail_url(runtime, r.sha256)
        poster_attr = f' poster="{html.escape(poster, quote=True)}"' if poster else ""
        src = fragment(url, r.moments[0].start, r.moments[0].end) if url and r.moments else url
        player = (f'<video controls preload="metadata"{poster_attr} src="{html.escape(src, quote=True)}"></video>'
                  if src else "")
        cards.append(
            f'<div class="vs-card" data-video-id="{r.video_id}">{player}'
            f'<div class="vs-title">{r.rank}. {html.escape(r.title)}</div>'
            f'<div class="vs-meta">score {r.score:.3f} · {clock(r.duration)} · id {r.video_id}</div>'
            f'{moment_buttons(runtime, url, r.sha256, r.moments)}</div>'
        )
    return "".join(cards)


def message_html(text: str) -> str:
    return f'<div class="vs-empty">{html.escape(text)}</div>'


def ui_filters(min_duration: float | None, max_duration: float | None, since: str | None, until: str | None,
               tags: list[str] | str | None) -> SearchFilters:
    """The Filters panel's fields -> SearchFilters (blank fields, and 0 in a number field, which the browser shows
    for an empty one, are no condition; bad values raise QueryError)."""
    if isinstance(tags, str):
        tags = [tags]
    return SearchFilters.from_text(min_duration or None, max_duration or None, (since or "").strip(),
                                   (until or "").strip(), [t for t in tags or () if t and t.strip()])


def search_html(runtime: Runtime, text: str, k: int, filters: SearchFilters | None = None) -> str:
    """The Search tab's answer: results, or a message saying what is wrong (never a stack trace)."""
    try:
        found = search_text(runtime.catalog, runtime.store, runtime.encoder, text, k, filters,
                            moment_seconds=runtime.settings.moment_seconds)
        if not found and filters is not None and filters.active and runtime.catalog.list_videos(VideoStatus.READY):
            return message_html("No video matches the filters.")
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
            v.id, v.title, v.status.value,
            round(v.duration, 2) if v.duration is not None else None,
            f"{v.width}×{v.height}" if v.width else "",
            v.codec or "", v.created_at.strftime("%Y-%m-%d %H:%M"), v.tag or "", v.error or "",
        ])
    return rows


LIBRARY_TILES = 200  # posters shown above the library table (newest first)


def library_gallery(runtime: Runtime) -> str:
    """Posters of the newest ready videos, with their (escaped) titles and ids."""
    tiles = []
    for v in reversed(runtime.catalog.list_videos(VideoStatus.READY)):
        poster = thumbnail_url(runtime, v.sha256)
        if poster is None:
            continue
        tiles.append(f'<div class="vs-tile" data-video-id="{v.id}"><img class="vs-thumb" alt="" loading="lazy" '
                     f'src="{html.escape(poster, quote=True)}"><div>{html.escape(v.title)} · id {v.id}</div></div>')
        if len(tiles) == LIBRARY_TILES:
            break
    return f'<div class="vs-gallery">{"".join(tiles)}</div>' if tiles else ""


def timeline_choices(runtime: Runtime) -> list[tuple[str, int]]:
    return [(f"{v.title} (id {v.id})", v.id) for v in runtime.catalog.list_videos(VideoStatus.READY)]


def timeline_frame(timeline: Timeline):
    """Rows for gr.LinePlot: the similarity of every sample, and each top moment (1 = best) as its own series drawn
    over the samples it spans."""
    import pandas as pd

    pairs = list(zip(timeline.times, timeline.scores, strict=True))
    rows = [{"time (s)": t, "similarity": s, "series": "similarity"} for t, s in pairs]
    for rank, m in enumerate(timeline.moments, 1):
        rows += [{"time (s)": t, "similarity": s, "series": f"moment {rank}"} for t, s in pairs
                 if m.start <= t <= m.end]
    return pd.DataFrame(rows, columns=["time (s)", "similarity", "series"])


# The y axis spans the data with 15% padding and at least TIMELINE_MIN_SPAN, so a near-flat line (a static clip)
# is drawn flat, not magnified into noise with a single many-decimal tick.
TIMELINE_MIN_SPAN = 0.1
TIMELINE_PAD = 0.15


def timeline_y_range(scores) -> list[float]:
    """[low, high] for the plot's y axis, rounded to 3 decimals."""
    low, high = float(min(scores)), float(max(scores))
    span = max(high - low, TIMELINE_MIN_SPAN / (1 + 2 * TIMELINE_PAD))
    middle, half = (low + high) / 2, span * (1 + 2 * TIMELINE_PAD) / 2
    return [round(middle - half, 3), round(middle + half, 3)]


MOMENT_COLORS = ["#f59e0b", "#10b981", "#ec4899", "#8b5cf6", "#ef4444"]
TIMELINE_EMPTY = "Choose a video, describe a moment and press “Show timeline” to plot it here."


def timeline_colors(moments: int) -> dict[str, str]:
    """The plot's color_map: the similarity line, and moments 1..`moments` (colors repeat past five)."""
    colors = {"similarity": SIMILARITY_COLOR}
    colors.update({f"moment {i}": MOMENT_COLORS[(i - 1) % len(MOMENT_COLORS)] for i in range(1, moments + 1)})
    return colors


def timeline_player(runtime: Runtime, video, moments: list[Moment], start: float | None = None,
                    end: float | None = None) -> str:
    """The Timeline tab's player (starting at `start`, or at the best moment) and its clickable moments."""
    url = media_url(runtime, video.stored_path)
    if url is None:
        return message_html("This video is indexed in place (outside the data folder), so it cannot be played here.")
    if start is None and moments:
        start, end = moments[0].start, moments[0].end
    src = url if start is None else fragment(url, start, end if end is not None else (video.duration or start))
    poster = thumbnail_url(runtime, video.sha256)
    poster_attr = f' poster="{html.escape(poster, quote=True)}"' if poster else ""
    listing = ""
    if moments:
        listing = ('<div class="vs-meta">Top moments (click to play):</div>'
                   + moment_buttons(runtime, url, video.sha256, moments))
    return (f'<div class="vs-timeline" data-video-id="{video.id}"><div class="vs-title">'
            f'{html.escape(video.title)}</div><video controls preload="metadata"{poster_attr} '
            f'src="{html.escape(src, quote=True)}"></video>{listing}</div>')


def upload_rows(runtime: Runtime, tracked: list[dict]) -> list[list]:
    videos = runtime.catalog.videos_by_ids([t["video_id"] for t in tracked if t.get("video_id")])
    rows = []
    for t in tracked:
        video = videos.get(t["video_id"]) if t.get("video_id") else None
        if video is None:
            rows.append([t["file"], t["outcome"], t.get("video_id") or "", t.get("detail", "")])
        else:
            rows.append([t["file"], video.status.value, video.id, video.error or t.get("detail", "")])
    return rows


def build_ui(runtime: Runtime, slots: ModelSlots, timelines: TimelineService) -> gr.Blocks:
    """The page; every model call of its handlers takes one of the web app's `slots` (shared with the API)."""
    with gr.Blocks(title="vidsearch") as demo:
        gr.Markdown("# vidsearch\nFind videos by describing what happens in them.")
        with gr.Tab("Search") as search_tab:
            with gr.Row(equal_height=True):
                query = gr.Textbox(label="Describe the video", placeholder="a dog catching a frisbee on the beach",
                                   scale=4, elem_id="query")
                k = gr.Slider(1, 50, value=10, step=1, label="Results", scale=1)
                search_btn = gr.Button("Search", variant="primary", elem_id="search-btn", scale=0, min_width=120)
            # The image query and the filters stay folded away, so the results start right under the query row.
            with gr.Accordion("Search with an image", open=False, elem_id="image-query"):
                with gr.Row(equal_height=True):  # find videos that look like a still image
                    image_query = gr.Image(type="numpy", label="Image", elem_id="query-image", height=160, scale=4)
                    image_btn = gr.Button("Search by image", elem_id="image-search-btn", scale=1)
            with gr.Accordion("Filters", open=False, elem_id="filters"):
                with gr.Row():
                    min_dur = gr.Number(label="Shortest (s)", minimum=0, elem_id="filter-min-duration",
                                        info="0: any")
                    max_dur = gr.Number(label="Longest (s)", minimum=0, elem_id="filter-max-duration",
                                        info="0: any")
                    since = gr.Textbox(label="Added from", placeholder="2026-11-01", elem_id="filter-since")
                    until = gr.Textbox(label="Added until", placeholder="2026-11-30", elem_id="filter-until")
                    tag_filter = gr.Dropdown(choices=[], multiselect=True, label="Tags (any of)",
                                             elem_id="filter-tags", allow_custom_value=True)
            results = gr.HTML(elem_id="results", js_on_load=MOMENT_CLICK_JS)

        with gr.Tab("Upload"):
            files = gr.File(label="Videos", file_count="multiple", type="filepath", elem_id="upload-files")
            upload_tag = gr.Textbox(label="Tag (optional)", placeholder="e.g. holiday-2026, drone, interviews",
                                    elem_id="upload-tag", max_length=64)
            add_btn = gr.Button("Add to library", variant="primary", elem_id="add-btn")
            tracked = gr.State([])
            uploads = gr.Dataframe(headers=UPLOAD_COLUMNS, value=[], interactive=False, elem_id="upload-status",
                                   label="Uploads")
            timer = gr.Timer(1.0)

        with gr.Tab("Library") as library_tab:
            refresh_btn = gr.Button("Refresh")
            gallery = gr.HTML(lambda: library_gallery(runtime), elem_id="library-thumbs")
            library = gr.Dataframe(headers=LIBRARY_COLUMNS, value=lambda: library_rows(runtime), interactive=False,
                                   elem_id="library", label="Videos")
            with gr.Row():
                delete_id = gr.Number(label="Video id", precision=0, elem_id="delete-id")
                delete_btn = gr.Button("Delete", variant="stop", elem_id="delete-btn")
            delete_msg = gr.Markdown()

        with gr.Tab("Timeline") as timeline_tab:
            gr.Markdown("How well each moment of one video matches a description. Click a top moment to play it, "
                        "or drag across the plot to play that stretch.")
            with gr.Row():
                timeline_video = gr.Dropdown(choices=[], label="Video", elem_id="timeline-video", scale=2)
                timeline_query = gr.Textbox(label="Describe the moment", placeholder="a dog catching a frisbee",
                                            elem_id="timeline-query", scale=3)
            timeline_btn = gr.Button("Show timeline", variant="primary", elem_id="timeline-btn")
            # Hidden until there is a timeline to plot; the player's place says what to do meanwhile (or what went
            # wrong).
            timeline_plot = gr.LinePlot(x="time (s)", y="similarity", color="series", elem_id="timeline-plot",
                                        label="Similarity over time", color_title="series", tooltip="all",
                                        color_map=timeline_colors(10), visible=False)
            timeline_html = gr.HTML(message_html(TIMELINE_EMPTY), elem_id="timeline-player",
                                    js_on_load=MOMENT_CLICK_JS)
            timeline_state = gr.State(None)

        async def do_search(text: str, count: float, *conditions) -> str:
            try:
                filters = ui_filters(*conditions)
            except QueryError as exc:
                return message_html(str(exc))
            return await slots.run(search_html, runtime, text, int(count), filters)

        def image_search_html(image, count: int, filters: SearchFilters) -> str:
            from search_app.search import search_image

            try:
                found = search_image(runtime.catalog, runtime.store, runtime.encoder, image, count, filters,
                                     moment_seconds=runtime.settings.moment_seconds)
            except QueryError as exc:
                return message_html(str(exc))
            except VectorStoreError as exc:
                return message_html(f"The vector store is not reachable right now ({exc}).")
            if not found and filters.active:
                return message_html("No video matches the filters.")
            return render_results(runtime, "this image", found)

        async def do_image_search(image, count: float, *conditions) -> str:
            if image is None:
                return message_html("Choose an image first.")
            try:
                filters = ui_filters(*conditions)
            except QueryError as exc:
                return message_html(str(exc))
            return await slots.run(image_search_html, image, int(count), filters)

        def do_add(paths: list[str] | None, current: list[dict], tag: str | None
                   ) -> tuple[list[dict], list[list], None]:
            current = list(current or [])
            try:
                tag = check_tag(tag) if tag and tag.strip() else None
            except QueryError as exc:
                current += [{"file": Path(p).name, "outcome": "failed", "video_id": None, "detail": str(exc)}
                            for p in paths or []]
                return current, upload_rows(runtime, current), None
            for p in paths or []:
                path = Path(p)
                try:
                    # Gradio's upload copy is renamed into the library where it can be, not copied again.
                    r = enqueue_file(runtime.catalog, runtime.settings, path, title=path.name, tag=tag, move=True)
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
            video = delete_video(runtime.catalog, runtime.store, int(video_id),
                                 runtime.settings.thumbnails_dir)
            if video is None:
                return f"No video with id {int(video_id)}.", library_rows(runtime)
            msg = f"Deleted “{html.escape(video.title)}” (id {video.id})."
            return msg, library_rows(runtime)

        async def do_timeline(video_id, text: str, progress=gr.Progress()):  # noqa: B008 (Gradio injects it)
            empty = gr.update(visible=False)
            if video_id is None:
                return empty, message_html("Choose a video first."), None
            video = await anyio.to_thread.run_sync(runtime.catalog.get_video, int(video_id))
            if video is None:
                return empty, message_html(f"No video with id {int(video_id)}."), None
            if not (text or "").strip():
                return empty, message_html("Describe the moment to look for."), None

            def report(step: TimelineProgress) -> None:
                progress(step.fraction, desc=step.describe())

            try:
                # Decoding (a video without stored segments) waits outside the model slots, embedding inside them.
                timeline = await timelines.timeline(video, text, progress=report)
            except QueryError as exc:
                return empty, message_html(str(exc)), None
            except VectorStoreError as exc:
                return empty, message_html(f"The vector store is not reachable right now ({exc})."), None
            if not timeline.scores:
                return empty, message_html("This video has no frames to score."), None
            state = {"video_id": video.id, "moments": [vars(m) for m in timeline.moments],
                     "y_lim": timeline_y_range(timeline.scores)}
            return (gr.update(value=timeline_frame(timeline), visible=True),
                    timeline_player(runtime, video, timeline.moments), state)

        def plot_axes(state):
            """The plot's y range and colors, set after its data: Gradio 6's plot, given both at once, redraws with
            the old data (the new spec's redraw races the in-place data update)."""
            if not state:
                return gr.skip()
            return gr.update(y_lim=state["y_lim"], color_map=timeline_colors(len(state["moments"])))

        def do_plot_select(state, evt: gr.SelectData):
            """A drag across the plot selects a time range: play it."""
            video = runtime.catalog.get_video(state["video_id"]) if state else None
            if video is None or not isinstance(evt.index, (list, tuple)) or len(evt.index) < 2:
                return gr.skip()
            start, end = sorted(max(0.0, float(x)) for x in evt.index[:2])
            return timeline_player(runtime, video, [Moment(**m) for m in state["moments"]], start, end)

        # Gradio's queue limits only bound how many of the page's events are in flight (and show the others their
        # place in the queue); the model work inside them takes the app's ModelSlots, shared with the API.
        timeline_outputs = [timeline_plot, timeline_html, timeline_state]
        timelines_at_once = {"concurrency_limit": 2, "concurrency_id": "timeline"}
        for trigger in (timeline_btn.click, timeline_query.submit):
            trigger(do_timeline, [timeline_video, timeline_query], timeline_outputs, **timelines_at_once).then(
                plot_axes, timeline_state, timeline_plot, show_progress="hidden")
        timeline_plot.select(do_plot_select, timeline_state, timeline_html)
        timeline_tab.select(lambda: gr.update(choices=timeline_choices(runtime)), None, timeline_video)
        # One queue slot count for every search event (concurrency_id), as many as there are model slots.
        searching = {"concurrency_limit": runtime.settings.search_concurrency, "concurrency_id": "search"}
        conditions = [min_dur, max_dur, since, until, tag_filter]
        search_btn.click(do_search, [query, k, *conditions], results, **searching)
        query.submit(do_search, [query, k, *conditions], results, **searching)
        image_btn.click(do_image_search, [image_query, k, *conditions], results, **searching)
        tag_choices = lambda: gr.update(choices=runtime.catalog.tags())  # noqa: E731
        demo.load(tag_choices, None, tag_filter)
        search_tab.select(tag_choices, None, tag_filter)
        add_btn.click(do_add, [files, tracked, upload_tag], [tracked, uploads, files])
        timer.tick(lambda t: upload_rows(runtime, t), tracked, uploads, show_progress="hidden")
        refresh_btn.click(lambda: (library_rows(runtime), library_gallery(runtime)), None, [library, gallery])
        library_tab.select(lambda: (library_rows(runtime), library_gallery(runtime)), None, [library, gallery])
        delete_btn.click(do_delete, delete_id, [delete_msg, library])
    return demo
