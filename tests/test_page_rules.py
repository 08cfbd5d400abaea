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
