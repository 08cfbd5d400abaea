"""Videos with words burnt into their frames, for the text expert and the lexical search tests. The writers live in
the product (search_app/eval_corpus.py, which `vidsearch evaluate` uses too); this module re-exports them."""

from search_app.eval_corpus import (  # noqa: F401  (re-exports)
    FONT,
    PLAIN,
    busy_background,
    draw_text,
    text_frame,
    write_text_video,
)
