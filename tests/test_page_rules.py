"""The Search tab's weak-match rule and the Timeline plot's y range (pure functions of search_app/page.py)."""

from __future__ import annotations

import pytest

from search_app.page import TIMELINE_MIN_SPAN, split_results, timeline_y_range
from search_app.search import SearchResult


def results(*scores: float) -> list[SearchResult]:
    return [SearchResult(i, s, i, f"v{i}", f"v{i}.mp4", 1.0) for i, s in enumerate(scores, 1)]


def titles(found: list[SearchResult]) -> list[str]:
    return [r.title for r in found]


def test_weak_matches_are_those_well_below_the_best_score_at_either_scale():
    strong, weak = split_results(results(0.95, 0.80, -0.899))  # the tiny test model: -1..1
    assert titles(strong) == ["v1", "v2"] and titles(weak) == ["v3"]
    strong, weak = split_results(results(0.31, 0.29, 0.17, 0.12))  # CLIP4Clip-like cosine scores
    assert titles(strong) == ["v1", "v2"] and titles(weak) == ["v3", "v4"]


def test_near_ties_and_a_single_result_are_all_strong():
    assert split_results(results(0.02, 0.0, -0.02)) == (results(0.02, 0.0, -0.02), [])  # the 0.05 floor
    assert split_results(results(-0.4)) == (results(-0.4), [])
    assert split_results([]) == ([], [])


def test_y_range_pads_the_data():
    low, high = timeline_y_range([0.2, 0.3, 0.6])
    assert low < 0.2 and high > 0.6
    assert low == pytest.approx(0.2 - 0.06) and high == pytest.approx(0.6 + 0.06)


def test_a_flat_line_gets_the_minimum_span_centred_on_it():
    low, high = timeline_y_range([0.123456, 0.123457, 0.123456])
    assert high - low == pytest.approx(TIMELINE_MIN_SPAN, abs=0.002)
    assert low < 0.123456 < high and low == round(low, 3) and high == round(high, 3)


def test_fused_scores_keep_the_same_weak_rule():
    """Fused scores (0..1, search_app/fusion.py) fall under the same rule: weaker when well below the best."""
    strong, weak = split_results(results(0.82, 0.70, 0.31, 0.05))  # said it, said part of it, said nothing
    assert titles(strong) == ["v1", "v2"] and titles(weak) == ["v3", "v4"]


def test_the_query_words_are_marked_as_the_fusion_counts_them_and_everything_is_escaped():
    from search_app.page import marked_words

    assert marked_words("the orchestra rehearsed the final movement", "The ORCHESTRA rehears") == (
        "the <mark>orchestra</mark> <mark>rehearsed</mark> the final movement")  # case, prefix; no stopwords
    assert marked_words("PLATFORM NINE", "platform mine") == "<mark>PLATFORM</mark> <mark>NINE</mark>"  # misread
    assert marked_words("hello the world", "then") == "hello the world"  # a stored stopword is never marked
    hostile = marked_words('<img src=x onerror="alert(1)"> & script', "img script amp")
    assert hostile == ('&lt;<mark>img</mark> src=x onerror=&quot;alert(1)&quot;&gt; &amp; <mark>script</mark>')
    long = " ".join(f"w{i}" for i in range(30)).replace("w20", "seventeen ships")
    cut = marked_words(long, "seventeen ships")
    assert cut.startswith("… ") and cut.endswith(" …") and "<mark>seventeen</mark> <mark>ships</mark>" in cut
    assert len(cut.replace("<mark>", "").replace("</mark>", "").split()) == 14 + 2  # the words kept, and two "…"


def test_a_card_says_why_it_matched():
    from search_app.moments import Moment
    from search_app.page import experts_line, said_lines

    assert experts_line({}) == ""
    assert ">appearance 0.31 · speech 0.77 · text —<" in experts_line({"text": None, "speech": 0.77,
                                                                        "appearance": 0.3149})
    moments = [Moment(83.4, 87.0, 1.0, 0, "speech", "they counted seventeen ships"),
               Moment(2.0, 5.0, 0.5, 0, "text", "PLATFORM <b>NINE</b>"), Moment(0.0, 5.0, 0.3, 0)]
    lines = said_lines("/media/a.mp4", moments, "seventeen nine")
    assert lines.count('class="vs-moment vs-line"') == 2  # appearance moments stay thumbnails
    assert "said at 1:23:</span>" in lines and 'data-src="/media/a.mp4#t=83.40,87.00"' in lines
    assert "shown at 0:02:</span>" in lines and "PLATFORM &lt;b&gt;<mark>NINE</mark>&lt;/b&gt;" in lines
    assert "<button" not in said_lines(None, moments, "nine") and "shown at 0:02" in said_lines(None, moments, "")
