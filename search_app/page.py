"""The Gradio page: Search, Upload, Library and Timeline tabs, and the HTML they render."""

from __future__ import annotations

import html
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread
import gradio as gr

from ingest.library import Outcome, delete_video, enqueue_file
from ingest.runtime import Runtime
from schema.catalog import Catalog, Video, VideoStatus
from schema.filters import SearchFilters, check_tag
from schema.units import clock
from schema.vectors import VectorStoreError
from search_app import fusion
from search_app.audio_query import expert_sources
from search_app.live_page import LIVE_CSS, build_live_tab
from search_app.moments import Moment, Timeline
from search_app.present import fragment, media_url, span, thumbnail_url
from search_app.search import QueryError, SearchResult, search_text
from search_app.slots import ModelSlots
from search_app.timeline import TimelineProgress, TimelineService

log = logging.getLogger(__name__)

LIBRARY_COLUMNS = ["✓", "id", "title", "status", "duration (s)", "resolution", "codec", "added", "tag", "error"]
# The tick box is the only column a person can change; the rest are shown, not edited.
LIBRARY_TYPES = ["bool", "number", "str", "str", "number", "str", "str", "str", "str", "str"]
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
.vs-moments { display: flex; flex-wrap: wrap; gap: 6px; margin-top: 6px; }
.vs-moment { display: flex; flex-direction: column; align-items: center; gap: 2px; padding: 3px; cursor: pointer;
  border: 1px solid var(--border-color-primary); border-radius: 6px; background: var(--background-fill-secondary);
  font-size: 0.8em; color: var(--body-text-color); }
