"""Tiny synthetic videos for tests: coloured shapes encoded with PyAV in real containers and codecs. The writers live
in the product (search_app/eval_corpus.py, which `vidsearch evaluate` uses too); this module re-exports them."""

from search_app.eval_corpus import (  # noqa: F401  (re-exports)
    COLOURS,
    DEFAULT_CODECS,
    ROTATABLE,
    SHAPES,
    render_frame,
    write_long_video,
    write_video,
)
