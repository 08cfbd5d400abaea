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
    with running_server(home, tiny_model, tmp_path / "serve.log") as url:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(60_000)
        page.goto(url + "/")

        # Empty state first: searching an empty library says what to do.
        page.locator("#query textarea").fill("a red circle")
        page.locator("#search-btn").click()
        page.get_by_text("No videos yet").wait_for()

        # Upload several videos at once; each row goes queued -> processing -> done.
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
            ".filter(r => r.innerText.includes('done')).length === 3",
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
        src = first.locator("video").get_attribute("src")
        assert src and src.startswith("/media/")
        assert page.request.get(url + src).status == 200
        page.screenshot(path=str(artifacts_dir / "ui-search.png"), full_page=True)

        # Delete from the Library tab: the video leaves the library and the results.
        page.get_by_role("tab", name="Library").click()
        page.get_by_role("button", name="Refresh").click()
        library = page.locator("#library [role=row]")
        library.get_by_text("blue_triangle.mkv").wait_for()
        video_id = first.get_attribute("data-video-id")
        page.locator("#delete-id input").fill(str(video_id))
        page.locator("#delete-btn").click()
        page.get_by_text("Deleted “red_circle.mp4”").wait_for()
        library.get_by_text("green_square.webm").wait_for()
        page.wait_for_function("() => !document.querySelector('#library').innerText.includes('red_circle.mp4')")
        page.screenshot(path=str(artifacts_dir / "ui-library.png"), full_page=True)
        assert page.request.get(url + src).status == 404

        page.get_by_role("tab", name="Search").click()
        page.locator("#search-btn").click()
        page.wait_for_function(
            "() => document.querySelectorAll('#results .vs-card').length === 2 && "
            "!document.querySelector('#results').innerText.includes('red_circle.mp4')")
        page.close()
