"""The web UI in a real browser: Debian's Chromium driven by Playwright against a real `vidsearch serve`."""

from __future__ import annotations

import shutil

import pytest

from tests.procs import running_server

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    assert executable, "Chromium is required for the UI tests (apt-get install chromium)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.mark.browser
def test_upload_wait_search_and_delete_in_the_browser(browser, tmp_path, tiny_model, clips_dir, artifacts_dir):
    home = tmp_path / "home"
    small_pages = {"VIDSEARCH_LIBRARY_PAGE_SIZE": "2"}  # paging with few videos
    with running_server(home, tiny_model, tmp_path / "serve.log", env_extra=small_pages) as url:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(60_000)
        page.goto(url + "/")

        # Empty state first: searching an empty library says what to do.
        page.locator("#query textarea").fill("a red circle")
        page.locator("#search-btn").click()
        page.get_by_text("No videos yet").wait_for()

        # Upload several videos at once; each row goes queued -> processing -> ready (the CLI's and API's words).
        page.get_by_role("tab", name="Upload").click()
        files = [clips_dir / "red_circle.mp4", clips_dir / "green_square.webm", clips_dir / "blue_triangle.mkv"]
        fake = tmp_path / "holiday.mp4"
        fake.write_text("this is a shopping list, not a video")
        page.locator("#upload-files input[type=file]").set_input_files([str(f) for f in [*files, fake]])
        for f in [*files, fake]:  # wait until the browser has uploaded every file
            page.locator(f'#upload-files td.filename[aria-label="{f.name}"]').wait_for()
        page.locator("#add-btn").click()
        status = page.locator("#upload-status [role=row]")  # visible rows (Gradio also renders a hidden copy)
        for f in files:
            status.get_by_text(f.name).wait_for()
        page.wait_for_function(
            "() => [...document.querySelectorAll('#upload-status [role=row]')]"
            ".filter(r => r.innerText.includes('ready')).length === 3",
            timeout=120_000,
        )
        fake_row = page.locator("#upload-status [role=row]", has_text="holiday.mp4")
        assert "failed" in fake_row.inner_text() and "not a video file" in fake_row.inner_text()
        page.screenshot(path=str(artifacts_dir / "ui-upload.png"), full_page=True)

        # Search finds the uploaded clip at once, with a player that the browser can load.
        page.get_by_role("tab", name="Search").click()
        page.locator("#query textarea").fill("a red circle")
        page.locator("#search-btn").click()
        first = page.locator("#results .vs-card").first
        first.wait_for()
        assert "red_circle.mp4" in first.locator(".vs-title").inner_text()
        assert page.locator("#results .vs-card").count() == 3
        green = page.locator("#results .vs-card", has_text="green_square.webm")
        green_src = green.locator("video").get_attribute("src")
        assert green_src and green_src.startswith("/media/")
        assert page.request.get(url + green_src).status == 200
        page.screenshot(path=str(artifacts_dir / "ui-search.png"), full_page=True)

        # The Library tab pages (2 a page here, newest first) and searches titles.
        page.get_by_role("tab", name="Library").click()
        library = page.locator("#library [role=row]")
        summary = page.locator("#library-summary")
        library.get_by_text("blue_triangle.mkv").wait_for()
        page.get_by_text("Showing 1–2 of 3 videos").wait_for()
        statuses = page.locator("#library").inner_text()
        assert statuses.count("ready") == 2 and "done" not in statuses, statuses  # one vocabulary: CLI, API, page
        assert "green_square.webm" in statuses and "red_circle.mp4" not in statuses
        assert page.locator("#library-prev").is_disabled() and page.locator("#library-next").is_enabled()
        page.locator("#library-next").click()
        page.get_by_text("Showing 3–3 of 3 videos").wait_for()
        library.get_by_text("red_circle.mp4").wait_for()
        assert "blue_triangle.mkv" not in page.locator("#library").inner_text()
        assert page.locator("#library-next").is_disabled() and page.locator("#library-prev").is_enabled()
        page.locator("#library-prev").click()
        page.get_by_text("Showing 1–2 of 3 videos").wait_for()
        page.locator("#library-search textarea, #library-search input").first.fill("CIRCLE")
        page.get_by_text("Showing 1–1 of 1 video matching “CIRCLE”").wait_for()
        assert "red_circle.mp4" in page.locator("#library").inner_text() and library.count() == 2  # header + 1
        page.locator("#library-search textarea, #library-search input").first.fill("")
        page.get_by_text("Showing 1–2 of 3 videos").wait_for()

        # Delete by ticking rows: Delete asks first, naming them; Cancel deletes nothing, Delete does.
        page.locator("#delete-btn").click()
        page.get_by_text("Tick the videos to delete first.").wait_for()
        for name in ("blue_triangle.mkv", "green_square.webm"):
            library.filter(has_text=name).locator("input[type=checkbox]").click()
        page.locator("#delete-btn").click()
        question = page.locator("#delete-question")
        question.get_by_text("Delete 2 videos: blue_triangle.mkv, green_square.webm?").wait_for()
        page.screenshot(path=str(artifacts_dir / "ui-library-confirm.png"), full_page=True)
        page.locator("#delete-cancel-btn").click()
        page.get_by_text("Nothing was deleted.").wait_for()
        assert not page.locator("#delete-confirm").is_visible()
        assert "Showing 1–2 of 3 videos" in summary.inner_text()
        page.locator("#delete-btn").click()  # the rows are still ticked
        question.get_by_text("Delete 2 videos: blue_triangle.mkv, green_square.webm?").wait_for()
        page.locator("#delete-confirm-btn").click()
        page.get_by_text("Deleted 2 videos: blue_triangle.mkv, green_square.webm.").wait_for()
        page.get_by_text("Showing 1–1 of 1 video").wait_for()
        library.get_by_text("red_circle.mp4").wait_for()
        assert "green_square.webm" not in page.locator("#library").inner_text()
        assert not page.locator("#delete-confirm").is_visible()
        page.screenshot(path=str(artifacts_dir / "ui-library.png"), full_page=True)
        assert page.request.get(url + green_src).status == 404

        page.get_by_role("tab", name="Search").click()
        page.locator("#search-btn").click()
        page.wait_for_function(
            "() => document.querySelectorAll('#results .vs-card').length === 1 && "
            "document.querySelector('#results').innerText.includes('red_circle.mp4')")
        page.close()


