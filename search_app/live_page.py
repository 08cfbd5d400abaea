"""The page's Live tab: add a stream for `serve`'s watcher process, see each stream's state, a chart of its prompts'
scores over the last minutes (from the watcher's score file) and the latest events with their thumbnails."""

from __future__ import annotations

import html
import json
import time

import gradio as gr
import pandas as pd

from ingest.live import LiveError
from ingest.live_service import SCORE_SECONDS, add_stream, read_scores
from ingest.runtime import Runtime
from schema.catalog import LiveEvent
from schema.units import clock
from search_app.live_api import LIVE_ROUTE, stream_out
from search_app.present import media_url

STREAM_COLUMNS = ["Id", "Name", "URL", "State", "Frames", "Dropped", "Reconnects", "Reason"]
EVENTS_SHOWN = 12
THRESHOLD_SERIES = "threshold"
# Series colours, set with the data: Gradio's plot draws a colour column without a map in no colour at all.
PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"]
THRESHOLD_COLOR = "#9ca3af"


def chart_update(frame: pd.DataFrame, prompts: list[str]):
    """The chart's data with a colour per prompt and the threshold grey, in one update. No data is an empty plot
    (None), never an empty frame: a plot first given an empty frame draws every later line without colour."""
    if frame.empty:
        return gr.update(value=None)
    names = list(dict.fromkeys([*prompts, *(p for p in frame["prompt"] if p != THRESHOLD_SERIES)]))
    colors = {p: PALETTE[i % len(PALETTE)] for i, p in enumerate(names)}
    colors[THRESHOLD_SERIES] = THRESHOLD_COLOR
    return gr.update(value=frame, color_map=colors)


def stream_prompts(runtime: Runtime, stream_id: int | None) -> list[str]:
    stream = runtime.catalog.get_stream(int(stream_id)) if stream_id else None
    return json.loads(stream.prompts) if stream else []


def stream_rows(runtime: Runtime) -> list[list]:
    return [[s.id, s.name, s.url, s.state, s.frames, s.dropped, s.reconnects, s.reason or ""]
            for s in (stream_out(row) for row in runtime.catalog.list_streams())]


def stream_choices(runtime: Runtime) -> list[tuple[str, int]]:
    return [(f"{s.name} (#{s.id})", s.id) for s in runtime.catalog.list_streams()]


def score_frame(runtime: Runtime, stream_id: int | None) -> pd.DataFrame:
    """The chart's rows (time, score, prompt) for one stream, with its threshold as a series of its own."""
    data = read_scores(runtime.settings, stream_id) if stream_id else None
    rows = []
    if data and data.get("points"):
        for t, scores in data["points"]:
            rows += [(t, score, prompt) for prompt, score in zip(data["prompts"], scores, strict=False)]
        first, last = data["points"][0][0], data["points"][-1][0]
        rows += [(first, data["threshold"], THRESHOLD_SERIES), (last, data["threshold"], THRESHOLD_SERIES)]
    return _frame(rows)


def _frame(rows: list[tuple[float, float, str]]) -> pd.DataFrame:
    """Chart rows with numeric axes (an empty or object-typed frame makes the plot's axes categorical)."""
    return pd.DataFrame(rows, columns=["seconds", "score", "prompt"]).astype({"seconds": float, "score": float,
                                                                          "prompt": str})


WEBCAM_SECONDS = 120.0  # of webcam scores kept on its chart


def webcam_scores(encoder, frame, prompt_text: str, state: dict | None, now: float) -> tuple[pd.DataFrame, dict]:
    """One webcam frame scored against the prompts (one per line): the chart of the last WEBCAM_SECONDS and the
    updated state {"t0", "points": [[t, prompt, score], ...]}. Prompts changed mid-stream start a new chart."""
    prompts = [p for p in dict.fromkeys(line.strip() for line in (prompt_text or "").splitlines()) if p]
    state = dict(state or {})
    if state.get("prompts") != prompts:
        state = {"prompts": prompts, "t0": now, "points": []}
    if frame is not None and prompts:
        image = encoder.embed_images([frame])[0]
        t = round(now - state["t0"], 2)
        state["points"] = [p for p in state["points"] if p[0] >= t - WEBCAM_SECONDS]
        state["points"] += [[t, prompt, round(float(score), 4)]
                            for prompt, score in zip(prompts, encoder.embed_texts(prompts) @ image, strict=True)]
    return _frame([(t, score, prompt) for t, prompt, score in state["points"]]), state


