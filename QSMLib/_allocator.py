"""Memory allocation settings for processes that exist to run the pipeline.

A pipeline run allocates and frees arrays of 50-500 MB many times (one
256 x 256 x 176 float32 volume is 46 MB, nine echoes 415 MB). On Linux,
glibc's malloc serves every allocation above 32 MB with a fresh ``mmap`` and
gives it back to the kernel when freed, so each new array is faulted in and
zeroed page by page again; numpy also asks for transparent huge pages
(``madvise``), and faulting those in can wait for the kernel to assemble
2 MB pages. Keeping freed memory in the process and using ordinary pages
removes most of that system time. ``qsm run`` on a 256 x 256 x 176 x 9 head
(``/usr/bin/time``, 2 cores, three interleaved runs each): system time
11.3-15.6 s -> 5.3-6.6 s (consensus) and 12.4-15.8 s -> 4.4-5.3 s (fast),
wall time 34.2-38.5 s -> 28.4-29.8 s and 29.6-34.3 s -> 23.3-25.0 s, at a
peak resident memory about 0.3 GiB higher.

Only the ``qsm`` command's own process gets them (and so the Slicer engine,
which is that command): :func:`keep_freed_memory` is called by its entry
point. A library user's Python session is left as it is, and so are Dask
workers, whose memory monitor would count the kept memory as in use and
pause them.
"""

from __future__ import annotations

import ctypes
import sys

# mallopt parameter numbers from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Keep freed memory in this process and allocate arrays on ordinary pages.

    glibc's malloc serves no allocation by ``mmap`` any more (freed memory
    stays for the next array) and gives freed memory back to the kernel only
    when more than 2 GiB of it lies at the top of the heap; numpy stops
    asking for transparent huge pages. Returns whether malloc took its part: True with glibc on Linux, False
    elsewhere (other C libraries and systems keep their own behaviour; numpy's
    huge-page request is switched off everywhere).
    """
    try:  # numpy 2 moved its internals to numpy._core
        from numpy._core.multiarray import _set_madvise_hugepage
    except ImportError:
        from numpy.core.multiarray import _set_madvise_hugepage
    _set_madvise_hugepage(False)
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another C library without glibc's mallopt
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
