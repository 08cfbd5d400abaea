"""What the stages of a move share: the error a person can act on, progress bars, and the test hook."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class MoveError(RuntimeError):
    """The move cannot go on (a bad or unreachable destination, one that holds something else, a busy library):
    the message says why and what to do."""


class Bar(Protocol):
    def update(self, n: int = 1) -> object: ...
    def close(self) -> object: ...


# (description, total) -> a bar (the CLI's tqdm); the stages never print.
Progress = Callable[[str, int], Bar]
# Called after each batch is written and recorded: (stage, table or collection, rows). Tests interrupt with it.
BatchHook = Callable[[str, str, int], None]


class _Quiet:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def no_progress(_desc: str, _total: int) -> Bar:
    return _Quiet()


def no_hook(_stage: str, _name: str, _rows: int) -> None:
    pass