def _event_card(e: LiveEvent, clip_url: str | None = None) -> str:
    thumb = (f'<img src="{LIVE_ROUTE}/{html.escape(e.thumbnail)}" alt="" loading="lazy">' if e.thumbnail
             else '<div class="live-nothumb"></div>')
    span = f"{clock(e.start)}–{clock(e.end)}" if e.end is not None else f"{clock(e.start)}– (now)"
    when = e.started_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    return (f'<div class="live-event{" live-open" if e.end is None else ""}">{thumb}<div>'
            f'<b>{html.escape(e.prompt)}</b><br>{html.escape(e.name)} · {span} · peak {e.peak_score:.3f}'
            f'<br><small>{when}</small>'
            + (f' · <a href="{html.escape(clip_url)}" target="_blank" rel="noopener">clip</a>' if clip_url else "")
            + "</div></div>")


def events_html(runtime: Runtime, limit: int = EVENTS_SHOWN) -> str:
    rows = runtime.catalog.live_events(limit=limit)
    if not rows:
        return '<p class="live-empty">No events yet: a prompt seen on a stream shows up here with its picture.</p>'
    clips = runtime.catalog.videos_by_ids([e.clip_video_id for e in rows if e.clip_video_id])
    urls = {i: media_url(runtime, v.stored_path) for i, v in clips.items()}
    return '<div class="live-events">' + "".join(_event_card(e, urls.get(e.clip_video_id)) for e in rows) + "</div>"


LIVE_CSS = """
.live-events { display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: 10px; }
.live-event { display: flex; gap: 10px; align-items: flex-start; padding: 8px; border-radius: 8px;
              border: 1px solid var(--border-color-primary); }
.live-event img, .live-nothumb { width: 112px; height: 84px; object-fit: cover; border-radius: 4px; flex: none;
                                 background: var(--background-fill-secondary); }
.live-open { border-color: var(--color-accent); }
"""


