"""The page's library functions on a real SQLite catalog: pages, counts, selection and the Timeline picker's choices,
and that none of them reads the whole library (every statement is bounded by LIMIT or is a COUNT)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from sqlalchemy import event, update

from schema.catalog import Catalog, Video, VideoStatus
from schema.settings import Settings
from schema.storage import open_storage
from search_app.page import (
    library_gallery,
    library_page,
    library_summary,
    render_results,
    ticked_ids,
    timeline_choices,
    videos_phrase,
)


@pytest.fixture
def catalog(tmp_path) -> Iterator[Catalog]:
    cat = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    for i in range(1, 8):  # ids 1..7; odd ones are ready
        cat.add_video(sha256=f"{i:064d}", title=f"{'red' if i <= 4 else 'blue'}_{i}.mp4", stored_path="/nowhere",
                      size_bytes=1)
    with cat.sessions.begin() as s:
        s.execute(update(Video).where(Video.id % 2 == 1).values(status=VideoStatus.READY))
    yield cat
    cat.close()


@contextlib.contextmanager
def statements(catalog: Catalog) -> Iterator[list[str]]:
    seen: list[str] = []

    def listen(_conn, _cursor, statement, *_rest) -> None:
        seen.append(" ".join(statement.split()).lower())

    event.listen(catalog.engine, "before_cursor_execute", listen)
    try:
        yield seen
    finally:
        event.remove(catalog.engine, "before_cursor_execute", listen)


def bounded(seen: list[str]) -> bool:
    """Every statement that reads videos has a LIMIT or is a COUNT: none reads the whole library."""
    return all(" limit " in s or s.startswith("select count(") for s in seen if "from videos" in s)


def test_library_pages_newest_first_with_previous_next_and_search(catalog):
    with statements(catalog) as seen:
        first = library_page(catalog, 3)
        second = library_page(catalog, 3, after=first.ids[-1])
        third = library_page(catalog, 3, after=second.ids[-1])
        back = library_page(catalog, 3, before=third.ids[0])
    assert bounded(seen) and seen
    assert (first.ids, first.offset, first.total, first.more) == ([7, 6, 5], 0, 7, True)
    assert (second.ids, second.offset, second.more) == ([4, 3, 2], 3, True)
    assert (third.ids, third.offset, third.more) == ([1], 6, False)
    assert back.ids == second.ids and back.offset == 3
    assert library_page(catalog, 3, before=second.ids[0]).ids == first.ids
    assert library_page(catalog, 3, before=6).ids == first.ids  # not a full page before: the first page
    assert library_summary(second) == '<div class="vs-meta">Showing 4–6 of 7 videos</div>'

    red = library_page(catalog, 3, "  RED ")
    assert (red.ids, red.total, red.more, red.title) == ([4, 3, 2], 4, True, "RED")
    assert library_page(catalog, 3, "red", after=2).ids == [1]
    assert "Showing 1–3 of 4 videos matching “RED”" in library_summary(red)
    assert "No videos matching “x&lt;y”." in library_summary(library_page(catalog, 3, "x<y"))

    # A page whose videos were all deleted meanwhile gives way to the first page.
    for video_id in third.ids:
        catalog.delete_video(video_id)
    assert library_page(catalog, 3, after=second.ids[-1]).ids == first.ids


def test_only_ticked_rows_of_the_page_shown_are_deleted(catalog):
    page = library_page(catalog, 3)
    rows = [[True, 7, "blue_7.mp4"], [False, 6, "blue_6.mp4"], [True, 5.0, "blue_5.mp4"]]
    assert ticked_ids(rows, page.ids) == [7, 5]
    # An id the page does not show (a dropped CSV, an added row) is never taken, nor a row without a tick.
    assert ticked_ids([*rows, [True, 1, "red_1.mp4"], [True, None, ""], ["true", 6, ""]], page.ids) == [7, 5]
    assert ticked_ids(None, page.ids) == [] and ticked_ids(rows, []) == []
    assert videos_phrase(["a.mp4", "<b>.mp4"]) == "2 videos: a.mp4, &lt;b&gt;.mp4"
    assert videos_phrase([f"{i}.mp4" for i in range(12)]).endswith("9.mp4 and 2 more")


def test_the_timeline_picker_offers_a_bounded_number_of_ready_videos(catalog):
    with statements(catalog) as seen:
        choices, info = timeline_choices(catalog, 2)
    assert bounded(seen)
    assert choices == [("blue_7.mp4 (id 7)", 7), ("blue_5.mp4 (id 5)", 5)]
    assert info == "The 2 newest of 4 ready videos; search by title for the others."
    assert timeline_choices(catalog, 2, "red") == ([("red_3.mp4 (id 3)", 3), ("red_1.mp4 (id 1)", 1)],
                                                   "2 ready videos matching “red”.")
    assert timeline_choices(catalog, 2, "_1.") == ([("red_1.mp4 (id 1)", 1)], "1 ready video matching “_1.”.")


def test_empty_results_and_the_gallery_do_not_read_the_whole_library(catalog, tmp_path):
    settings = Settings(home=tmp_path / "data")
    runtime = SimpleNamespace(catalog=catalog, settings=settings, storage=open_storage(settings))
    with statements(catalog) as seen:
        assert "No results for" in render_results(runtime, "a cat", [])
        library_gallery(runtime, library_page(catalog, 3))
    assert bounded(seen) and any(s.startswith("select count(") for s in seen)
    with catalog.sessions.begin() as s:
        s.execute(update(Video).values(status=VideoStatus.QUEUED))
    assert "No videos yet" in render_results(runtime, "a cat", [])
