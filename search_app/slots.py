"""Model slots: how many model calls the web process runs at once, whoever asks (API, page, timeline).

Query encodes share the CPU with each other and with the ingestion worker: beyond a few at once they only slow each
other down and starve ingestion (README, Load test). One ModelSlots per web app is the one limit for all of them;
the callers await a slot without holding a thread, then the call runs in a worker thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import anyio
import anyio.to_thread

T = TypeVar("T")


@dataclass(frozen=True)
class SlotStats:
    limit: int
    in_use: int  # model calls running now
    peak: int  # most that ever ran at once
    total: int  # calls started so far


class ModelSlots:
    """At most `limit` model calls at once; `await slots.run(fn, *args)` runs `fn(*args)` in a thread when a slot
    is free. Decoding, catalog and vector-store waits must not go through here: they would hold a slot idle."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"the limit must be at least 1, got {limit}")
        self.limit = limit
        self._limiter = anyio.CapacityLimiter(limit)
        self._lock = threading.Lock()
        self._in_use = self._peak = self._total = 0

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(partial(self._counted, fn, *args), limiter=self._limiter)

    def _counted(self, fn: Callable[..., T], *args: Any) -> T:
        # Counted inside the slot (in the thread), so in_use can never exceed what the limiter let through.
        with self._lock:
            self._in_use += 1
            self._total += 1
            self._peak = max(self._peak, self._in_use)
        try:
            return fn(*args)
        finally:
            with self._lock:
                self._in_use -= 1

    def stats(self) -> SlotStats:
        with self._lock:
            return SlotStats(self.limit, self._in_use, self._peak, self._total)
