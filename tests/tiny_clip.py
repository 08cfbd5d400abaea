"""The tiny CLIP checkpoint the tests train (colour x shape captions) lives in the product (search_app/tiny_clip.py,
which `vidsearch evaluate` builds too); this module re-exports it."""

from search_app.tiny_clip import (  # noqa: F401  (re-exports)
    IMAGE_SIZE,
    MAX_TEXT,
    PROJECTION_DIM,
    WORDS,
    build_checkpoint,
    build_model,
    build_tokenizer,
    caption,
    train,
)