def build_live_tab(runtime: Runtime, slots) -> None:
    """The tab's components and events; call inside `with gr.Tab("Live")`. The webcam's model calls take the page's
    `slots` (streams run in the watcher process and never do)."""
    settings = runtime.settings
    gr.Markdown("Watch a camera or stream and be told when a prompt is seen. Streams run in the server's watcher "
                "process and keep running after a restart.")
    with gr.Row(equal_height=True):
        url = gr.Textbox(label="Stream URL", placeholder="rtsp://user:password@192.168.1.20/stream1", scale=3,
                         elem_id="live-url", max_length=2048)
        name = gr.Textbox(label="Name (optional)", placeholder="front door", scale=1, elem_id="live-name",
                          max_length=128)
    with gr.Row(equal_height=True):
        prompts = gr.Textbox(label="Prompts, one per line", placeholder="a person at the door\na delivery van",
                             lines=2, scale=3, elem_id="live-prompts")
        threshold = gr.Number(value=settings.live_threshold, label="Threshold (cosine)", minimum=-1, maximum=1,
                              step=0.01, scale=1, elem_id="live-threshold")
        record = gr.Checkbox(label="Keep clips", info="each event into the library", value=False, scale=1,
                             elem_id="live-record")
        add_btn = gr.Button("Watch", variant="primary", scale=0, min_width=120, elem_id="live-add")
    add_msg = gr.HTML(elem_id="live-msg")
    streams = gr.Dataframe(headers=STREAM_COLUMNS, value=stream_rows(runtime), interactive=False,
                           elem_id="live-streams", label="Streams")
    with gr.Row(equal_height=True):
        pick = gr.Dropdown(choices=stream_choices(runtime), label="Chart of", scale=3, elem_id="live-pick")
        stop_btn = gr.Button("Stop watching", variant="stop", scale=0, min_width=160, elem_id="live-stop")
    chart = gr.LinePlot(x="seconds", y="score", color="prompt", x_title="seconds",
                        y_title="cosine", label=f"Scores, last {SCORE_SECONDS / 60:g} minutes", height=340,
                        elem_id="live-chart")
    events = gr.HTML(events_html(runtime), elem_id="live-events")
    timer = gr.Timer(2.0)
    with gr.Accordion("Your webcam", open=False, elem_id="live-webcam-box"):
        gr.Markdown("Score what this browser's camera sees against prompts, twice a second (nothing is stored).")
        with gr.Row():
            cam = gr.Image(sources=["webcam"], streaming=True, type="numpy", label="Webcam", height=240,
                           elem_id="live-webcam", scale=1)
            with gr.Column(scale=2):
                cam_prompts = gr.Textbox(label="Prompts, one per line", lines=2, elem_id="live-cam-prompts",
                                         placeholder="a person waving\na cup of coffee")
                cam_chart = gr.LinePlot(x="seconds", y="score",
                                        color="prompt", x_title="seconds", y_title="cosine", height=220,
                                        label="Webcam scores", elem_id="live-cam-chart")
        cam_state = gr.State({})

    def picked_stream(current):
        choices = stream_choices(runtime)
        ids = [i for _, i in choices]
        return gr.update(choices=choices, value=current if current in ids else (ids[0] if ids else None))

    def do_add_stream(url_text, name_text, prompt_text, threshold_value, keep, current):
        try:
            stream = add_stream(runtime.catalog, settings, url_text or "", (prompt_text or "").splitlines(),
                                name=name_text, threshold=threshold_value, record=bool(keep))
        except LiveError as exc:
            return (f'<p class="live-error">{html.escape(str(exc))}</p>', gr.skip(), gr.skip(), gr.skip())
        msg = f"Watching {html.escape(stream_out(stream).url)} as “{html.escape(stream.name)}” for " \
              f"{html.escape(', '.join(json.loads(stream.prompts)))}."
        choices = stream_choices(runtime)
        return f"<p>{msg}</p>", stream_rows(runtime), gr.update(choices=choices, value=stream.id), ""

    def do_stop_stream(current):
        if current is None:
            return "<p>Pick a stream first.</p>", gr.skip(), gr.skip()
        gone = runtime.catalog.delete_stream(int(current))
        msg = f"Stopped watching “{html.escape(gone.name)}”; its events stay." if gone else "No such stream."
        return f"<p>{msg}</p>", stream_rows(runtime), picked_stream(None)

    def refresh_live(current):
        return (stream_rows(runtime), chart_update(score_frame(runtime, current), stream_prompts(runtime, current)),
                events_html(runtime))

    async def do_webcam(frame, prompt_text, state):
        chart_rows, state = await slots.run(webcam_scores, runtime.encoder, frame, prompt_text, state,
                                            time.monotonic())
        return chart_update(chart_rows, state.get("prompts", [])), state

    cam.stream(do_webcam, [cam, cam_prompts, cam_state], [cam_chart, cam_state], stream_every=0.5, time_limit=600,
               concurrency_limit=2, show_progress="hidden")
    add_btn.click(do_add_stream, [url, name, prompts, threshold, record, pick], [add_msg, streams, pick, url])
    stop_btn.click(do_stop_stream, pick, [add_msg, streams, pick])
    pick.change(lambda current: chart_update(score_frame(runtime, current), stream_prompts(runtime, current)), pick,
                chart, show_progress="hidden")
    timer.tick(refresh_live, pick, [streams, chart, events], show_progress="hidden")
