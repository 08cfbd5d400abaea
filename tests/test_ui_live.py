"""The Live tab in a real browser: a UDP stream on 127.0.0.1 added from the page is watched by the real LiveService
(the watcher process's loop, here in a thread of the test with the app's own encoder); the table shows its state,
the chart its prompt's score and the threshold, and the event appears with its thumbnail. A file URL is refused.
The screenshot is the README's docs/live.png."""

from __future__ import annotations

import threading
import time
import uuid

import numpy as np
import pytest

from tests.streams import start_publisher
from tests.test_live import PROMPT, _port, thresholds  # noqa: F401  (the fixture)
from tests.test_ui import CHROMIUM_ARGS

pytestmark = pytest.mark.browser


def write_y4m(path, seconds: float = 4.0, fps: int = 10):
    """A camera's picture for Chromium's fake webcam: the red circle (Y4M, as --use-file-for-fake-video-capture
    wants it)."""
    import av

    from search_app.eval_corpus import render_frame

    with av.open(str(path), "w", format="yuv4mpegpipe") as out:
        stream = out.add_stream("rawvideo", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for i in range(int(seconds * fps)):
            square = render_frame("red", "circle", 240, jitter=i % 7)
            picture = np.zeros((240, 320, 3), np.uint8)
            picture[:, 40:280] = square
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Chromium whose webcam is a file (the fake capture device), its permission granted."""
    import shutil

    from playwright.sync_api import sync_playwright

    camera = write_y4m(tmp_path_factory.mktemp("camera") / "camera.y4m")
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    assert executable, "Chromium is required for the UI tests (apt-get install chromium)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=[
            *CHROMIUM_ARGS, "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
            f"--use-file-for-fake-video-capture={camera}"])
        yield browser
        browser.close()


@pytest.fixture()
def served(tmp_path, tiny_model, milvus_uri):
    from ingest.live_service import LiveService
    from ingest.runtime import Runtime
    from schema.settings import Settings
    from search_app.web import create_app
    from tests.procs import serve_in_thread

    settings = Settings(home=tmp_path / "data", model=str(tiny_model), milvus_uri=milvus_uri,
                        collection=f"uilive_{uuid.uuid4().hex[:8]}", device="cpu")
    runtime = Runtime(settings)
    stop = threading.Event()
    service = LiveService(settings, runtime.catalog, runtime.encoder)
    worker = threading.Thread(target=service.run, args=(stop,), daemon=True)
    worker.start()
    try:
        with serve_in_thread(create_app(runtime)) as url:
            yield url, runtime
    finally:
        stop.set()
        worker.join(30)
        runtime.close()


def test_the_live_tab_adds_a_stream_charts_its_scores_and_shows_its_event(browser, served, thresholds,  # noqa: F811
                                                                        artifacts_dir):
    url, runtime = served
    enter, _ = thresholds
    port = _port()
    page = browser.new_page(viewport={"width": 1280, "height": 1100})
    page.set_default_timeout(30_000)
    try:
        page.goto(url)
        page.get_by_role("tab", name="Live").click()
        page.locator("#live-url textarea, #live-url input").first.fill("file:///etc/passwd")
        page.locator("#live-prompts textarea").fill(PROMPT)
        page.locator("#live-add").click()
        page.wait_for_function("document.querySelector('#live-msg')?.innerText.includes('network')")
        assert runtime.catalog.list_streams() == []

        page.locator("#live-url textarea, #live-url input").first.fill(f"udp://127.0.0.1:{port}?timeout=5000000")
        page.locator("#live-name textarea, #live-name input").first.fill("porch")
        page.locator("#live-threshold input").fill(f"{enter:.4f}")
        page.locator("#live-add").click()
        page.wait_for_function("document.querySelector('#live-msg')?.innerText.includes('Watching')")
        (stream,) = runtime.catalog.list_streams()
        assert stream.name == "porch" and abs(stream.threshold - round(enter, 4)) < 1e-6

        deadline = time.monotonic() + 30  # the service picks it up within a second and opens the socket
        while runtime.catalog.get_stream(stream.id).state == "waiting":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        time.sleep(1.0)
        start_publisher(port, 11.0, [("red", "circle", 4.0, 8.0)]).wait(timeout=60)

        page.wait_for_function("[...document.querySelectorAll('#live-events .live-event')].some("
                               "e => e.innerText.includes('a red circle') && !e.classList.contains('live-open'))",
                               timeout=60_000)
        assert page.locator("#live-events .live-event img").first.evaluate("img => img.naturalWidth") > 0
        # the table shows the stream with frames read; the chart has the prompt's line and the threshold's
        page.wait_for_function("document.querySelector('#live-streams')?.innerText.includes('porch')")
        page.wait_for_function("document.querySelectorAll('#live-chart .mark-line path').length >= 2")
        page.locator("#live-chart").scroll_into_view_if_needed()
        page.screenshot(path=str(artifacts_dir / "ui-live.png"), full_page=True)
        # the prompt's line and the threshold's, each in its colour, named in the legend
        page.wait_for_function("[...document.querySelectorAll('#live-chart .mark-line path')].filter(p => "
                               "p.getAttribute('stroke')).length >= 2")
        legend = page.evaluate("[...document.querySelectorAll('#live-chart .role-legend-label text')]"
                               ".map(t => t.textContent)")
        assert set(legend) == {PROMPT, "threshold"}, legend
        assert "udp://127.0.0.1" in page.locator("#live-streams").inner_text()

        page.locator("#live-stop").click()
        page.wait_for_function("document.querySelector('#live-msg')?.innerText.includes('Stopped watching')")
        assert runtime.catalog.list_streams() == [] and len(runtime.catalog.live_events()) == 1
    finally:
        page.close()


def test_the_webcam_is_scored_against_prompts_in_the_live_tab(browser, served, artifacts_dir):
    url, _runtime = served
    page = browser.new_page(viewport={"width": 1280, "height": 1100})
    page.set_default_timeout(30_000)
    try:
        page.goto(url)
        page.get_by_role("tab", name="Live").click()
        page.locator("#live-webcam-box").get_by_text("Your webcam").click()
        page.locator("#live-cam-prompts textarea").fill("a red circle\na blue square")
        # Gradio's webcam: a first click opens the camera (the fake device: the red circle), the next one streams
        box = page.locator("#live-webcam")
        box.get_by_role("button").first.click()
        capture = box.locator("button[aria-label='capture photo']")
        capture.wait_for(state="visible")
        capture.click()
        page.wait_for_function("[...document.querySelectorAll('#live-cam-chart .mark-line path')].filter(p => "
                               "p.getAttribute('stroke')).length >= 2", timeout=60_000)
        labels = page.evaluate("[...document.querySelectorAll('#live-cam-chart .mark-line path')]"
                               ".map(p => p.getAttribute('aria-label'))")
        cosine = {label.split("prompt: ")[1]: float(label.split("cosine: ")[1].split(";")[0].replace("\u2212", "-"))
                  for label in labels}  # vega writes a minus sign, not a hyphen
        assert cosine["a red circle"] > cosine["a blue square"] + 0.2, cosine  # the camera shows a red circle
        page.locator("#live-webcam-box").scroll_into_view_if_needed()
        page.screenshot(path=str(artifacts_dir / "ui-live-webcam.png"), full_page=True)
    finally:
        page.close()