@pytest.mark.browser
def test_moments_thumbnails_and_timeline_in_the_browser(browser, tmp_path, tiny_model, clips_dir, artifacts_dir):
    """Search shows each video once with its moments (thumbnails, time ranges); clicking one plays the video from
    there; the Library shows posters; the Timeline tab plots similarity over time and plays its top moments."""
    import httpx

    from tests.test_moments import SPANS, write_parts_clip
    from tests.videos import render_frame, write_video

    parts = write_parts_clip(tmp_path / "parts.mp4")  # black 0-2 s, red circle 2-6, blue square 6-10, green 10-14
    uploads = [parts, clips_dir / "red_circle.mp4", clips_dir / "green_square.webm", clips_dir / "blue_triangle.mkv"]
    with running_server(tmp_path / "home", tiny_model, tmp_path / "serve.log",
                        env_extra={"VIDSEARCH_MOMENT_SECONDS": "2", "VIDSEARCH_LIBRARY_PAGE_SIZE": "2"}) as url:
        with httpx.Client(base_url=url, timeout=120) as client:
            jobs = []
            for path in uploads:
                with open(path, "rb") as handle:
                    jobs.append(client.post("/api/videos", files={"file": (path.name, handle)}).json()["job_id"])
            for job in jobs:
                _wait_job(client, job)

        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(url + "/")
        page.locator("#query textarea").fill("a blue square")
        page.locator("#search-btn").click()
        card = page.locator("#results .vs-card", has_text="parts.mp4")
        card.wait_for()
        assert page.locator("#results .vs-card").count() == len(uploads)  # one card per video
        moments = card.locator(".vs-moment")
        assert 1 <= moments.count() <= 3
        first = moments.first
        start, end = float(first.get_attribute("data-start")), float(first.get_attribute("data-end"))
        assert SPANS["blue"][0] - 0.5 <= start < end <= SPANS["blue"][1] + 0.5, (start, end)
        page.wait_for_function("() => [...document.querySelectorAll('#results img.vs-thumb')]"
                               ".every(img => img.complete && img.naturalWidth > 0)")
        # The card's player already starts at the best moment; a click on a moment (re)plays from there.
        video = card.locator("video")
        assert video.get_attribute("src").endswith(f"#t={start:.2f},{end:.2f}")
        first.click()
        page.wait_for_function(
            "([el, start]) => el.readyState >= 1 && el.currentTime >= start - 0.3", arg=[video.element_handle(), start])
        assert "vs-active" in first.get_attribute("class")
        page.screenshot(path=str(artifacts_dir / "ui-moments.png"), full_page=True)
        thumb = card.locator("img.vs-thumb").first.get_attribute("src")
        assert thumb.startswith("/thumbnails/") and page.request.get(url + thumb).status == 200

        # The Library's posters are those of the page shown (2 a page here, newest first).
        page.get_by_role("tab", name="Library").click()
        posters = ("(title) => { const imgs = [...document.querySelectorAll('#library-thumbs img.vs-thumb')];"
                   " return imgs.length === 2 && imgs.every(i => i.complete && i.naturalWidth > 0) &&"
                   " document.querySelector('#library-thumbs').innerText.includes(title); }")
        page.wait_for_function(posters, arg="blue_triangle.mkv")
        page.locator("#library-next").click()
        page.wait_for_function(posters, arg="parts.mp4")
        page.screenshot(path=str(artifacts_dir / "ui-library-thumbs.png"), full_page=True)

        # An 8 s clip of one unchanging frame, for the Timeline's near-flat line.
        still = write_video(tmp_path / "still.mp4", [render_frame("red", "circle", 64)] * 32, fps=4)
        with httpx.Client(base_url=url, timeout=120) as client, open(still, "rb") as handle:
            _wait_job(client, client.post("/api/videos", files={"file": (still.name, handle)}).json()["job_id"])

        page.get_by_role("tab", name="Timeline").click()
        # Before a query: no empty plot, a line saying what to do.
        page.locator("#timeline-player").get_by_text("Choose a video, describe a moment").wait_for()
        assert not page.locator("#timeline-plot").is_visible()
        # The Timeline picker offers the newest 2 ready videos; a title search finds the others and picks one.
        picker = page.locator("#timeline-video")
        picker.get_by_text("The 2 newest of 5 ready videos; search by title for the others.").wait_for()
        picker.locator("input").click()
        offered = page.get_by_role("option")
        offered.first.wait_for()
        assert sorted(o.inner_text() for o in offered.all()) == ["blue_triangle.mkv (id 4)", "still.mp4 (id 5)"]
        page.keyboard.press("Escape")
        find = page.locator("#timeline-find textarea, #timeline-find input").first
        find.fill("PARTS")
        picker.get_by_text("1 ready video matching “PARTS”.").wait_for()
        page.wait_for_function("() => document.querySelector('#timeline-video input').value === 'parts.mp4 (id 1)'")
        picker.locator("input").click()
        page.get_by_role("option", name="parts.mp4 (id 1)").wait_for()
        assert offered.count() == 1
        page.screenshot(path=str(artifacts_dir / "ui-timeline-picker.png"), full_page=False)
        page.keyboard.press("Escape")
        page.locator("#timeline-query textarea").fill("a green triangle")
        page.locator("#timeline-btn").click()
        player = page.locator("#timeline-player .vs-timeline")
        player.wait_for()
        page.locator("#timeline-plot canvas, #timeline-plot svg").first.wait_for()
        best = player.locator(".vs-moment").first
        start, end = float(best.get_attribute("data-start")), float(best.get_attribute("data-end"))
        assert SPANS["green"][0] - 0.5 <= start < end <= SPANS["green"][1] + 0.5, (start, end)
        best.click()
        page.wait_for_function("([el, start]) => el.readyState >= 1 && el.currentTime >= start - 0.3",
                               arg=[player.locator("video").element_handle(), start])
        page.wait_for_timeout(500)  # let the plot finish drawing
        page.screenshot(path=str(artifacts_dir / "ui-timeline.png"), full_page=True)
        _assert_timeline_plot_readable(page)

        # A static clip's near-flat line: a few short ticks, not one tick with six decimals.
        find.fill("")  # the picker offers the newest videos again, the still clip among them
        picker.get_by_text("The 2 newest of 5 ready videos").wait_for()
        page.locator("#timeline-video input").click()
        page.get_by_role("option", name="still.mp4", exact=False).click()
        page.locator("#timeline-btn").click()
        page.locator("#timeline-player .vs-timeline .vs-title", has_text="still.mp4").wait_for()
        page.wait_for_function(  # the plot redrawn for the 8 s clip (the x axis of the 14 s one ran to 14)
            "() => Math.max(...[...document.querySelectorAll('#timeline-plot g.role-axis')]"
            ".filter(a => (a.getAttribute('aria-label') || '').startsWith('X'))"
            ".flatMap(a => [...a.querySelectorAll('.role-axis-label text')].map(t => parseFloat(t.textContent))))"
            " <= 8", timeout=15_000)
        page.wait_for_timeout(500)
        page.screenshot(path=str(artifacts_dir / "ui-timeline-static.png"), full_page=True)
        _assert_timeline_plot_readable(page)

        # A query that cannot be plotted: the message in place of the player, and no stale plot above it.
        page.locator("#timeline-query textarea").fill("")
        page.locator("#timeline-btn").click()
        page.locator("#timeline-player").get_by_text("Describe the moment to look for.").wait_for()
        page.wait_for_function("() => !document.querySelector('#timeline-plot')?.checkVisibility()")
        page.close()


