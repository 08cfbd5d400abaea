"""Videos with real speech for tests: phrases spoken by festival's `text2wave`, laid at chosen times on an audio
track and muxed with PyAV under a plain picture. The writers live in the product (search_app/eval_corpus.py, which
`vidsearch evaluate` uses too); this module re-exports them."""

from search_app.eval_corpus import (  # noqa: F401  (re-exports)
    AUDIO_CODECS,
    RATE,
    VIDEO_CODECS,
    have_festival,
    speak,
    speech_track,
    write_audio_video,
    write_speech_video,
)
