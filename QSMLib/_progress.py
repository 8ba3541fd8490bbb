"""Progress reporting and cancellation shared by every long-running stage.

A *progress* callback is ``callable(fraction: float, message: str)`` with
``fraction`` in [0, 1]. A *cancel* token is either a ``callable() -> bool`` or
an object with ``is_set()`` (e.g. ``threading.Event``).
"""

from __future__ import annotations

from typing import Callable, Optional, Protocol, Union

from .errors import QSMCancelled


class _EventLike(Protocol):
    def is_set(self) -> bool: ...


ProgressCallback = Optional[Callable[[float, str], None]]
CancelToken = Optional[Union[Callable[[], bool], _EventLike]]


def check_cancel(cancel: CancelToken) -> None:
    """Raise :class:`QSMCancelled` when ``cancel`` says stop."""
    if cancel is None:
        return
    stop = cancel.is_set() if hasattr(cancel, "is_set") else cancel()
    if stop:
        raise QSMCancelled("Processing was cancelled.")


def report(progress: ProgressCallback, fraction: float, message: str) -> None:
    """Call ``progress`` if given, clipping ``fraction`` to [0, 1]."""
    if progress is not None:
        progress(min(max(float(fraction), 0.0), 1.0), message)


def sub_progress(progress: ProgressCallback, start: float, stop: float) -> ProgressCallback:
    """Map a stage's own [0, 1] progress onto [start, stop] of its caller."""
    if progress is None:
        return None

    def scaled(fraction: float, message: str) -> None:
        progress(start + (stop - start) * fraction, message)

    return scaled