def _assert_timeline_plot_readable(page) -> None:
    """The y axis has two or more ticks of at most 3 decimals; the similarity line (a thin line) and the top
    moments (wide translucent bands) are both drawn and visible."""
    import re

    ticks = page.evaluate(
        "() => { const axes = [...document.querySelectorAll('#timeline-plot g.role-axis')]"
        ".filter(a => (a.getAttribute('aria-label') || '').startsWith('Y'));"
        " return axes.flatMap(a => [...a.querySelectorAll('.role-axis-label text')].map(t => t.textContent)); }")
    assert len(ticks) >= 2, ticks
    assert all(re.fullmatch(r"−?-?\d+(\.\d{1,3})?", t) for t in ticks), ticks
    lines = page.evaluate(
        "() => [...document.querySelectorAll('#timeline-plot .mark-line path')].map(p => { const s ="
        " getComputedStyle(p); return [p.getAttribute('stroke'), parseFloat(s.strokeWidth),"
        " parseFloat(s.strokeOpacity), p.getBBox().width]; })")
    similarity = [line for line in lines if line[0] == "#2563eb"]
    moments = [line for line in lines if line[0] != "#2563eb"]
    assert len(similarity) == 1 and similarity[0][3] > 100 and similarity[0][2] == 1, lines
    assert moments and all(m[1] > similarity[0][1] and m[2] < 0.6 for m in moments), lines


