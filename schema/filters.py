"""Search filters on the scalar fields stored beside each video vector, and their Milvus boolean expression.

Milvus Lite 3.x does not support expression templates (`filter_params`), so user text reaches an expression only as
a string literal built by `milvus_string`, which escapes every character the expression grammar treats specially.
Tags are checked when they are set (`check_tag`), and a filter value that could never be a valid tag is refused.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

MAX_TAG_LENGTH = 64
MAX_FILTER_TAGS = 50
# Stored in the duration field when the container did not say: below every accepted bound.
UNKNOWN_DURATION = -1.0


class QueryError(ValueError):
    """A search that cannot be run as given (empty text, bad k, bad filter); the message is for the user."""


class FilterError(QueryError):
    """A filter value that cannot be used (negative duration, reversed range, invalid tag, unreadable date)."""


def check_tag(tag: str) -> str:
    """A tag as stored: stripped, NFC-normalised, 1..64 characters, no control characters. Anything else is refused
    (with the reason) rather than silently changed into another tag."""
    if not isinstance(tag, str):
        raise FilterError("a tag must be text")
    value = unicodedata.normalize("NFC", tag.strip())
    if not value:
        raise FilterError("a tag must not be empty")
    if len(value) > MAX_TAG_LENGTH:
        raise FilterError(f"a tag has at most {MAX_TAG_LENGTH} characters")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn") for ch in value):
        raise FilterError("a tag must not contain control or invisible characters")
    return value


_ESCAPES = {"\\": "\\\\", '"': '\\"', "'": "\\'"}


def milvus_string(value: str) -> str:
    """A double-quoted Milvus string literal that denotes exactly `value` (a checked tag: no control characters)."""
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        raise FilterError("control characters cannot be matched")
    return '"' + "".join(_ESCAPES.get(ch, ch) for ch in value) + '"'


def epoch_seconds(when: datetime) -> int:
    """Seconds since 1970 UTC; a naive datetime is UTC (the catalog stores naive UTC)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return int(when.timestamp())


def parse_date(text: str, *, end_of_day: bool = False) -> int:
    """'2026-11-23' or an ISO 8601 date-time (UTC unless it says otherwise) -> epoch seconds.

    A bare date used as an upper bound means the end of that day, so "until 2026-11-23" includes the 23rd."""
    text = text.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
            return epoch_seconds(start + timedelta(days=1)) - 1 if end_of_day else epoch_seconds(start)
        return epoch_seconds(datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        raise FilterError(f"{text!r} is not a date like 2026-11-23 or 2026-11-23T14:00:00Z") from None


@dataclass(frozen=True)
class SearchFilters:
    """Conditions on a video's stored scalar fields, evaluated by Milvus together with the vector search.

    Durations are seconds; ingest times are epoch seconds (inclusive bounds); a video matches `tags` when its tag is
    any of them."""

    min_duration: float | None = None
    max_duration: float | None = None
    ingested_after: int | None = None
    ingested_before: int | None = None
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("min_duration", "max_duration"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise FilterError(f"{name} must be a number of seconds >= 0")
        if self.min_duration is not None and self.max_duration is not None and self.min_duration > self.max_duration:
            raise FilterError("min_duration must not be larger than max_duration")
        for name in ("ingested_after", "ingested_before"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise FilterError(f"{name} must be a time since 1970 in whole seconds")
        if (self.ingested_after is not None and self.ingested_before is not None
                and self.ingested_after > self.ingested_before):
            raise FilterError("ingested_after must not be later than ingested_before")
        if isinstance(self.tags, str):
            raise FilterError("tags must be a list of tags")
        if len(self.tags) > MAX_FILTER_TAGS:
            raise FilterError(f"at most {MAX_FILTER_TAGS} tags can be combined")
        # Refused, not matched: a value that is not a valid tag can match no video, and saying so helps the user.
        object.__setattr__(self, "tags", tuple(dict.fromkeys(check_tag(t) for t in self.tags)))

    @classmethod
    def from_text(cls, min_duration: float | None = None, max_duration: float | None = None,
                  since: str | None = None, until: str | None = None, tags: Sequence[str] = ()) -> SearchFilters:
        """As typed at the edges (CLI, API, web page): dates as text (`parse_date`; a bare `until` date includes
        that whole day); an empty date is no condition."""
        return cls(min_duration, max_duration, parse_date(since) if since else None,
                   parse_date(until, end_of_day=True) if until else None, tuple(tags))

    @property
    def active(self) -> bool:
        return (self.min_duration, self.max_duration, self.ingested_after, self.ingested_before) != (None,) * 4 \
            or bool(self.tags)

    def expression(self) -> str:
        """The Milvus boolean expression ("" when there are no conditions). Numbers are formatted by Python from
        checked values and strings by `milvus_string`; nothing else of the user's reaches the text."""
        terms: list[str] = []
        if self.min_duration is not None or self.max_duration is not None:
            terms.append(f"duration_s >= {float(self.min_duration or 0.0):.9f}")  # also excludes unknown durations
        if self.max_duration is not None:
            terms.append(f"duration_s <= {float(self.max_duration):.9f}")
        if self.ingested_after is not None:
            terms.append(f"ingested_at >= {int(self.ingested_after)}")
        if self.ingested_before is not None:
            terms.append(f"ingested_at <= {int(self.ingested_before)}")
        if self.tags:
            terms.append(f"tag in [{', '.join(milvus_string(t) for t in self.tags)}]")
        return " and ".join(terms)

    def accepts(self, duration: float | None, ingested_at: int, tag: str | None) -> bool:
        """The same conditions in Python, on catalog values (the catalog is the source of truth)."""
        if self.min_duration is not None or self.max_duration is not None:
            if duration is None or duration < (self.min_duration or 0.0):
                return False
            if self.max_duration is not None and duration > self.max_duration:
                return False
        if self.ingested_after is not None and ingested_at < self.ingested_after:
            return False
        if self.ingested_before is not None and ingested_at > self.ingested_before:
            return False
        return not self.tags or tag in self.tags
