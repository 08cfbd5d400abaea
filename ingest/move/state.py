"""What `vidsearch move-library` has done so far, per destination: a small JSON file in the data folder.

It tells a rerun two things: that a non-empty destination is the one an earlier run of this move was filling (so
it is resumed, not refused), and where each collection's copy stopped (so it goes on from there). Each step also
checks the destination itself (the catalog resumes past the largest id there, the collections compare row counts
per video), so a lost or stale state costs time, never duplicates.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

STATE_FILE = "move-library.json"


def fingerprint(destination: str) -> str:
    """A stable name for a destination URL that does not keep its password in the file."""
    return hashlib.sha256(destination.encode()).hexdigest()[:24]


class MoveState:
    """Sections `catalog`, `vectors`, `storage`: each {"to": fingerprint, ...} of the destination it is about."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.data: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            self.data = {}
        except (OSError, ValueError):  # unreadable: start over (each step checks the destination itself)
            self.data = {}

    def section(self, name: str, destination: str) -> dict[str, Any] | None:
        """The recorded progress towards `destination`, or None when no run of this move wrote to it."""
        found = self.data.get(name)
        return found if isinstance(found, dict) and found.get("to") == fingerprint(destination) else None

    def begin(self, name: str, destination: str, shown: str) -> dict[str, Any]:
        """The section for `destination`, made (and saved) fresh when the state was about another one."""
        found = self.section(name, destination)
        if found is None:
            found = self.data[name] = {"to": fingerprint(destination), "shown": shown, "done": False}
            self.save()
        return found

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True))
        os.replace(tmp, self.path)  # atomic: a crash leaves the old state or the new one
