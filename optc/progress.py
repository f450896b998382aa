"""How the flow tells its caller what it is doing, without knowing about terminals."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol


class Progress(Protocol):
    def stage(self, description: str) -> contextlib.AbstractContextManager[None]:
        """Wrap a step that may take more than a moment."""

    def done(self, message: str) -> None:
        """A step finished; one line worth keeping in a log."""

    def warn(self, message: str) -> None:
        """Something the user should know that does not stop the run."""


class SilentProgress:
    @contextlib.contextmanager
    def stage(self, description: str) -> Iterator[None]:
        yield

    def done(self, message: str) -> None:
        pass

    def warn(self, message: str) -> None:
        pass
