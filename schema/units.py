"""Times as people read them, in the CLI, the web page and error messages alike."""

from __future__ import annotations


def clock(seconds: float | None) -> str:
    """0:07, 12:34, or 1:02:03 past an hour (whole seconds); '?' when unknown."""
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