.vs-moment img { width: 96px; height: 54px; object-fit: cover; border-radius: 3px; background: #000; }
.vs-moment.vs-active { border-color: var(--color-accent); box-shadow: 0 0 0 1px var(--color-accent); }
/* Why a card matched: the experts' scores, then what was said or shown (a line each, the query's words marked). */
.vs-card .vs-why { color: var(--body-text-color-subdued); font-size: 0.85em; }
.vs-lines { display: flex; flex-direction: column; gap: 4px; margin-top: 6px; }
.vs-lines .vs-line { display: -webkit-box; -webkit-box-orient: vertical; -webkit-line-clamp: 2; overflow: hidden;
  text-align: left; padding: 3px 6px; font-size: 0.9em; font-weight: normal; line-height: 1.35; }
.vs-lines .vs-moment.vs-line { width: 100%; }
.vs-line .vs-when { font-weight: 600; white-space: nowrap; }
.vs-line mark { background: #fde68a; color: #1f2937; padding: 0 2px; border-radius: 2px; }
.vs-timeline video { width: 100%; max-width: 640px; max-height: 360px; background: #000; border-radius: 4px; }
.vs-gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 8px; }
.vs-tile { font-size: 0.85em; overflow-wrap: anywhere; }
.vs-tile img { width: 100%; aspect-ratio: 16 / 9; object-fit: cover; border-radius: 4px; background: #000; }
#library [aria-label="Static column"] { display: none; }  /* a lock on every column but the tick box: noise */
.vs-confirm { font-weight: 600; padding: 8px 12px; }
"""
MOMENT_COLORS = ["#f59e0b", "#10b981", "#ec4899", "#8b5cf6", "#ef4444"]
# The per-expert timeline: each expert's line, and a lighter tint of it for the bands of its top moments.
EXPERT_COLORS = {"appearance": SIMILARITY_COLOR, "speech": "#7c3aed", "text": "#0f766e", "audio": "#c2410c"}
EXPERT_BANDS = {"appearance": "#93c5fd", "speech": "#c4b5fd", "text": "#5eead4", "audio": "#fdba74"}
# Timeline: a top moment is a wide translucent band behind its line, so the line stays visible.
CSS += ", ".join(f'#timeline-plot .mark-line path[stroke="{c}"]' for c in [*MOMENT_COLORS, *EXPERT_BANDS.values()]
                 ) + " { stroke-width: 10px; stroke-opacity: 0.35; }\n"
CSS += LIVE_CSS
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


# How each lexical expert's moment is introduced, and how many words of what was said or shown a line keeps.
SAID = {"speech": "said", "text": "shown", "audio": "heard"}
EXCERPT_WORDS = 14
_WORD_PIECES = re.compile(f"({fusion.WORD.pattern})")


def marked_words(text: str, query: str, limit: int = EXCERPT_WORDS) -> str:
    """`text` as escaped HTML with the query's words in <mark>, matched as the fusion's coverage matches them
    (fusion.words and fusion.word_matches: case-insensitively, exactly, as a prefix, or nearly: an OCR misread).
    A text longer than `limit` words is cut to the `limit` words around the marked ones, "…" where it was cut."""
    query_words = fusion.words(query)
    pieces = _WORD_PIECES.split(" ".join(text.split()))  # separator, word, separator, ..., separator
    seps, words = pieces[0::2], pieces[1::2]
    hits = [i for i, w in enumerate(words) if w.lower() not in fusion.STOPWORDS
            and any(fusion.word_matches(q, w.lower()) for q in query_words)]
    start, end = 0, len(words)
    if len(words) > limit:
        first, last = (hits[0], hits[-1]) if hits else (0, 0)
        spare = max(0, limit - (last - first + 1))
        start = max(0, min(first - spare // 2, len(words) - limit))
        end = start + limit
    out = ["… " if start > 0 else html.escape(seps[0].lstrip())]
    marked = set(hits)
    for i in range(start, end):
        if i > start:
            out.append(html.escape(seps[i]))
        word = html.escape(words[i])
        out.append(f"<mark>{word}</mark>" if i in marked else word)
    out.append(" …" if end < len(words) else html.escape(seps[-1].rstrip()))
    return "".join(out)


def said_lines(url: str | None, moments, query: str) -> str:
    """The speech and text moments, a line each: "said at 1:23: … counted seventeen ships …" or "shown at 0:02:
    PLATFORM NINE", the query's words marked; a click plays the card's player from there (as a moment tile)."""
    lines = []
    for m in moments:
        if m.expert not in SAID or not (m.text or m.expert == "audio"):
            continue
        if m.expert == "audio":  # a sound: nothing to quote, the stretch it was heard in
            body = (f'<span class="vs-when">{SAID[m.expert]} at {clock(math.floor(m.start))}:</span> '
                    f'<span class="vs-text">a matching sound, {span(m.start, m.end)}</span>')
            tip = html.escape(f"audio: {m.score:.2f} (how far this window's sound stands out for the query)",
                              quote=True)
        else:
            body = (f'<span class="vs-when">{SAID[m.expert]} at {clock(math.floor(m.start))}:</span> '
                    f'<span class="vs-text">{marked_words(m.text, query)}</span>')
            tip = html.escape(f"{m.expert}: {m.score:.0%} of the query's words, {span(m.start, m.end)}", quote=True)
        if url:
            lines.append(
                f'<button type="button" class="vs-moment vs-line" data-expert="{m.expert}" data-start="{m.start:.2f}" '
                f'data-end="{m.end:.2f}" data-src="{html.escape(fragment(url, m.start, m.end), quote=True)}" '
                f'title="{tip}">{body}</button>')
        else:  # indexed in place: not playable here, still worth reading
            lines.append(f'<div class="vs-line" data-expert="{m.expert}" title="{tip}">{body}</div>')
    return f'<div class="vs-lines">{"".join(lines)}</div>' if lines else ""


def experts_line(experts: dict[str, float | None]) -> str:
    """"appearance 0.31 · speech 0.77 · text —" (— : the video has no speech, or no text on screen); "" when
    appearance ranked alone."""
    if not experts:
        return ""
    names = [*(e for e in fusion.DEFAULT_WEIGHTS if e in experts), *(e for e in experts if e not in
                                                                      fusion.DEFAULT_WEIGHTS)]
    parts = [f"{html.escape(e)} {'—' if experts[e] is None else f'{experts[e]:.2f}'}" for e in names]
    tip = ("appearance: cosine similarity; speech, text: share of the query's words said or shown; audio: how far "
           "its best sound stands out for the query; —: the video has none")
    return f'<div class="vs-why" title="{tip}">{" · ".join(parts)}</div>'


def moment_buttons(runtime: Runtime, url: str | None, sha256: str, moments) -> str:
    """One button per appearance moment (its thumbnail and time range); clicking plays the player from there.
    Speech and text moments are lines of their own (said_lines)."""
    moments = [m for m in moments or () if m.expert not in SAID]
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
        if not runtime.catalog.count_videos(VideoStatus.READY):
            return '<div class="vs-empty">No videos yet — upload some in the Upload tab.</div>'
        return f'<div class="vs-empty">No results for “{html.escape(query)}”.</div>'
    strong, weak = split_results(results)
    page = f'<div class="vs-results">{result_cards(runtime, strong, query)}</div>'
    if weak:
        page += ('<div class="vs-weak"><div class="vs-weak-label">Weaker matches</div>'
                 f'<div class="vs-results">{result_cards(runtime, weak, query)}</div></div>')
    return page


def result_cards(runtime: Runtime, results: list[SearchResult], query: str = "") -> str:
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
            f'{experts_line(r.experts)}{said_lines(url, r.moments, query)}'
            f'{moment_buttons(runtime, url, r.sha256, r.moments)}</div>'
        )
    return "".join(cards)


# The Experts panel's sliders, in order: appearance, then what is said and what is shown.
WEIGHTED = tuple(fusion.DEFAULT_WEIGHTS)
WEIGHT_LABELS = {"appearance": ("Appearance", "how it looks"), "speech": ("Speech", "what is said"),
                 "text": ("Text", "what is written on screen"), "audio": ("Audio", "what is heard")}


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


def ui_weights(*values: float | None) -> dict[str, float]:
    """The Experts panel's sliders (in WEIGHTED order) -> search weights; a missing value is the default."""
    return {name: fusion.DEFAULT_WEIGHTS[name] if value is None else float(value)
            for name, value in zip(WEIGHTED, values, strict=False)}


def search_html(runtime: Runtime, text: str, k: int, filters: SearchFilters | None = None,
                weights: dict[str, float] | None = None) -> str:
    """The Search tab's answer: results, or a message saying what is wrong (never a stack trace). Searched by
    appearance and by the experts whose collections exist (what is said and shown), fused with `weights`."""
    try:
        found = search_text(runtime.catalog, runtime.store, runtime.encoder, text, k, filters,
                            moment_seconds=runtime.settings.moment_seconds,
                            experts=expert_sources(runtime), weights=weights)
        if not found and filters is not None and filters.active and runtime.catalog.count_videos(VideoStatus.READY):
            return message_html("No video matches the filters.")
    except QueryError as exc:
        return message_html(str(exc))
    except VectorStoreError as exc:
        log.warning("search failed: %s", exc)
        return message_html(f"The vector store is not reachable, so searching is not possible right now ({exc}). "
                            "Uploads are kept and processed once it is back.")
    return render_results(runtime, text, found)


@dataclass(frozen=True)
class LibraryPage:
    """One page of the Library tab, newest first: `offset` matching videos come before it, `total` match in all."""

    videos: list[Video]
    total: int
    offset: int
    more: bool  # a next page exists
    title: str  # the title search ("" for none)

    @property
    def ids(self) -> list[int]:
        return [v.id for v in self.videos]


def library_page(catalog: Catalog, size: int, title: str = "", *, after: int | None = None,
                 before: int | None = None) -> LibraryPage:
    """The page of `size` videos (newest first, titles containing `title`) after the id `after` (Next), or the one
    before the page that starts at `before` (Previous); the first page without either, or when the asked-for page
    is empty now (deleted meanwhile) or would not be full (Previous reached the start). Paged and counted in SQL."""
    title = title.strip()
    if before is not None:
        newer = catalog.page_videos(size, after=before, title=title or None)  # the `size` just before, oldest first
        after = newer[-1].id + 1 if len(newer) == size else None
    videos = catalog.page_videos(size + 1, after=after, title=title or None, newest_first=True)
    if not videos and after is not None:
        return library_page(catalog, size, title)
    page = videos[:size]
    offset = catalog.count_videos(title=title or None, newer_than=page[0].id) if page else 0
    return LibraryPage(page, catalog.count_videos(title=title or None), offset, len(videos) > size, title)


def library_rows(page: LibraryPage) -> list[list]:
    """The table's rows: an unticked selection box, then the video's fields."""
    return [[False, v.id, v.title, v.status.value, round(v.duration, 2) if v.duration is not None else None,
             f"{v.width}×{v.height}" if v.width else "", v.codec or "", v.created_at.strftime("%Y-%m-%d %H:%M"),
             v.tag or "", v.error or ""] for v in page.videos]


def library_summary(page: LibraryPage) -> str:
    matching = f" matching “{html.escape(page.title)}”" if page.title else ""
    if not page.videos:
        text = f"No videos{matching}." if page.title else "No videos yet — upload some in the Upload tab."
    else:
        text = (f"Showing {page.offset + 1}–{page.offset + len(page.videos)} of {page.total} "
                f"video{'s' if page.total != 1 else ''}{matching}")
    return f'<div class="vs-meta">{text}</div>'


def library_gallery(runtime: Runtime, page: LibraryPage) -> str:
    """Posters of the page's ready videos, with their (escaped) titles and ids."""
    tiles = []
    for v in page.videos:
        poster = thumbnail_url(runtime, v.sha256) if v.status is VideoStatus.READY else None
        if poster is not None:
            tiles.append(f'<div class="vs-tile" data-video-id="{v.id}"><img class="vs-thumb" alt="" loading="lazy" '
                         f'src="{html.escape(poster, quote=True)}"><div>{html.escape(v.title)} · id {v.id}</div></div>')
    return f'<div class="vs-gallery">{"".join(tiles)}</div>' if tiles else ""


def ticked_ids(table, page_ids: list[int]) -> list[int]:
    """The ids of the table's ticked rows that are on the page shown. The ids come from the table's own id column
    (rows may have been sorted in the browser), and only the page's are taken: an interactive table's value is
    the browser's word (a dropped CSV, an added row), never trusted to name what to delete."""
    shown = set(page_ids)
    ticked = []
    for row in _table_rows(table):
        if len(row) > 1 and row[0] is True and isinstance(row[1], (int, float)) and int(row[1]) in shown:
            ticked.append(int(row[1]))
    return list(dict.fromkeys(ticked))


def _table_rows(table) -> list[list]:
    if table is None:
        return []
    if hasattr(table, "values") and hasattr(table, "columns"):  # a pandas DataFrame
        return table.values.tolist()
    return list(table)


DELETE_LISTED = 10  # titles named in the delete confirmation; the rest are counted


def videos_phrase(titles: list[str]) -> str:
    """'2 videos: a.mp4, b.mp4' (escaped HTML), naming at most DELETE_LISTED."""
    named = ", ".join(html.escape(t) for t in titles[:DELETE_LISTED])
    rest = f" and {len(titles) - DELETE_LISTED} more" if len(titles) > DELETE_LISTED else ""
    return f"{len(titles)} video{'s' if len(titles) != 1 else ''}: {named}{rest}"


def timeline_choices(catalog: Catalog, limit: int, title: str = "") -> tuple[list[tuple[str, int]], str]:
    """The Timeline picker's choices: the newest `limit` ready videos whose titles contain `title`, and a line
    saying how many match in all."""
    title = title.strip()
    videos = catalog.page_videos(limit, status=VideoStatus.READY, title=title or None, newest_first=True)
    total = catalog.count_videos(VideoStatus.READY, title=title or None) if len(videos) == limit else len(videos)
    matching = f" matching “{title}”" if title else ""
    if total > len(videos):
        info = f"The {len(videos)} newest of {total} ready videos{matching}; search by title for the others."
    else:
        info = f"{total} ready video{'s' if total != 1 else ''}{matching}."
    return [(f"{v.title} (id {v.id})", v.id) for v in videos], info


def timeline_frame(timeline: Timeline):
    """Rows for gr.LinePlot. Appearance alone: the similarity of every sample, and each top moment (1 = best) as its
    own series drawn over the samples it spans. With other experts: one line per expert on 0..1 (`normalized`;
    speech and text as steps over their segments), each expert's top moments as bands of its own tint."""
    import pandas as pd

    columns = ["time (s)", "similarity", "series"]
    if len(timeline.lines) > 1:
        return pd.DataFrame(expert_rows(timeline.lines), columns=columns)
    pairs = list(zip(timeline.times, timeline.scores, strict=True))
    rows = [{"time (s)": t, "similarity": s, "series": "similarity"} for t, s in pairs]
    for rank, m in enumerate(timeline.moments, 1):
        rows += [{"time (s)": t, "similarity": s, "series": f"moment {rank}"} for t, s in pairs
                 if m.start <= t <= m.end]
    return pd.DataFrame(rows, columns=columns)


def _line_points(line) -> list[tuple[float, float]]:
    """(time, normalized) of a line: segment experts (speech, text) as steps over each segment, down to 0 between
    segments that do not touch (nothing was said or shown there); the others at each frame's or window's centre."""
    if line.texts is None:
        return list(zip(line.times, line.normalized, strict=True))
    points: list[tuple[float, float]] = []
    for a, b, v in zip(line.starts, line.ends, line.normalized, strict=True):
        if points and a > points[-1][0] + 0.05:
            points += [(points[-1][0], 0.0), (a, 0.0)]
        points += [(a, v), (b, v)]
    return points


def expert_rows(lines) -> list[dict]:
    rows = []
    for line in lines:
        points = _line_points(line)
        rows += [{"time (s)": t, "similarity": v, "series": line.expert} for t, v in points]
        for rank, m in enumerate(line.moments, 1):
            rows += [{"time (s)": t, "similarity": v, "series": f"{line.expert} {rank}"} for t, v in points
                     if m.start <= t <= m.end]
    return rows


def expert_colors(lines) -> dict[str, str]:
    """The per-expert plot's color_map."""
    colors: dict[str, str] = {}
    for line in lines:
        colors[line.expert] = EXPERT_COLORS.get(line.expert, "#475569")
        colors.update({f"{line.expert} {rank}": EXPERT_BANDS.get(line.expert, "#cbd5e1")
                       for rank in range(1, len(line.moments) + 1)})
    return colors


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


TIMELINE_EMPTY = "Choose a video, describe a moment and press “Show timeline” to plot it here."


def timeline_colors(moments: int) -> dict[str, str]:
    """The plot's color_map: the similarity line, and moments 1..`moments` (colors repeat past five)."""
    colors = {"similarity": SIMILARITY_COLOR}
    colors.update({f"moment {i}": MOMENT_COLORS[(i - 1) % len(MOMENT_COLORS)] for i in range(1, moments + 1)})
    return colors


def timeline_player(runtime: Runtime, video, moments: list[Moment], start: float | None = None,
                    end: float | None = None, query: str = "") -> str:
    """The Timeline tab's player (starting at `start`, or at the best moment) and its clickable moments: appearance's
    as thumbnails, the other experts' as lines (what was said or shown, where a sound was heard)."""
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
                   + moment_buttons(runtime, url, video.sha256, moments) + said_lines(url, moments, query))
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
            # How much each expert counts in a text search (image searches are appearance alone); 0 turns one off.
            with gr.Accordion("Experts", open=False, elem_id="experts"):
                with gr.Row():
                    weight_sliders = [
                        gr.Slider(0, 3, value=fusion.DEFAULT_WEIGHTS[name], step=0.25, label=WEIGHT_LABELS[name][0],
                                  info=f"{WEIGHT_LABELS[name][1]} · 0: off", elem_id=f"weight-{name}")
                        for name in WEIGHTED]
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
            with gr.Row(equal_height=True):
                library_find = gr.Textbox(label="Search titles", placeholder="holiday", elem_id="library-search",
                                          scale=4, max_length=200)
                refresh_btn = gr.Button("Refresh", elem_id="library-refresh", scale=0, min_width=140)
            gallery = gr.HTML(elem_id="library-thumbs")
            library = gr.Dataframe(headers=LIBRARY_COLUMNS, datatype=LIBRARY_TYPES, value=[], interactive=True,
                                   static_columns=list(range(1, len(LIBRARY_COLUMNS))), type="array",
                                   elem_id="library", label="Videos (tick the ones to delete)",
                                   column_widths=["48px", "64px"] + ["auto"] * (len(LIBRARY_COLUMNS) - 2))
            with gr.Row(equal_height=True):
                library_info = gr.HTML(elem_id="library-summary")
                prev_btn = gr.Button("← Previous", elem_id="library-prev", interactive=False, scale=0, min_width=140)
                next_btn = gr.Button("Next →", elem_id="library-next", interactive=False, scale=0, min_width=140)
                delete_btn = gr.Button("Delete selected", variant="stop", elem_id="delete-btn", scale=0,
                                       min_width=190)
            with gr.Group(visible=False, elem_id="delete-confirm") as confirm_box:
                confirm_text = gr.HTML(elem_id="delete-question")
                with gr.Row():
                    confirm_btn = gr.Button("Delete", variant="stop", elem_id="delete-confirm-btn")
                    cancel_btn = gr.Button("Cancel", elem_id="delete-cancel-btn")
            delete_msg = gr.HTML(elem_id="delete-msg")
            library_state = gr.State([])  # the ids of the page shown, newest first
            pending_delete = gr.State([])  # the ids the confirmation names

        with gr.Tab("Timeline") as timeline_tab:
            gr.Markdown("How well each moment of one video matches a description. Click a top moment to play it, "
                        "or drag across the plot to play that stretch.")
            with gr.Row():
                timeline_find = gr.Textbox(label="Find a video", placeholder="title", elem_id="timeline-find",
                                           scale=1, max_length=200)
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

        async def do_search(text: str, count: float, min_duration, max_duration, since, until, tags,
                            *weights: float) -> str:
            try:
                filters = ui_filters(min_duration, max_duration, since, until, tags)
            except QueryError as exc:
                return message_html(str(exc))
            return await slots.run(search_html, runtime, text, int(count), filters, ui_weights(*weights))

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
                    r = enqueue_file(runtime.catalog, runtime.settings, path, title=path.name, tag=tag, move=True,
                                     storage=runtime.storage)
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

        page_size = runtime.settings.library_page_size

        def show_page(page: LibraryPage) -> tuple:
            return (library_rows(page), library_gallery(runtime, page), library_summary(page),
                    gr.update(interactive=page.offset > 0), gr.update(interactive=page.more), page.ids)

        def first_page(title: str):
            return show_page(library_page(runtime.catalog, page_size, title or ""))

        def same_page(title: str, ids: list[int]):
            """The page shown, again (statuses change while videos are processed): from its first video on."""
            return show_page(library_page(runtime.catalog, page_size, title or "", after=ids[0] + 1 if ids else None))

        def next_page(title: str, ids: list[int]):
            return show_page(library_page(runtime.catalog, page_size, title or "", after=ids[-1] if ids else None))

        def previous_page(title: str, ids: list[int]):
            return show_page(library_page(runtime.catalog, page_size, title or "", before=ids[0] if ids else None))

        def ask_delete(table, ids: list[int]):
            """The confirmation, naming what the ticked rows are; nothing is deleted yet."""
            chosen = ticked_ids(table, ids)
            videos = runtime.catalog.videos_by_ids(chosen)
            chosen = [i for i in chosen if i in videos]
            if not chosen:
                return gr.update(visible=False), "", [], message_html("Tick the videos to delete first.")
            question = (f'<div class="vs-confirm">Delete {videos_phrase([videos[i].title for i in chosen])}? '
                        "Their vectors, catalog rows and stored files are removed.</div>")
            return gr.update(visible=True), question, chosen, ""

        def do_delete(pending: list[int], title: str, ids: list[int]):
            deleted, missing = [], 0
            for video_id in pending:
                video = delete_video(runtime.catalog, runtime.store, video_id, runtime.settings.thumbnails_dir,
                                     storage=runtime.storage)
                if video is None:
                    missing += 1
                else:
                    deleted.append(video.title)
            text = f"Deleted {videos_phrase(deleted)}." if deleted else "Nothing was deleted."
            if missing:
                text += f" {missing} {'was' if missing == 1 else 'were'} already gone."
            return (gr.update(visible=False), [], f'<div class="vs-meta">{text}</div>', *same_page(title, ids))

        def picker(title: str, current):
            """The picker's choices for a title search (a bounded number); a search picks its newest match unless
            the video picked already matches."""
            choices, info = timeline_choices(runtime.catalog, page_size, title or "")
            ids = [video_id for _, video_id in choices]
            value = current if current in ids else (ids[0] if ids and (title or "").strip() else None)
            return gr.update(choices=choices, value=value, info=info)

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
            if len(timeline.lines) > 1:  # other experts too: one line each on 0..1
                moments = [m for line in timeline.lines for m in line.moments]
                state = {"video_id": video.id, "moments": [vars(m) for m in moments], "y_lim": [-0.05, 1.05],
                         "colors": expert_colors(timeline.lines), "y_title": "match (0..1)",
                         "label": "Match over time, per expert", "query": text}
            else:
                moments = list(timeline.moments)
                state = {"video_id": video.id, "moments": [vars(m) for m in moments],
                         "y_lim": timeline_y_range(timeline.scores), "colors": timeline_colors(len(moments)),
                         "y_title": "similarity", "label": "Similarity over time", "query": text}
            frame = timeline_frame(timeline)
            state["rows"] = frame.to_dict("records")
            return (gr.update(value=frame, visible=True), timeline_player(runtime, video, moments, query=text), state)

        def plot_axes(state):
            """The plot's y range and colors, set after its data: Gradio 6's plot, given both at once, redraws with
            the old data (the new spec's redraw races the in-place data update). The data is sent again with them:
            whichever of the two lands last, the plot has this data and these colours (under load the colours were
            seen lost when only the axes came second)."""
            if not state:
                return gr.skip()
            import pandas as pd

            return gr.update(value=pd.DataFrame(state["rows"]), y_lim=state["y_lim"], color_map=state["colors"],
                             y_title=state["y_title"], label=state["label"])

        def do_plot_select(state, evt: gr.SelectData):
            """A drag across the plot selects a time range: play it."""
            video = runtime.catalog.get_video(state["video_id"]) if state else None
            if video is None or not isinstance(evt.index, (list, tuple)) or len(evt.index) < 2:
                return gr.skip()
            start, end = sorted(max(0.0, float(x)) for x in evt.index[:2])
            return timeline_player(runtime, video, [Moment(**m) for m in state["moments"]], start, end,
                                   state.get("query", ""))

        with gr.Tab("Live"):
            build_live_tab(runtime, slots)

        # Gradio's queue limits only bound how many of the page's events are in flight (and show the others their
        # place in the queue); the model work inside them takes the app's ModelSlots, shared with the API.
        timeline_outputs = [timeline_plot, timeline_html, timeline_state]
        timelines_at_once = {"concurrency_limit": 2, "concurrency_id": "timeline"}
        for trigger in (timeline_btn.click, timeline_query.submit):
            trigger(do_timeline, [timeline_video, timeline_query], timeline_outputs, **timelines_at_once).then(
                plot_axes, timeline_state, timeline_plot, show_progress="hidden")
        timeline_plot.select(do_plot_select, timeline_state, timeline_html)
        timeline_tab.select(picker, [timeline_find, timeline_video], timeline_video)
        timeline_find.change(picker, [timeline_find, timeline_video], timeline_video, trigger_mode="always_last",
                             show_progress="hidden")
        # One queue slot count for every search event (concurrency_id), as many as there are model slots.
        searching = {"concurrency_limit": runtime.settings.search_concurrency, "concurrency_id": "search"}
        conditions = [min_dur, max_dur, since, until, tag_filter]
        search_btn.click(do_search, [query, k, *conditions, *weight_sliders], results, **searching)
        query.submit(do_search, [query, k, *conditions, *weight_sliders], results, **searching)
        image_btn.click(do_image_search, [image_query, k, *conditions], results, **searching)
        tag_choices = lambda: gr.update(choices=runtime.catalog.tags())  # noqa: E731
        demo.load(tag_choices, None, tag_filter)
        search_tab.select(tag_choices, None, tag_filter)
        add_btn.click(do_add, [files, tracked, upload_tag], [tracked, uploads, files])
        timer.tick(lambda t: upload_rows(runtime, t), tracked, uploads, show_progress="hidden")
        page_outputs = [library, gallery, library_info, prev_btn, next_btn, library_state]
        refresh_btn.click(same_page, [library_find, library_state], page_outputs)
        library_tab.select(same_page, [library_find, library_state], page_outputs)
        # .change, not .input: Gradio's input event follows keys only, and a pasted or autofilled search counts too.
        library_find.change(first_page, library_find, page_outputs, trigger_mode="always_last", show_progress="hidden")
        next_btn.click(next_page, [library_find, library_state], page_outputs)
        prev_btn.click(previous_page, [library_find, library_state], page_outputs)
        delete_btn.click(ask_delete, [library, library_state], [confirm_box, confirm_text, pending_delete, delete_msg])
        confirm_btn.click(do_delete, [pending_delete, library_find, library_state],
                          [confirm_box, pending_delete, delete_msg, *page_outputs])
        cancel_btn.click(lambda: (gr.update(visible=False), [], message_html("Nothing was deleted.")), None,
                         [confirm_box, pending_delete, delete_msg])
    return demo