def _wait_job(client, job_id: int, timeout: float = 180) -> None:
    import time

    deadline = time.monotonic() + timeout
    while (job := client.get(f"/api/jobs/{job_id}").json())["state"] not in ("done", "failed"):
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    assert job["state"] == "done", job


@pytest.mark.browser
def test_image_search_tags_and_filters_in_the_browser(browser, tmp_path, tiny_model, clips_dir, artifacts_dir):
    """Upload with a tag, search by an image, then narrow results with the Filters panel (tag, dates, duration);
    a bad filter value is a visible message."""
    import httpx
    from PIL import Image

    from tests.videos import render_frame

    still = tmp_path / "green square.png"
    Image.fromarray(render_frame("green", "square", 96)).save(still)
    with running_server(tmp_path / "home", tiny_model, tmp_path / "serve.log") as url:
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(url + "/")

        # Two clips uploaded in the page with the tag "shapes"; one through the API without a tag.
        page.get_by_role("tab", name="Upload").click()
        tagged = [clips_dir / "red_circle.mp4", clips_dir / "blue_triangle.mkv"]
        page.locator("#upload-files input[type=file]").set_input_files([str(f) for f in tagged])
        for f in tagged:
            page.locator(f'#upload-files td.filename[aria-label="{f.name}"]').wait_for()
        page.locator("#upload-tag textarea, #upload-tag input").first.fill("shapes")
        page.locator("#add-btn").click()
        with httpx.Client(base_url=url, timeout=120) as client, open(clips_dir / "green_square.webm", "rb") as fh:
            _wait_job(client, client.post("/api/videos", files={"file": ("green_square.webm", fh)}).json()["job_id"])
        page.wait_for_function(
            "() => [...document.querySelectorAll('#upload-status [role=row]')]"
            ".filter(r => r.innerText.includes('ready')).length === 2", timeout=120_000)

        # Search by image: the green square's still finds the green square clip first.
        page.get_by_role("tab", name="Search").click()
        page.locator("#image-query").get_by_text("Search with an image").first.click()
        page.locator("#query-image input[type=file]").set_input_files(str(still))
        page.locator("#query-image img").first.wait_for()
        page.locator("#image-search-btn").click()
        cards = page.locator("#results .vs-card")
        page.wait_for_function("() => document.querySelectorAll('#results .vs-card').length === 3")
        assert "green_square.webm" in cards.first.locator(".vs-title").inner_text()
        page.screenshot(path=str(artifacts_dir / "ui-image-search.png"), full_page=True)

        # A text search: results above the fold at 1280x900, the weak matches in their own muted section below.
        page.set_viewport_size({"width": 1280, "height": 900})
        page.locator("#image-query").get_by_text("Search with an image").first.click()  # fold it again
        page.locator("#query textarea").fill("a green square")
        page.locator("#search-btn").click()
        page.wait_for_function("() => document.querySelectorAll('#results .vs-weak .vs-card').length >= 1 && "
                               "document.querySelectorAll('#results .vs-card').length === 3")
        page.evaluate("() => window.scrollTo(0, 0)")
        top = page.evaluate("() => document.querySelector('#results .vs-card').getBoundingClientRect().top")
        assert top < 900, top
        strong = page.evaluate("() => [...document.querySelectorAll('#results .vs-card')]"
                               ".filter(c => !c.closest('.vs-weak')).map(c => c.innerText)")
        assert strong and "green_square.webm" in strong[0], strong
        weak = page.locator("#results .vs-weak")
        assert weak.locator(".vs-weak-label").inner_text() == "Weaker matches"
        assert "green_square" not in weak.inner_text() and weak.locator(".vs-card").count() >= 1
        scores = page.evaluate("() => [...document.querySelectorAll('#results .vs-card .vs-meta')].map(m =>"
                               " [parseFloat(m.textContent.split('score ')[1]), !!m.closest('.vs-weak')])")
        assert min(s for s, w in scores if not w) > max(s for s, w in scores if w), scores
        assert page.evaluate("() => parseFloat(getComputedStyle("
                             "document.querySelector('#results .vs-weak > .vs-results')).opacity)") < 1
        page.screenshot(path=str(artifacts_dir / "ui-search-weak.png"))
        page.set_viewport_size({"width": 1280, "height": 1000})
        page.locator("#image-query").get_by_text("Search with an image").first.click()  # the image search again

        # Filters: only the tagged videos, whichever query; the untagged best match is left out.
        page.locator("#filters").get_by_text("Filters").first.click()
        page.locator("#filter-tags input").click()
        page.get_by_role("option", name="shapes").click()
        page.keyboard.press("Escape")
        page.locator("#image-search-btn").click()
        page.wait_for_function(
            "() => { const r = document.querySelector('#results').innerText;"
            " return document.querySelectorAll('#results .vs-card').length === 2 && !r.includes('green_square'); }")
        before = page.locator("#results").inner_html()
        page.locator("#query textarea").fill("a green square")
        page.locator("#search-btn").click()
        page.wait_for_function(  # the text search's answer replaced the image search's (other scores)
            "(before) => { const r = document.querySelector('#results'); return r.innerHTML !== before &&"
            " document.querySelectorAll('#results .vs-card').length === 2 && !r.innerText.includes('green_square'); }",
            arg=before)
        titles = sorted(t.inner_text().split(". ", 1)[1] for t in cards.locator(".vs-title").all())  # "1. title"
        assert titles == ["blue_triangle.mkv", "red_circle.mp4"]
        page.screenshot(path=str(artifacts_dir / "ui-filters.png"), full_page=True)

        # A date range that excludes everything, and a value that is not a date: messages, not errors.
        page.locator("#filter-until input, #filter-until textarea").first.fill("2000-01-01")
        page.locator("#search-btn").click()
        page.get_by_text("No video matches the filters.").wait_for()
        page.locator("#filter-until input, #filter-until textarea").first.fill("last week")
        page.locator("#search-btn").click()
        page.get_by_text("is not a date").wait_for()
        assert "Traceback" not in page.locator("#results").inner_text()
        page.locator("#filter-until input, #filter-until textarea").first.fill("")
        page.locator("#filter-max-duration input").fill("0.5")  # every clip is 1 s long
        page.locator("#search-btn").click()
        page.get_by_text("No video matches the filters.").wait_for()
        page.locator("#filter-max-duration input").fill("30")
        page.locator("#search-btn").click()
        page.wait_for_function("() => document.querySelectorAll('#results .vs-card').length === 2")
        page.close()


@pytest.mark.browser
def test_api_docs_render_without_internet(browser, tmp_path, tiny_model, artifacts_dir):
    """/docs must not need a CDN (this browser reaches nothing but the app): Swagger UI renders the API's routes."""
    with running_server(tmp_path / "home", tiny_model, tmp_path / "serve.log") as url:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        outside: list[str] = []
        page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(url) else None)
        page.goto(url + "/docs")
        page.locator(".swagger-ui .opblock-summary-path", has_text="/api/search").first.wait_for(timeout=30_000)
        assert page.locator(".swagger-ui .opblock").count() >= 8
        page.screenshot(path=str(artifacts_dir / "ui-docs.png"), full_page=False)
        assert outside == [], outside
        page.close()
