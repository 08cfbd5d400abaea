"""The README's capacity section is `vidsearch capacity`'s output, and its arithmetic follows the schema."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ingest.decode import Sampling
from schema.settings import Settings
from search_app.capacity import (
    INDEXES,
    SEGMENT_SCALARS,
    VIDEO_SCALARS,
    Library,
    estimate,
    index_bytes,
    markdown,
)

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_shows_what_the_command_computes():
    assert markdown(Settings()) in README.read_text(), "run `vidsearch capacity` and paste its output in the README"


def test_the_command_prints_the_tables_for_its_options():
    from search_app.cli import app

    result = CliRunner().invoke(app, ["capacity", "--dim", "256", "--seconds", "300"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == markdown(Settings(), dim=256, seconds=300.0)
    assert "256-dimensional" in result.output and "300 s videos" in result.output


@pytest.mark.parametrize("dim", [256, 512, 768])
def test_vector_bytes_follow_the_dimension(dim):
    assert index_bytes("FLAT", dim) == 4 * dim
    assert index_bytes("IVF_SQ8", dim) == dim + 8
    assert index_bytes("HNSW", dim, {"M": 32}) == 4 * dim + 2 * 32 * 4
    # pk, video_id, duration_s, ingested_at, tag (12): the bits row repeats the filter fields its search applies
    assert index_bytes("BIN_FLAT", dim) == dim / 8 + 8 + 8 + 8 + 8 + 12
    e = estimate(Settings(), Library(videos=1), "FLAT", dim)
    assert e.video_bytes == VIDEO_SCALARS + 4 * dim
    assert e.segment_bytes == e.segments * (SEGMENT_SCALARS + 4 * dim)


@pytest.mark.parametrize("seconds", [10.0, 30.0, 300.0, 3600.0])
def test_segments_are_the_sampled_frames(seconds):
    settings = Settings(moment_seconds=4.0, max_frames=200)
    assert estimate(settings, Library(videos=1, seconds=seconds), "FLAT").segments == \
        Sampling.from_settings(settings).count(seconds)


def test_every_listed_index_has_a_rule_and_an_unknown_one_is_refused():
    for kind in INDEXES:
        assert index_bytes(kind, 512) > 0
    with pytest.raises(ValueError, match="no sizing rule"):
        index_bytes("DISKANN_UNKNOWN", 512)


def test_binary_compact_mode_keeps_the_float_collection_beside_the_bits():
    flat = estimate(Settings(), Library(videos=1), "FLAT")
    bits = estimate(Settings(), Library(videos=1), "BIN_FLAT")
    assert bits.video_bytes == flat.video_bytes + index_bytes("BIN_FLAT", 512)
