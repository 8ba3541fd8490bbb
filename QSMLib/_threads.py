"""How many threads QSMLib's own parallel work uses: FFT workers, file reading and writing, BLAS.

One number for the whole process, set by ``qsm run --threads``, the
configuration's ``threads`` key or :func:`limit_threads`; 0 (the default)
means every core this process may run on. FFTs (:mod:`QSMLib._fft`) and the
threads that read, decompress and compress files follow it. BLAS (only a
few dot products and norms in QSMLib, a negligible share of the time) follows
it when ``threadpoolctl`` is installed; processes QSMLib starts (the Slicer
engine, a local Dask cluster) get it through ``OMP_NUM_THREADS``,
``OPENBLAS_NUM_THREADS`` and ``MKL_NUM_THREADS`` before they import numpy.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

from .errors import QSMInputError

#: Environment variables that set the thread pools of BLAS libraries at import.
BLAS_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

_configured = 0
#: threadpoolctl's record of the BLAS pools before QSMLib limited them (restored when the limit is lifted).
_blas_limit = None


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the system tells, else all)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS and Windows have no sched_getaffinity
        return max(1, os.cpu_count() or 1)


def thread_count() -> int:
    """Threads to use now: the configured count, or every available core when none is set."""
    return _configured or available_cores()


def check_thread_count(count: object) -> int:
    """``count`` as a whole number >= 0 (0 = every core), or :class:`QSMInputError`."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise QSMInputError(f"threads must be a whole number >= 0 (0 = every core), got {count!r}.")
    return count


def set_threads(count: Optional[int]) -> int:
    """Use ``count`` threads from now on (0 or None: every core); returns the number now in effect."""
    global _configured
    _configured = check_thread_count(0 if count is None else count)
    _limit_blas(_configured)
    return thread_count()


@contextlib.contextmanager
def limit_threads(count: Optional[int]) -> Iterator[int]:
    """Use ``count`` threads inside the ``with`` block (0 or None: keep the current setting).

    Examples
    --------
    >>> from QSMLib._threads import limit_threads, thread_count
    >>> with limit_threads(1):
    ...     thread_count()
    1
    """
    if not count:
        yield thread_count()
        return
    previous = _configured
    try:
        yield set_threads(count)
    finally:
        set_threads(previous)


def blas_environment(count: int) -> dict[str, str]:
    """Environment entries that give a new process ``count`` BLAS threads (set before numpy is imported)."""
    return {name: str(int(count)) for name in BLAS_THREAD_VARIABLES}


def _limit_blas(count: int) -> None:
    """Limit BLAS to ``count`` threads, or give it back the pools it had (``count`` 0)."""
    global _blas_limit
    if _blas_limit is not None:
        _blas_limit.restore_original_limits()
        _blas_limit = None
    if not count:
        return
    try:
        import threadpoolctl
    except ImportError:  # optional: BLAS keeps the pool it started with (its share of the time is tiny)
        return
    _blas_limit = threadpoolctl.threadpool_limits(limits=count, user_api="blas")
