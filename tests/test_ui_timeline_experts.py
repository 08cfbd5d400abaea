"""The Timeline tab with every expert on, in a real browser: one clip in which a phrase is said (festival), words are
shown on screen and a tone sounds, ingested by the worker with speech, text and audio (a tiny random CLAP loaded by
the real loader); the page plots one line per expert on 0..1 with each expert's top moments as bands, and lists the
moments of each, playable. The screenshot is the README's docs/timeline-experts.png."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from tests.speech_clips import have_festival
from tests.test_ui_experts import browser  # noqa: F401  (the module's Chromium)

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not have_festival(),
                                                     reason="needs festival's text2wave (scripts/test.sh installs it)")]

PHRASE = (1.0, "the orchestra rehearsed the final movement twice on sunday")
SHOWN = ("ORCHESTRA", 6.0, 9.0)
TONE = (9.5, 11.5)
SECONDS = 13.0


def write_lecture(folder):
    from search_app.eval_corpus import RATE, draw_text, render_frame, speak, speech_track, write_audio_video

    track = speech_track([(PHRASE[0], speak(PHRASE[1], folder / "voice"))], SECONDS)
    t = np.arange(len(track)) / RATE
    on = (t >= TONE[0]) & (t < TONE[1])
    track[on] += 0.3 * np.sin(2 * np.pi * 880 * t[on]).astype(np.float32)
    fps = 5

    def frames(i: int) -> np.ndarray:
        at = i / fps
        frame = render_frame("red" if at < 4 else "blue", "circle" if at < 4 else "square", 360)
        text, start, end = SHOWN
        return draw_text(frame, [text] if start <= at < end else [], centre=0.8)

    return write_audio_video(folder / "lecture.mp4", track, fps=fps, frames=frames)


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model, milvus_uri):
    from ingest.library import enqueue_file
    from ingest.runtime import Runtime
    from ingest.worker import Worker
    from schema.settings import Settings
    from search_app.web import create_app
    from tests.procs import serve_in_thread
    from tests.tiny_clap import build_clap

    folder = tmp_path_factory.mktemp("ui_timeline_experts")
    clip = write_lecture(folder)
    settings = Settings(home=folder / "data", model=str(tiny_model), milvus_uri=milvus_uri,
                        collection=f"uitl_{uuid.uuid4().hex[:8]}", frames=4, batch_size=16, worker_poll_seconds=0.2,
                        decode_mode="thread", experts="speech,text,audio",
                        audio_model=str(build_clap(folder / "tiny-clap")), device="cpu")
    runtime = Runtime(settings)
    try:
        video_id = enqueue_file(runtime.catalog, settings, clip, title=clip.name).video_id
        with Worker.from_settings(runtime.catalog, runtime.store, runtime.encoder, settings) as worker:
            results = worker.run_until_empty()
        assert results and all(r.ok for r in results), [r.error for r in results]
        runs = runtime.catalog.expert_runs([video_id])[video_id]
        assert {name: run.state.value for name, run in runs.items()} == {"speech": "done", "text": "done",
                                                                         "audio": "done"}, runs
        with serve_in_thread(create_app(runtime)) as url:
            yield url
    finally:
        runtime.close()


def test_the_timeline_shows_a_line_per_expert_and_plays_each_experts_moments(browser, served,  # noqa: F811
                                                                              artifacts_dir):
    from search_app.page import EXPERT_BANDS, EXPERT_COLORS

    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.set_default_timeout(30_000)
    try:
        page.goto(served + "/")
        page.get_by_role("tab", name="Timeline").click()
        page.locator("#timeline-find textarea, #timeline-find input").first.fill("lecture")
        page.wait_for_function("() => document.querySelector('#timeline-video input').value.startsWith('lecture')")
        page.locator("#timeline-query textarea").fill("orchestra")
        page.locator("#timeline-btn").click()
        player = page.locator("#timeline-player .vs-timeline")
        player.wait_for()
        page.locator("#timeline-plot svg").first.wait_for()
        said = player.locator('.vs-line[data-expert="speech"]').first
        shown = player.locator('.vs-line[data-expert="text"]').first
        heard = player.locator('.vs-line[data-expert="audio"]').first
        assert said.inner_text().startswith("said at 0:0"), said.inner_text()
        assert abs(float(said.get_attribute("data-start")) - PHRASE[0]) <= 1.0
        # OCR may misread a letter (as fusion allows).
        assert shown.inner_text().startswith("shown at 0:0") and "CHESTRA" in shown.inner_text().upper()
        assert SHOWN[1] - 1.0 <= float(shown.get_attribute("data-start")) <= SHOWN[2]
        assert heard.inner_text().startswith("heard at "), heard.inner_text()
        assert player.locator('.vs-moment[data-expert="appearance"], .vs-moments .vs-moment').count() >= 1
        # One thin line per expert in its own colour, and bands (wide, translucent) of each expert's tint.
        strokes = ("() => [...document.querySelectorAll('#timeline-plot .mark-line path')].map(p => { const s ="
                   " getComputedStyle(p); return [p.getAttribute('stroke'), parseFloat(s.strokeWidth),"
                   " parseFloat(s.strokeOpacity)]; })")
        page.wait_for_function(f"() => ({strokes})().some(p => p[0] === '{EXPERT_COLORS['audio']}')")
        lines = page.evaluate(strokes)
        colours = {c for c, _, _ in lines}
        for expert in ("appearance", "speech", "text", "audio"):
            assert EXPERT_COLORS[expert] in colours, (expert, lines)
            assert all(w < 5 for c, w, _ in lines if c == EXPERT_COLORS[expert]), lines
        bands = [(c, w, o) for c, w, o in lines if c in EXPERT_BANDS.values()]
        assert {EXPERT_BANDS["speech"], EXPERT_BANDS["text"]} <= {c for c, _, _ in bands}, lines
        assert all(w >= 8 and o < 0.6 for _, w, o in bands), bands
        # A click on the text line plays the player from where the words were shown.
        start = float(shown.get_attribute("data-start"))
        shown.click()
        page.wait_for_function("([el, start]) => el.readyState >= 1 && el.currentTime >= start - 0.3",
                               arg=[player.locator("video").element_handle(), start])
        page.locator("#timeline-plot").get_by_text("Match over time, per expert").wait_for()
        page.wait_for_timeout(700)  # let the plot and the player settle
        page.screenshot(path=str(artifacts_dir / "ui-timeline-experts.png"), full_page=True)
    finally:
        page.close()
